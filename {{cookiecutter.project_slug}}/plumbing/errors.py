"""The errors a run reports in one line, named for what failed, and the wording they share.
The bottom of the package: it imports no other module of it (plumbing/exits.py decides what
each error makes the script print and return)."""

import errno
import shutil
from pathlib import Path


class DataError(Exception):
    """Data that cannot be used as it is; the message names the file or ID, and what to do."""


class CheckpointError(Exception):
    """A checkpoint that cannot be written or loaded, or that belongs to another run or model."""


class SetupError(Exception):
    """A flag, package or system that cannot do what was asked; the message says what to do."""


class LoaderTimeout(BaseException):
    """No batch within --loader-timeout. A BaseException, as KeyboardInterrupt: it arrives in the
    middle of a read, and no `except Exception` on the way may take it for a bad file."""


class NonFiniteLoss(Exception):
    """The training loss is NaN or infinite (every rank raises it: on_every_rank)."""


class Stopped(Exception):
    """A signal (SIGTERM, SIGUSR1) stopped training: after a batch, inside epoch `epoch`
    (batches: how many of it were trained; last.pt holds where), or at the end of epoch `epoch`
    (batches None)."""

    def __init__(self, signal_name: str, epoch: int, batches: int | None = None) -> None:
        super().__init__(signal_name, epoch, batches)
        self.signal_name, self.epoch, self.batches = signal_name, epoch, batches

    def where(self, run_dir: Path | None) -> str:
        """The line that says where the run stopped and how to go on."""
        if run_dir is None:
            return f"stopped by {self.signal_name}: nothing was written (--dry-run)"
        if self.batches is None:
            after = f"after epoch {self.epoch}"
        else:
            after = f"after batch {self.batches} of epoch {self.epoch}"
        return (
            f"stopped by {self.signal_name} {after}: {run_dir / 'last.pt'} holds it;"
            f" --resume {run_dir.name} goes on from there"
        )


ONE_LINE = (DataError, CheckpointError, SetupError)


def on_every_rank(err: BaseException) -> BaseException:
    """err, marked as raised alike by every rank under torchrun (a fact of the data they share):
    rank 0 alone says it."""
    err.on_every_rank = True
    return err


def one_line(err: BaseException) -> str:
    """The message for the user. An error raised in a DataLoader worker arrives wrapped in the
    worker's traceback, its own message on the last line."""
    line = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
    for kind in ONE_LINE:
        line = line.removeprefix(f"{kind.__module__}.{kind.__name__}: ")
    return line


def load_error(err: Exception) -> str:
    """The reason torch.load failed, in a few words."""
    # Past "Weights only load failed", torch suggests weights_only=False, which would run
    # whatever code the file holds: report the reason underneath instead.
    if str(err).startswith("Weights only load failed") and err.__context__ is not None:
        err = err.__context__
    lines = str(err).strip().splitlines()
    reason = lines[0].split(". ")[0] if lines else ""
    return reason if " " in reason else f"{type(err).__name__}: {reason}".rstrip(": ")


def write_error(path: Path, err: Exception, otherwise: str) -> str:
    """Why writing path failed, and what to do: free some space, or `otherwise`. torch.save's
    own errors do not say that the disk is full, so the space left there is part of the line."""
    no_space = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC), errno.EFBIG)
    if isinstance(err, OSError) and err.errno not in no_space:
        return f"cannot write {path} ({err.strerror or err}): {otherwise}"
    lines = str(err).strip().splitlines()
    reason = err.strerror if isinstance(err, OSError) else lines[0] if lines else "write failed"
    try:
        free = f"; {shutil.disk_usage(path.parent).free / 2**20:,.1f} MiB free in {path.parent}"
    except OSError:
        free = ""
    return f"cannot write {path} ({reason}{free}): free some space or {otherwise}"
