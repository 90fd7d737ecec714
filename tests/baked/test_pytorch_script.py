import csv
import dataclasses
import json
import multiprocessing
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import my_classes
import pytest
import pytorch_script
import torch
from plumbing import cli, runs
from plumbing.data import digest, load_partition

from baked.helpers import edited_project, in_one_python, read_rows, snapshot, train


def read_metrics(run_dir: Path) -> list[dict[str, float]]:
    with open(run_dir / "metrics.csv", newline="") as f:
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


def epoch_lines(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith("epoch ")]


def test_training_learns(
    tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = tmp_path / "runs" / "run-1"
    flags = ["--num-workers", "0", "--max-epochs", "8", "--batch-size", "16"]
    assert train(tiny_data, run_dir, *flags) == 0

    rows = read_metrics(run_dir)
    assert [row["epoch"] for row in rows] == list(range(1, 9))
    model_class = torch.load(run_dir / "last.pt", weights_only=True)["model_class"]
    trained = f"{model_class} trained 8 epochs on 192 samples of 1x8x8 in 4 classes"
    first, last = rows[0], rows[-1]
    assert last["train_loss"] < first["train_loss"] / 2, (
        f"{trained}: train_loss {first['train_loss']:.4f} -> {last['train_loss']:.4f},"
        " expected below half"
    )
    assert last["val_loss"] < first["val_loss"], (
        f"{trained}: val_loss {first['val_loss']:.4f} -> {last['val_loss']:.4f}, expected lower"
    )
    assert last["val_accuracy"] >= 0.8, (
        f"{trained}: val_accuracy {last['val_accuracy']:.3f}, expected >= 0.8 (chance is 0.25)"
    )
    assert all(0 <= row["data_wait"] <= 1 for row in rows)
    out = capsys.readouterr().out
    assert "epoch 8/8  train_loss" in out and "192 train and 64 validation samples" in out
    assert (run_dir / "metrics.csv").read_bytes().count(b"\r") == 0


def test_dry_run_loads_two_batches_per_split_and_writes_nothing(
    tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    loaded = record_loads(monkeypatch)
    flags = ["--dry-run", "--num-workers", "0", "--batch-size", "8", "--max-epochs", "50"]
    assert train(tiny_data, tmp_path / "runs" / "run-1", *flags) == 0
    assert len(epoch_lines(capsys.readouterr().out)) == 1
    assert not (tmp_path / "runs").exists()
    # The first sample of each split (shape and dtype check), the model's input shape, then
    # two batches of training and two of validation.
    assert len(loaded) == 3 + 2 * 8 + 2 * 8


def test_dry_run_with_workers(tiny_data: Path, tmp_path: Path, capsys) -> None:
    flags = ["--dry-run", "--num-workers", "2", "--batch-size", "8"]
    assert train(tiny_data, tmp_path / "runs" / "run-1", *flags) == 0
    (line,) = epoch_lines(capsys.readouterr().out)
    assert line.startswith("epoch 1/1  train_loss ")
    assert 0 <= float(re.search(r"val_accuracy (\S+)", line)[1]) <= 1
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("shuffle", ["--shuffle", "--no-shuffle"])
def test_shuffle_decides_the_training_order_validation_is_never_shuffled(
    tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, shuffle: str
) -> None:
    partition, _ = load_partition(tiny_data)
    loaded = record_loads(monkeypatch)
    flags = ["--num-workers", "0", "--batch-size", "64", "--max-epochs", "2", shuffle]
    assert train(tiny_data, tmp_path / "runs" / "run-1", *flags) == 0

    loaded = loaded[3:]  # after the two first samples and the input shape
    train_order, validation_order = list(partition["train"]), list(partition["validation"])
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
        assert train(tiny_data, tmp_path / "runs" / name, *flags) == 0
        # All but data_wait, a measured share of time.
        runs.append([{k: v for k, v in row.items() if k != "data_wait"}
                     for row in read_metrics(tmp_path / "runs" / name)])  # fmt: skip
    assert len(runs[0]) == 2 and runs[0] == runs[1]
    a, b = (torch.load(tmp_path / "runs" / name / "last.pt", weights_only=True) for name in "ab")
    assert all(torch.equal(a["model"][key], b["model"][key]) for key in a["model"])


def test_no_data_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert train(tmp_path / "nowhere", tmp_path / "runs" / "run-1", "--dry-run") == 1
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
    assert train(data_dir, tmp_path / "runs" / "run-1", *flags) == 0


def test_flags_override_the_defaults() -> None:
    settings = cli.training_settings(
        ["--batch-size", "8", "--no-shuffle", "--num-workers", "0"], ""
    )
    assert (settings.batch_size, settings.shuffle, settings.num_workers) == (8, False, 0)
    assert settings.given == {"batch_size", "shuffle", "num_workers"}
    assert settings.device.type in ("cpu", "cuda", "mps", "xpu")
    assert (settings.runs_dir, settings.run_name, settings.resume) == (Path("runs"), None, None)
    assert cli.training_settings(["--resume"], "").resume == ""  # the latest run, or --run-name
    assert cli.training_settings(["--resume", "run-3"], "").resume == "run-3"
    dry = cli.training_settings(["--dry-run", "--max-epochs", "9"], "")
    assert cli.check(dry).max_epochs == 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.lr = 0.1  # parsed once, never changed


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (["--batch-size", "0"], "argument --batch-size: 0 is not a positive integer"),
        (["--num-workers", "-1"], "argument --num-workers: -1 is negative"),
        (["--max-epochs", "0"], "argument --max-epochs: 0 is not a positive integer"),
        (["--lr", "-1"], "argument --lr: -1 is not a positive number"),
        (["--device", "gpu"], "argument --device: 'gpu' is not a device"),
        (["--device", "meta"], "argument --device: 'meta': torch "),
        (["--metrics-csv", "m.csv"], "unrecognized arguments: --metrics-csv m.csv"),
        (["--run-name", "../escape"], "argument --run-name: '../escape' is not a run name"),
        (["--run-name", "a/b"], "argument --run-name: 'a/b' is not a run name"),
        (["--run-name", "/tmp/x"], "argument --run-name: '/tmp/x' is not a run name"),
        (["--run-name", ""], "argument --run-name: '' is not a run name"),
        (["--resume", ".."], "argument --resume: '..' is not a run name"),
        (["--run-name", "mlflow.db"], "'mlflow.db' is what --runs-dir holds beside the runs"),
    ],
)
def test_bad_flags_exit_with_usage(
    bad: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        pytorch_script.main(bad)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


# One run, one directory: runs/<name>/ holds metrics.csv, last.pt, best.pt, settings.json.


def script(data_dir: Path, runs_dir: Path, *flags: str) -> int:
    """pytorch_script.py as a user runs it, naming no run unless flags do."""
    argv = ["--device", "cpu", "--data-dir", str(data_dir), "--runs-dir", str(runs_dir)]
    argv += ["--batch-size", "32", "--num-workers", "0", "--no-tensorboard", "--tracker", "none"]
    return pytorch_script.main([*argv, *flags])


def last_epoch(run_dir: Path) -> int:
    return torch.load(run_dir / "last.pt", weights_only=True)["epoch"]


def test_runs_in_a_row_get_directories_of_their_own(tiny_data: Path, tmp_path: Path) -> None:
    runs_dir = tmp_path / "runs"
    assert script(tiny_data, runs_dir, "--max-epochs", "1") == 0
    first = snapshot(runs_dir / "run-1")
    assert sorted(first) == ["best.pt", "last.pt", "metrics.csv", "settings.json"]

    assert script(tiny_data, runs_dir, "--max-epochs", "2", "--seed", "1") == 0
    assert sorted(p.name for p in runs_dir.iterdir()) == ["run-1", "run-2"]
    assert snapshot(runs_dir / "run-1") == first  # not rewritten, touched, nor appended to
    assert [row["epoch"] for row in read_metrics(runs_dir / "run-2")] == [1, 2]


def test_resume_goes_on_with_the_latest_run_or_the_one_named(
    tiny_data: Path, tmp_path: Path, capsys
) -> None:
    runs_dir = tmp_path / "runs"
    assert script(tiny_data, runs_dir, "--max-epochs", "1") == 0
    assert script(tiny_data, runs_dir, "--max-epochs", "1", "--run-name", "b") == 0
    capsys.readouterr()

    assert script(tiny_data, runs_dir, "--max-epochs", "2", "--resume") == 0  # the latest: b
    assert f"resuming {runs_dir / 'b'} after epoch 1" in capsys.readouterr().out
    assert (last_epoch(runs_dir / "run-1"), last_epoch(runs_dir / "b")) == (1, 2)

    assert script(tiny_data, runs_dir, "--max-epochs", "3", "--resume", "run-1") == 0
    assert f"resuming {runs_dir / 'run-1'} after epoch 1" in capsys.readouterr().out
    assert (last_epoch(runs_dir / "run-1"), last_epoch(runs_dir / "b")) == (3, 2)
    assert [row["epoch"] for row in read_metrics(runs_dir / "run-1")] == [1, 2, 3]

    # --run-name says which run too; two different names are refused.
    assert script(tiny_data, runs_dir, "--max-epochs", "3", "--resume", "--run-name", "b") == 0
    assert last_epoch(runs_dir / "b") == 3
    assert script(tiny_data, runs_dir, "--resume", "b", "--run-name", "run-1") == 1
    assert capsys.readouterr().err == (
        "error: --resume b and --run-name run-1 name two runs: give one\n"
    )


def test_resume_without_a_run_starts_it(tiny_data: Path, tmp_path: Path, capsys) -> None:
    """A requeued job can always pass --resume: the first time, it starts the run."""
    runs_dir = tmp_path / "runs"
    assert script(tiny_data, runs_dir, "--max-epochs", "1", "--resume") == 0
    assert sorted(p.name for p in runs_dir.iterdir()) == ["run-1"]
    assert script(tiny_data, runs_dir, "--max-epochs", "1", "--resume", "job-7") == 0
    assert sorted(p.name for p in runs_dir.iterdir()) == ["job-7", "run-1"]
    assert (last_epoch(runs_dir / "run-1"), last_epoch(runs_dir / "job-7")) == (1, 1)
    out = capsys.readouterr().out
    assert "resuming" not in out
    assert f"nothing to resume yet: starting {runs_dir / 'job-7'}" in out


def test_a_new_run_under_an_existing_name_is_refused(
    tiny_data: Path, tmp_path: Path, capsys
) -> None:
    runs_dir = tmp_path / "runs"
    assert script(tiny_data, runs_dir, "--max-epochs", "1", "--run-name", "mine") == 0
    before = snapshot(runs_dir)
    capsys.readouterr()

    assert script(tiny_data, runs_dir, "--max-epochs", "2", "--run-name", "mine") == 1
    assert capsys.readouterr().err == (
        f"error: {runs_dir / 'mine'} holds an earlier run: --resume mine goes on with it,"
        " --run-name NAME starts a new one beside it\n"
    )
    assert snapshot(runs_dir) == before


def test_settings_json_records_the_flags(tiny_data: Path, tmp_path: Path) -> None:
    runs_dir = tmp_path / "runs"
    flags = ["--max-epochs", "1", "--lr", "0.002", "--seed", "7", "--no-shuffle"]
    assert script(tiny_data, runs_dir, *flags) == 0
    [settings] = json.loads((runs_dir / "run-1" / "settings.json").read_text())
    assert (settings["lr"], settings["seed"], settings["shuffle"]) == (0.002, 7, False)
    assert (settings["max_epochs"], settings["batch_size"], settings["resume"]) == (1, 32, None)
    assert settings["data_dir"] == str(tiny_data) and settings["device"] == "cpu"
    assert settings["found"] == {
        "input_shape": [1, 8, 8], "num_classes": 4, "device": "cpu",
        "data_digest": digest(tiny_data),
    }  # fmt: skip
    assert set(settings["given"]) == {
        "device", "data_dir", "runs_dir", "batch_size", "num_workers", "tensorboard", "tracker",
        "max_epochs", "lr", "seed", "shuffle",
    }  # fmt: skip
    # A resumed run adds its own flags: the first start's stay.
    assert script(tiny_data, runs_dir, "--max-epochs", "2", "--resume", "--lr", "0.01") == 0
    first, resumed = json.loads((runs_dir / "run-1" / "settings.json").read_text())
    assert first == settings
    assert (resumed["lr"], resumed["max_epochs"], resumed["resume"]) == (0.01, 2, "run-1")
    assert (resumed["seed"], resumed["shuffle"]) == (7, False)  # the run's, not the defaults


def test_resume_goes_on_with_the_settings_the_run_was_started_with(
    tiny_data: Path, tmp_path: Path, capsys
) -> None:
    """A bare --resume after a crash: the run's --max-epochs, --lr, --seed..., not the
    defaults; a flag given again wins, and is recorded."""
    runs_dir = tmp_path / "runs"
    argv = ["--device", "cpu", "--data-dir", str(tiny_data), "--runs-dir", str(runs_dir)]
    flags = ["--batch-size", "16", "--num-workers", "0", "--no-tensorboard", "--tracker", "none"]
    flags += ["--lr", "0.01", "--seed", "4", "--no-shuffle", "--max-epochs", "1"]
    assert pytorch_script.main([*argv, *flags]) == 0
    assert pytorch_script.main(["--runs-dir", str(runs_dir), "--resume"]) == 0
    out = capsys.readouterr().out
    assert "epoch 1/1" in out and "nothing to do: " in out  # its --max-epochs: 1, not 100
    assert pytorch_script.main(["--runs-dir", str(runs_dir), "--resume", "--max-epochs", "2"]) == 0
    assert "batch_size 16, shuffle False, num_workers 0" in capsys.readouterr().out
    starts = json.loads((runs_dir / "run-1" / "settings.json").read_text())
    assert [(s["lr"], s["seed"], s["max_epochs"]) for s in starts] == [(0.01, 4, 1), (0.01, 4, 2)]
    assert starts[1]["given"] == ["max_epochs", "resume", "runs_dir"]
    last = torch.load(runs_dir / "run-1" / "last.pt", weights_only=True)
    assert last["optimizer"]["param_groups"][0]["lr"] == 0.01


def test_a_settings_json_that_cannot_be_read_is_one_line_and_nothing_changes(
    tiny_data: Path, tmp_path: Path, capsys
) -> None:
    runs_dir = tmp_path / "runs"
    assert script(tiny_data, runs_dir, "--max-epochs", "1") == 0
    for broken in ("{not json", '{"lr": 0.1}', "[1, 2]"):
        (runs_dir / "run-1" / "settings.json").write_text(broken)
        before = snapshot(runs_dir)
        capsys.readouterr()
        assert script(tiny_data, runs_dir, "--max-epochs", "2", "--resume") == 1
        err = capsys.readouterr().err
        assert err.startswith(f"error: {runs_dir / 'run-1' / 'settings.json'} is not a list of")
        assert err.endswith("or move it away and give every flag again\n") and err.count("\n") == 1
        assert snapshot(runs_dir) == before


def test_a_file_where_a_run_should_be_is_named_as_a_file(
    tiny_data: Path, tmp_path: Path, capsys
) -> None:
    runs_dir = tmp_path / "runs"
    runs_dir.mkdir()
    (runs_dir / "c4").write_text("not a run")
    assert script(tiny_data, runs_dir, "--run-name", "c4", "--max-epochs", "1") == 1
    assert capsys.readouterr().err == (
        f"error: {runs_dir / 'c4'} is a file, not a run: choose another --run-name\n"
    )
    assert script(tiny_data, runs_dir, "--resume", "c4", "--max-epochs", "1") == 1
    assert capsys.readouterr().err == (
        f"error: {runs_dir / 'c4'} is a file, not a run: choose another name\n"
    )
    assert sorted(p.name for p in runs_dir.iterdir()) == ["c4"]


def test_resuming_from_other_data_than_the_run_started_with_says_so(
    tiny_data: Path, tmp_path: Path, capsys
) -> None:
    runs_dir = tmp_path / "runs"
    assert script(tiny_data, runs_dir, "--max-epochs", "1", "--run-name", "mine") == 0
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(tiny_data, elsewhere)
    assert script(elsewhere, runs_dir, "--max-epochs", "2", "--resume", "mine") == 0
    out = capsys.readouterr().out
    assert f"starting {runs_dir / 'mine'}" in out
    assert (
        f"warning: {runs_dir / 'mine'} was started with --data-dir {tiny_data}; this run reads"
        f" {elsewhere}"
    ) in out


def test_dry_run_writes_no_run_directory(tiny_data: Path, tmp_path: Path) -> None:
    runs_dir = tmp_path / "runs"
    assert script(tiny_data, runs_dir, "--dry-run") == 0
    assert script(tiny_data, runs_dir, "--dry-run", "--resume", "--run-name", "x") == 0
    assert not runs_dir.exists()
    assert script(tiny_data, runs_dir, "--max-epochs", "1") == 0
    before = snapshot(runs_dir)
    assert script(tiny_data, runs_dir, "--dry-run", "--run-name", "run-1") == 0
    assert snapshot(runs_dir) == before


@pytest.mark.slow
@pytest.mark.parametrize("start_method", ["spawn", "forkserver"])
def test_workers_started_with_spawn_or_forkserver_train(
    tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], start_method: str
) -> None:
    """The defaults of macOS and Windows (spawn) and of Linux from Python 3.14 (forkserver):
    each worker (one per loader here: a spawned one is a new Python, which imports torch) gets
    the Dataset pickled."""
    before = multiprocessing.get_start_method(allow_none=True)
    multiprocessing.set_start_method(start_method, force=True)  # DataLoader's default
    try:
        run_dir = tmp_path / "runs" / "run-1"
        assert train(tiny_data, run_dir, "--num-workers", "1", "--max-epochs", "2") == 0
    finally:
        multiprocessing.set_start_method(before, force=True)
    out = capsys.readouterr().out
    assert "epoch 2/2" in out and "num_workers 1" in out
    assert len(read_metrics(run_dir)) == 2


