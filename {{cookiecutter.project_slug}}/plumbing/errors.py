"""The errors a run reports in one line, named for what failed, the wording they share, and how
the script exits."""

import argparse
import atexit
import contextlib
import errno
import os
import shutil
import sys
import threading
import traceback
from collections.abc import Callable
from pathlib import Path


class DataError(Exception):
    """Data that cannot be used as it is; the message names the file or ID, and what to do."""


class CheckpointError(Exception):
    """A checkpoint that cannot be written or loaded, or that belongs to another run or model."""


class SetupError(Exception):
    """A flag, package or system that cannot do what was asked; the message says what to do."""


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


def exit_status(run: Callable[[argparse.Namespace], None], args: argparse.Namespace) -> int:
    """run(args), with every failure of a known cause said in one line: exit status 1, or 130
    for Ctrl-C, or 75 (RESUMABLE) for a stop on SIGTERM or SIGUSR1. Any other error keeps its
    traceback, which helps more."""
    from plumbing import distributed
    from plumbing.loader import LoaderTimeout, loader_failure
    from plumbing.metrics import NonFiniteLoss
    from plumbing.preemption import RESUMABLE, Stopped

    try:
        try:
            run(args)
        finally:  # a run that stopped before it wrote anything leaves no directory
            run_dir = getattr(args, "run_dir", None)
            if run_dir is not None and distributed.rank() == 0:  # rank 0 made it
                for directory in (run_dir, run_dir.parent):
                    with contextlib.suppress(OSError):  # not empty: it stays
                        directory.rmdir()
    except (*ONE_LINE, OSError, RuntimeError, LoaderTimeout, KeyboardInterrupt, Stopped,
            NonFiniteLoss) as err:  # fmt: skip
        message = loader_failure(err, args)
        if isinstance(err, RuntimeError) and message is None:
            raise
        # Free the DataLoader workers now: the exception's frames hold them in a reference
        # cycle, which only the garbage collector would break, 10 s later (torch's shutdown).
        traceback.clear_frames(err.__traceback__)
        if isinstance(err, Stopped):  # saved: rank 0 says where
            if distributed.rank() == 0:
                print(err.where(getattr(args, "run_dir", None)), file=sys.stderr)
            # torchrun ends the others' job when one rank exits: all exit at once, all 75
            distributed.barrier()
            return RESUMABLE
        if getattr(err, "on_every_rank", False) and not isinstance(err, KeyboardInterrupt):
            if distributed.rank() == 0:  # one line for all
                print(f"error: {message or one_line(err)}", file=sys.stderr)
            return 1
        who = f" (rank {os.environ['RANK']})" if "RANK" in os.environ else ""
        if isinstance(err, KeyboardInterrupt):
            run_dir = getattr(args, "run_dir", None)
            where = (
                f"{run_dir / 'last.pt'} holds its last checkpoint, if any; --resume"
                f" {run_dir.name} goes on from it"
                if run_dir
                else "nothing was written"
            )
            print(f"interrupted{who}: {where}", file=sys.stderr)
            return 130
        print(f"error{who}: {message or one_line(err)}", file=sys.stderr)
        return 1
    finally:
        distributed.teardown()
    return 0


def exit_now(status: int) -> None:
    """sys.exit(status); but after a stop on a signal (RESUMABLE), without tearing down the
    modules, atexit handlers included: torch's teardown takes most of a second, which a
    preempted job may not have (and gloo's sometimes aborts). A thread that is not a daemon
    still gets its usual wait."""
    from plumbing.preemption import RESUMABLE

    others = [t for t in threading.enumerate() if t is not threading.main_thread()]
    if status != RESUMABLE or any(not t.daemon for t in others):
        sys.exit(status)
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
