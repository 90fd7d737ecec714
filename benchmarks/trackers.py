"""What --tracker mlflow and --tracker wandb (offline) cost a run, against --tracker none.

    python benchmarks/trackers.py               # 5 repeats of each
    python benchmarks/trackers.py --repeats 9

A project is baked with its sample data (1,000 samples of 3x32x32). For each tracker, in a new
Python each time: the start (importing the package and opening its run, as pytorch_script.py
does before training, once torch is imported; MLflow's first start in a new runs directory also
creates its store), one epoch's logging (the median of 100), and the end of the run. Then whole
runs of 3 epochs with 2 workers, launch to exit, as a user times them. Medians, with the range
in brackets.
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

# Run in the project: open a tracker as pytorch_script.py does, log 100 epochs, end the run.
MEASURE = """
import json, sys, time
import torch
from plumbing import cli, facts, trackers  # and torch, which a run has imported by then
started = time.perf_counter()
settings = cli.training_settings(sys.argv[2:], "")
run_dir = settings.runs_dir / settings.run_name
run_dir.mkdir(parents=True)
found = facts.Facts(torch.device("cpu"), (3, 32, 32), 10, "0" * 16, run_dir)
tracker = trackers.start(settings, found, lambda line: None)
opened = time.perf_counter()
row = {"train_loss": 0.5, "val_loss": 0.4, "val_accuracy": 0.9, "lr": 0.001, "data_wait": 0.1}
epochs = []
for epoch in range(1, 101):
    t = time.perf_counter()
    tracker.log(epoch, row)
    epochs.append(time.perf_counter() - t)
t = time.perf_counter()
tracker.close("finished")
print(json.dumps([opened - started, sorted(epochs)[50], time.perf_counter() - t]))
"""


def bake() -> Path:
    out = Path(tempfile.mkdtemp())
    config = out / "cookiecutter.yaml"  # replays not in ~
    config.write_text(f"replay_dir: {json.dumps(str(out))}\n")
    command = [sys.executable, "-m", "cookiecutter", str(ROOT), "--config-file", str(config)]
    command += ["--no-input", "-o", str(out), "_run_smoke_test=false"]
    subprocess.run(command, check=True, capture_output=True)
    return out / "my_pytorch_project"


def environment(project: Path) -> dict[str, str]:
    """No tracker of this machine: W&B offline, its own files in the project."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "WANDB_"))}
    env |= {f"WANDB_{d}_DIR": str(project / "wandb-home") for d in ("CONFIG", "CACHE", "DATA")}
    return env | {"NETRC": str(project / "no-netrc")}


def parts(project: Path, tracker: str, runs_dir: Path, name: str) -> list[float]:
    command = [sys.executable, "-c", MEASURE, "--", "--tracker", tracker]
    command += ["--runs-dir", str(runs_dir), "--run-name", name]
    result = subprocess.run(
        command, cwd=project, env=environment(project), capture_output=True, text=True, check=True
    )
    return json.loads(result.stdout.splitlines()[-1])


def whole_run(project: Path, tracker: str, name: str, epochs: int) -> float:
    command = [sys.executable, "pytorch_script.py", "--tracker", tracker, "--run-name", name]
    command += ["--max-epochs", str(epochs), "--num-workers", "2", "--no-tensorboard"]
    started = time.perf_counter()
    subprocess.run(command, cwd=project, env=environment(project), check=True, capture_output=True)
    return time.perf_counter() - started


def shown(values: list[float], unit: float = 1.0, digits: int = 2) -> str:
    values = [v * unit for v in values]
    low, middle, high = (f"{f(values):.{digits}f}" for f in (min, statistics.median, max))
    return f"{middle} [{low}-{high}]"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5, help="measurements of each")
    p.add_argument("--epochs", type=int, default=3, help="of each whole run")
    args = p.parse_args(argv)
    project = bake()
    print(f"{args.repeats} repeats each, in {project}\n")
    print(f"{'tracker':<26} {'start, s':>18} {'one epoch, ms':>18} {'end, s':>18}")
    for tracker, label in [("mlflow", "mlflow, new store"), ("mlflow", "mlflow, existing store"),
                           ("wandb", "wandb, offline")]:  # fmt: skip
        measured = []
        if "existing" in label:  # made once, not measured
            parts(project, tracker, project / "bench", "warm-up")
        for i in range(args.repeats):
            runs_dir = project / "bench" / f"{label}-{i}" if "new" in label else project / "bench"
            measured.append(parts(project, tracker, runs_dir, f"{label}-{i}".replace(" ", "")))
        start, epoch, end = zip(*measured, strict=True)
        print(f"{label:<26} {shown(start):>18} {shown(epoch, 1000):>18} {shown(end):>18}")

    print(f"\nwhole runs: {args.epochs} epochs, 2 workers, launch to exit")
    baseline = None
    for tracker in ("none", "mlflow", "wandb"):
        names = [f"{tracker}-{i}" for i in range(args.repeats)]
        times = [whole_run(project, tracker, name, args.epochs) for name in names]
        baseline = baseline or statistics.median(times)
        ratio = statistics.median(times) / baseline
        print(f"  --tracker {tracker:<8} {shown(times)} s   {ratio:.2f}x the time without")
    return 0


if __name__ == "__main__":
    sys.exit(main())