def test_two_runs_started_together_take_two_directories(tmp_path: Path) -> None:
    """The name is taken when a run starts, not when its first epoch ends."""
    runs_dir = tmp_path / "runs"
    first, _ = runs.choose(runs_dir, None, None)
    second, _ = runs.choose(runs_dir, None, None)
    assert (first.name, second.name) == ("run-1", "run-2")
    assert first.is_dir() and second.is_dir()


def test_a_run_that_fails_before_its_first_epoch_leaves_no_directory(
    tiny_data: Path, tmp_path: Path
) -> None:
    runs_dir = tmp_path / "runs"
    assert script(tiny_data, runs_dir, "--batch-size", "1000") == 1  # more than the split
    partition, _ = load_partition(tiny_data)
    (tiny_data / f"{partition['train'][5]}.pt").write_bytes(b"no tensor")  # fails in epoch 1
    assert script(tiny_data, runs_dir, "--max-epochs", "1") == 1
    assert not runs_dir.exists() or list(runs_dir.iterdir()) == []


# --resume goes on with the run's settings: what a requeued job and a user give again.


@pytest.mark.slow
def test_a_requeued_job_that_repeats_its_flags_keeps_a_scheduled_learning_rate(
    tiny_data: Path, tmp_path: Path
) -> None:
    """train.sbatch passes the same flags to every start: --lr given again, with the value the
    run has, does not reset what a scheduler made of it, and the run ends bit for bit."""
    project = edited_project(tmp_path, STEP_LR, STEP_LR_STEP)
    common = ["--device", "cpu", "--data-dir", str(tiny_data), "--runs-dir", str(tmp_path / "runs")]
    common += ["--batch-size", "32", "--num-workers", "0", "--lr", "0.01", "--tracker", "none"]
    results = in_one_python(
        project,
        ("pytorch_script.py", [*common, "--max-epochs", "4", "--run-name", "whole"]),
        ("pytorch_script.py", [*common, "--max-epochs", "2", "--run-name", "halves"]),
        ("pytorch_script.py", [*common, "--max-epochs", "4", "--resume", "halves"]),
    )
    assert [result.returncode for result in results] == [0, 0, 0], results[-1].stderr
    rows = [read_rows(tmp_path / "runs" / name / "metrics.csv") for name in ("whole", "halves")]
    assert [row["lr"] for row in rows[1]] == [0.01, 0.005, 0.0025, 0.00125]
    for row in (*rows[0], *rows[1]):
        del row["data_wait"]  # a measured time
    assert rows[0] == rows[1]
    starts = json.loads((tmp_path / "runs" / "halves" / "settings.json").read_text())
    assert "lr" not in starts[1]["given"]  # given again, unchanged: not a change


