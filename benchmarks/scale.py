"""How start-up, packing and memory grow with the number of samples, from thousands to millions.

    python benchmarks/scale.py                          # 20,000 and 200,000 samples
    python benchmarks/scale.py --sizes 1000000          # about 4 GB of files, minutes to make

A default project is baked once. For each N, make_sample_data.py writes N tiny samples (shape
(4,), so that the per-sample work, not the bytes, shows), then each step runs in a new Python,
--repeats times, with the page cache warm, and the median is printed:
- import torch alone: the floor every start pays; and torch's own cost of the first optimizer
  (its first use imports torch._dynamo: about 1.3 s and 75 MB), which any training script pays;
- pytorch_script.py --dry-run --num-workers 0 (two batches of each split), from the files and
  from the packed copy: the start-up overhead is the time to its first batch minus the
  import's, and its peak memory (maximum resident set, over the whole dry run) minus the
  import's;
- pack_data.py --force with one process (--num-workers 0) and with a DataLoader worker per CPU.
Then how each grew from the smallest N to the largest.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def bake(out: Path) -> Path:
    config = out / "cookiecutter.yaml"  # replays not in ~
    config.write_text(f"replay_dir: {json.dumps(str(out))}\n")
    command = [sys.executable, "-m", "cookiecutter", str(ROOT), "--config-file", str(config)]
    command += ["--no-input", "-o", str(out), "_run_smoke_test=false", "_create_sample_data=false"]
    subprocess.run(command, check=True, capture_output=True)
    return out / "my_pytorch_project"


# pytorch_script.py, saying on stderr when its first training batch is ready
FIRST_BATCH = """
import runpy, sys
from plumbing import training
iterate = training.Pass.__iter__
def first_said(self):
    for batch in iterate(self):
        if not training.said:
            training.said = True
            print(MARK, file=sys.stderr, flush=True)
        yield batch
training.said, training.Pass.__iter__ = False, first_said
sys.argv = ["pytorch_script.py", *sys.argv[1:]]
runpy.run_path("pytorch_script.py", run_name="__main__")
"""
MARK = "first batch ready"


def timed(command: list[str], cwd: Path) -> tuple[float, float]:
    """Seconds (to the first batch, if the command says MARK on stderr; else to its end) and
    peak resident memory (MB) of one run of command, which must succeed."""
    start = time.perf_counter()
    process = subprocess.Popen(
        command, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    seconds, err = None, []
    for line in process.stderr:
        if line.strip() == MARK and seconds is None:
            seconds = time.perf_counter() - start
        else:
            err.append(line)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = seconds or time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(command)} failed: {''.join(err)}")
    return seconds, usage.ru_maxrss / 1024  # KB on Linux


def median_of(repeats: int, command: list[str], cwd: Path) -> tuple[float, float]:
    runs = [timed(command, cwd) for _ in range(repeats)]
    return statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)


def measure(project: Path, num_samples: int, repeats: int) -> dict[str, float]:
    data = project.parent / f"data-{num_samples}"
    python = [sys.executable]
    make = [*python, "make_sample_data.py", "--data-dir", str(data), "--shape", "4"]
    subprocess.run([*make, "--num-samples", str(num_samples)], cwd=project, check=True)
    train = [*python, "-c", f"MARK = {MARK!r}" + FIRST_BATCH, "--data-dir", str(data)]
    train += ["--device", "cpu"]
    train += ["--dry-run", "--num-workers", "0", "--runs-dir", str(project.parent / "runs")]
    pack = [*python, "pack_data.py", "--data-dir", str(data), "--force"]
    result = {}
    result["import s"], result["import MB"] = median_of(
        repeats, [*python, "-c", "import torch"], project
    )
    optimizer = "import torch; torch.optim.Adam(torch.nn.Linear(4, 2).parameters())"
    result["optimizer s"], result["optimizer MB"] = median_of(
        repeats, [*python, "-c", optimizer], project
    )
    timed([*train, "--data-format", "files"], project)  # the page cache warm
    result["files s"], result["files MB"] = median_of(
        repeats, [*train, "--data-format", "files"], project
    )
    result["pack 1 s"], _ = median_of(repeats, [*pack, "--num-workers", "0"], project)
    result["pack all s"], _ = median_of(repeats, pack, project)
    result["packed s"], result["packed MB"] = median_of(
        repeats, [*train, "--data-format", "packed"], project
    )
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[20_000, 200_000])
    parser.add_argument("--repeats", type=int, default=3, help="runs per median")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        project = bake(Path(tmp))
        print(
            f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}; median of {args.repeats};"
            " start-up and memory above a bare `import torch`"
        )
        header = ["samples", "import", "optim", "files", "packed", "MB optim", "MB files"]
        header += ["MB packed", "pack 1 proc", "pack all", "speed-up"]
        print("{:>10} {:>7} {:>7} {:>7} {:>7} {:>9} {:>9} {:>9} {:>12} {:>9} {:>9}".format(*header))
        rows = {}
        for n in args.sizes:
            r = rows[n] = measure(project, n, args.repeats)
            print(
                f"{n:>10,} {r['import s']:6.2f}s {r['optimizer s'] - r['import s']:6.2f}s"
                f" {r['files s'] - r['import s']:6.2f}s {r['packed s'] - r['import s']:6.2f}s"
                f" {r['optimizer MB'] - r['import MB']:9.0f}"
                f" {r['files MB'] - r['import MB']:9.0f}"
                f" {r['packed MB'] - r['import MB']:9.0f} {r['pack 1 s']:11.2f}s"
                f" {r['pack all s']:8.2f}s {r['pack 1 s'] / r['pack all s']:8.2f}x",
                flush=True,
            )
        if len(rows) > 1:
            small, large = rows[min(rows)], rows[max(rows)]
            print(f"from {min(rows):,} to {max(rows):,} samples (x{max(rows) / min(rows):g}):")
            above_import = [
                ("start-up overhead, files", "files s", "import s"),
                ("start-up overhead, packed", "packed s", "import s"),
                ("peak memory, files", "files MB", "import MB"),
                ("peak memory, packed", "packed MB", "import MB"),
            ]
            for name, key, floor in above_import:
                grew = (large[key] - large[floor]) / max(1e-9, small[key] - small[floor])
                print(f"  {name:28} x{grew:.1f}")
            for name, key in [
                ("packing, one process", "pack 1 s"),
                ("packing, all CPUs", "pack all s"),
            ]:
                print(f"  {name:28} x{large[key] / small[key]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
