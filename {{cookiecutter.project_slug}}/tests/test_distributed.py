"""torchrun on the CPU: two processes, gloo, as on two GPUs with NCCL."""

import csv
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import pytorch_script
from make_sample_data import make_sample_data
from my_classes import Dataset, Net, load_partition

PROJECT = Path(pytorch_script.__file__).parent


def torchrun(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    command += ["pytorch_script.py", "--device", "cpu", *args]
    return subprocess.run(command, cwd=PROJECT, capture_output=True, text=True, timeout=300)


@pytest.fixture
def odd_data(tmp_path: Path) -> Path:
    """75 validation samples: one rank gets a padded repeat that must not count."""
    data_dir = tmp_path / "data"
    make_sample_data(
        data_dir, num_samples=250, shape=(1, 8, 8), num_classes=4, validation_fraction=0.3
    )
    return data_dir


@pytest.mark.slow
def test_two_ranks_learn_and_report_what_one_process_measures(
    odd_data: Path, tmp_path: Path
) -> None:
    metrics_csv, checkpoints = tmp_path / "m.csv", tmp_path / "checkpoints"
    result = torchrun(
        "--data-dir", str(odd_data), "--metrics-csv", str(metrics_csv),
        "--checkpoint-dir", str(checkpoints), "--max-epochs", "4", "--num-workers", "1",
        "--batch-size", "16",
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("epoch 4/4") == 1, "only rank 0 prints"
    assert "on each of 2 ranks" in result.stdout
    with open(metrics_csv) as f:
        rows = [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]
    assert len(rows) == 4 and rows[-1]["val_accuracy"] >= 0.8  # chance is 0.25

    # One process, the same weights, every validation sample once.
    partition, labels = load_partition(odd_data)
    model = Net((1, 8, 8), num_classes=4)
    model.load_state_dict(torch.load(checkpoints / "last.pt", weights_only=True)["model"])
    validation_set = Dataset(partition["validation"], labels, odd_data)
    sampler = torch.utils.data.DistributedSampler(validation_set, 1, 0, shuffle=False)
    loader = torch.utils.data.DataLoader(validation_set, batch_size=16, sampler=sampler)
    loss_sum, num_correct, num_samples = pytorch_script.validate(
        model, loader, torch.nn.CrossEntropyLoss(), False, torch.device("cpu")
    )
    assert num_samples == 75
    assert rows[-1]["val_loss"] == pytest.approx(loss_sum / num_samples, abs=2e-6)
    assert rows[-1]["val_accuracy"] == pytest.approx(num_correct / num_samples, abs=2e-6)


@pytest.mark.slow
def test_one_failing_rank_fails_the_whole_job(odd_data: Path, tmp_path: Path) -> None:
    partition, _ = load_partition(odd_data)
    # Without shuffling, rank 1 reads the samples at odd positions: only it fails.
    (odd_data / f"{partition['train'][101]}.pt").unlink()
    result = torchrun(
        "--data-dir", str(odd_data), "--metrics-csv", str(tmp_path / "m.csv"), "--no-shuffle",
        "--checkpoint-dir", str(tmp_path / "checkpoints"), "--num-workers", "0",
    )  # fmt: skip
    assert result.returncode != 0
    missing = f"error (rank 1): sample '{partition['train'][101]}': "
    assert missing in result.stderr and ".pt not found" in result.stderr
    assert result.stderr.count("error (rank") == 1, "rank 0 had nothing to complain about"


def test_ranks_share_the_data_and_the_order_changes_every_epoch(
    tiny_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    partition, labels = load_partition(tiny_data)
    training_set = Dataset(partition["train"], labels, tiny_data)
    orders = {}
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        sampler, _ = pytorch_script.samplers(training_set, training_set, True, seed=0)
        for epoch in (1, 2):
            sampler.set_epoch(epoch)
            orders[rank, epoch] = list(sampler)
    for epoch in (1, 2):
        shares = orders[0, epoch] + orders[1, epoch]
        assert sorted(shares) == list(range(len(training_set)))  # 192: no padding needed
    assert orders[0, 1] != orders[0, 2] and orders[1, 1] != orders[1, 2]