STEP_LR = (
    "pytorch_script.py",
    '    state = {"model": model, "optimizer": optimizer, "scaler": scaler}',
    "    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)\n"
    '    state = {"model": model, "optimizer": optimizer, "scaler": scaler}\n'
    '    state["scheduler"] = scheduler',
)
STEP_LR_STEP = ("pytorch_script.py", "            score = val_accuracy\n",
                "            scheduler.step()\n            score = val_accuracy\n")  # fmt: skip


def test_a_flag_that_no_longer_parses_is_one_line_unless_given_again(
    tiny_data: Path, tmp_path: Path, capsys
) -> None:
    runs_dir = tmp_path / "runs"
    assert script(tiny_data, runs_dir, "--max-epochs", "1") == 0
    path = runs_dir / "run-1" / "settings.json"
    starts = json.loads(path.read_text())
    path.write_text(json.dumps([starts[0] | {"lr": "abc"}]))
    capsys.readouterr()
    assert pytorch_script.main(["--runs-dir", str(runs_dir), "--resume", "--max-epochs", "2"]) == 1
    assert capsys.readouterr().err == (
        f"error: {path}: the run's --lr 'abc' no longer parses (could not convert string to"
        " float: 'abc'): correct it there, or give the flag on the command line\n"
    )
    resume = ["--runs-dir", str(runs_dir), "--resume", "--max-epochs", "2", "--lr", "0.002"]
    assert pytorch_script.main(resume) == 0
    assert json.loads(path.read_text())[-1]["lr"] == 0.002


