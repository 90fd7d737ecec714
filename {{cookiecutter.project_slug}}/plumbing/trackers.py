"""--tracker mlflow or wandb: each epoch's row of metrics.csv, the run's settings and (with
--log-model) its best.pt, in the experiment tracker a team already looks at. Only rank 0 logs.
A run directory is one tracker run: its id is kept in runs/<name>/tracker.json, and --resume
goes on with it. Neither package is imported unless chosen: pip install -e '.[mlflow]' or
'.[wandb]'.

Offline first. MLflow writes to runs/mlflow.db, a store beside the runs so that `mlflow ui`
compares them, unless MLFLOW_TRACKING_URI names a server. W&B runs offline, into
runs/<name>/wandb/ (upload with wandb sync), unless you are logged in or WANDB_MODE says so."""

import importlib
import json
import logging
import netrc
import os
import re
import shlex
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote, urlparse

from plumbing import distributed
from plumbing.cli import PROJECT, TEMPLATE_VERSION, Settings
from plumbing.errors import SetupError, Stopped
from plumbing.facts import Facts
from plumbing.files import atomic_write_text

Say = Callable[[str], None]


def start(settings: Settings, facts: Facts, say: Say) -> "MLflow | WandB | None":
    """On rank 0, the tracker run of facts.run_dir, started or continued; None for --tracker
    none, --dry-run (which only checks that the package is there) and the other ranks. A
    tracker that cannot be used fails every rank, in one line from rank 0."""
    if settings.tracker == "none":  # (the same on every rank: no need to ask rank 0)
        return None
    tracker = None

    def open_on_rank_0() -> None:
        nonlocal tracker
        tracker = open_run(settings, facts, say)

    distributed.once(open_on_rank_0)  # a SetupError there is every rank's, said by rank 0
    return tracker


def open_run(settings: Settings, facts: Facts, say: Say) -> "MLflow | WandB | None":
    module = load(settings.tracker)
    if settings.dry_run:
        return None
    if settings.tracker == "wandb" and os.environ.get("WANDB_MODE") == "disabled":
        say("wandb: WANDB_MODE=disabled: nothing goes to W&B")
        return None
    ids_file = facts.run_dir / "tracker.json"
    ids = read_ids(ids_file)
    kind = MLflow if settings.tracker == "mlflow" else WandB
    try:
        tracker = kind(module, settings, facts, ids.get(settings.tracker), say)
    except kind.failures(module) as err:  # unreachable, refused, a store it cannot write
        raise SetupError(
            f"--tracker {settings.tracker}: cannot log to {kind.where(settings)}: {reason(err)}."
            f" {kind.advice(settings)}, or pass --tracker none"
        ) from None
    atomic_write_text(ids_file, json.dumps(ids | {settings.tracker: tracker.id}, indent=1) + "\n")
    return tracker


def load(name: str) -> object:
    """The tracker's package, or a SetupError that says how to install it."""
    try:
        return importlib.import_module(name)
    except ImportError as err:
        raise SetupError(
            f"--tracker {name} needs the {name} package ({err}): pip install -e '.[{name}]',"
            " or pass --tracker none"
        ) from None


def read_ids(path: Path) -> dict[str, str]:
    try:
        ids = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return ids if isinstance(ids, dict) else {}


def params(settings: Settings, facts: Facts) -> dict[str, object]:
    """Every flag, and what the run found: the data's shape and class count, the device, the
    data's digest; with the template version. As settings.json has them (paths as text)."""
    return settings.flags() | facts.as_dict() | {"template_version": TEMPLATE_VERSION}


def reason(err: BaseException) -> str:
    """The gist of a tracker's error, on one line: the OS's words where there are some."""
    text = " ".join(str(err).split()) or type(err).__name__
    found = re.search(r"\[Errno -?\d+\] [^'\"()]+", text)
    text = found[0].strip() if found else text
    return (text if len(text) <= 300 else text[:299] + "…").rstrip(".")


def outcome() -> str:
    """How the run is ending, from the exception on its way out, if any: finished, stopped
    by a signal or Ctrl-C (and resumable), or failed."""
    err = sys.exc_info()[1]
    if err is None:
        return "finished"
    return "stopped" if isinstance(err, (Stopped, KeyboardInterrupt)) else "failed"


# Flags that say how a start began, not what it trains: no tag when a resumed start changes them.
HOW_IT_STARTED = {"resume", "run_name"}


