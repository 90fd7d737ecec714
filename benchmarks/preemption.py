"""What a preemption costs a run: the time from SIGTERM to its exit, and the training it loses.

    python benchmarks/preemption.py                  # 5 signals, 5,000 samples of 3x32x32
    python benchmarks/preemption.py --repeats 9 --num-samples 20000

A project is baked with its sample data. Each repeat starts a run (the default flags, 2 workers,
on the CPU), sends it SIGTERM at a random moment of its second epoch, and times the signal to
the checkpoint written and to the exit. Beside them: one batch, one save of last.pt, and the
training a run with a checkpoint per epoch only (the template before 0.4.0) would have lost: the
batches of the epoch trained before the signal. Last, what the ranks' vote on stopping costs
under torchrun (2 CPU processes, gloo), after every batch and as training votes, against steps
of a little compute and 1 MB of gradients averaged.
"""

import argparse
import json
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STOPPED = re.compile(r"stopped by SIGTERM after (?:batch (\d+) of )?epoch (\d+)")


def bake(num_samples: int) -> Path:
    out = Path(tempfile.mkdtemp())
    config = out / "cookiecutter.yaml"  # replays not in ~
    config.write_text(f"replay_dir: {json.dumps(str(out))}\n")
    command = [sys.executable, "-m", "cookiecutter", str(ROOT), "--config-file", str(config)]
    command += ["--no-input", "-o", str(out), "_run_smoke_test=false"]
    subprocess.run([*command, f"_num_samples={num_samples}"], check=True, capture_output=True)
    return out / "my_pytorch_project"


def stop_once(project: Path, name: str) -> dict:
    """One run, stopped by SIGTERM inside its second epoch; what it took and where it stopped."""
    command = [sys.executable, "pytorch_script.py", "--max-epochs", "1000", "--run-name", name]
    command += ["--num-workers", "2", "--no-tensorboard"]
    run = subprocess.Popen(
        command, cwd=project, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    for line in run.stdout:
        if line.startswith("epoch 1/"):
            epoch_time = float(re.search(r"\(([\d.]+) s\)", line)[1])
            break
    time.sleep(random.uniform(0, epoch_time))
    sent, sent_wall = time.perf_counter(), time.time()
    run.send_signal(signal.SIGTERM)
    err = run.communicate()[1]
    exited = time.perf_counter() - sent
    stopped = STOPPED.search(err)
    if run.returncode != 75 or not stopped:
        raise SystemExit(f"the run exited {run.returncode}, not 75:\n{err}")
    saved = (project / "runs" / name / "last.pt").stat().st_mtime - sent_wall
    return {"exit": exited, "saved": saved, "epoch_time": epoch_time, "batch": int(stopped[1] or 0)}


def save_time(project: Path, name: str, repeats: int = 5) -> tuple[float, float]:
    """Seconds per save of the run's last.pt as the run saves it (atomic, fsync), and its MB."""
    code = (
        "import sys, time, torch\n"
        "from plumbing.checkpoints import save\n"
        "path = sys.argv[1]\n"
        "checkpoint = torch.load(path, weights_only=True)\n"
        "times = []\n"
        f"for _ in range({repeats}):\n"
        "    start = time.perf_counter(); save(checkpoint, __import__('pathlib').Path(path))\n"
        "    times.append(time.perf_counter() - start)\n"
        "print(sorted(times)[len(times) // 2])\n"
    )
    path = project / "runs" / name / "last.pt"
    out = subprocess.run([sys.executable, "-c", code, str(path)], cwd=project, check=True,
                         capture_output=True, text=True).stdout  # fmt: skip
    return float(out), path.stat().st_size / 2**20


VOTE = """
import os, statistics, sys, time
import torch, torch.distributed as dist
from plumbing.preemption import StopSignals, VOTE_EVERY

dist.init_process_group("gloo")
gradients = torch.zeros(2**18)  # 1 MB, averaged each step as DDP does


def step():  # some compute, then the gradients averaged: a small model's step on the CPU
    x = torch.randn(256, 256)
    for _ in range(8):
        x = x @ x.T / 256
    dist.all_reduce(gradients)


cases = {"step": None, "vote every batch": 1, f"vote every {VOTE_EVERY}": VOTE_EVERY}
times = {case: [] for case in cases}
for block in range(40):
    for case, every in cases.items():
        stop = StopSignals(every) if every else None
        start = time.perf_counter()
        for _ in range(20):
            step()
            if stop:
                stop.requested()
        times[case].append((time.perf_counter() - start) / 20)
        if stop:
            stop.agreed()
            stop.close()
if dist.get_rank() == 0:
    print(" ".join(f"{statistics.median(t)}" for t in times.values()))
dist.destroy_process_group()
"""


def vote_cost(project: Path) -> list[float]:
    """Median seconds per step: alone, voting after every batch, voting as training does."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc-per-node=2", "--no-python", sys.executable, "-c", VOTE]
    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(project)}
    out = subprocess.run(command, cwd=project, env=env, check=True, capture_output=True, text=True)
    return [float(x) for x in out.stdout.split()[-3:]]


def line(name: str, values: list[float], unit: str = "s") -> str:
    return (
        f"{name:<48} {statistics.median(values):8.3f} {unit}"
        f"  ({min(values):.3f} to {max(values):.3f})"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="signals, each to a new run")
    parser.add_argument("--num-samples", type=int, default=5000, help="samples of the project")
    args = parser.parse_args(argv)

    project = bake(args.num_samples)
    stops = [stop_once(project, f"r{i}") for i in range(args.repeats)]
    batches = -(-int(args.num_samples * 0.8) // 64)  # of the default 64 in an epoch
    batch = [s["epoch_time"] / batches for s in stops]  # validation included: an upper bound
    save, size = save_time(project, "r0")
    lost = [s["batch"] * b for s, b in zip(stops, batch, strict=True)]
    print(f"{args.num_samples} samples of 3x32x32, batch size 64, 2 workers, {batches} batches"
          f" an epoch; {args.repeats} runs, each sent SIGTERM inside its second epoch")  # fmt: skip
    print(line("SIGTERM to last.pt saved", [s["saved"] for s in stops]))
    print(line("SIGTERM to exit", [s["exit"] for s in stops]))
    print(line("one epoch (training and validation)", [s["epoch_time"] for s in stops]))
    print(line("one batch (an epoch / its batches)", batch))
    print(f"{'one save of last.pt (' + format(size, '.1f') + ' MB)':<48} {save:8.3f} s")
    print(line("training lost now", [0.0] * len(stops)) + "  (it goes on from the batch)")
    print(line("lost with a checkpoint per epoch only", lost) + "  (the epoch so far)")
    print(
        f"{'batches into the epoch at the signal':<48} "
        f"{statistics.median(s['batch'] for s in stops):8.0f}    of {batches}"
    )
    step, every_batch, every_n = vote_cost(project)
    print(
        f"torchrun, 2 ranks, a step of 8 matmuls and 1 MB all_reduce: {step * 1e6:.0f} us; the vote"
    )
    for name, voted in (("after every batch", every_batch), ("as training votes", every_n)):
        print(f"  {name:<20} {(voted - step) * 1e6:+6.0f} us a batch ({voted / step:.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
