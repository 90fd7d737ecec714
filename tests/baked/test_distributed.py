"""torchrun on the CPU: two processes, gloo, as on two GPUs with NCCL."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import pack_data
import pytest
import pytorch_script
import torch
from make_sample_data import make_sample_data
from my_classes import Dataset, build_model
from plumbing import cli, loader
from plumbing.data import load_partition

from baked.helpers import GLOO_ABORT_AT_EXIT, snapshot, train

PROJECT = Path(pytorch_script.__file__).parent


def torchrun(
    *args: str, script: Path = PROJECT / "pytorch_script.py"
) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    command += [str(script), "--device", "cpu", "--no-tensorboard", "--tracker", "none", *args]
    return subprocess.run(command, cwd=PROJECT, capture_output=True, text=True, timeout=300)


# torch 2.13's gloo (the CPU's backend) sometimes aborts a rank at interpreter exit, after the
# run has ended and written everything: SIGABRT, "terminate called without an active exception",
# about one launch in ten on a loaded 2-core machine (README). That exit alone is not this
# project's failure; what the run printed and wrote is checked in full either way.


def ended(result: subprocess.CompletedProcess) -> bool:
    return result.returncode == 0 or GLOO_ABORT_AT_EXIT in result.stderr


@pytest.fixture
def odd_data(tmp_path: Path) -> Path:
    """75 validation samples: one rank gets a padded repeat that must not count."""
    data_dir = tmp_path / "data"
    make_sample_data(
        data_dir, num_samples=250, shape=(1, 8, 8), num_classes=4, validation_fraction=0.3
    )
    return data_dir


def measured_directly(model: torch.nn.Module, dataset: Dataset) -> tuple[float, float]:
    """The mean loss and the accuracy of model over every sample of dataset, in one batch."""
    X = torch.stack([dataset[i][0] for i in range(len(dataset))]).float()
    y = torch.tensor([dataset[i][1] for i in range(len(dataset))])
    model.eval()
    with torch.no_grad():
        outputs = model(X)
    loss = torch.nn.functional.cross_entropy(outputs, y).item()
    return loss, (outputs.argmax(dim=1) == y).float().mean().item()


@pytest.mark.slow
def test_two_ranks_learn_and_report_what_one_process_measures(
    odd_data: Path, tmp_path: Path
) -> None:
    runs_dir = tmp_path / "runs"
    # An earlier run: the README's torchrun command, after it, starts a run of its own beside it.
    assert train(odd_data, runs_dir / "run-1", "--max-epochs", "1", "--num-workers", "0") == 0
    earlier = snapshot(runs_dir / "run-1")
    result = torchrun(
        "--data-dir", str(odd_data), "--runs-dir", str(runs_dir), "--max-epochs", "4",
        "--num-workers", "1", "--batch-size", "16",
    )  # fmt: skip
    assert ended(result), result.stdout + result.stderr
    assert result.stdout.count("epoch 4/4") == 1, "only rank 0 prints"
    assert "on each of 2 ranks" in result.stdout
    run_dir = runs_dir / "run-2"  # one run directory, named by rank 0, written by rank 0
    assert sorted(p.name for p in runs_dir.iterdir()) == ["run-1", "run-2"]
    assert snapshot(runs_dir / "run-1") == earlier
    assert sorted(p.name for p in run_dir.iterdir()) == [
        "best.pt", "last.pt", "metrics.csv", "settings.json",
    ]  # fmt: skip
    with open(run_dir / "metrics.csv") as f:
        rows = [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]
    checkpoint = torch.load(run_dir / "last.pt", weights_only=True)
    accuracy = rows[-1]["val_accuracy"]
    assert len(rows) == 4 and accuracy >= 0.8, (
        f"{checkpoint['model_class']} trained 4 epochs on 2 ranks: {len(rows)} rows,"
        f" val_accuracy {accuracy:.3f}, expected >= 0.8 (chance is 0.25)"
    )

    # And --resume of it, as a requeued job: rank 0 chooses, every rank goes on.
    resumed = torchrun(
        "--data-dir", str(odd_data), "--runs-dir", str(runs_dir), "--max-epochs", "5",
        "--num-workers", "0", "--batch-size", "16", "--resume", "run-2",
    )  # fmt: skip
    assert ended(resumed), resumed.stdout + resumed.stderr
    assert resumed.stdout.count(f"resuming {run_dir} after epoch 4") == 1
    assert torch.load(run_dir / "last.pt", weights_only=True)["epoch"] == 5

    # One process, the same weights, every validation sample once.
    partition, labels = load_partition(odd_data)
    model = build_model(tuple(checkpoint["input_shape"]), checkpoint["num_classes"])
    model.load_state_dict(checkpoint["model"])
    validation_set = Dataset(partition["validation"], labels, odd_data)
    assert len(validation_set) == 75
    val_loss, val_accuracy = measured_directly(model, validation_set)
    assert rows[-1]["val_loss"] == pytest.approx(val_loss, abs=2e-6)
    assert rows[-1]["val_accuracy"] == pytest.approx(val_accuracy, abs=2e-6)


@pytest.mark.slow
def test_one_failing_rank_fails_the_whole_job(odd_data: Path, tmp_path: Path) -> None:
    partition, _ = load_partition(odd_data)
    # Without shuffling, rank 1 reads the samples at odd positions: only it fails.
    (odd_data / f"{partition['train'][101]}.pt").unlink()
    result = torchrun(
        "--data-dir", str(odd_data), "--runs-dir", str(tmp_path / "runs"), "--no-shuffle",
        "--num-workers", "0",
    )  # fmt: skip
    assert result.returncode != 0
    missing = f"error (rank 1): sample '{partition['train'][101]}': "
    assert missing in result.stderr and ".pt not found" in result.stderr
    assert result.stderr.count("error (rank") == 1, "rank 0 had nothing to complain about"
    assert not (tmp_path / "runs").exists()  # no epoch finished: no run to resume


# pytorch_script.py, with each call of the functions that read the index or stat sample files
# counted per rank (a file per function and rank), and no sample file compared at start.
COUNTED = """
import os, sys
sys.path.insert(0, PROJECT)
from plumbing import data, packed
packed.START_CHECKS = 0