class MLflow:
    """One MLflow run, through MlflowClient (no global active run)."""

    @staticmethod
    def failures(mlflow: object) -> tuple[type[BaseException], ...]:
        import requests

        return (mlflow.exceptions.MlflowException, requests.RequestException, OSError)

    @staticmethod
    def where(settings: Settings) -> str:
        return os.environ.get("MLFLOW_TRACKING_URI") or str(settings.runs_dir / "mlflow.db")

    @staticmethod
    def advice(settings: Settings) -> str:
        uri = os.environ.get("MLFLOW_TRACKING_URI")
        if uri and urlparse(uri).scheme in ("http", "https"):
            return "Start the server or correct MLFLOW_TRACKING_URI"
        if uri:
            return "Correct MLFLOW_TRACKING_URI"
        return "Check that store (or move it away to start a new one)"

    def __init__(
        self, mlflow: object, settings: Settings, facts: Facts, earlier: str | None, say: Say
    ) -> None:
        from mlflow.entities import Param, RunTag

        self.mlflow, self.run_dir, self.log_model = mlflow, facts.run_dir, settings.log_model
        # MLflow retries a failed request for minutes by default: a training loop should not
        # wait that long for its metrics server (the variables, where you set them, decide).
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        # The local store's creation says what it does on the INFO level: not worth a line.
        for name in ("mlflow.store.db.utils", "alembic"):
            logging.getLogger(name).setLevel(logging.WARNING)
        local, artifacts = local_store(settings.runs_dir)
        uri = os.environ.get("MLFLOW_TRACKING_URI") or local
        if urlparse(uri).scheme in ("", "file"):  # MLflow 3 refuses it, in 600 characters
            raise SetupError(
                f"--tracker mlflow: MLFLOW_TRACKING_URI={uri} is a directory store, which MLflow"
                " no longer takes: give a database (sqlite:///path/to/mlflow.db) or a server"
                " (http://host:5000), or unset it for runs/mlflow.db"
            )
        self.client = mlflow.MlflowClient(tracking_uri=uri)
        run = self.find(earlier, say)
        if run is None:
            experiment = self.experiment(artifacts if uri == local else None)
            run = self.client.create_run(experiment, run_name=facts.run_dir.name)
        self.id = run.info.run_id
        try:
            self.client.update_run(self.id, status="RUNNING")
            # A parameter cannot change in MLflow: a flag that a later start of the run changes
            # is the tag resumed.<flag>, its latest value (settings.json keeps every start's).
            values = [Param(k, str(v)[:6000]) for k, v in params(settings, facts).items()]
            new = [p for p in values if p.key not in run.data.params]
            tags = [
                RunTag(f"resumed.{p.key}", p.value)
                for p in values
                if p.key not in HOW_IT_STARTED
                and (
                    run.data.params.get(p.key, p.value) != p.value
                    or f"resumed.{p.key}" in run.data.tags
                )
            ]
            for i in range(0, max(len(new), len(tags)), 100):  # at most 100 of each per request
                self.client.log_batch(self.id, params=new[i : i + 100], tags=tags[i : i + 100])
        except BaseException:
            self.close("failed", quietly=True)  # not left RUNNING
            raise
        store = os.environ.get("MLFLOW_TRACKING_URI") or (
            f"{settings.runs_dir / 'mlflow.db'} (browse: mlflow ui --backend-store-uri"
            f" {shlex.quote(store_uri(settings.runs_dir))})"
        )
        how = "going on with" if earlier == self.id else "logging to"
        say(f"mlflow: {how} run {self.id} in {store}")

    def find(self, run_id: str | None, say: Say) -> object | None:
        """The run of this run directory, if the store has it."""
        if run_id is None:
            return None
        try:
            return self.client.get_run(run_id)
        except self.mlflow.exceptions.MlflowException as err:
            if err.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
        say(f"warning: mlflow: run {run_id} is not in this store: a new run goes on from here")
        return None

    def experiment(self, artifacts: str | None) -> str:
        """MLFLOW_EXPERIMENT_NAME's experiment, or the project's; made if it is not there yet."""
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or PROJECT
        experiment = self.client.get_experiment_by_name(name)
        if experiment is not None:
            return experiment.experiment_id
        try:
            return self.client.create_experiment(name, artifact_location=artifacts)
        except self.mlflow.exceptions.MlflowException as err:
            if err.error_code != "RESOURCE_ALREADY_EXISTS":  # another run made it just now
                raise
        return self.client.get_experiment_by_name(name).experiment_id

    def log(self, epoch: int, row: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(key, value, now, epoch) for key, value in row.items()]
        self.client.log_batch(self.id, metrics=metrics)

    def close(self, how: str, quietly: bool = False) -> None:
        best = self.run_dir / "best.pt"
        try:
            if how == "finished" and self.log_model and best.exists():
                self.client.log_artifact(self.id, str(best))
            status = {"finished": "FINISHED", "stopped": "KILLED", "failed": "FAILED"}[how]
            self.client.set_terminated(self.id, status)
        except Exception:
            if not quietly:
                raise


