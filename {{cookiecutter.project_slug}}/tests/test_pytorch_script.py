import csv
from pathlib import Path

import pytest

import pytorch_script
from my_classes import load_partition


def read_metrics(path: Path) -> list[dict[str, float]]:
    with open(path, newline="") as f:
        return [{key: float(value) for key, value in row.items()} for row in csv.DictReader(f)]


def test_training_learns(
    tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    metrics_csv = tmp_path / "runs" / "metrics.csv"
    argv = ["--data-dir", str(tiny_data), "--metrics-csv", str(metrics_csv), "--num-workers", "0"]
    assert pytorch_script.main([*argv, "--max-epochs", "8", "--batch-size", "16"]) == 0

    rows = read_metrics(metrics_csv)
    assert [row["epoch"] for row in rows] == list(range(1, 9))
    assert rows[-1]["train_loss"] < rows[0]["train_loss"] / 2
    assert rows[-1]["val_loss"] < rows[0]["val_loss"]
    assert rows[-1]["val_accuracy"] >= 0.8  # chance is 0.25
    out = capsys.readouterr().out
    assert "epoch 8/8  train_loss" in out and "192 train and 64 validation samples" in out


def test_dry_run_with_workers(tiny_data: Path, tmp_path: Path) -> None:
    metrics_csv = tmp_path / "metrics.csv"
    argv = ["--data-dir", str(tiny_data), "--metrics-csv", str(metrics_csv), "--dry-run"]
    assert pytorch_script.main([*argv, "--num-workers", "2", "--batch-size", "8"]) == 0
    rows = read_metrics(metrics_csv)
    assert len(rows) == 1 and 0 <= rows[0]["val_accuracy"] <= 1


def test_same_seed_same_run(tiny_data: Path, tmp_path: Path) -> None:
    runs = []
    for name in ["a", "b"]:
        metrics_csv = tmp_path / f"{name}.csv"
        argv = ["--data-dir", str(tiny_data), "--metrics-csv", str(metrics_csv)]
        assert pytorch_script.main([*argv, "--max-epochs", "2", "--num-workers", "2"]) == 0
        runs.append(metrics_csv.read_text())
    assert runs[0] == runs[1]


def test_no_data_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert pytorch_script.main(["--data-dir", str(tmp_path / "nowhere"), "--dry-run"]) == 1
    err = capsys.readouterr().err
    assert "partition.json not found: run `python make_sample_data.py`" in err


@pytest.mark.parametrize("num_workers", ["0", "2"])
def test_missing_sample_in_a_worker_is_named(
    tiny_data: Path, tmp_path: Path, num_workers: str, capsys: pytest.CaptureFixture[str]
) -> None:
    partition, _ = load_partition(tiny_data)
    for ID in partition["train"][10:20]:  # not the first: its shape is read in the main process
        (tiny_data / f"{ID}.pt").unlink()
    argv = ["--data-dir", str(tiny_data), "--metrics-csv", str(tmp_path / "m.csv")]
    assert pytorch_script.main([*argv, "--num-workers", num_workers, "--max-epochs", "1"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: sample 'id-") and ".pt not found" in err
    assert "Traceback" not in err


def test_flags_override_the_defaults() -> None:
    args = pytorch_script.parse_args(["--batch-size", "8", "--no-shuffle", "--num-workers", "0"])
    assert (args.batch_size, args.shuffle, args.num_workers) == (8, False, 0)
    for bad in (["--batch-size", "0"], ["--num-workers", "-1"], ["--max-epochs", "0"]):
        with pytest.raises(SystemExit):
            pytorch_script.parse_args(bad)