def test_amp_and_log_model_can_be_turned_off_when_resuming(tiny_data: Path, tmp_path: Path) -> None:
    runs_dir = tmp_path / "runs"
    assert script(tiny_data, runs_dir, "--max-epochs", "1", "--amp") == 0
    path = runs_dir / "run-1" / "settings.json"
    assert json.loads(path.read_text())[-1]["amp"] is True
    assert pytorch_script.main(["--runs-dir", str(runs_dir), "--resume"]) == 0  # nothing to do
    assert pytorch_script.main(["--runs-dir", str(runs_dir), "--resume", "--no-amp",
                                "--max-epochs", "2"]) == 0  # fmt: skip
    assert [start["amp"] for start in json.loads(path.read_text())] == [True, False]


def test_a_flag_added_without_a_field_of_settings_is_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    """As a user adds a flag of theirs to plumbing/cli.py's parser, and forgets Settings."""
    parser = cli.training_parser

    def with_a_flag(description: str) -> object:
        p = parser(description)
        p.add_argument("--label-smoothing", type=float, default=0.0)
        return p

    monkeypatch.setattr(cli, "training_parser", with_a_flag)
    with pytest.raises(SystemExit) as exited:
        pytorch_script.main([])
    assert exited.value.code == 2
    assert capsys.readouterr().err.endswith(
        "error: plumbing/cli.py: give Settings a field for each flag of yours (label_smoothing)\n"
    )


