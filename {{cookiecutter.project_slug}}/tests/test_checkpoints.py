import csv
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import pytorch_script
from conftest import snapshot, train
from make_sample_data import make_sample_data

PROJECT = Path(pytorch_script.__file__).parent


def checkpoint_files(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.iterdir())


def test_every_epoch_saves_last_and_best_loadable_safely(tiny_data: Path, tmp_path: Path) -> None:
    checkpoints = tmp_path / "checkpoints"
    flags = ["--max-epochs", "3", "--num-workers", "0", "--checkpoint-dir", str(checkpoints)]
    assert train(tiny_data, tmp_path / "m.csv", *flags) == 0

    assert checkpoint_files(checkpoints) == ["best.pt", "last.pt"]
    last = torch.load(checkpoints / "last.pt", weights_only=True)
    best = torch.load(checkpoints / "best.pt", weights_only=True)
    assert set(last) == {
        "model", "optimizer", "scaler", "epoch", "best_val_accuracy", "rng", "input_shape",
        "num_classes",
    }  # fmt: skip
    assert (last["input_shape"], last["num_classes"]) == ([1, 8, 8], 4)
    assert last["epoch"] == 3 and set(last["rng"]) == {"python", "numpy", "torch", "cuda"}
    with open(tmp_path / "m.csv") as f:
        accuracies = [float(row["val_accuracy"]) for row in csv.DictReader(f)]
    assert last["best_val_accuracy"] == best["best_val_accuracy"] == max(accuracies)
    assert best["epoch"] == accuracies.index(max(accuracies)) + 1
    assert all(isinstance(value, torch.Tensor) for value in last["model"].values())