def counted(function, name):
    def call(*args, **kwargs):
        with open(os.path.join(LOG, name + "-" + os.environ["RANK"]), "a") as f:
            f.write("x")
        return function(*args, **kwargs)
    return call

data.plain_index = counted(data.plain_index, "index")
packed.file_times = counted(packed.file_times, "stat")
import pytorch_script
sys.exit(pytorch_script.main())
"""


@pytest.mark.slow
def test_rank_0_alone_reads_the_index_and_checks_the_pack(odd_data: Path, tmp_path: Path) -> None:
    """Under torchrun, partition.json, labels.json and the pack's sample files are read by rank
    0, which shares what it found; a file changed after packing stops every rank before any
    checkpoint."""
    assert pack_data.main(["--data-dir", str(odd_data)]) == 0
    log = tmp_path / "calls"
    log.mkdir()
    script = tmp_path / "counted.py"
    script.write_text(f"PROJECT, LOG = {str(PROJECT)!r}, {str(log)!r}\n" + COUNTED)
    flags = ["--data-dir", str(odd_data), "--data-format", "packed", "--num-workers", "0"]

    result = torchrun(
        *flags, "--runs-dir", str(tmp_path / "runs"), "--max-epochs", "1", script=script
    )
    assert ended(result), result.stderr
    assert sorted(p.name for p in log.iterdir()) == ["index-0", "stat-0"]

    partition, _ = load_partition(odd_data)
    torch.save(torch.ones(1, 8, 8), odd_data / f"{partition['train'][-1]}.pt")
    result = torchrun(
        *flags, "--runs-dir", str(tmp_path / "later"), "--max-epochs", "1", script=script
    )
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("error")]
    assert len(errors) == 1, result.stderr  # found by rank 0, for all
    assert errors[0].startswith(f"error: {odd_data / 'packed'} was packed from other files")
    assert "changed since): run `python pack_data.py" in errors[0]
    assert not (tmp_path / "later").exists()  # no checkpoint, no run directory


@pytest.mark.slow
def test_nan_samples_stop_every_rank_in_one_line(odd_data: Path, tmp_path: Path) -> None:
    partition, _ = load_partition(odd_data)
    for ID in partition["train"][:40:7]:
        X = torch.load(odd_data / f"{ID}.pt", weights_only=True)
        X[0, 0, 0] = float("inf")
        torch.save(X, odd_data / f"{ID}.pt")
    result = torchrun(
        "--data-dir", str(odd_data), "--runs-dir", str(tmp_path / "runs"), "--num-workers", "0",
    )  # fmt: skip
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("error")]
    assert len(errors) == 1, result.stderr
    assert errors[0].startswith("error: the training loss became NaN or infinite in epoch 1,")
    assert " of its samples hold NaN or infinite values ('id-" in errors[0]
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_a_label_typed_wrong_is_one_line_from_rank_0(odd_data: Path, tmp_path: Path) -> None:
    labels = json.loads((odd_data / "labels.json").read_text(encoding="utf-8"))
    ID = next(iter(labels))
    (odd_data / "labels.json").write_text(json.dumps(labels | {ID: 2**20}), encoding="utf-8")
    result = torchrun("--data-dir", str(odd_data), "--runs-dir", str(tmp_path / "runs"))
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("error")]
    assert errors == [
        f"error: {odd_data / 'labels.json'}: the label of {ID!r} is 1048576, but only 5 different"
        " labels are in use: correct it, or pass --num-classes 1048577 to train with that many"
        " classes anyway"
    ], result.stderr


def test_ranks_share_the_data_and_the_order_changes_every_epoch(
    tiny_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    partition, labels = load_partition(tiny_data)
    training_set = Dataset(partition["train"], labels, tiny_data)
    orders = {}
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        sampler = loader.EpochSampler(training_set, shuffle=True, seed=0)
        for epoch in (1, 2):
            sampler.set_epoch(epoch)
            assert int(sampler.shared_epoch) == epoch  # what the workers seed themselves from
            orders[rank, epoch] = list(sampler)
    for epoch in (1, 2):
        shares = orders[0, epoch] + orders[1, epoch]
        assert sorted(shares) == list(range(len(training_set)))  # 192: no padding needed
    assert orders[0, 1] != orders[0, 2] and orders[1, 1] != orders[1, 2]


class OnTheCPU:
    """A validation pass's batches as plumbing.training.Pass gives them (float32, on the
    device), for validate() alone."""

    device = torch.device("cpu")

    def __init__(self, generator: torch.utils.data.DataLoader) -> None:
        self.generator = generator

    def __iter__(self):  # noqa: ANN204
        return ((X.float(), y) for X, y in self.generator)

    def autocast(self) -> torch.autocast:
        return torch.autocast("cpu", enabled=False)


def test_validation_counts_every_sample_once_whatever_the_padding(
    odd_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """75 samples on 2 ranks: 38 and 37, validation's sampler padding neither (training's
    would repeat one). Each rank's result, weighted by its share, is what one process
    measures."""
    partition, labels = load_partition(odd_data)
    validation_set = Dataset(partition["validation"], labels, odd_data)
    torch.manual_seed(0)
    model = build_model((1, 8, 8), num_classes=4)
    settings = cli.training_settings(["--device", "cpu", "--num-workers", "0"], "")
    params = {"batch_size": 16, "shuffle": False, "num_workers": 0}

    def validate() -> tuple[float, float, int]:
        generator = loader.make(validation_set, params, settings, torch.device("cpu"))
        generator.sampler.even = False  # as the run makes validation's (plumbing/training.py)
        share = len(generator.sampler)
        loss, accuracy = pytorch_script.validate(
            model, OnTheCPU(generator), torch.nn.CrossEntropyLoss()
        )
        return loss, accuracy, share

    whole = validate()
    per_rank = []
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        per_rank.append(validate())
    assert [share for *_, share in per_rank] == [38, 37] and whole[2] == 75
    for i in (0, 1):  # the loss, then the accuracy
        combined = sum(result[i] * share for *result, share in per_rank) / 75
        assert combined == pytest.approx(whole[i], abs=1e-6)
    assert whole[:2] == pytest.approx(measured_directly(model, validation_set), abs=1e-6)


@pytest.mark.slow
def test_a_validation_split_smaller_than_the_ranks_is_one_line(tmp_path: Path) -> None:
    """A rank with nothing to validate would miss the broadcast of BatchNorm's buffers that
    DistributedDataParallel makes at validation's first forward pass: refused before training."""
    data_dir = tmp_path / "data"
    make_sample_data(
        data_dir, num_samples=65, shape=(1, 8, 8), num_classes=4, validation_fraction=0.01
    )
    runs = ["--runs-dir", str(tmp_path / "runs"), "--batch-size", "8"]
    result = torchrun("--data-dir", str(data_dir), *runs)
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("error")]
    assert errors == [
        f"error: {data_dir}: the validation split holds 1 samples, fewer than the 2 ranks: add"
        " samples to it, or start fewer processes"
    ], result.stderr
    assert not (tmp_path / "runs").exists()
