"""--tracker mlflow or wandb: each epoch's row of metrics.csv, the run's settings and (with
--log-model) its best.pt, in the experiment tracker a team already looks at. Only rank 0 logs,
and --resume goes on with the same tracker run: its id is kept in runs/<name>/tracker.json.
Neither package is imported unless chosen: pip install -e '.[mlflow]' or '.[wandb]'.

Offline first. MLflow writes to runs/mlflow.db, a store beside the runs so that `mlflow ui`
compares them, unless MLFLOW_TRACKING_URI names a server. W&B runs offline, into
runs/<name>/wandb/ (upload with wandb sync), unless you are logged in or WANDB_MODE says so."""

import argparse
import contextlib
import importlib
import json
import logging
import netrc
import os
import re
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlparse

from plumbing.cli import PROJECT, TEMPLATE_VERSION
from plumbing.errors import SetupError
from plumbing.files import atomic_write_text
from plumbing.preemption import Stopped

PACKAGES = {"mlflow": "mlflow", "wandb": "wandb"}  # --tracker: the module it imports


def load(name: str) -> object:
    """The tracker's package, or a SetupError that says how to install it."""
    try:
        return importlib.import_module(PACKAGES[name])
    except ImportError as err:
        raise SetupError(
            f"--tracker {name} needs the {name} package ({err}): pip install -e '.[{name}]',"
            " or pass --tracker none"
        ) from None


def start(args: argparse.Namespace, say: Callable[[str], None]) -> "MLflow | WandB | None":
    """The tracker run of args.run_dir, started or, when the run goes on from its last.pt,
    continued; None for --tracker none. A --dry-run only checks that the package is there."""
    if args.tracker == "none":
        return None
    module = load(args.tracker)
    if args.dry_run:
        return None
    kind = MLflow if args.tracker == "mlflow" else WandB
    ids_file = args.run_dir / "tracker.json"
    ids = read_ids(ids_file)
    # a run that goes on from its last.pt continues its tracker run; one that starts over does not
    earlier = ids.get(args.tracker) if (args.run_dir / "last.pt").exists() else None
    try:
        tracker = kind(module, args, earlier, say)
    except SetupError:
        raise
    except Exception as err:  # unreachable, refused, a store it cannot write: before training
        raise SetupError(
            f"--tracker {args.tracker}: cannot log to {kind.where(args)}: {reason(err)}."
            f" {kind.fix} or pass --tracker none"
        ) from None
    atomic_write_text(ids_file, json.dumps(ids | {args.tracker: tracker.id}, indent=1) + "\n")
    return tracker


def read_ids(path: Path) -> dict[str, str]:
    try:
        ids = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return ids if isinstance(ids, dict) else {}


def settings(args: argparse.Namespace) -> dict[str, object]:
    """Every flag, and what the run found: the data's shape and class count, the device, the
    data's digest; with the template version. As settings.json has them (paths as text)."""
    values = json.loads(json.dumps(vars(args), default=str))
    return values | {"template_version": TEMPLATE_VERSION}


def reason(err: BaseException) -> str:
    """The gist of a tracker's error, on one line: the OS's words where there are some."""
    text = " ".join(str(err).split()) or type(err).__name__
    found = re.search(r"\[Errno -?\d+\] [^'\"()]+", text)
    text = found[0].strip() if found else text
    return (text if len(text) <= 300 else text[:299] + "…").rstrip(".")


def outcome() -> str:
    """How the run is ending, from the exception on its way out, if any: finished, stopped
    by a signal (and resumable), or failed."""
    err = sys.exc_info()[1]
    if err is None:
        return "finished"
    return "stopped" if isinstance(err, (Stopped, KeyboardInterrupt)) else "failed"


class MLflow:
    """One MLflow run, through MlflowClient (no global active run)."""

    fix = "Start the server or correct MLFLOW_TRACKING_URI,"

    @staticmethod
    def where(args: argparse.Namespace) -> str:
        return os.environ.get("MLFLOW_TRACKING_URI") or local_store(args.runs_dir)[0]

    def __init__(
        self, mlflow: object, args: argparse.Namespace, earlier: str | None, say: Callable
    ) -> None:
        from mlflow.entities import Param, RunTag

        self.mlflow, self.run_dir, self.log_model = mlflow, args.run_dir, args.log_model
        local, artifacts = local_store(args.runs_dir)
        uri = os.environ.get("MLFLOW_TRACKING_URI") or local
        # The store's first creation says what it does on the INFO level: not worth a line.
        for name in ("mlflow.store.db.utils", "alembic"):
            logging.getLogger(name).setLevel(logging.WARNING)
        with quick_failure():  # an unreachable server: a few seconds, not minutes of retries
            self.client = mlflow.MlflowClient(tracking_uri=uri)
            experiment = experiment_id(self.client, artifacts if uri == local else None)
            run = self.find(earlier, say)
            if run is None:
                run = self.client.create_run(experiment, run_name=args.run_dir.name)
            else:
                self.client.update_run(run.info.run_id, status="RUNNING")
            self.id = run.info.run_id
            # A parameter cannot change in MLflow: a flag that a resumed start changes is a tag
            # resumed.<flag> (settings.json keeps every start's flags).
            params = [Param(k, str(v)[:6000]) for k, v in settings(args).items()]
            new = [p for p in params if p.key not in run.data.params]
            changed = [p for p in params if run.data.params.get(p.key, p.value) != p.value]
            tags = [RunTag(f"resumed.{p.key}", p.value) for p in changed]
            for i in range(0, max(len(new), len(tags)), 100):  # at most 100 of each per request
                self.client.log_batch(self.id, params=new[i : i + 100], tags=tags[i : i + 100])
        store = os.environ.get("MLFLOW_TRACKING_URI") or (
            f"{args.runs_dir / 'mlflow.db'} (browse: mlflow ui --backend-store-uri"
            f" sqlite:///{args.runs_dir / 'mlflow.db'})"
        )
        how = "going on with" if earlier == self.id else "logging to"
        say(f"mlflow: {how} run {self.id} in {store}")

    def find(self, run_id: str | None, say: Callable) -> object | None:
        if run_id is None:
            return None
        try:
            return self.client.get_run(run_id)
        except self.mlflow.exceptions.MlflowException as err:
            if "RESOURCE_DOES_NOT_EXIST" not in str(getattr(err, "error_code", "")):
                raise
            say(f"warning: mlflow: run {run_id} is not in this store: a new run goes on from here")
            return None

    def log(self, epoch: int, row: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(key, value, now, epoch) for key, value in row.items()]
        self.client.log_batch(self.id, metrics=metrics)

    def close(self, how: str) -> None:
        best = self.run_dir / "best.pt"
        if how == "finished" and self.log_model and best.exists():
            self.client.log_artifact(self.id, str(best))
        status = {"finished": "FINISHED", "stopped": "KILLED", "failed": "FAILED"}[how]
        self.client.set_terminated(self.id, status)


