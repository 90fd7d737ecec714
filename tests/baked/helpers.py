"""What the baked project's plumbing tests share: its scripts run as a user runs them, in this
process or in a new one, and what they leave to compare."""

import csv
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytorch_script
import torch

from conftest import make_edits  # tests/conftest.py

PROJECT = Path(pytorch_script.__file__).parent
GLOO_ABORT_AT_EXIT = "terminate called without an active exception"  # torch 2.13, gloo, at exit


def train(data_dir: Path, run_dir: Path, *flags: str) -> int:
    """pytorch_script.py on the CPU (whatever this machine has), as a user runs it, into the
    run directory run_dir (its metrics.csv, last.pt, best.pt), unless flags say otherwise."""
    argv = ["--device", "cpu", "--data-dir", str(data_dir), "--runs-dir", str(run_dir.parent)]
    # Whatever the answers made the defaults: tiny_data has 192 samples to train on, and a test
    # that wants TensorBoard or a tracker says so.
    argv += ["--batch-size", "32", "--no-tensorboard", "--tracker", "none"]
    if "--run-name" not in flags:
        argv += ["--run-name", run_dir.name]
    return pytorch_script.main([*argv, *flags])


# What in_one_python runs: each script's main(argv) in turn, its output caught where the process
# writes (file descriptors 1 and 2), so that what its DataLoader workers print is caught too.
MAINS_IN_TURN = """
import importlib, json, os, sys, tempfile

results = []
for script, argv in json.loads(sys.argv[1]):
    main = importlib.import_module(script.removesuffix(".py")).main
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        sys.stdout.flush()
        sys.stderr.flush()
        saved = os.dup(1), os.dup(2)
        os.dup2(out.fileno(), 1)
        os.dup2(err.fileno(), 2)
        try:
            try:
                status = main(argv)
            except SystemExit as exit:
                status = exit.code
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
        out.seek(0)
        err.seek(0)
        results.append([status, out.read(), err.read()])
print(json.dumps(results))
"""


def in_one_python(
    project: Path, *runs: tuple[str, list[str]], through: tuple[str, ...] = ()
) -> list[subprocess.CompletedProcess]:
    """Each (script, argv) of runs, script's main(argv), one after the other in one new Python
    process started in project, which imports torch once for them all (a new process costs
    about 2 s before it trains). For each run, what subprocess.run would give: its exit status,
    its output and that of its DataLoader workers. through: a command that starts the process
    (unshare, say)."""
    command = [*through, sys.executable, "-c", MAINS_IN_TURN, json.dumps(runs)]
    result = subprocess.run(command, cwd=project, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return [
        subprocess.CompletedProcess([script, *argv], status, out, err)
        for (script, argv), (status, out, err) in zip(
            runs, json.loads(result.stdout.splitlines()[-1]), strict=True
        )
    ]


def read_rows(metrics_csv: Path) -> list[dict[str, float]]:
    """The rows of a run's metrics.csv, as numbers (the epoch a whole number)."""
    with open(metrics_csv, newline="", encoding="utf-8") as f:
        rows = [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]
    return [row | {"epoch": int(row["epoch"])} for row in rows]


def snapshot(directory: Path) -> dict[str, tuple[int, int, bytes]]:
    """Every file below directory: inode, modification time and content, so that a file
    rewritten, touched or replaced by another shows."""
    return {
        p.relative_to(directory).as_posix(): (p.stat().st_ino, p.stat().st_mtime_ns, p.read_bytes())
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def kill_half_way(command: list[str], half_way: Callable[[], bool]) -> None:
    """Run a project script and kill it (kill -9, a crash, a lost node) once half_way() holds."""
    process = subprocess.Popen(
        command, cwd=Path(pytorch_script.__file__).parent, stdout=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 120
    while not half_way():
        assert process.poll() is None, "it finished before it could be killed half-way"
        assert time.monotonic() < deadline, "it never got half-way"
        time.sleep(0.02)
    process.kill()
    process.wait()


# A random flip, as a user adds one to random_augmentation.
AUGMENTATION = (
    "my_classes.py",
    '''        E.g. a horizontal flip: `if torch.rand(()) < 0.5: X = X.flip(-1)`."""
        return X''',
    '''        E.g. a horizontal flip: `if torch.rand(()) < 0.5: X = X.flip(-1)`."""
        if torch.rand(()) < 0.5:
            X = X.flip(-1)
        return X''',
)


def edited_project(tmp_path: Path, *edits: tuple[str, str, str]) -> Path:
    """A copy of this project's code with each edit made in its one place."""
    copy = tmp_path / "project"
    shutil.copytree(
        PROJECT, copy, ignore=shutil.ignore_patterns("data", "runs", "tests", "__pycache__", ".*")
    )
    make_edits(copy, edits)
    return copy


def weights(run_dir: Path, name: str = "last.pt") -> dict[str, torch.Tensor]:
    return torch.load(run_dir / name, weights_only=True)["model"]