@pytest.mark.slow
def test_train_may_leave_its_loop_early_and_max_epochs_be_written_in(
    tiny_data: Path, tmp_path: Path
) -> None:
    """Two edits a user makes: a break in train()'s loop (a few steps an epoch), and
    max_epochs written in, as the article does: the run goes on, --dry-run does one epoch."""
    project = edited_project(
        tmp_path,
        ("pytorch_script.py", "        batches.record(loss)  # the epoch's mean loss",
         "        if batches.number == 3:\n            break\n        batches.record(loss)  #"),
        ("pytorch_script.py", "    max_epochs = settings.max_epochs", "    max_epochs = 3"),
    )  # fmt: skip
    common = ["--device", "cpu", "--data-dir", str(tiny_data), "--runs-dir", str(tmp_path / "runs")]
    common += ["--batch-size", "16", "--num-workers", "0", "--tracker", "none"]
    dry, whole = in_one_python(
        project, ("pytorch_script.py", [*common, "--dry-run"]), ("pytorch_script.py", common)
    )
    assert (dry.returncode, whole.returncode) == (0, 0), dry.stderr + whole.stderr
    assert "epoch 1/1 " in dry.stdout and "epoch 2/" not in dry.stdout
    rows = read_rows(tmp_path / "runs" / "run-1" / "metrics.csv")
    assert [row["epoch"] for row in rows] == [1, 2, 3] and all(
        row["train_loss"] > 0 for row in rows
    )


