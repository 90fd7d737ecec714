import csv
from pathlib import Path

import pytest
import torch

import pytorch_script
from conftest import train


def checkpoint_files(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.iterdir())


def test_every_epoch_saves_last_and_best_loadable_safely(tiny_data: Path, tmp_path: Path) -> None:
    checkpoints = tmp_path / "checkpoints"
    flags = ["--max-epochs", "3", "--num-workers", "0", "--checkpoint-dir", str(checkpoints)]
    assert train(tiny_data, tmp_path / "m.csv", *flags) == 0

    assert checkpoint_files(checkpoints) == ["best.pt", "last.pt"]
    last = torch.load(checkpoints / "last.pt", weights_only=True)
    best = torch.load(checkpoints / "best.pt", weights_only=True)
    assert set(last) == {"model", "optimizer", "scaler", "epoch", "best_val_accuracy", "rng"}
    assert last["epoch"] == 3 and set(last["rng"]) == {"python", "numpy", "torch", "cuda"}
    with open(tmp_path / "m.csv") as f:
        accuracies = [float(row["val_accuracy"]) for row in csv.DictReader(f)]
    assert last["best_val_accuracy"] == best["best_val_accuracy"] == max(accuracies)
    assert best["epoch"] == accuracies.index(max(accuracies)) + 1
    assert all(isinstance(value, torch.Tensor) for value in last["model"].values())


def test_a_save_that_fails_half_way_leaves_the_previous_checkpoint(
    tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    checkpoints = tmp_path / "checkpoints"
    flags = ["--num-workers", "0", "--checkpoint-dir", str(checkpoints)]
    assert train(tiny_data, tmp_path / "m.csv", "--max-epochs", "1", *flags) == 0
    before = (checkpoints / "last.pt").read_bytes()

    def half_a_save(obj: object, f) -> None:
        f.write(before[: len(before) // 2])  # the disk fills up, or the machine is preempted
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", half_a_save)
    assert train(tiny_data, tmp_path / "m.csv", "--max-epochs", "1", *flags) == 1

    assert (checkpoints / "last.pt").read_bytes() == before
    assert checkpoint_files(checkpoints) == ["best.pt", "last.pt"]  # no temporary file left
    assert torch.load(checkpoints / "last.pt", weights_only=True)["epoch"] == 1


@pytest.mark.parametrize("num_workers", ["0", "2"])
def test_resuming_gives_the_weights_of_an_uninterrupted_run(
    tiny_data: Path, tmp_path: Path, num_workers: str
) -> None:
    flags = ["--num-workers", num_workers, "--seed", "5"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert (
        train(
            tiny_data,
            straight / "m.csv",
            *flags,
            "--checkpoint-dir",
            str(straight),
            "--max-epochs",
            "4",
        )
        == 0
    )
    assert (
        train(
            tiny_data,
            resumed / "m.csv",
            *flags,
            "--checkpoint-dir",
            str(resumed),
            "--max-epochs",
            "2",
        )
        == 0
    )
    assert (
        train(
            tiny_data,
            resumed / "m.csv",
            *flags,
            "--checkpoint-dir",
            str(resumed),
            "--max-epochs",
            "4",
            "--resume",
        )
        == 0
    )

    a = torch.load(straight / "last.pt", weights_only=True)
    b = torch.load(resumed / "last.pt", weights_only=True)
    assert a["epoch"] == b["epoch"] == 4
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    assert (straight / "m.csv").read_text() == (resumed / "m.csv").read_text()


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
    }  # fmt: skip
    pytorch_script.save_checkpoint(checkpoint, checkpoints / "last.pt")
    before = (checkpoints / "last.pt").read_bytes()

    flags = ["--resume", "--num-workers", "0", "--checkpoint-dir", str(checkpoints)]
    assert train(tiny_data, tmp_path / "m.csv", *flags) == 1

    err = capsys.readouterr().err
    assert "last.pt was saved for another model, data or --amp (" in err
    assert (checkpoints / "last.pt").read_bytes() == before


def test_resume_past_the_last_epoch_does_nothing(tiny_data: Path, tmp_path: Path, capsys) -> None:
    flags = ["--num-workers", "0", "--checkpoint-dir", str(tmp_path / "c"), "--max-epochs", "1"]
    assert train(tiny_data, tmp_path / "m.csv", *flags) == 0
    assert train(tiny_data, tmp_path / "m.csv", *flags, "--resume") == 0
    assert "nothing to do:" in capsys.readouterr().out
    assert len((tmp_path / "m.csv").read_text().splitlines()) == 2


def test_mixed_precision_trains_on_the_cpu(tiny_data: Path, tmp_path: Path) -> None:
    flags = ["--amp", "--num-workers", "0", "--max-epochs", "6", "--batch-size", "16"]
    flags += ["--checkpoint-dir", str(tmp_path / "c")]
    assert train(tiny_data, tmp_path / "m.csv", *flags) == 0
    with open(tmp_path / "m.csv") as f:
        rows = list(csv.DictReader(f))
    assert float(rows[-1]["val_accuracy"]) >= 0.8  # chance is 0.25
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"]) / 2
