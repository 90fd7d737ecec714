"""pytorch_script.py as it stands, on a few of your samples: it learns one batch; a run stopped
by SIGTERM inside an epoch and resumed ends bit for bit as one never stopped, every entry of
its state included; and --dry-run checks the whole run in seconds."""

import csv
from pathlib import Path

import pytest
import torch

import pytorch_script
from conftest import SignalledAfter, few, train
from plumbing.data import load_partition


def rows(run_dir: Path) -> list[dict[str, float]]:
    """metrics.csv's rows, but data_wait, a measured time."""
    with open(run_dir / "metrics.csv", newline="", encoding="utf-8") as f:
        return [
            {k: float(v) for k, v in row.items() if k != "data_wait"} for row in csv.DictReader(f)
        ]


def same(a: object, b: object) -> bool:
    """Equal, tensors bit for bit, in dicts and lists all the way down."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(map(same, a, b))
    return a == b


def test_a_few_steps_on_one_batch_lower_the_loss(
    data_dir: Path, index: tuple, tmp_path: Path
) -> None:
    """Your model, loss and optimizer, on one batch of 16 samples, 4 times an epoch (so that
    each epoch steps, with gradients accumulated over up to 4 batches): its training loss
    falls (the overfit-one-batch check)."""
    _, _, num_classes = index
    data = few(data_dir, tmp_path / "data", 16, 8, copies=4)
    batch_size = str(len(load_partition(data)[0]["train"]) // 4)  # each batch: the same 16
    flags = ["--batch-size", batch_size, "--no-shuffle", "--max-epochs", "8"]
    flags += ["--run-name", "one-batch"]
    assert train(data, tmp_path / "runs", num_classes, *flags) == 0
    losses = [row["train_loss"] for row in rows(tmp_path / "runs" / "one-batch")]
    assert losses[-1] < losses[0], f"8 steps on one batch: train_loss {losses}"


def test_a_run_stopped_inside_an_epoch_resumes_bit_for_bit(
    data_dir: Path, index: tuple, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, _, num_classes = index
    data = few(data_dir, tmp_path / "data", 32, 8)
    batch_size = max(2, len(load_partition(data)[0]["train"]) // 4)  # 4 batches an epoch
    runs_dir = tmp_path / "runs"
    flags = ["--batch-size", str(batch_size), "--max-epochs", "2"]
    assert train(data, runs_dir, num_classes, *flags, "--run-name", "whole") == 0

    def stopped_in_epoch_1(model: object, batches: object, *rest: object) -> object:
        if batches.epoch == 1:
            batches = SignalledAfter(batches, number=2)
        return original(model, batches, *rest)

    original = pytorch_script.train
    with monkeypatch.context() as patch:
        patch.setattr(pytorch_script, "train", stopped_in_epoch_1)
        assert train(data, runs_dir, num_classes, *flags, "--run-name", "halves") == 75
    halves = torch.load(runs_dir / "halves" / "last.pt", weights_only=True)
    assert (halves["epoch"], halves["inside"]["batches"]) == (0, 2)

    # As a requeued job goes on: --resume alone takes the run's own settings (its batch size,
    # its epochs), saved with last.pt even though no epoch ended.
    resume = ["--device", "cpu", "--runs-dir", str(runs_dir), "--resume", "halves"]
    assert pytorch_script.main(resume) == 0
    whole, halves = (
        torch.load(runs_dir / name / "last.pt", weights_only=True) for name in ("whole", "halves")
    )
    for key in [*whole["state"], "grads", "rng", "epoch", "best_score"]:
        assert same(whole[key], halves[key]), f"after a resume, {key!r} differs"
    assert rows(runs_dir / "whole") == rows(runs_dir / "halves")


def test_dry_run_checks_the_whole_run_and_writes_nothing(data_dir: Path, tmp_path: Path) -> None:
    """Your defaults (workers, batch size, data format), one epoch of two batches per split."""
    runs_dir = tmp_path / "runs"
    argv = ["--device", "cpu", "--data-dir", str(data_dir), "--runs-dir", str(runs_dir)]
    argv += ["--dry-run", "--no-tensorboard", "--tracker", "none"]
    assert pytorch_script.main(argv) == 0
    assert not runs_dir.exists()
