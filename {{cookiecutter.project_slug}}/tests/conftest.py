import csv
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import pytorch_script
from make_sample_data import make_sample_data


def train(data_dir: Path, run_dir: Path, *flags: str) -> int:
    """pytorch_script.py on the CPU (whatever this machine has), as a user runs it, into the
    run directory run_dir (its metrics.csv, last.pt, best.pt), unless flags say otherwise."""
    argv = ["--device", "cpu", "--data-dir", str(data_dir), "--runs-dir", str(run_dir.parent)]
    # Whatever the answers made the defaults: tiny_data has 192 samples to train on, and a test
    # that wants TensorBoard says so.
    argv += ["--batch-size", "32", "--no-tensorboard"]
    if "--run-name" not in flags:
        argv += ["--run-name", run_dir.name]
    return pytorch_script.main([*argv, *flags])


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


@pytest.fixture
def tiny_data(tmp_path: Path) -> Path:
    """256 samples of shape 1x8x8 in 4 classes, in the article's layout; returns their directory."""
    data_dir = tmp_path / "data"
    make_sample_data(
        data_dir, num_samples=256, shape=(1, 8, 8), num_classes=4, validation_fraction=0.25
    )
    return data_dir


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
