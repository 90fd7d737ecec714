"""What a run reports each epoch: one line on the screen, a row of runs/<name>/metrics.csv,
TensorBoard scalars beside it, and the same numbers in MLflow or W&B (--tracker: trackers.py).
The columns are named here and nowhere else.

And a training loss that became NaN or infinite (Watch): noted on the device at every step,
without waiting for it, looked at every CHECK_EVERY batches and at the end of the epoch (where
the loss comes to the CPU anyway), and reported in one line with the batch and the samples to
blame, before anything is saved: last.pt and best.pt stay the last good ones. (Under --amp on
CUDA, the steps GradScaler skips are those whose scaled gradients overflow; the loss itself
stays finite there, so they are not reported.)"""

import argparse
import csv
import math
import time
from collections.abc import Callable
from pathlib import Path

import torch

from plumbing import distributed, trackers
from plumbing.distributed import rank
from plumbing.errors import SetupError, on_every_rank
from plumbing.files import atomic_write_text
from plumbing.runs import save_settings

COLUMNS = ("epoch", "train_loss", "val_loss", "val_accuracy", "data_wait")
TENSORBOARD_TAGS = {
    "train_loss": "loss/train",
    "val_loss": "loss/validation",
    "val_accuracy": "accuracy/validation",
    "data_wait": "data_wait",
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
    and TensorBoard scalars in args.run_dir (None: --dry-run, nothing written), and the
    tracker's run. The files are opened when the first epoch ends, so a run that fails sooner
    leaves none behind; the tracker is reached now, so that one that cannot be fails before
    training (a run that fails later is marked failed there, and its directory keeps the
    tracker's id). A resumed run replaces the rows and steps after its checkpoint's epoch
    (written before a crash could save the checkpoint)."""

    def __init__(
        self,
        args: argparse.Namespace,
        start_epoch: int,
        data_bound_hint: str,
        say: Callable[[str], None],
    ) -> None:
        self.run_dir = args.run_dir if rank() == 0 else None
        self.args, self.start_epoch, self.hint, self.say = args, start_epoch, data_bound_hint, say
        self.file = self.writer = None
        self.warned_data_bound = False
        if args.tensorboard and rank() == 0:
            # Now, rather than fail after the first epoch; --dry-run too, which checks a run.
            tensorboard_writer_class()
        self.tracker = trackers.start(args, say)  # on rank 0; a failure fails every rank
        self.tracker_failed = False

    def epoch(
        self,
        epoch: int,
        train_loss: float,
        val_loss: float,
        val_accuracy: float,
        data_wait: float,
        started: float,
    ) -> None:
        """Report one finished epoch, which started at time.perf_counter() `started`."""
        self.say(
            f"epoch {epoch}/{self.args.max_epochs}  train_loss {train_loss:.4f}"
            f"  val_loss {val_loss:.4f}  val_accuracy {val_accuracy:.4f}"
            f"  data_wait {data_wait:.0%}  ({time.perf_counter() - started:.1f} s)"
        )
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
        row = dict(
            zip(COLUMNS, (epoch, train_loss, val_loss, val_accuracy, data_wait), strict=True)
        )
        csv.writer(self.file, lineterminator="\n").writerow(
            [epoch] + [f"{row[column]:.6f}" for column in COLUMNS[1:]]
        )
        self.file.flush()  # each finished epoch is on disk, even if a later one crashes
        if self.writer:
            for column, tag in TENSORBOARD_TAGS.items():
                self.writer.add_scalar(tag, row[column], epoch)
            self.writer.flush()
        if self.tracker and not self.tracker_failed:
            try:
                self.tracker.log(epoch, {column: row[column] for column in COLUMNS[1:]})
            except Exception as err:  # the run goes on: metrics.csv has every epoch
                self.say(
                    f"warning: --tracker {self.args.tracker} failed at epoch {epoch}"
                    f" ({trackers.reason(err)}): no more epochs go there in this run;"
                    f" {self.run_dir / 'metrics.csv'} has them all"
                )
                self.tracker_failed = True  # rather than wait for it again each epoch

    def _open(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        save_settings(self.run_dir, vars(self.args))
        path = self.run_dir / "metrics.csv"
        if self.args.tensorboard:
            SummaryWriter = tensorboard_writer_class()
            self.writer = SummaryWriter(self.run_dir, purge_step=self.start_epoch)
        appending = self.start_epoch > 1 and path.exists()
        if appending:
            keep_rows_until(path, self.start_epoch - 1)
        self.file = open(path, "a" if appending else "w", encoding="utf-8")
        if not appending:
            self.file.write(",".join(COLUMNS) + "\n")

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
                self.say(f"warning: --tracker {self.args.tracker}: could not end its run as"
                         f" {how} ({trackers.reason(err)})")  # fmt: skip


def keep_rows_until(metrics_csv: Path, last_epoch: int) -> None:
    """Drop the rows after last_epoch, of an epoch that ended after its checkpoint was saved."""
    with open(metrics_csv, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    rows = rows[:1] + [row for row in rows[1:] if row and int(row[0]) <= last_epoch]
    atomic_write_text(metrics_csv, "".join(",".join(row) + "\n" for row in rows))


class MetricsError(Exception):
    """A metrics CSV that cannot be read; the message says which file and why."""


def read(path: Path) -> dict[str, list[float]]:
    """The columns of a run's metrics.csv, as lists of numbers; nan for a non-finite value."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
    except FileNotFoundError:
        raise MetricsError(
            f"{path} not found: train first (python pytorch_script.py), or name a run"
        ) from None
    if not rows or tuple(rows[0]) != COLUMNS:
        raise MetricsError(
            f"{path}: not a metrics CSV of pytorch_script.py (header {','.join(COLUMNS)})"
        )
    metrics: dict[str, list[float]] = {column: [] for column in COLUMNS}
    for line, row in enumerate(rows[1:], start=2):
        try:
            values = [float(value) for value in row]
        except ValueError:
            values = []
        if len(values) != len(COLUMNS):
            raise MetricsError(f"{path}, line {line}: expected {len(COLUMNS)} numbers, got {row}")
        for column, value in zip(COLUMNS, values, strict=True):
            # A run that diverged logs nan or inf: drawn as a gap, the rest of the curve stays.
            metrics[column].append(value if math.isfinite(value) else math.nan)
    if not metrics["epoch"]:
        raise MetricsError(f"{path}: no epoch finished yet, nothing to plot")
    return metrics


CHECK_EVERY = 100  # batches: one wait for the GPU per hundred steps, not per step


class NonFiniteLoss(Exception):
    """The training loss is NaN or infinite (every rank raises it: on_every_rank)."""


class Watch:
    """Where this rank's training loss first stopped being finite in an epoch, on the device."""

    def __init__(self, training_generator: torch.utils.data.DataLoader, epoch: int) -> None:
        self.generator, self.epoch = training_generator, epoch
        self.first_bad: torch.Tensor | None = None  # the number of the batch, from 1

    def note(self, loss_sum: torch.Tensor, batch: int, args: argparse.Namespace) -> None:
        """After batch (its number in the epoch, from 1) added its loss to loss_sum."""
        if self.first_bad is None:
            self.first_bad = torch.zeros((), dtype=torch.long, device=loss_sum.device)
        bad = (self.first_bad == 0) & ~torch.isfinite(loss_sum)
        self.first_bad = torch.where(bad, batch, self.first_bad)
        if batch % CHECK_EVERY == 0:
            self.check(args)

    def check(self, args: argparse.Namespace) -> None:
        """Raise NonFiniteLoss, on every rank, if the loss of any rank stopped being finite."""
        mine = int(self.first_bad) if self.first_bad is not None else 0
        firsts = [float(mine) if rank == distributed.rank() else 0.0 for rank in range(ranks())]
        firsts = distributed.all_sum(firsts, args.device)  # each rank's, on every rank
        bad = [(int(batch), rank) for rank, batch in enumerate(firsts) if batch]
        if bad:
            batch, rank = min(bad)
            raise on_every_rank(NonFiniteLoss(self.blame(batch, rank, args)))

    def blame(self, batch: int, rank: int, args: argparse.Namespace) -> str:
        """The one line: where, and which samples of that batch hold NaN or infinite values."""
        where = f"the training loss became NaN or infinite in epoch {self.epoch}, batch {batch}"
        where += f" (rank {rank})" if ranks() > 1 else ""
        dataset, sampler = self.generator.dataset, self.generator.sampler
        order = getattr(sampler, "order", None)
        IDs = getattr(getattr(dataset, "dataset", dataset), "list_IDs", None)
        if order is None or IDs is None:  # a stream: its samples have no IDs to name
            return f"{where}: check the data for NaN or infinite values, or lower --lr"
        size = self.generator.batch_size
        rows = order(rank)[(batch - 1) * size : batch * size].tolist()
        broken = [IDs[i] for i in rows if not torch.isfinite(dataset[i][0]).all()]
        if broken:
            names = ", ".join(repr(ID) for ID in broken[:5])
            more = f" and {len(broken) - 5} more" if len(broken) > 5 else ""
            return (
                f"{where}: {len(broken)} of its samples hold NaN or infinite values"
                f" ({names}{more}); fix or remove them (`python pack_data.py` counts them all)"
            )
        return (
            f"{where}, whose samples are all finite: the model diverged; lower --lr"
            f" (now {args.lr:g})"
        )


def ranks() -> int:
    return torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