# A user's edit of the loop over epochs that the run cannot go on with: one line each; a bug of
# theirs: its traceback, and nothing more (no DataLoader worker's).
MISUSES = {
    "twice": "run.end_epoch(1, ...) in epoch 1, again: pytorch_script.py calls it once",
    "never": "epoch 1 ended without run.end_epoch(1, ...), which logs and saves it",
    "lr": "run.end_epoch(..., lr=): metrics.csv has that column of its own",
    "text": "run.end_epoch(...): val_note is 'good', not a number",
    "bug": "ValueError: a bug in the loop",
}
MISUSE = (
    "pytorch_script.py",
    "            run.end_epoch(\n",
    """            misuse = os.environ["MISUSE"]
            if misuse == "twice":
                run.end_epoch(epoch, val_accuracy)
            if misuse == "lr":
                run.end_epoch(epoch, val_accuracy, lr=0.5)
            if misuse == "text":
                run.end_epoch(epoch, val_accuracy, val_note="good")
            if misuse == "bug":
                raise ValueError("a bug in the loop")
            if misuse != "never":
                run.end_epoch(
""",
)


@pytest.mark.slow
def test_misuses_of_the_loop_are_one_line_and_a_bug_its_traceback(
    tiny_data: Path, tmp_path: Path
) -> None:
    project = edited_project(
        tmp_path, MISUSE, ("pytorch_script.py", "import torch\n", "import os\n\nimport torch\n")
    )
    flags = ["--device", "cpu", "--data-dir", str(tiny_data), "--runs-dir", str(tmp_path / "runs")]
    flags += ["--max-epochs", "1", "--batch-size", "32", "--num-workers", "2", "--tracker", "none"]
    for misuse, line in MISUSES.items():
        result = subprocess.run(
            [sys.executable, "pytorch_script.py", *flags], cwd=project,
            env=os.environ | {"MISUSE": misuse}, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert result.returncode == 1, (misuse, result.stderr)
        if misuse == "bug":
            assert "Traceback" in result.stderr and result.stderr.endswith(line + "\n")
            assert "DataLoader worker" not in result.stderr, result.stderr
        else:
            assert result.stderr.startswith("error: " + line), result.stderr
            assert result.stderr.count("\n") == 1, result.stderr
