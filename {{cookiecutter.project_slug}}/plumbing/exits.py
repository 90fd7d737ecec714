"""How pytorch_script.py ends: exit status 0; 1 with one line for every failure of a known
cause; 130 for Ctrl-C; 75 (RESUMABLE) for a stop on SIGTERM or SIGUSR1. Any other error (a bug
in the code you edit, say) prints its traceback, which helps more, and exits 1. The top of the
package: nothing here imports it."""

import atexit
import os
import sys
import threading
import traceback
from collections.abc import Callable

from plumbing import cli, distributed, runs
from plumbing.errors import (
    ONE_LINE,
    LoaderTimeout,
    NonFiniteLoss,
    Stopped,
    on_every_rank,
    one_line,
)
from plumbing.loader import loader_failure
from plumbing.preemption import RESUMABLE


def status(fit: Callable[[cli.Settings], None], settings: cli.Settings) -> int:
    """fit(settings), where --resume of a run goes on with that run's settings (this command
    line's flags over them: plumbing/runs.py), and the exit status it ends with."""
    try:
        try:
            settings = cli.check(runs.continued(settings))
        except ONE_LINE as err:  # the same on every rank: one line
            raise on_every_rank(err) from None
        fit(settings)
    except (Exception, LoaderTimeout, KeyboardInterrupt) as err:
        run_dir = getattr(err, "run_dir", None)  # plumbing/training.py says where the run is
        message = loader_failure(err, settings, run_dir)
        known = (*ONE_LINE, OSError, LoaderTimeout, KeyboardInterrupt, Stopped, NonFiniteLoss)
        if not isinstance(err, known) and message is None:  # its traceback helps more
            traceback.print_exc()
        # Free the DataLoader workers now: the exception's frames hold them in a reference
        # cycle, which only the garbage collector would break at exit, where their end would
        # print a traceback of its own (and 10 s later: torch's shutdown).
        traceback.clear_frames(err.__traceback__)
        if not isinstance(err, known) and message is None:
            return 1
        if isinstance(err, Stopped):  # saved: rank 0 says where
            if distributed.rank() == 0:
                print(err.where(run_dir), file=sys.stderr)
            # torchrun ends the others' job when one rank exits: all exit at once, all 75
            distributed.barrier()
            return RESUMABLE
        if getattr(err, "on_every_rank", False) and not isinstance(err, KeyboardInterrupt):
            if distributed.rank() == 0:  # one line for all
                print(f"error: {message or one_line(err)}", file=sys.stderr)
            return 1
        who = f" (rank {distributed.rank()})" if distributed.world_size() > 1 else ""
        if isinstance(err, KeyboardInterrupt):
            where = (
                f"{run_dir / 'last.pt'} holds its last checkpoint, if any; --resume"
                f" {run_dir.name} goes on from it"
                if run_dir and run_dir.exists()  # (a run that wrote nothing has none)
                else "nothing was written"
            )
            print(f"interrupted{who}: {where}", file=sys.stderr)
            return 130
        print(f"error{who}: {message or one_line(err)}", file=sys.stderr)
        return 1
    finally:
        distributed.teardown()
    return 0


def reported(function: Callable[[], None]) -> int:
    """function() for evaluate.py, predict.py and export_model.py, and the exit status: 0; 1 with
    one line for a failure of known cause (from rank 0 alone where every rank has it); 130
    for Ctrl-C. Any other error keeps its traceback."""
    try:
        try:
            function()
        except (*ONE_LINE, OSError, LoaderTimeout) as err:
            if getattr(err, "on_every_rank", False) and distributed.rank() != 0:
                return 1
            who = f" (rank {distributed.rank()})" if distributed.world_size() > 1 else ""
            print(f"error{who}: {one_line(err)}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130
    finally:
        distributed.teardown()
    return 0


def exit_now(status: int) -> None:
    """sys.exit(status); but after a stop on a signal (RESUMABLE), without tearing down the
    modules, atexit handlers included: torch's teardown takes most of a second, which a
    preempted job may not have (and gloo's sometimes aborts). A thread that is not a daemon
    still gets its usual wait."""
    others = [t for t in threading.enumerate() if t is not threading.main_thread()]
    if status != RESUMABLE or any(not t.daemon for t in others):
        sys.exit(status)
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
