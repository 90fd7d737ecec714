import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import my_classes
import pytorch_script
from conftest import train
from my_classes import load_partition


def read_metrics(path: Path) -> list[dict[str, float]]:
    with open(path, newline="") as f:
        return [{key: float(value) for key, value in row.items()} for row in csv.DictReader(f)]


def record_loads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The IDs loaded from now on, in order (with 0 workers: loads happen in this process)."""
    loaded: list[str] = []
    load = my_classes.load_sample

    def recording_load(path: Path, ID: str) -> torch.Tensor:
        loaded.append(ID)
        return load(path, ID)

    monkeypatch.setattr(my_classes, "load_sample", recording_load)
    return loaded


def test_training_learns(
    tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    metrics_csv = tmp_path / "runs" / "metrics.csv"
    flags = ["--num-workers", "0", "--max-epochs", "8", "--batch-size", "16"]
    assert train(tiny_data, metrics_csv, *flags) == 0

    rows = read_metrics(metrics_csv)
    assert [row["epoch"] for row in rows] == list(range(1, 9))
    assert rows[-1]["train_loss"] < rows[0]["train_loss"] / 2
    assert rows[-1]["val_loss"] < rows[0]["val_loss"]
    assert rows[-1]["val_accuracy"] >= 0.8  # chance is 0.25
    out = capsys.readouterr().out
    assert "epoch 8/8  train_loss" in out and "192 train and 64 validation samples" in out
    assert metrics_csv.read_bytes().count(b"\r") == 0


def test_dry_run_loads_two_batches_per_split(
    tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loaded = record_loads(monkeypatch)
    flags = ["--dry-run", "--num-workers", "0", "--batch-size", "8", "--max-epochs", "50"]
    assert train(tiny_data, tmp_path / "m.csv", *flags) == 0
    assert len(read_metrics(tmp_path / "m.csv")) == 1
    # The first sample of each split (shape and dtype check), the model's input shape, then
    # two batches of training and two of validation.
    assert len(loaded) == 3 + 2 * 8 + 2 * 8


def test_dry_run_with_workers(tiny_data: Path, tmp_path: Path) -> None:
    flags = ["--dry-run", "--num-workers", "2", "--batch-size", "8"]
    assert train(tiny_data, tmp_path / "m.csv", *flags) == 0
    rows = read_metrics(tmp_path / "m.csv")
    assert len(rows) == 1 and 0 <= rows[0]["val_accuracy"] <= 1


@pytest.mark.parametrize("shuffle", ["--shuffle", "--no-shuffle"])
def test_shuffle_decides_the_training_order_validation_is_never_shuffled(
    tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, shuffle: str
) -> None:
    partition, _ = load_partition(tiny_data)
    loaded = record_loads(monkeypatch)
    flags = ["--num-workers", "0", "--batch-size", "64", "--max-epochs", "2", shuffle]
    assert train(tiny_data, tmp_path / "m.csv", *flags) == 0

    loaded = loaded[3:]  # after the two first samples and the input shape
    train_order, validation_order = partition["train"], partition["validation"]
    epochs = [loaded[:192], loaded[256 : 256 + 192]]
    assert all(sorted(epoch) == sorted(train_order) for epoch in epochs)
    if shuffle == "--shuffle":
        assert epochs[0] != train_order and epochs[1] != train_order and epochs[0] != epochs[1]
    else:
        assert epochs == [train_order, train_order]
    assert loaded[192:256] == loaded[448:] == validation_order


@pytest.mark.parametrize("num_workers", ["0", "2"])
def test_same_seed_same_run(tiny_data: Path, tmp_path: Path, num_workers: str) -> None:
    runs = []
    for name in ["a", "b"]:
        flags = ["--max-epochs", "2", "--num-workers", num_workers, "--seed", "3"]
        assert train(tiny_data, tmp_path / f"{name}.csv", *flags) == 0
        runs.append((tmp_path / f"{name}.csv").read_text())
    assert runs[0] == runs[1]


def test_no_data_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert train(tmp_path / "nowhere", tmp_path / "m.csv", "--dry-run") == 1
    err = capsys.readouterr().err
    assert "nowhere/partition.json not found: pass --data-dir, run `python make_sample_data" in err


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float64, torch.int32])
def test_samples_of_any_number_dtype_train(tmp_path: Path, dtype: torch.dtype) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    labels = {f"s{i}": i % 2 for i in range(32)}
    for ID, label in labels.items():
        torch.save((torch.rand(3, 4, 4) * 100 + 50 * label).to(dtype), data_dir / f"{ID}.pt")
    IDs = list(labels)
    partition = {"train": IDs[:24], "validation": IDs[24:]}
    (data_dir / "partition.json").write_text(json.dumps(partition))
    (data_dir / "labels.json").write_text(json.dumps(labels))
    flags = ["--max-epochs", "2", "--num-workers", "0", "--batch-size", "8"]
    assert train(data_dir, tmp_path / "m.csv", *flags) == 0


def test_flags_override_the_defaults() -> None:
    args = pytorch_script.parse_args(["--batch-size", "8", "--no-shuffle", "--num-workers", "0"])
    assert (args.batch_size, args.shuffle, args.num_workers) == (8, False, 0)
    assert args.device.type in ("cpu", "cuda", "mps", "xpu")


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (["--batch-size", "0"], "argument --batch-size: 0 is not a positive integer"),
        (["--num-workers", "-1"], "argument --num-workers: -1 is negative"),
        (["--max-epochs", "0"], "argument --max-epochs: 0 is not a positive integer"),
        (["--lr", "-1"], "argument --lr: -1 is not a positive number"),
        (["--device", "gpu"], "argument --device: 'gpu' is not a device"),
        (["--device", "meta"], "argument --device: 'meta': torch "),
    ],
)
def test_bad_flags_exit_with_usage(
    bad: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        pytorch_script.parse_args(bad)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("start_method", ["spawn", "forkserver"])
def test_workers_started_with_spawn_or_forkserver_train(
    tiny_data: Path, tmp_path: Path, start_method: str
) -> None:
    """The defaults of macOS and Windows (spawn) and of Linux from Python 3.14 (forkserver)."""
    code = (
        "import sys, torch.multiprocessing as mp, pytorch_script\n"
        f"mp.set_start_method({start_method!r})\n"
        "sys.exit(pytorch_script.main(sys.argv[1:]))\n"
    )
    argv = [
        "--device",
        "cpu",
        "--data-dir",
        str(tiny_data),
        "--metrics-csv",
        str(tmp_path / "m.csv"),
    ]
    argv += ["--checkpoint-dir", str(tmp_path / "c"), "--num-workers", "2", "--max-epochs", "2"]
    result = subprocess.run(
        [sys.executable, "-c", code, *argv],
        cwd=Path(pytorch_script.__file__).parent, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "epoch 2/2" in result.stdout and "num_workers 2" in result.stdout