def test_a_save_that_fails_half_way_leaves_the_previous_checkpoint(
    tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    checkpoints = tmp_path / "checkpoints"
    flags = ["--num-workers", "0", "--checkpoint-dir", str(checkpoints)]
    assert train(tiny_data, tmp_path / "m.csv", "--max-epochs", "1", *flags) == 0
    before = (checkpoints / "last.pt").read_bytes()

    def half_a_save(obj: object, f) -> None:
        f.write(before[: len(before) // 2])  # the disk fills up, or the machine is preempted
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", half_a_save)
    assert train(tiny_data, tmp_path / "m.csv", "--max-epochs", "2", "--resume", *flags) == 1

    assert (checkpoints / "last.pt").read_bytes() == before
    assert checkpoint_files(checkpoints) == ["best.pt", "last.pt"]  # no temporary file left
    assert torch.load(checkpoints / "last.pt", weights_only=True)["epoch"] == 1
    err = capsys.readouterr().err
    last = checkpoints / "last.pt"
    assert err.startswith(f"error: cannot write {last} (No space left on device;")
    assert err.endswith(" free some space or pass another --checkpoint-dir, then --resume\n")


def test_a_directory_that_cannot_be_written_is_named(
    tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    def denied(obj: object, f) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(torch, "save", denied)
    checkpoints = tmp_path / "checkpoints"
    flags = ["--num-workers", "0", "--max-epochs", "1", "--checkpoint-dir", str(checkpoints)]
    assert train(tiny_data, tmp_path / "m.csv", *flags) == 1
    assert capsys.readouterr().err == (  # no advice to free space: that is not the problem
        f"error: cannot write {checkpoints / 'last.pt'} (Permission denied): pass another"
        " --checkpoint-dir, then --resume\n"
    )
    assert checkpoint_files(checkpoints) == []


@pytest.mark.parametrize("num_workers", ["0", "2"])
def test_resuming_gives_the_weights_of_an_uninterrupted_run(
    tiny_data: Path, tmp_path: Path, num_workers: str
) -> None:
    def run(name: str, *flags: str) -> None:
        where = ["--checkpoint-dir", str(tmp_path / name), "--num-workers", num_workers]
        assert train(tiny_data, tmp_path / name / "m.csv", *where, "--seed", "5", *flags) == 0

    run("straight", "--max-epochs", "4")
    run("resumed", "--max-epochs", "2")
    run("resumed", "--max-epochs", "4", "--resume")

    a = torch.load(tmp_path / "straight" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "resumed" / "last.pt", weights_only=True)
    assert a["epoch"] == b["epoch"] == 4
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    metrics = [(tmp_path / name / "m.csv").read_text() for name in ("straight", "resumed")]
    assert metrics[0] == metrics[1]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "is not a checkpoint this script can load"),
        (b"PK\x03\x04 cut short", "is not a checkpoint this script can load"),
        (None, "not found: --resume goes on from the last.pt of an earlier run"),
    ],
)
def test_a_bad_checkpoint_is_named_and_nothing_is_overwritten(
    tiny_data: Path, tmp_path: Path, capsys, content: bytes | None, message: str
) -> None:
    checkpoints = tmp_path / "checkpoints"
    checkpoints.mkdir()
    if content is not None:
        (checkpoints / "last.pt").write_bytes(content)
    (tmp_path / "m.csv").write_text("epoch,train_loss,val_loss,val_accuracy\n1,2.0,2.0,0.5\n")

    flags = ["--resume", "--num-workers", "0", "--checkpoint-dir", str(checkpoints)]
    assert train(tiny_data, tmp_path / "m.csv", *flags) == 1

    assert f"{checkpoints / 'last.pt'} {message}" in capsys.readouterr().err
    assert (tmp_path / "m.csv").read_text().endswith("1,2.0,2.0,0.5\n")
    if content is not None:
        assert (checkpoints / "last.pt").read_bytes() == content


def test_a_checkpoint_of_another_model_is_refused(tiny_data: Path, tmp_path: Path, capsys) -> None:
    checkpoints = tmp_path / "checkpoints"
    checkpoint = {
        "model": pytorch_script.Net((1, 8, 8), num_classes=7).state_dict(),
        "optimizer": {}, "scaler": {}, "epoch": 1, "best_val_accuracy": 0.5, "rng": {},
        "input_shape": [1, 8, 8], "num_classes": 4,  # what it claims, not what it holds
    }  # fmt: skip
    pytorch_script.save_checkpoint(checkpoint, checkpoints / "last.pt")
    before = (checkpoints / "last.pt").read_bytes()

    flags = ["--resume", "--num-workers", "0", "--checkpoint-dir", str(checkpoints)]
    assert train(tiny_data, tmp_path / "m.csv", *flags) == 1

    err = capsys.readouterr().err
    assert "last.pt was saved for another model, data or --amp (" in err
    assert (checkpoints / "last.pt").read_bytes() == before


def test_a_checkpoint_of_other_data_is_refused(tiny_data: Path, tmp_path: Path, capsys) -> None:
    """Images of another size fit the same weights: the shape is checked, not just the weights."""
    checkpoints = tmp_path / "checkpoints"
    flags = ["--num-workers", "0", "--checkpoint-dir", str(checkpoints), "--max-epochs", "1"]
    assert train(tiny_data, tmp_path / "m.csv", *flags) == 0
    other = tmp_path / "other"
    make_sample_data(
        other, num_samples=64, shape=(1, 16, 16), num_classes=4, validation_fraction=0.25
    )

    assert train(other, tmp_path / "m.csv", *flags, "--resume", "--max-epochs", "2") == 1
    err = capsys.readouterr().err
    assert "last.pt was saved for samples of shape (1, 8, 8) in 4 classes;" in err
    assert "has shape (1, 16, 16) in 4: start a new run with --checkpoint-dir DIR" in err


def test_a_new_run_does_not_overwrite_an_earlier_runs_checkpoints(
    tiny_data: Path, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # where the dry run would write runs/ by default
    checkpoints = tmp_path / "checkpoints"
    flags = ["--num-workers", "0", "--checkpoint-dir", str(checkpoints), "--max-epochs", "1"]
    assert train(tiny_data, tmp_path / "m.csv", *flags) == 0
    before = snapshot(checkpoints)
    metrics = (tmp_path / "m.csv").read_text()

    assert train(tiny_data, tmp_path / "m.csv", *flags) == 1
    assert "last.pt holds an earlier run: --resume goes on with it" in capsys.readouterr().err
    # A dry run checks without saving anything.
    assert pytorch_script.main(["--device", "cpu", "--data-dir", str(tiny_data), "--dry-run",
                                "--checkpoint-dir", str(checkpoints)]) == 0  # fmt: skip
    assert snapshot(checkpoints) == before
    assert (tmp_path / "m.csv").read_text() == metrics
    assert not Path("runs").exists()


def test_resume_drops_metrics_of_epochs_after_the_checkpoint(
    tiny_data: Path, tmp_path: Path
) -> None:
    """Stopped after writing an epoch's row but before saving its checkpoint."""
    flags = ["--num-workers", "0", "--checkpoint-dir", str(tmp_path / "c"), "--seed", "2"]
    assert train(tiny_data, tmp_path / "m.csv", *flags, "--max-epochs", "2") == 0
    rows = (tmp_path / "m.csv").read_text().splitlines()
    (tmp_path / "m.csv").write_text("\n".join([*rows, "3,9,9,0.1"]) + "\n")

    assert train(tiny_data, tmp_path / "m.csv", *flags, "--max-epochs", "3", "--resume") == 0
    epochs = [line.split(",")[0] for line in (tmp_path / "m.csv").read_text().splitlines()]
    assert epochs == ["epoch", "1", "2", "3"]
    assert "9,9,0.1" not in (tmp_path / "m.csv").read_text()


def test_resume_takes_this_runs_learning_rate(tiny_data: Path, tmp_path: Path) -> None:
    flags = ["--num-workers", "0", "--checkpoint-dir", str(tmp_path / "c")]
    assert train(tiny_data, tmp_path / "m.csv", *flags, "--max-epochs", "1") == 0
    assert (
        train(
            tiny_data, tmp_path / "m.csv", *flags, "--max-epochs", "2", "--resume", "--lr", "0.05"
        )
        == 0
    )
    optimizer = torch.load(tmp_path / "c" / "last.pt", weights_only=True)["optimizer"]
    assert optimizer["param_groups"][0]["lr"] == 0.05


def test_resume_past_the_last_epoch_does_nothing(tiny_data: Path, tmp_path: Path, capsys) -> None:
    flags = ["--num-workers", "0", "--checkpoint-dir", str(tmp_path / "c"), "--max-epochs", "1"]
    assert train(tiny_data, tmp_path / "m.csv", *flags) == 0
    assert train(tiny_data, tmp_path / "m.csv", *flags, "--resume") == 0
    assert "nothing to do: " in capsys.readouterr().out
    assert len((tmp_path / "m.csv").read_text().splitlines()) == 2


def test_mixed_precision_trains_on_the_cpu(tiny_data: Path, tmp_path: Path) -> None:
    flags = ["--amp", "--num-workers", "0", "--max-epochs", "6", "--batch-size", "16"]
    flags += ["--checkpoint-dir", str(tmp_path / "c")]
    assert train(tiny_data, tmp_path / "m.csv", *flags) == 0
    with open(tmp_path / "m.csv") as f:
        rows = list(csv.DictReader(f))
    assert float(rows[-1]["val_accuracy"]) >= 0.8  # chance is 0.25
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"]) / 2


@pytest.mark.slow
def test_ctrl_c_keeps_the_last_complete_epoch_and_resume_goes_on(
    tiny_data: Path, tmp_path: Path
) -> None:
    checkpoints, metrics_csv = tmp_path / "checkpoints", tmp_path / "m.csv"
    command = [sys.executable, "pytorch_script.py", "--device", "cpu", "--data-dir", str(tiny_data)]
    command += ["--metrics-csv", str(metrics_csv), "--checkpoint-dir", str(checkpoints)]
    command += ["--num-workers", "2", "--batch-size", "8"]
    run = subprocess.Popen(
        [*command, "--max-epochs", "1000"], cwd=PROJECT, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 120
    while not (metrics_csv.exists() and len(metrics_csv.read_text().splitlines()) > 3):
        assert time.monotonic() < deadline and run.poll() is None
        time.sleep(0.1)
    run.send_signal(signal.SIGINT)
    _, err = run.communicate(timeout=60)

    assert run.returncode == 130
    assert "interrupted: " in err and "--resume goes on from it" in err and "Traceback" not in err
    assert checkpoint_files(checkpoints) == ["best.pt", "last.pt"]  # whole, no temporary file
    epoch = torch.load(checkpoints / "last.pt", weights_only=True)["epoch"]
    assert epoch >= 2  # the row of the epoch after it may be written: resume drops it
    resumed = subprocess.run(
        [*command, "--max-epochs", str(epoch + 1), "--resume"], cwd=PROJECT, capture_output=True
    )
    assert resumed.returncode == 0
    epochs = [row.split(",")[0] for row in metrics_csv.read_text().splitlines()[1:]]
    assert epochs == [str(n) for n in range(1, epoch + 2)]