def local_store(runs_dir: Path) -> tuple[str, str]:
    """The local store's tracking URI and its artifacts' location: beside the runs."""
    runs_dir = runs_dir.absolute()
    return f"sqlite:///{runs_dir / 'mlflow.db'}", (runs_dir / "mlartifacts").as_uri()


def experiment_id(client: object, artifacts: str | None) -> str:
    """MLFLOW_EXPERIMENT_NAME's experiment, or the project's; made when it is not there yet."""
    name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or PROJECT
    for _ in range(2):  # another run may make it between the two calls
        experiment = client.get_experiment_by_name(name)
        if experiment is not None:
            return experiment.experiment_id
        with contextlib.suppress(Exception):
            return client.create_experiment(name, artifact_location=artifacts)
    raise SetupError(f"mlflow: cannot make or find the experiment {name!r}")


@contextlib.contextmanager
def quick_failure() -> Iterator[None]:
    """MLflow retries a failed request for minutes by default: at start, give up in seconds
    (what MLFLOW_HTTP_REQUEST_MAX_RETRIES and _TIMEOUT say, where you set them)."""
    saved = dict(os.environ)
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    try:
        yield
    finally:
        for name in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT"):
            if name not in saved:
                os.environ.pop(name, None)


class WandB:
    """One Weights & Biases run; offline unless you are logged in or WANDB_MODE says."""

    fix = "Check the network and `wandb login` (or WANDB_API_KEY), set WANDB_MODE=offline,"

    @staticmethod
    def where(args: argparse.Namespace) -> str:
        return "W&B"

    def __init__(
        self, wandb: object, args: argparse.Namespace, earlier: str | None, say: Callable
    ) -> None:
        self.wandb, self.run_dir, self.log_model = wandb, args.run_dir, args.log_model
        # Offline unless logged in; logged in, as W&B decides (WANDB_MODE, `wandb offline`).
        mode = None if os.environ.get("WANDB_MODE") or logged_in(wandb) else "offline"
        files = args.run_dir / "wandb"
        had_files = files.exists()
        try:
            self.run = wandb.init(
                project=os.environ.get("WANDB_PROJECT") or PROJECT,
                name=args.run_dir.name,
                id=earlier,  # None: a new run
                resume="allow",
                dir=args.run_dir,
                mode=mode,
                config=settings(args),
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
        else:  # offline (or WANDB_MODE=disabled: nothing written)
            say(
                f"wandb: {self.run.settings.mode}, in {Path(self.run.dir).parent}; upload with"
                f" wandb sync {args.run_dir / 'wandb' / 'offline-run-*'}"
            )

    def log(self, epoch: int, row: dict[str, float]) -> None:
        # The epoch as the step: a resumed start goes on where the last one stopped.
        self.run.log(row | {"epoch": epoch}, step=epoch)

    def close(self, how: str) -> None:
        best = self.run_dir / "best.pt"
        if how == "finished" and self.log_model and best.exists():
            artifact = self.wandb.Artifact(
                re.sub(r"[^\w.-]", "-", f"{self.run.name}-best"), "model"
            )
            artifact.add_file(str(best))
            self.run.log_artifact(artifact)
        self.run.finish(exit_code={"finished": 0, "stopped": 75, "failed": 1}[how])


def logged_in(wandb: object) -> bool:
    """Whether W&B has an API key here (WANDB_API_KEY, or `wandb login`'s ~/.netrc), without
    asking the server."""
    settings = wandb.setup(wandb.Settings(silent=True)).settings
    if settings.api_key:
        return True
    try:
        found = netrc.netrc(os.environ.get("NETRC")).authenticators(
            urlparse(settings.base_url).hostname
        )
    except (OSError, netrc.NetrcParseError):
        return False
    return found is not None
