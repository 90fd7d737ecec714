"""--tracker mlflow and --tracker wandb (plumbing/trackers.py), against the real libraries and
offline: what a run logged is read back through MLflow's own client and W&B's own reader of its
offline files, and must say what metrics.csv says. They need the extras:
pip install -e ".[mlflow,wandb]" (".[dev]" has them)."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import pytorch_script
from plumbing import cli, trackers

from baked.helpers import read_rows, train

pytestmark = pytest.mark.slow  # MLflow and W&B, read back: the full suite's (--full)

COLUMNS = ("train_loss", "val_loss", "val_accuracy", "lr", "data_wait")  # metrics.csv's
PROJECT = Path(pytorch_script.__file__).parent


@pytest.fixture(autouse=True)
def offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No tracker of this machine: no server, key or setting of its user. W&B's own files (its
    caches, settings and staged artifacts) go to tmp_path."""
    for name in list(os.environ):
        if name.startswith(("MLFLOW_", "WANDB_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))  # no `wandb login`
    for name in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(name, str(tmp_path / "wandb-home" / name))
    yield
    if (
        sys.modules.get("wandb") is not None
    ):  # W&B keeps the settings it read in the process: forget them
        sys.modules["wandb"].teardown()


def closed_port() -> int:
    """A port of 127.0.0.1 that nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def mlflow_run(runs_dir: Path, run_dir: Path) -> tuple[object, object]:
    """MLflow's client on the project's local store, and the run that run_dir logged to."""
    from urllib.parse import quote

    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{quote(str(runs_dir / 'mlflow.db'))}")
    run_id = json.loads((run_dir / "tracker.json").read_text())["mlflow"]
    return client, client.get_run(run_id)


def assert_mlflow_shows_the_csv(client: object, run: object, run_dir: Path) -> None:
    rows = read_rows(run_dir / "metrics.csv")
    for column in COLUMNS:
        history = client.get_metric_history(run.info.run_id, column)
        assert [m.step for m in history] == [row["epoch"] for row in rows], column
        assert [m.value for m in history] == pytest.approx([row[column] for row in rows], abs=1e-6)


def all_flags() -> set[str]:
    """The dest of every flag of pytorch_script.py."""
    return set(cli.training_settings([], "").flags())


def test_mlflow_gets_each_epoch_the_settings_and_best_pt_and_resume_goes_on(
    tiny_data: Path, tmp_path: Path, capsys
) -> None:
    pytest.importorskip("mlflow", reason="no mlflow extra: pip install -e '.[mlflow]'")
    runs_dir = tmp_path / "my runs?%41"  # what a URL would read otherwise: part of the name
    run_dir = runs_dir / "run-1"
    flags = ["--tracker", "mlflow", "--num-workers", "0", "--log-model"]
    assert train(tiny_data, run_dir, *flags, "--max-epochs", "2") == 0
    out = capsys.readouterr().out
    assert (runs_dir / "mlflow.db").is_file()
    client, run = mlflow_run(runs_dir, run_dir)
    assert f"mlflow: logging to run {run.info.run_id} in {runs_dir / 'mlflow.db'}" in out
    assert run.info.status == "FINISHED" and run.info.run_name == "run-1"
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.name == cli.PROJECT
    params = run.data.params
    assert all_flags() | {"input_shape", "num_classes", "template_version"} <= set(params)
    assert (params["input_shape"], params["num_classes"]) == ("[1, 8, 8]", "4")
    assert params["template_version"] == cli.TEMPLATE_VERSION and params["max_epochs"] == "2"
    assert_mlflow_shows_the_csv(client, run, run_dir)
    [artifact] = client.list_artifacts(run.info.run_id)
    local = Path(client.download_artifacts(run.info.run_id, artifact.path, str(tmp_path)))
    assert local.read_bytes() == (run_dir / "best.pt").read_bytes()

    # Resumed twice: the same MLflow run goes on, one series; a flag a start changed is a tag
    # with its latest value (a bare --resume keeps the run's: --lr 5e-4).
    assert train(tiny_data, run_dir, *flags, "--max-epochs", "3", "--resume", "--lr", "5e-4") == 0
    assert train(tiny_data, run_dir, *flags, "--max-epochs", "4", "--resume") == 0
    assert capsys.readouterr().out.count(f"mlflow: going on with run {run.info.run_id}") == 2
    client, again = mlflow_run(runs_dir, run_dir)
    assert again.info.run_id == run.info.run_id and again.info.status == "FINISHED"
    assert (again.data.params["max_epochs"], again.data.params["lr"]) == ("2", "0.001")
    tags = {k: v for k, v in again.data.tags.items() if k.startswith("resumed.")}
    assert tags == {"resumed.max_epochs": "4", "resumed.lr": "0.0005"}
    assert [row["epoch"] for row in read_rows(run_dir / "metrics.csv")] == [1, 2, 3, 4]
    assert_mlflow_shows_the_csv(client, again, run_dir)
    assert len(client.search_runs([run.info.experiment_id])) == 1


def test_mlflow_says_how_a_run_ended_stopped_resumed_failed(
    tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("mlflow", reason="no mlflow extra: pip install -e '.[mlflow]'")
    runs_dir = tmp_path / "runs"
    run_dir = runs_dir / "run-1"
    validate = pytorch_script.validate

    def validate_and_get_a_signal(*args: object) -> tuple[float, float]:
        signal.raise_signal(signal.SIGTERM)  # as a cluster preempts the job
        return validate(*args)

    flags = ["--tracker", "mlflow", "--num-workers", "0", "--max-epochs", "3"]
    with monkeypatch.context() as patched:
        patched.setattr(pytorch_script, "validate", validate_and_get_a_signal)
        assert train(tiny_data, run_dir, *flags) == 75
    client, run = mlflow_run(runs_dir, run_dir)
    assert run.info.status == "KILLED"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_loss")] == [1]

    assert train(tiny_data, run_dir, *flags, "--resume") == 0
    client, run = mlflow_run(runs_dir, run_dir)
    assert run.info.status == "FINISHED"
    assert_mlflow_shows_the_csv(client, run, run_dir)

    # A run that diverges fails, and says so in its tracker too; started over, its directory
    # goes on with the same tracker run.
    other = runs_dir / "diverged"
    flags = ["--tracker", "mlflow", "--num-workers", "0", "--max-epochs", "1"]
    assert train(tiny_data, other, *flags, "--lr", "1e30") == 1
    failed = mlflow_run(runs_dir, other)[1]
    assert failed.info.status == "FAILED"
    assert train(tiny_data, other, *flags, "--resume") == 0
    client, run = mlflow_run(runs_dir, other)
    assert run.info.run_id == failed.info.run_id and run.info.status == "FINISHED"
    assert [r.info.run_name for r in client.search_runs([run.info.experiment_id])] == [
        "diverged", "run-1",
    ]  # fmt: skip


def wandb_records(run_dir: Path) -> list[list[dict]]:
    """The records of each W&B offline run in run_dir (one per start: the first, each resume),
    in order, as W&B's own reader of its .wandb files prints them."""
    starts = []
    for path in sorted((run_dir / "wandb").glob("offline-run-*/run-*.wandb")):
        command = [sys.executable, "-m", "wandb", "leet", "inspect", "--json", str(path)]
        result = subprocess.run(
            command, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL
        )
        assert result.returncode == 0, result.stderr
        starts.append([json.loads(line) for line in result.stdout.splitlines()])
    return starts


def test_wandb_runs_offline_with_each_epoch_the_settings_and_best_pt_and_resume_goes_on(
    tiny_data: Path, tmp_path: Path, capsys
) -> None:
    pytest.importorskip("wandb", reason="no wandb extra: pip install -e '.[wandb]'")
    run_dir = tmp_path / "runs" / "run-1"
    flags = ["--tracker", "wandb", "--num-workers", "2", "--log-model"]
    assert train(tiny_data, run_dir, *flags, "--max-epochs", "2") == 0
    assert train(tiny_data, run_dir, *flags, "--max-epochs", "4", "--resume") == 0
    out = capsys.readouterr().out
    sync = f"upload with wandb sync {run_dir / 'wandb' / 'offline-run-*'}\n"
    assert out.count(f"wandb: offline, in {run_dir / 'wandb'}/offline-run-") == 2
    assert out.count(sync) == 2

    first, resumed = wandb_records(run_dir)
    run_id = json.loads((run_dir / "tracker.json").read_text())["wandb"]
    history = []
    for records, max_epochs in ((first, 2), (resumed, 4)):
        [run] = [r["run"] for r in records if r["type"] == "run"]
        assert (run["run_id"], run["display_name"], run["project"]) == (
            run_id, "run-1", cli.PROJECT,
        )  # fmt: skip
        config = run["config"]["update"]
        assert all_flags() | {"input_shape", "num_classes", "template_version"} <= set(config)
        assert config["max_epochs"] == max_epochs and config["input_shape"] == [1, 8, 8]
        assert config["template_version"] == cli.TEMPLATE_VERSION
        [artifact] = [r["artifact"] for r in records if r["type"] == "artifact"]
        assert (artifact["name"], artifact["type"]) == ("run-1-best", "model")
        assert [c["path"] for c in artifact["manifest"]["contents"]] == ["best.pt"]
        [ended] = [r["exit"] for r in records if r["type"] == "exit"]
        assert ended.get("exit_code", 0) == 0
        history += [r["history"] for r in records if r["type"] == "history"]

    # One series over both starts: each epoch once, as its step, with the CSV's numbers.
    rows = read_rows(run_dir / "metrics.csv")
    assert (
        [int(h["step"]["num"]) for h in history] == [row["epoch"] for row in rows] == [1, 2, 3, 4]
    )
    for h, row in zip(history, rows, strict=True):
        assert h["item"]["epoch"] == row["epoch"]
        assert [h["item"][c] for c in COLUMNS] == pytest.approx([row[c] for c in COLUMNS], abs=1e-6)


@pytest.mark.parametrize("tracker", ["mlflow", "wandb"])
def test_a_tracker_that_cannot_be_reached_is_one_line_before_training(
    tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys, tracker: str
) -> None:
    pytest.importorskip(tracker, reason=f"no {tracker} extra: pip install -e '.[{tracker}]'")
    address = f"http://127.0.0.1:{closed_port()}"
    if tracker == "mlflow":
        monkeypatch.setenv("MLFLOW_TRACKING_URI", address)
        expected = (
            f"error: --tracker mlflow: cannot log to {address}: [Errno 111] Connection refused."
            " Start the server or correct MLFLOW_TRACKING_URI, or pass --tracker none\n"
        )
    else:  # logged in (`wandb login` writes the key to netrc), to a server that is not there
        netrc = tmp_path / "netrc"
        netrc.write_text(
            f"machine {address.removeprefix('http://')} login user password {'k' * 40}\n"
        )
        netrc.chmod(0o600)
        monkeypatch.setenv("NETRC", str(netrc))
        monkeypatch.setenv("WANDB_BASE_URL", address)
        monkeypatch.setenv("WANDB_INIT_TIMEOUT", "3")
        expected = "error: --tracker wandb: cannot log to W&B: "
    run_dir = tmp_path / "runs" / "run-1"
    started = time.monotonic()
    assert train(tiny_data, run_dir, "--tracker", tracker, "--num-workers", "0") == 1
    captured = capsys.readouterr()
    assert captured.err.startswith(expected) and captured.err.count("\n") == 1, captured.err
    assert "Connection refused" in captured.err or "connection refused" in captured.err
    assert "epoch 1/" not in captured.out  # before an epoch is spent
    assert time.monotonic() - started < 60
    assert not run_dir.exists(), "nothing is left of a run that could not start"


@pytest.mark.parametrize("tracker", ["mlflow", "wandb"])
@pytest.mark.parametrize("flags", [["--dry-run"], ["--max-epochs", "1"]])
def test_a_tracker_not_installed_is_one_line_before_training(
    tiny_data: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys,
    tracker: str,
    flags: list[str],
) -> None:
    monkeypatch.setitem(sys.modules, tracker, None)  # not installed, as far as imports go
    run_dir = tmp_path / "runs" / "run-1"
    assert train(tiny_data, run_dir, "--tracker", tracker, "--num-workers", "0", *flags) == 1
    captured = capsys.readouterr()
    assert captured.err == (
        f"error: --tracker {tracker} needs the {tracker} package (import of {tracker} halted;"
        f" None in sys.modules): pip install -e '.[{tracker}]', or pass --tracker none\n"
    )
    assert "epoch 1/1" not in captured.out
    assert not run_dir.exists()


def test_a_directory_store_and_log_model_alone_are_one_line(
    tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    pytest.importorskip("mlflow", reason="no mlflow extra: pip install -e '.[mlflow]'")
    run_dir = tmp_path / "runs" / "run-1"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", str(tmp_path / "mlruns"))  # MLflow 2's habit
    assert train(tiny_data, run_dir, "--tracker", "mlflow", "--num-workers", "0") == 1
    assert capsys.readouterr().err == (
        f"error: --tracker mlflow: MLFLOW_TRACKING_URI={tmp_path / 'mlruns'} is a directory"
        " store, which MLflow no longer takes: give a database (sqlite:///path/to/mlflow.db) or"
        " a server (http://host:5000), or unset it for runs/mlflow.db\n"
    )
    assert not run_dir.exists() and not (tmp_path / "mlruns").exists()

    assert train(tiny_data, run_dir, "--log-model") == 1  # (train() passes --tracker none)
    assert capsys.readouterr().err == (
        "error: --log-model stores best.pt in a tracker: add --tracker mlflow or --tracker wandb\n"
    )
    assert not run_dir.exists()


def test_a_tracker_that_fails_during_the_run_is_a_warning_and_training_goes_on(
    tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    pytest.importorskip("mlflow", reason="no mlflow extra: pip install -e '.[mlflow]'")
    runs_dir = tmp_path / "runs"
    run_dir = runs_dir / "run-1"
    log, calls = trackers.MLflow.log, []

    def server_gone_at_epoch_2(self: trackers.MLflow, epoch: int, row: dict) -> None:
        calls.append(epoch)
        if epoch == 2:
            raise ConnectionError("[Errno 111] Connection refused")
        log(self, epoch, row)

    monkeypatch.setattr(trackers.MLflow, "log", server_gone_at_epoch_2)
    flags = ["--tracker", "mlflow", "--num-workers", "0", "--max-epochs", "3"]
    assert train(tiny_data, run_dir, *flags) == 0
    assert (
        capsys.readouterr().out.count(
            "warning: --tracker mlflow failed at epoch 2 ([Errno 111] Connection refused): no more"
            f" epochs go there in this run; {run_dir / 'metrics.csv'} has them all\n"
        )
        == 1
    )
    assert calls == [1, 2] and len(read_rows(run_dir / "metrics.csv")) == 3
    client, run = mlflow_run(runs_dir, run_dir)
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")] == [1]
    assert run.info.status == "FINISHED"


def test_wandb_disabled_logs_nothing_and_says_so(tiny_data: Path, tmp_path: Path, capsys) -> None:
    pytest.importorskip("wandb", reason="no wandb extra: pip install -e '.[wandb]'")
    os.environ["WANDB_MODE"] = "disabled"  # (the autouse fixture restores the environment)
    run_dir = tmp_path / "runs" / "run-1"
    assert (
        train(tiny_data, run_dir, "--tracker", "wandb", "--num-workers", "0", "--max-epochs", "1")
        == 0
    )
    assert "wandb: WANDB_MODE=disabled: nothing goes to W&B\n" in capsys.readouterr().out
    assert sorted(p.name for p in run_dir.iterdir()) == [
        "best.pt", "last.pt", "metrics.csv", "settings.json",
    ]  # fmt: skip


def test_without_a_tracker_neither_package_is_imported(tiny_data: Path, tmp_path: Path) -> None:
    code = (
        "import sys, pytorch_script;"
        f" status = pytorch_script.main(['--dry-run', '--device', 'cpu', '--num-workers', '0',"
        f" '--data-dir', {str(tiny_data)!r}, '--tracker', 'none', '--no-tensorboard']);"
        " print(status, sorted({m.split('.')[0] for m in sys.modules} & {'mlflow', 'wandb'}))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=PROJECT, capture_output=True, text=True, timeout=120
    )
    assert result.stdout.splitlines()[-1] == "0 []", result.stdout + result.stderr


@pytest.mark.slow
def test_under_torchrun_rank_0_alone_logs(tiny_data: Path, tmp_path: Path) -> None:
    pytest.importorskip("mlflow", reason="no mlflow extra: pip install -e '.[mlflow]'")
    from baked.test_distributed import ended, torchrun

    runs_dir = tmp_path / "runs"
    result = torchrun(
        "--data-dir", str(tiny_data), "--runs-dir", str(runs_dir), "--max-epochs", "2",
        "--num-workers", "0", "--batch-size", "16", "--tracker", "mlflow",
    )  # fmt: skip
    assert ended(result), result.stdout + result.stderr
    assert result.stdout.count("mlflow: logging to run ") == 1
    client, run = mlflow_run(runs_dir, runs_dir / "run-1")
    assert len(client.search_runs([run.info.experiment_id])) == 1
    assert run.info.status == "FINISHED" and run.data.params["device"] == "cpu"
    assert_mlflow_shows_the_csv(client, run, runs_dir / "run-1")

    # A server that cannot be reached: one line for the job, from rank 0, before training.
    with pytest.MonkeyPatch.context() as patched:
        patched.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{closed_port()}")
        result = torchrun(
            "--data-dir", str(tiny_data), "--runs-dir", str(runs_dir), "--num-workers", "0",
            "--tracker", "mlflow",
        )  # fmt: skip
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("error")]
    # (torchrun adds its own report of a failed job: no rank's traceback is in it)
    assert len(errors) == 1 and 'pytorch_script.py", line' not in result.stderr, result.stderr
    assert errors[0].startswith("error: --tracker mlflow: cannot log to http://127.0.0.1:")
    assert "epoch 1/" not in result.stdout
