"""SIGTERM and SIGUSR1, as a cluster sends them to preempt a job or before its time limit (and
Kubernetes to stop a pod), stop a run at the end of the batch it trains: the run then saves
where it is inside the epoch (plumbing/training.py) and exits with RESUMABLE, and --resume goes
on from there. Under torchrun, every rank stops after the same batch, whichever rank got the
signal."""

import functools
import os
import signal
import threading
from types import FrameType

import torch
import torch.distributed as dist

RESUMABLE = 75  # EX_TEMPFAIL of sysexits.h: interrupted, try again (--resume)
VOTE_EVERY = 10  # batches: under torchrun, how often the ranks vote on stopping
SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGUSR1") if hasattr(signal, name))


@functools.cache
def holding() -> torch.Tensor:
    """1 while a run holds the signals (StopSignals), 0 otherwise, in memory that its DataLoader
    workers share (spare_worker)."""
    return torch.zeros((), dtype=torch.int8).share_memory_()


def spare_worker(holding: torch.Tensor) -> None:
    """In a DataLoader worker. A cluster signals every process of a job, workers included: while
    the training process holds the signals, a worker lives on to serve the batch it stops after.
    Otherwise the signals end it as usual (multiprocessing ends workers left at exit so)."""

    def handler(signum: int, frame: FrameType | None) -> None:
        if not int(holding):
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)

    for signum in SIGNALS:
        signal.signal(signum, handler)


class StopSignals:
    """Holds SIGTERM and SIGUSR1 from the moment it is made until close(); requested() then
    says, after each batch, whether to stop there. Under torchrun, the ranks vote after every
    `every`-th batch and stop one batch later, all of them: a vote after every batch made small
    steps on a 2-core CPU 6 to 10% slower, one after every 10th nothing measurable (the
    template's benchmarks/preemption.py)."""

    def __init__(self, every: int = VOTE_EVERY) -> None:
        self.received: int | None = None  # the first signal; a second one changes nothing
        self.previous = {}
        if threading.current_thread() is threading.main_thread():  # only it gets signals
            self.previous = {signum: signal.signal(signum, self._hold) for signum in SIGNALS}
            holding().fill_(1)
        # Over gloo, on the CPU, even beside NCCL: a vote on the GPU would wait for the GPU.
        self.group = dist.new_group(backend="gloo") if dist.is_initialized() else None
        self.every, self.batches = every, 0
        self.vote = self.pending = None

    def _hold(self, signum: int, frame: FrameType | None) -> None:
        if self.received is None:
            self.received = signum

    @property
    def name(self) -> str:
        return signal.Signals(self.received).name if self.received else "a signal of another rank"

    def requested(self) -> bool:
        """Whether to stop after this batch; under torchrun, the same answer on every rank
        after the same batch. A vote travels while the next batch trains: no step waits for it,
        and the run stops at most every + 1 batches after the signal."""
        if self.group is None:
            return self.received is not None
        self.batches += 1
        if self.pending is not None:
            self.pending.wait()
            self.pending = None
            if self.vote.item():
                return True
        if self.batches % self.every == 0:
            self.vote = torch.tensor([int(self.received is not None)])
            self.pending = dist.all_reduce(self.vote, group=self.group, async_op=True)
        return False

    def agreed(self) -> bool:
        """Whether to stop now, at the end of an epoch: the vote of every rank, waited for."""
        if self.pending is not None:  # the last batch's vote: this one counts the same signals
            self.pending.wait()
            self.pending = None
        if self.group is None:
            return self.received is not None
        vote = torch.tensor([int(self.received is not None)])
        dist.all_reduce(vote, group=self.group)
        return bool(vote.item())

    def close(self) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)
        if self.previous:
            holding().fill_(0)
        if self.group is not None:
            dist.destroy_process_group(self.group)