def local_store(runs_dir: Path) -> tuple[str, str]:
    """The local store's tracking URI and its artifacts' location: beside the runs."""
    return store_uri(runs_dir.absolute()), (runs_dir.absolute() / "mlartifacts").as_uri()


def store_uri(runs_dir: Path) -> str:
    """Quoted: a ?, # or % in the path is part of its name."""
    return f"sqlite:///{quote(runs_dir.as_posix())}/mlflow.db"


class WandB:
    """One Weights & Biases run; offline unless you are logged in or WANDB_MODE says."""

    @staticmethod
    def failures(wandb: object) -> tuple[type[BaseException], ...]:
        return (wandb.errors.Error, OSError)

    @staticmethod
    def where(settings: Settings) -> str:
        return "W&B"

    @staticmethod
    def advice(settings: Settings) -> str:
        return "Check the network and `wandb login` (or WANDB_API_KEY), set WANDB_MODE=offline"

    def __init__(
        self, wandb: object, settings: Settings, facts: Facts, earlier: str | None, say: Say
    ) -> None:
        self.wandb, self.run_dir, self.log_model = wandb, facts.run_dir, settings.log_model
        # Offline unless logged in; logged in, as W&B decides (WANDB_MODE, `wandb offline`).
        mode = None if os.environ.get("WANDB_MODE") or logged_in(wandb) else "offline"
        files = facts.run_dir / "wandb"
        had_files = files.exists()
        try:
            self.run = wandb.init(
                project=os.environ.get("WANDB_PROJECT") or PROJECT,
                name=facts.run_dir.name,
                id=earlier,  # None: a new run
                resume="allow",
                dir=facts.run_dir,
                mode=mode,
                config=params(settings, facts),
                allow_val_change=True,  # a resumed start's flags replace the earlier ones
                settings=wandb.Settings(silent=True),  # the line below says where it went
            )
        except BaseException:
            if not had_files:  # its logs of a start that failed: nothing of the run is left
                shutil.rmtree(files, ignore_errors=True)
            raise
        self.id = self.run.id
        if self.run.url:
            say(f"wandb: {self.run.url}")
        else:
            say(
                f"wandb: offline, in {Path(self.run.dir).parent}; upload with"
                f" wandb sync {facts.run_dir / 'wandb' / 'offline-run-*'}"
            )

    def log(self, epoch: int, row: dict[str, float]) -> None:
        # The epoch as the step: a resumed start goes on where the last one stopped.
        self.run.log(row | {"epoch": epoch}, step=epoch)

    def close(self, how: str) -> None:
        best = self.run_dir / "best.pt"
        try:
            if how == "finished" and self.log_model and best.exists():
                name = re.sub(r"[^\w.-]", "-", f"{self.run.name}-best", flags=re.ASCII)
                artifact = self.wandb.Artifact(name, "model")
                artifact.add_file(str(best))
                self.run.log_artifact(artifact)
            self.run.finish(exit_code={"finished": 0, "stopped": 75, "failed": 1}[how])
        finally:
            self.wandb.teardown()  # a next run in this process reads the settings afresh


def logged_in(wandb: object) -> bool:
    """Whether W&B has an API key here (WANDB_API_KEY, or `wandb login`'s netrc), without
    asking the server."""
    settings = wandb.setup(wandb.Settings(silent=True)).settings
    if settings.api_key:
        return True
    address = urlparse(settings.base_url)
    hosts = {address.netloc, address.hostname}  # with its port, as W&B writes it, or without
    for name in (os.environ.get("NETRC"), "~/.netrc", "~/_netrc"):  # W&B's order
        path = Path(name).expanduser() if name else None
        if path and path.is_file():
            try:
                found = netrc.netrc(path)
            except (OSError, netrc.NetrcParseError):
                return False
            return any(found.authenticators(host) for host in hosts if host)
    return False
