import csv
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import pytorch_script
import torch
from make_sample_data import make_sample_data
from my_classes import Net, build_model
from plumbing import checkpoints
from plumbing.data import digest
from torch import nn

from baked.helpers import read_rows, snapshot, train

PROJECT = Path(pytorch_script.__file__).parent
RUN_FILES = ["best.pt", "last.pt", "metrics.csv", "settings.json"]


def run_files(run_dir: Path) -> list[str]:
    """The files of a run directory, hidden ones (a temporary file left behind) included."""
    return sorted(path.name for path in run_dir.iterdir())


def epochs_logged(run_dir: Path) -> list[int]:
    with open(run_dir / "metrics.csv", newline="") as f:
        return [int(row["epoch"]) for row in csv.DictReader(f)]


def write_checkpoint(path: Path, model: nn.Module, **claims: object) -> None:
    """A checkpoint holding model's weights, with what it claims about them in claims."""
    checkpoint = {
        "model": model.state_dict(), "model_class": type(model).__qualname__, "optimizer": {},
        "scaler": {}, "epoch": 1, "best_score": 0.5, "rng": {}, "input_shape": [1, 8, 8],
        "num_classes": 4,
    }  # fmt: skip
    checkpoints.save(checkpoint | claims, path)


class Wide(nn.Module):
    """Another model for the samples of tiny_data, of another class than build_model's."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, depth: int = 1) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(64, 64) for _ in range(depth))
        self.out = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        for layer in self.layers:
            x = torch.relu(layer(x))
        return self.out(x)


def test_every_epoch_saves_last_and_best_loadable_safely(tiny_data: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "runs" / "run-1"
    assert train(tiny_data, run_dir, "--max-epochs", "3", "--num-workers", "0") == 0

    assert run_files(run_dir) == RUN_FILES
    last = torch.load(run_dir / "last.pt", weights_only=True)
    best = torch.load(run_dir / "best.pt", weights_only=True)
    # Each entry of the state by its name, beside what the run keeps.
    assert set(last) == {"model", "optimizer", "scaler", *checkpoints.META}
    assert last["state"] == ["model", "optimizer", "scaler"]
    model_class = type(build_model((1, 8, 8), 4)).__qualname__
    assert last["classes"] == {"model": model_class, "optimizer": "Adam", "scaler": "GradScaler"}
    assert last["grads"] is None  # the loop frees them after each step: nothing to carry
    assert (last["input_shape"], last["num_classes"]) == ([1, 8, 8], 4)
    order = {"seed": 0, "shuffle": True}
    assert last["settings"] == {"batch_size": 32, "data": digest(tiny_data), "order": order}
    assert last["inside"] is None  # saved at the end of an epoch
    assert last["model_class"] == type(build_model((1, 8, 8), 4)).__qualname__
    assert last["epoch"] == 3 and set(last["rng"]) == {"python", "numpy", "torch", "cuda"}
    with open(run_dir / "metrics.csv") as f:
        accuracies = [float(row["val_accuracy"]) for row in csv.DictReader(f)]
    assert last["best_score"] == pytest.approx(best["best_score"]) == pytest.approx(max(accuracies))
    assert best["epoch"] == accuracies.index(max(accuracies)) + 1
    assert all(isinstance(value, torch.Tensor) for value in last["model"].values())
    # As the docstring of plumbing/checkpoints.py shows a user: the model back from best.pt.
    model = build_model(tuple(best["input_shape"]), best["num_classes"])
    model.load_state_dict(best["model"])


def test_a_save_that_fails_half_way_leaves_the_previous_checkpoint(
    tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    run_dir = tmp_path / "runs" / "run-1"
    assert train(tiny_data, run_dir, "--max-epochs", "1", "--num-workers", "0") == 0
    before = (run_dir / "last.pt").read_bytes()

    def half_a_save(obj: object, f) -> None:
        f.write(before[: len(before) // 2])  # the disk fills up, or the machine is preempted
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(torch, "save", half_a_save)
        flags = ["--max-epochs", "2", "--num-workers", "0", "--resume"]
        assert train(tiny_data, run_dir, *flags) == 1

    assert (run_dir / "last.pt").read_bytes() == before
    assert run_files(run_dir) == RUN_FILES  # no temporary file left
    assert torch.load(run_dir / "last.pt", weights_only=True)["epoch"] == 1
    err = capsys.readouterr().err
    last = run_dir / "last.pt"
    assert err.startswith(f"error: cannot write {last} (No space left on device;")
    assert err.endswith(" free some space or pass another --runs-dir, then --resume\n")
    # As the line says: with space again, --resume goes on, and epoch 2 is logged once.
    assert train(tiny_data, run_dir, *flags) == 0
    assert epochs_logged(run_dir) == [1, 2]


def test_a_directory_that_cannot_be_written_is_named(
    tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    def denied(obj: object, f) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(torch, "save", denied)
    run_dir = tmp_path / "runs" / "run-1"
    assert train(tiny_data, run_dir, "--num-workers", "0", "--max-epochs", "1") == 1
    assert capsys.readouterr().err == (  # no advice to free space: that is not the problem
        f"error: cannot write {run_dir / 'last.pt'} (Permission denied): pass another"
        " --runs-dir, then --resume\n"
    )
    assert [name for name in run_files(run_dir) if name.endswith(".pt") or name[0] == "."] == []


@pytest.mark.parametrize("num_workers", ["0", "2"])
def test_resuming_gives_the_weights_of_an_uninterrupted_run(
    tiny_data: Path, tmp_path: Path, num_workers: str
) -> None:
    def run(name: str, *flags: str) -> None:
        where = ["--num-workers", num_workers, "--seed", "5"]
        assert train(tiny_data, tmp_path / "runs" / name, *where, *flags) == 0

    run("straight", "--max-epochs", "4")
    run("resumed", "--max-epochs", "2")
    run("resumed", "--max-epochs", "4", "--resume")

    a = torch.load(tmp_path / "runs" / "straight" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "runs" / "resumed" / "last.pt", weights_only=True)
    assert a["epoch"] == b["epoch"] == 4
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name

    def measured(name: str) -> list[list[str]]:
        """The rows of metrics.csv but data_wait, a measured time that differs between runs."""
        with open(tmp_path / "runs" / name / "metrics.csv", newline="") as f:
            return [row[:-1] for row in csv.reader(f)]

    assert measured("straight") == measured("resumed")
    assert len(measured("straight")) == 5


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04 cut short"])
def test_a_bad_checkpoint_is_named_and_nothing_is_overwritten(
    tiny_data: Path, tmp_path: Path, capsys, content: bytes
) -> None:
    run_dir = tmp_path / "runs" / "run-1"
    run_dir.mkdir(parents=True)
    (run_dir / "last.pt").write_bytes(content)
    (run_dir / "metrics.csv").write_text(
        "epoch,train_loss,val_loss,val_accuracy,data_wait\n1,2.0,2.0,0.5,0.1\n"
    )
    before = snapshot(run_dir)

    assert train(tiny_data, run_dir, "--resume", "--num-workers", "0") == 1

    err = capsys.readouterr().err
    assert err.startswith(f"error: {run_dir / 'last.pt'} is not a checkpoint this script can load")
    assert err.count("\n") == 1
    assert snapshot(run_dir) == before


def test_a_run_stopped_before_its_first_checkpoint_starts_over_on_resume(
    tiny_data: Path, tmp_path: Path, capsys
) -> None:
    """A first epoch whose metrics row was written but whose checkpoint was not (a full disk,
    a kill): --resume, as a requeued job passes it, starts that run over."""
    run_dir = tmp_path / "runs" / "run-1"
    run_dir.mkdir(parents=True)
    (run_dir / "metrics.csv").write_text("epoch,train_loss,val_loss,val_accuracy,data_wait\n")
    (run_dir / "settings.json").write_text("[]\n")

    assert train(tiny_data, run_dir, "--resume", "--num-workers", "0", "--max-epochs", "2") == 0

    assert f"nothing to resume yet: starting {run_dir}" in capsys.readouterr().out
    assert [row["epoch"] for row in read_rows(run_dir / "metrics.csv")] == [1, 2]
    assert torch.load(run_dir / "last.pt", weights_only=True)["epoch"] == 2


def test_a_directory_of_something_else_is_never_taken_for_a_run(
    tiny_data: Path, tmp_path: Path, capsys
) -> None:
    run_dir = tmp_path / "runs" / "run-1"
    run_dir.mkdir(parents=True)
    (run_dir / "notes.txt").write_text("my notes\n")
    before = snapshot(run_dir)

    assert train(tiny_data, run_dir, "--resume", "--num-workers", "0") == 1

    assert capsys.readouterr().err == (
        f"error: {run_dir} has no last.pt, and holds more than a run stopped before its first"
        " checkpoint: choose another run name\n"
    )
    assert snapshot(run_dir) == before


def test_a_run_whose_last_pt_is_gone_is_never_started_over(
    tiny_data: Path, tmp_path: Path, capsys
) -> None:
    """Its best.pt and metrics of several epochs stay: --resume, as a requeued job passes it,
    refuses rather than start that run again over them."""
    run_dir = tmp_path / "runs" / "run-1"
    assert train(tiny_data, run_dir, "--num-workers", "0", "--max-epochs", "2") == 0
    (run_dir / "last.pt").unlink()
    before = snapshot(run_dir)
    capsys.readouterr()

    assert train(tiny_data, run_dir, "--resume", "--num-workers", "0", "--max-epochs", "3") == 1

    assert capsys.readouterr().err == (
        f"error: {run_dir} has no last.pt, and holds more than a run stopped before its first"
        " checkpoint: choose another run name\n"
    )
    assert snapshot(run_dir) == before


def test_an_old_checkpoint_without_the_model_class_is_refused(
    tiny_data: Path, tmp_path: Path, capsys
) -> None:
    run_dir = tmp_path / "runs" / "run-1"
    checkpoint = {
        "model": build_model((1, 8, 8), 4).state_dict(), "optimizer": {}, "scaler": {},
        "epoch": 1, "best_val_accuracy": 0.5, "rng": {}, "input_shape": [1, 8, 8],
        "num_classes": 4,
    }  # fmt: skip
    checkpoints.save(checkpoint, run_dir / "last.pt")
    before = snapshot(run_dir)

    assert train(tiny_data, run_dir, "--resume", "--num-workers", "0") == 1

    assert capsys.readouterr().err == (  # the keys it lacks, not every key
        f"error: {run_dir / 'last.pt'} is not a checkpoint of pytorch_script.py (it lacks"
        " model_class, best_score): start a new run (--run-name)\n"
    )
    assert snapshot(run_dir) == before


def test_a_checkpoint_of_another_model_class_is_refused_in_one_short_line(
    tiny_data: Path, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_dir = tmp_path / "runs" / "run-1"
    assert train(tiny_data, run_dir, "--num-workers", "0", "--max-epochs", "1") == 0
    before = snapshot(run_dir)

    monkeypatch.setattr(pytorch_script, "build_model", Wide)  # as if my_classes.py changed
    assert train(tiny_data, run_dir, "--resume", "--num-workers", "0", "--max-epochs", "2") == 1

    err = capsys.readouterr().err
    yours = type(build_model((1, 8, 8), 4)).__qualname__
    assert err == (
        f"error: {run_dir / 'last.pt'} was written by the model {yours}, this run builds Wide:"
        " start a new run (--run-name)\n"
    )
    assert snapshot(run_dir) == before


def test_a_checkpoint_that_claims_another_models_weights_is_refused(
    tiny_data: Path, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Net for samples of 64 numbers has other layers than Net for 1x8x8 images."""
    monkeypatch.setattr(pytorch_script, "build_model", Net)  # the template's, whatever yours is
    run_dir = tmp_path / "runs" / "run-1"
    write_checkpoint(run_dir / "last.pt", Net((64,), 4))  # it claims [1, 8, 8]
    before = snapshot(run_dir)

    assert train(tiny_data, run_dir, "--resume", "--num-workers", "0") == 1

    assert capsys.readouterr().err == (
        f"error: {run_dir / 'last.pt'} does not fit this Net (5 parameters differ in name or"
        " shape: classifier.0.weight, features.0.0.bias, features.0.0.weight, ...):"
        " start a new run (--run-name)\n"
    )
    assert snapshot(run_dir) == before


