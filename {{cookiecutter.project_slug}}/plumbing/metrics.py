"""What a run reports each epoch: one line on the screen, a row of runs/<name>/metrics.csv,
TensorBoard scalars beside it, and the same numbers in MLflow or W&B (--tracker: trackers.py).
The columns are the metrics pytorch_script.py logs (train_loss, val_loss, val_accuracy, or
what you log there), then the learning rate at the epoch's start and data_wait."""

import csv
import math
import time
from collections.abc import Callable
from pathlib import Path

from plumbing import trackers
from plumbing.cli import Settings
from plumbing.distributed import rank
from plumbing.errors import SetupError
from plumbing.facts import Facts
from plumbing.files import atomic_write_text
from plumbing.runs import save_settings

TENSORBOARD_TAGS = {  # the template's columns; any other is its own tag
    "train_loss": "loss/train",
    "val_loss": "loss/validation",
    "val_accuracy": "accuracy/validation",
}
# Above this share of training time spent waiting for batches, the run says it is data-bound.
DATA_WAIT_WARNING = 0.3


def tensorboard_writer_class() -> type:
    """torch's SummaryWriter, or a SetupError that says how to install tensorboard."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise SetupError(
            "--tensorboard needs the tensorboard package: pip install -e '.[tensorboard]',"
            " or pass --no-tensorboard"
        ) from None
    return SummaryWriter


class Log:
    """The epochs of one run: a line each on the screen, and on rank 0 a row of metrics.csv
    and TensorBoard scalars in facts.run_dir (None: --dry-run, nothing written), and the
    tracker's run. The files are opened when the first epoch ends, so a run that fails sooner
    leaves none behind; the tracker is reached now, so that one that cannot be fails before
    training (a run that fails later is marked failed there, and its directory keeps the
    tracker's id). A resumed run replaces the rows and steps after its checkpoint's epoch
    (written before a crash could save the checkpoint)."""

    def __init__(
        self,
        settings: Settings,
        facts: Facts,
        start_epoch: int,
        data_bound_hint: str,
        say: Callable[[str], None],
    ) -> None:
        self.run_dir = facts.run_dir if rank() == 0 else None
        self.settings, self.facts, self.start_epoch = settings, facts, start_epoch
        self.hint, self.say = data_bound_hint, say
        self.file = self.writer = None
        self.columns: list[str] = []
        self.warned_data_bound = self.settings_saved = False
        if settings.tensorboard and rank() == 0:
            # Now, rather than fail after the first epoch; --dry-run too, which checks a run.
            tensorboard_writer_class()
        self.tracker = trackers.start(settings, facts, say)  # on rank 0; a failure fails all
        self.tracker_failed = False

    def epoch(self, epoch: int, max_epochs: int, row: dict[str, float], started: float) -> None:
        """Report one finished epoch of max_epochs, which started at time.perf_counter()
        `started`: row holds its metrics, the learning rate and data_wait last."""
        shown = "  ".join(
            f"{name} {value:.0%}" if name == "data_wait"
            else f"{name} {value:.3g}" if name == "lr"
            else f"{name} {value:.4f}"
            for name, value in row.items()
        )  # fmt: skip
        elapsed = time.perf_counter() - started
        self.say(f"epoch {epoch}/{max_epochs}  {shown}  ({elapsed:.1f} s)")
        data_wait = row.get("data_wait", 0.0)
        if data_wait > DATA_WAIT_WARNING and not self.warned_data_bound:
            self.warned_data_bound = True
            self.say(
                f"warning: {data_wait:.0%} of the training time went to waiting for batches:"
                f" the run is data-bound. {self.hint}"
            )
        if self.run_dir is None:
            return
        if self.file is None:
            self._open()
        columns = [*self.columns, *(name for name in row if name not in self.columns)]
        if columns != self.columns:  # a metric logged since: one more column, for every row
            self.file.close()
            rewrite(self.run_dir / "metrics.csv", columns)
            self.file = open(self.run_dir / "metrics.csv", "a", encoding="utf-8")
            self.columns = columns
        values = [number(row[name], name) if name in row else "" for name in columns]
        self.file.write(",".join([str(epoch), *values]) + "\n")
        self.file.flush()  # each finished epoch is on disk, even if a later one crashes
        if self.writer:
            for name, value in row.items():
                self.writer.add_scalar(TENSORBOARD_TAGS.get(name, name), value, epoch)
            self.writer.flush()
        if self.tracker and not self.tracker_failed:
            try:
                self.tracker.log(epoch, row)
            except Exception as err:  # the run goes on: metrics.csv has every epoch
                self.say(
                    f"warning: --tracker {self.settings.tracker} failed at epoch {epoch}"
                    f" ({trackers.reason(err)}): no more epochs go there in this run;"
                    f" {self.run_dir / 'metrics.csv'} has them all"
                )
                self.tracker_failed = True  # rather than wait for it again each epoch

    def save_settings(self) -> None:
        """This start's entry of settings.json (its flags, those given, what the run found),
        once, when the run first writes something (an epoch's end, or a stop inside one)."""
        if self.run_dir is None or self.settings_saved:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        given, found = sorted(self.settings.given), self.facts.as_dict()
        save_settings(self.run_dir, self.settings.flags() | {"given": given, "found": found})
        self.settings_saved = True

    def _open(self) -> None:
        self.save_settings()
        path = self.run_dir / "metrics.csv"
        if self.settings.tensorboard:
            SummaryWriter = tensorboard_writer_class()
            self.writer = SummaryWriter(self.run_dir, purge_step=self.start_epoch)
        if self.start_epoch > 1 and path.exists():
            self.columns = keep_rows_until(path, self.start_epoch - 1)
        else:
            atomic_write_text(path, "epoch\n")
        self.file = open(path, "a", encoding="utf-8")

    def close(self) -> None:
        """Called as the run ends, normally or by an exception (which the tracker is told)."""
        if self.file:
            self.file.close()
        if self.writer:
            self.writer.close()
        if self.tracker:
            how = trackers.outcome()
            try:
                self.tracker.close(how)
            except Exception as err:  # after training: a warning, not a failed run
                self.say(f"warning: --tracker {self.settings.tracker}: could not end its run"
                         f" as {how} ({trackers.reason(err)})")  # fmt: skip


def number(value: float, column: str) -> str:
    """As metrics.csv has it: six decimals; a learning rate, six significant digits."""
    return f"{value:.6g}" if column == "lr" else f"{value:.6f}"


def keep_rows_until(metrics_csv: Path, last_epoch: int) -> list[str]:
    """Drop the rows after last_epoch, of an epoch that ended after its checkpoint was saved;
    returns the columns but the epoch."""
    with open(metrics_csv, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    rows = rows[:1] + [row for row in rows[1:] if row and int(row[0]) <= last_epoch]
    atomic_write_text(metrics_csv, "".join(",".join(row) + "\n" for row in rows))
    return rows[0][1:] if rows else []


def rewrite(metrics_csv: Path, columns: list[str]) -> None:
    """metrics_csv with these columns (after the epoch), those it lacks empty in its rows."""
    with open(metrics_csv, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    lines = [",".join(["epoch", *columns])]
    lines += [",".join([row["epoch"], *(row.get(c) or "" for c in columns)]) for row in rows]
    atomic_write_text(metrics_csv, "\n".join(lines) + "\n")


class MetricsError(Exception):
    """A metrics CSV that cannot be read; the message says which file and why."""


def read(path: Path) -> dict[str, list[float]]:
    """The columns of a run's metrics.csv, as lists of numbers; nan for a non-finite value or
    an empty cell (a metric that epoch did not log)."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
    except FileNotFoundError:
        raise MetricsError(
            f"{path} not found: train first (python pytorch_script.py), or name a run"
        ) from None
    if not rows or not rows[0] or rows[0][0] != "epoch":
        raise MetricsError(
            f"{path}: not a metrics CSV of pytorch_script.py (its first column: epoch)"
        )
    columns = rows[0]
    metrics: dict[str, list[float]] = {column: [] for column in columns}
    for line, row in enumerate(rows[1:], start=2):
        try:
            values = [float(value) if value else math.nan for value in row]
        except ValueError:
            values = []
        if len(values) != len(columns):
            raise MetricsError(f"{path}, line {line}: expected {len(columns)} numbers, got {row}")
        for column, value in zip(columns, values, strict=True):
            # A run that diverged logs nan or inf: drawn as a gap, the rest of the curve stays.
            metrics[column].append(value if math.isfinite(value) else math.nan)
    if not metrics["epoch"]:
        raise MetricsError(f"{path}: no epoch finished yet, nothing to plot")
    return metrics
