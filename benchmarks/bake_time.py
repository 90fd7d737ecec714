"""Wall time of `cookiecutter . --no-input` (with sample data and smoke test) against its parts.

    python benchmarks/bake_time.py               # 5 repeats of each
    python benchmarks/bake_time.py --repeats 9
    python benchmarks/bake_time.py --against 47e44f2   # and the template at that commit, same run

Each line: median, min and max seconds over the repeats, each run a fresh process as a user's is;
the cases take turns, so that a machine slowing down or speeding up weighs on all of them alike.
Then where the post-gen hook's time goes: its steps timed one after the other in a fresh process,
as the hook runs them, in a project baked without data.
"""

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


# The post-gen hook's steps, as it runs them (hooks/post_gen_project.py), each timed.
HOOK_STEPS = """
import json, sys, tempfile, time
sys.path.insert(0, "")
times, last = {}, time.perf_counter()

def step(name):
    global last
    now = time.perf_counter()
    times[name], last = now - last, now

import torch
step("import torch")
import make_sample_data, pytorch_script
step("import the project's scripts")
make_sample_data.main([])
step("write 1000 sample files")
import torch._dynamo
step("import torch._dynamo (torch.optim does)")
with tempfile.TemporaryDirectory() as runs:
    argv = ["--max-epochs", "1", "--num-workers", "2", "--runs-dir", runs, "--run-name", "s"]
    pytorch_script.main(argv)
step("train one epoch with 2 workers")
print(json.dumps(times))
"""


def wall_time(command: list[str], cwd: Path) -> float:
    start = time.perf_counter()
    subprocess.run(command, cwd=cwd, check=True, capture_output=True)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="runs of each command")
    parser.add_argument("--against", metavar="COMMIT", help="also bake the template at COMMIT")
    args = parser.parse_args(argv)

    config = Path(tempfile.mkdtemp()) / "cookiecutter.yaml"  # replays not in ~, as a user's
    config.write_text(f"replay_dir: {json.dumps(str(config.parent))}\n")
    bake = [sys.executable, "-m", "cookiecutter", str(ROOT), "--config-file", str(config)]
    bake += ["--no-input", "-o"]
    cases_now = "cookiecutter --no-input (defaults)"
    cases = {
        "python -c 'import torch'": lambda out: [sys.executable, "-c", "import torch"],
        "cookiecutter, no data, no smoke test": lambda out: [
            *bake, str(out), "_create_sample_data=false", "_run_smoke_test=false"
        ],
        cases_now: lambda out: [*bake, str(out)],
    }  # fmt: skip
    if args.against:
        then = Path(tempfile.mkdtemp()) / "template"
        subprocess.run(["git", "clone", "-q", str(ROOT), str(then)], check=True)
        subprocess.run(["git", "checkout", "-q", args.against], cwd=then, check=True)
        then_bake = [sys.executable, "-m", "cookiecutter", str(then), "--config-file", str(config)]
        old = f"cookiecutter --no-input, at {args.against}"
        cases[old] = lambda out: [*then_bake, "--no-input", "-o", str(out)]
    times = {name: [] for name in cases}
    for _ in range(args.repeats):
        for name, command in cases.items():
            out = Path(tempfile.mkdtemp())
            times[name].append(wall_time(command(out), cwd=out))
            shutil.rmtree(out)
    print(f"{args.repeats} runs each; seconds: median (min - max)")
    medians = {name: statistics.median(t) for name, t in times.items()}
    for name, t in times.items():
        print(f"  {name:40} {medians[name]:5.2f} ({min(t):.2f} - {max(t):.2f})")
    if args.against:
        print(f"defaults now / at {args.against}: {medians[cases_now] / medians[old]:.2f}")
        shutil.rmtree(then.parent)
    full, torch_import = (
        medians[cases_now],
        medians["python -c 'import torch'"],
    )
    print(f"defaults / import torch: {full / torch_import:.1f}x")

    out = Path(tempfile.mkdtemp())
    subprocess.run(
        [*bake, str(out), "_create_sample_data=false", "_run_smoke_test=false"], check=True
    )
    steps = []
    for repeat in range(args.repeats):
        # A new copy each time, as the hook finds it: no data, nothing just deleted.
        project = shutil.copytree(out / "my_pytorch_project", out / f"copy-{repeat}")
        result = subprocess.run(
            [sys.executable, "-c", HOOK_STEPS], cwd=project, check=True, capture_output=True,
            text=True,
        )  # fmt: skip
        steps.append(json.loads(result.stdout.splitlines()[-1]))
    print("the post-gen hook's steps, in one process; seconds: median (min - max)")
    for name in steps[0]:
        times = [step[name] for step in steps]
        print(f"  {name:40} {statistics.median(times):5.2f} ({min(times):.2f} - {max(times):.2f})")
    shutil.rmtree(out)
    shutil.rmtree(config.parent)
    return 0


if __name__ == "__main__":
    sys.exit(main())