def test_many_differing_parameters_are_counted_not_listed(
    tiny_data: Path, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same class, made deeper: a few names and the count, not a page of them."""
    run_dir = tmp_path / "runs" / "run-1"
    monkeypatch.setattr(pytorch_script, "build_model", Wide)
    assert train(tiny_data, run_dir, "--num-workers", "0", "--max-epochs", "1") == 0

    monkeypatch.setattr(pytorch_script, "build_model", lambda *shape: Wide(*shape, depth=40))
    assert train(tiny_data, run_dir, "--resume", "--num-workers", "0", "--max-epochs", "2") == 1

    err = capsys.readouterr().err
    assert err == (
        f"error: {run_dir / 'last.pt'} does not fit this Wide (78 parameters differ in name or"
        " shape: layers.1.bias, layers.1.weight, layers.10.bias, ...): start a new"
        " run (--run-name)\n"
    )
    assert len(err) < 200 + len(str(run_dir))


def test_differing_keys_says_nothing_for_a_model_that_fits() -> None:
    a, b = Net((1, 8, 8), 4).state_dict(), Net((1, 8, 8), 4).state_dict()
    assert checkpoints.differing_keys(a, b) == ""
    other = Net((1, 8, 8), 5).state_dict()
    assert checkpoints.differing_keys(a, other) == (
        "2 parameters differ in name or shape: classifier.2.bias, classifier.2.weight"
    )


def test_a_checkpoint_of_other_data_is_refused(tiny_data: Path, tmp_path: Path, capsys) -> None:
    """Images of another size fit the same weights: the shape is checked, not just the weights."""
    run_dir = tmp_path / "runs" / "run-1"
    flags = ["--num-workers", "0", "--max-epochs", "1"]
    assert train(tiny_data, run_dir, *flags) == 0
    other = tmp_path / "other"
    make_sample_data(
        other, num_samples=64, shape=(1, 16, 16), num_classes=4, validation_fraction=0.25
    )
    before = snapshot(run_dir)

    assert train(other, run_dir, *flags, "--resume", "--max-epochs", "2") == 1
    err = capsys.readouterr().err
    assert "last.pt was saved for samples of shape (1, 8, 8) in 4 classes;" in err
    assert "has shape (1, 16, 16) in 4: start a new run (--run-name)" in err
    assert snapshot(run_dir) == before


def test_a_new_run_does_not_overwrite_an_earlier_run(
    tiny_data: Path, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # where the dry run would write runs/ by default
    run_dir = tmp_path / "elsewhere" / "run-1"
    flags = ["--num-workers", "0", "--max-epochs", "1"]
    assert train(tiny_data, run_dir, *flags) == 0
    before = snapshot(run_dir)

    assert train(tiny_data, run_dir, *flags) == 1
    assert capsys.readouterr().err == (
        f"error: {run_dir} holds an earlier run: --resume run-1 goes on with it, --run-name NAME"
        " starts a new one beside it\n"
    )
    # A dry run checks without saving anything, there or in the default runs/.
    argv = ["--device", "cpu", "--data-dir", str(tiny_data), "--dry-run", "--num-workers", "0"]
    assert pytorch_script.main(argv) == 0
    assert pytorch_script.main([*argv, "--runs-dir", str(run_dir.parent), "--resume"]) == 0
    assert snapshot(run_dir) == before
    assert not Path("runs").exists()


def test_resume_drops_metrics_of_epochs_after_the_checkpoint(
    tiny_data: Path, tmp_path: Path
) -> None:
    """Stopped after writing an epoch's row but before saving its checkpoint."""
    run_dir = tmp_path / "runs" / "run-1"
    flags = ["--num-workers", "0", "--seed", "2"]
    assert train(tiny_data, run_dir, *flags, "--max-epochs", "2") == 0
    rows = (run_dir / "metrics.csv").read_text().splitlines()
    (run_dir / "metrics.csv").write_text("\n".join([*rows, "3,9,9,0.1,0.5"]) + "\n")

    assert train(tiny_data, run_dir, *flags, "--max-epochs", "3", "--resume") == 0
    assert epochs_logged(run_dir) == [1, 2, 3]
    assert "9,9,0.1" not in (run_dir / "metrics.csv").read_text()


def test_resume_takes_this_runs_learning_rate(tiny_data: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "runs" / "run-1"
    assert train(tiny_data, run_dir, "--num-workers", "0", "--max-epochs", "1") == 0
    flags = ["--num-workers", "0", "--max-epochs", "2", "--resume", "--lr", "0.05"]
    assert train(tiny_data, run_dir, *flags) == 0
    optimizer = torch.load(run_dir / "last.pt", weights_only=True)["optimizer"]
    assert optimizer["param_groups"][0]["lr"] == 0.05


def test_resume_past_the_last_epoch_does_nothing(tiny_data: Path, tmp_path: Path, capsys) -> None:
    run_dir = tmp_path / "runs" / "run-1"
    flags = ["--num-workers", "0", "--max-epochs", "1"]
    assert train(tiny_data, run_dir, *flags) == 0
    before = snapshot(run_dir)
    assert train(tiny_data, run_dir, *flags, "--resume") == 0
    assert f"nothing to do: {run_dir} is at epoch 1 of 1" in capsys.readouterr().out
    assert epochs_logged(run_dir) == [1]
    assert snapshot(run_dir) == before


def test_mixed_precision_trains_on_the_cpu(tiny_data: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "runs" / "run-1"
    flags = ["--amp", "--num-workers", "0", "--max-epochs", "6", "--batch-size", "16"]
    assert train(tiny_data, run_dir, *flags) == 0
    with open(run_dir / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    model_class = torch.load(run_dir / "last.pt", weights_only=True)["model_class"]
    trained = f"{model_class} trained 6 epochs with --amp (bfloat16) on tiny_data"
    accuracy = float(rows[-1]["val_accuracy"])
    assert accuracy >= 0.8, f"{trained}: val_accuracy {accuracy:.3f}, expected >= 0.8 (chance 0.25)"
    first, final = float(rows[0]["train_loss"]), float(rows[-1]["train_loss"])
    assert final < first / 2, f"{trained}: train_loss {first:.4f} -> {final:.4f}, expected a half"


@pytest.mark.slow
def test_ctrl_c_keeps_the_last_complete_epoch_and_resume_goes_on(
    tiny_data: Path, tmp_path: Path
) -> None:
    runs_dir = tmp_path / "runs"
    run_dir, metrics_csv = runs_dir / "run-1", runs_dir / "run-1" / "metrics.csv"
    command = [sys.executable, "pytorch_script.py", "--device", "cpu", "--data-dir", str(tiny_data)]
    command += ["--runs-dir", str(runs_dir), "--no-tensorboard", "--tracker", "none"]
    command += ["--num-workers", "2", "--batch-size", "8"]
    # Ctrl-C's default action in the run, even when these tests were started with SIGINT
    # ignored (nohup, a shell's `&`), which a child would inherit.
    run = subprocess.Popen(
        [*command, "--max-epochs", "1000"], cwd=PROJECT, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.default_int_handler),
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while not (metrics_csv.exists() and len(metrics_csv.read_text().splitlines()) > 3):
        assert time.monotonic() < deadline and run.poll() is None
        time.sleep(0.1)
    run.send_signal(signal.SIGINT)
    _, err = run.communicate(timeout=60)

    assert run.returncode == 130
    assert err.endswith(
        f"interrupted: {run_dir / 'last.pt'} holds its last checkpoint, if any;"
        " --resume run-1 goes on from it\n"
    )
    assert "Traceback" not in err
    assert run_files(run_dir) == RUN_FILES  # whole, no temporary file
    epoch = torch.load(run_dir / "last.pt", weights_only=True)["epoch"]
    assert epoch >= 2  # the row of the epoch after it may be written: resume drops it
    # As the line says (in this process: the same script, without a new start-up).
    flags = ["--num-workers", "2", "--batch-size", "8", "--max-epochs", str(epoch + 1)]
    assert train(tiny_data, run_dir, *flags, "--resume", "run-1") == 0
    assert epochs_logged(run_dir) == list(range(1, epoch + 2))


def test_a_state_entry_that_weights_only_refuses_is_named_at_its_first_save() -> None:
    """A user's own entry whose state_dict() holds a NumPy number: every checkpoint would
    refuse to load (weights_only=True), so the first save says which entry, and how."""
    import numpy as np

    with pytest.raises(checkpoints.SetupError) as refused:
        checkpoints.loadable("counter", {"best": np.float64(0.5)})
    assert str(refused.value).startswith(
        "state['counter'].state_dict() holds what torch.load(..., weights_only=True) refuses ("
    )
    assert str(refused.value).endswith(": make it tensors and plain types (float(x), x.tolist())")
    checkpoints.loadable("counter", {"best": 0.5, "history": [1, 2], "t": torch.ones(2)})


def test_ctrl_c_before_anything_is_saved_says_nothing_was_written(
    tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    def interrupted(*args: object) -> float:
        raise KeyboardInterrupt

    monkeypatch.setattr(pytorch_script, "train", interrupted)
    run_dir = tmp_path / "runs" / "run-1"
    assert train(tiny_data, run_dir, "--num-workers", "0") == 130
    assert capsys.readouterr().err == "interrupted: nothing was written\n"
    assert not run_dir.exists()
