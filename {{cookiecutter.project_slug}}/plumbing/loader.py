"""The DataLoader arguments, decided here and nowhere else, and what keeps loading safe: worker
seeds, time-outs, and one line for the failures whose cause is known."""

import argparse
import contextlib
import functools
import math
import os
import random
import shutil
import signal
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from itertools import islice
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from plumbing import distributed, preemption
from plumbing.errors import DataError, SetupError


def usable_cpus() -> int:
    """CPUs this process may run on, which can be fewer than the machine has (taskset, SLURM)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def capped_workers(num_workers: int) -> int:
    """At most the CPUs: more only add overhead. Under torchrun a machine's ranks share them."""
    local_world_size = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    return min(num_workers, usable_cpus() // local_world_size)


def make(
    dataset: torch.utils.data.Dataset,
    params: dict,
    args: argparse.Namespace,
    device: torch.device,
    **overrides: object,
) -> torch.utils.data.DataLoader:
    """DataLoader(dataset, **params), completed: the article's params (batch_size, shuffle,
    num_workers) plus what makes loading fast and repeatable. overrides: for bench_loader.py,
    which also measures settings that training does not vary."""
    num_workers = capped_workers(params["num_workers"])
    if streamed(dataset):  # LitData's loader: its own order, and its place kept in last.pt
        from litdata import StreamingDataLoader

        return StreamingDataLoader(
            dataset,
            batch_size=params["batch_size"],
            shuffle=params["shuffle"],
            num_workers=num_workers,
            pin_memory=device.type == "cuda",
            prefetch_factor=args.prefetch_factor if num_workers > 0 else None,
            timeout=args.loader_timeout if num_workers > 0 else 0,
        )
    if num_workers == 0 and args.loader_timeout and not CAN_TIME_READS:
        raise SetupError(
            "--loader-timeout without DataLoader workers needs a timer signal, which this system"
            f" lacks: use --num-workers 1 or more ({usable_cpus()} CPUs usable)"
        )
    # Each rank's share under torchrun, in an order that is a function of the seed and epoch.
    sampler = EpochSampler(dataset, shuffle=params["shuffle"], seed=args.seed)
    arguments = dict(
        batch_size=params["batch_size"],
        sampler=sampler,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",  # page-locked batches copy to a CUDA device faster
        persistent_workers=num_workers > 0,  # start the workers once, not every epoch
        prefetch_factor=args.prefetch_factor if num_workers > 0 else None,
        # DataLoader times its workers; with none, Batches times the reads of this process.
        timeout=args.loader_timeout if num_workers > 0 else 0,
        generator=torch.Generator().manual_seed(args.seed),
        # PackedDataset hands over whole batches, already stacked.
        collate_fn=getattr(dataset, "collate_fn", None),
        worker_init_fn=(
            functools.partial(init_worker, args.seed, sampler.shared_epoch, preemption.holding())
            if num_workers > 0
            else None
        ),
    )
    return torch.utils.data.DataLoader(dataset, **(arguments | overrides))


def in_order(
    dataset: torch.utils.data.Dataset, batch_size: int, num_workers: int
) -> torch.utils.data.DataLoader:
    """dataset's batches in its order, read by num_workers worker processes (0: this one), for
    pack_data.py: the workers read the next batches while this process writes one."""
    num_workers = capped_workers(num_workers)
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        num_workers=num_workers,
        prefetch_factor=2 if num_workers else None,
    )


def streamed(dataset: torch.utils.data.Dataset) -> bool:
    """Whether dataset is a split of a LitData stream (plumbing/stream.py)."""
    return type(dataset).__module__ == "plumbing.stream"


def open_stream(args: argparse.Namespace, dataset_class: type) -> tuple[dict, tuple]:
    """The labels and the two splits of the stream at --data-dir (plumbing/stream.py)."""
    from plumbing import stream  # LitData, an optional extra: pip install -e ".[stream]"

    return stream.open_splits(args, dataset_class)


def set_epoch(generator: torch.utils.data.DataLoader, epoch: int) -> None:
    """The generator's order for this epoch: a function of --seed and the epoch."""
    if streamed(generator.dataset):
        generator.current_epoch = epoch - 1  # LitData's loader counts one up as it starts
    else:
        generator.sampler.set_epoch(epoch)


def share(generator: torch.utils.data.DataLoader) -> int:
    """How many samples of the generator's are this rank's own, without the repeats that pad
    its share under torchrun (LitData's loader has none: it drops samples instead)."""
    if streamed(generator.dataset):
        return len(generator) * generator.batch_size
    return distributed.share(generator.sampler)


def check_batch_fits(training_generator: torch.utils.data.DataLoader, data_dir: Path) -> None:
    """A training split smaller than one batch would make each epoch one step of a part batch."""
    if streamed(training_generator.dataset):
        if len(training_generator) == 0:
            raise DataError(
                f"{data_dir}: the training split holds fewer samples than one batch (--batch-size"
                f" {training_generator.batch_size}) for each rank: lower --batch-size"
            )
        return
    sampler, batch_size = training_generator.sampler, training_generator.batch_size
    if len(sampler) < batch_size:
        ranks = f", {len(sampler)} for each of the ranks" if sampler.num_replicas > 1 else ""
        raise DataError(
            f"{data_dir / 'partition.json'}: 'train' lists {len(sampler.dataset)} samples{ranks},"
            f" fewer than one batch (--batch-size {batch_size}): lower --batch-size or add"
            " samples"
        )


def shape_of(dataset: torch.utils.data.Dataset, timeout: float) -> tuple[int, ...]:
    """The shape of the first sample, read within timeout seconds (0: no limit)."""
    with deadline(timeout):
        return tuple(dataset[0][0].shape)


def describe(
    training_generator: torch.utils.data.DataLoader,
    validation_generator: torch.utils.data.DataLoader,
    args: argparse.Namespace,
) -> str:
    """One line on what the run trains on, and how it loads it."""
    num_workers = training_generator.num_workers
    note = ""
    if num_workers < args.num_workers:
        note = f" (of {args.num_workers} asked: {usable_cpus()} CPUs)"
    num_train, num_validation = (len(g.dataset) for g in (training_generator, validation_generator))
    return (
        f"device {args.device}; {num_train} train and {num_validation} validation"
        f" samples of shape {args.input_shape}, {args.num_classes} classes; batch_size"
        f" {args.batch_size}, shuffle {args.shuffle}, num_workers {num_workers}{note}"
        f"{distributed.ranks_note()}"
    )


def data_bound_hint(
    args: argparse.Namespace, training_generator: torch.utils.data.DataLoader
) -> str:
    """What to try when the run waits for its batches."""
    dataset = training_generator.dataset
    if streamed(dataset):
        return f"`python bench_loader.py --stream {args.data_dir}` finds faster loader settings."
    where = "" if args.data_dir == Path("data") else f" --data-dir {args.data_dir}"
    pack = ""
    if not hasattr(dataset, "collate_fn"):  # not packed yet
        pack = f"; `python pack_data.py{where}` packs the data for batched reads"
    return f"`python bench_loader.py{where}` finds faster loader settings{pack}."


class EpochSampler(torch.utils.data.DistributedSampler):
    """DistributedSampler whose epoch the DataLoader workers see too, in shared memory, so
    that they can seed themselves for it (init_worker), and which can start an epoch after its
    first samples (a run resumed inside an epoch) without reading them."""

    def __init__(self, dataset: torch.utils.data.Dataset, shuffle: bool, seed: int) -> None:
        super().__init__(
            dataset,
            num_replicas=distributed.world_size(),
            rank=distributed.rank(),
            shuffle=shuffle,
            seed=seed,
        )
        self.shared_epoch = torch.zeros((), dtype=torch.int64).share_memory_()
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """This epoch's order, from its sample number start on (0: all of it)."""
        super().set_epoch(epoch)
        self.shared_epoch.fill_(epoch)
        self.start = start

    def __iter__(self) -> Iterator[int]:
        """DistributedSampler's order, from a tensor rather than a list of Python ints (35 MB
        a million samples)."""
        for block in self.order()[self.start :].split(4096):
            yield from block.tolist()

    def order(self, rank: int | None = None) -> torch.Tensor:
        """The sample numbers of this epoch that rank (default: this one) reads, in order."""
        if self.shuffle:
            generator = torch.Generator()
            generator.manual_seed(self.seed + self.epoch)
            indices = torch.randperm(len(self.dataset), generator=generator)
        else:
            indices = torch.arange(len(self.dataset))
        if self.drop_last:
            indices = indices[: self.total_size]
        else:  # repeated from the start to make it evenly divisible, as DistributedSampler
            indices = indices.repeat(math.ceil(self.total_size / len(indices)))[: self.total_size]
        rank = self.rank if rank is None else rank
        return indices[rank : self.total_size : self.num_replicas]

    def __len__(self) -> int:
        return max(super().__len__() - self.start, 0)  # 0: stopped after the epoch's last batch


def seed_everything(seed: int) -> None:
    """Seed torch (the CPU and every GPU), NumPy and random in this process."""
    seed_reads(seed)
    torch.manual_seed(seed)  # every GPU's generator as well


def seed_reads(seed: int) -> None:
    """Seed what reading a sample may draw from (random_augmentation, on the CPU): torch's CPU
    generator, NumPy and random; in about 10 µs, where torch.manual_seed takes 130 µs until
    CUDA starts (it queues a seeding of every GPU for then): per sample, that adds up."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.default_generator.manual_seed(seed)


def epoch_seed(seed: int, epoch: int, part: int) -> int:
    """The seed of this rank's main process for an epoch (part 0), or of the DataLoader worker
    that reads a batch (part 1 + the batch's first sample). Ranks and batches draw apart; runs
    repeat."""
    key = [seed % 2**63, epoch, distributed.rank(), part]
    return int(np.random.SeedSequence(key).generate_state(1)[0])


def seed_epoch(seed: int, epoch: int) -> None:
    """Seed this process for an epoch: what it draws (random augmentation with --num-workers 0,
    dropout) is then a function of the seed, the epoch and the rank, resumed or not."""
    seed_everything(epoch_seed(seed, epoch, part=0))


def init_worker(seed: int, epoch: torch.Tensor, holding: torch.Tensor, worker_id: int) -> None:
    """In each DataLoader worker. Before each batch, the worker seeds itself from (--seed, epoch,
    rank, the batch's first sample): what a batch draws (random augmentation) is then the same
    whichever worker reads it, and in a run resumed inside an epoch, whose workers start over.
    The signals that stop a run are the training process's to handle (preemption.py)."""
    dataset = torch.utils.data.get_worker_info().dataset
    fetch = getattr(dataset, "__getitems__", None)

    def __getitems__(indices: list[int]) -> object:
        seed_reads(epoch_seed(seed, int(epoch), part=1 + int(indices[0])))
        return fetch(indices) if fetch else [dataset[i] for i in indices]

    dataset.__getitems__ = __getitems__  # DataLoader's fetcher calls this, if the dataset has it
    preemption.spare_worker(holding)
    quiet_when_stopped()


def quiet_when_stopped() -> None:
    """When the training process stops (Ctrl-C) while it takes a batch from this worker, the
    thread of multiprocessing that hands the batch over loses its connection and would print a
    traceback. The training process says what happened."""
    print_error = sys.excepthook  # that thread reports through it

    def excepthook(exc_type: type, exc: BaseException, tb: object) -> None:
        handing_over = threading.current_thread().name.endswith("(_serve)")
        if not (handing_over and issubclass(exc_type, (ConnectionError, EOFError))):
            print_error(exc_type, exc, tb)

    sys.excepthook = excepthook


class Batches:
    """The generator's batches (at most max_batches), each read within timeout seconds when
    this process reads them itself, with a progress bar in a terminal when desc is given.
    Afterwards, data_wait is the share of the time spent waiting for batches: near 0 the run
    is compute-bound, near 1 data-bound."""

    def __init__(
        self,
        generator: torch.utils.data.DataLoader,
        timeout: float = 0,
        max_batches: int | None = None,
        desc: str | None = None,
    ) -> None:
        self.generator, self.max_batches, self.desc = generator, max_batches, desc
        # DataLoader times its workers; with none, the timer of deadline() times this process.
        self.timeout = timeout if generator.num_workers == 0 else 0
        self.data_wait = 0.0
        self.quiet = None if desc else True  # None: tqdm shows the bar in a terminal only

    def __iter__(self) -> Iterator:
        batches = islice(self.generator, self.max_batches)
        if self.timeout:
            batches = within(batches, self.timeout)
        total = min(len(self.generator), self.max_batches or len(self.generator))
        getattr(self.generator.dataset, "begin", lambda: None)()  # the packed copy's check
        start = ready = None
        waited = 0.0
        # The bar appears only in a terminal, when an epoch takes more than two seconds.
        for batch in tqdm(
            batches, self.desc, total, leave=False, delay=2, unit="batch", disable=self.quiet
        ):
            if start is None:  # from the first batch: starting workers is not waiting for data
                start = time.perf_counter()
            else:
                waited += time.perf_counter() - ready
            yield batch
            ready = time.perf_counter()
        elapsed = time.perf_counter() - start if start else 0.0
        self.data_wait = waited / elapsed if elapsed else 0.0
        # The packed copy's check of every file ends before anything of this pass is saved.
        getattr(self.generator.dataset, "confirm", lambda: None)()


class LoaderTimeout(BaseException):
    """No batch within --loader-timeout. A BaseException, as KeyboardInterrupt: it arrives in the
    middle of a read, and no `except Exception` on the way may take it for a bad file."""


def _expired(signum: int, frame: object) -> None:
    raise LoaderTimeout


# Reads in this process (the first sample; every batch with --num-workers 0) are timed by a
# timer signal, which Windows lacks.
CAN_TIME_READS = hasattr(signal, "setitimer")


@contextlib.contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Raise LoaderTimeout in this process if the block takes longer than seconds (0: no limit).
    A read the system cannot interrupt (a hard-mounted NFS) is not stopped: DataLoader workers
    are, by their timeout."""
    if (
        not seconds
        or not CAN_TIME_READS
        or threading.current_thread() is not threading.main_thread()  # only it gets signals
        or signal.getitimer(signal.ITIMER_REAL)[0]  # a timer of a test runner or a job: keep it
    ):
        yield
        return
    previous = signal.signal(signal.SIGALRM, _expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def within(batches: Iterable, seconds: float) -> Iterator:
    """The batches, each read within seconds (0: no limit)."""
    iterator = iter(batches)
    while True:
        with deadline(seconds):
            batch = next(iterator, None)
        if batch is None:
            return
        yield batch


# What LitData's downloads raise when the store cannot be reached or refuses (obstore's,
# botocore's, Python's); any other failure of its download thread keeps its traceback.
DOWNLOAD_FAILURES = (
    "GenericError", "NotFoundError", "PermissionDeniedError", "UnauthenticatedError",
    "EndpointConnectionError", "ConnectionClosedError", "ConnectTimeoutError", "ReadTimeoutError",
    "ClientError", "ConnectionRefusedError", "ConnectionResetError", "TimeoutError",
)  # fmt: skip


def loader_failure(err: BaseException, args: argparse.Namespace) -> str | None:
    """What to do about a DataLoader failure that has a known cause; None for any other."""
    text = str(err) if isinstance(err, RuntimeError) else ""
    if isinstance(err, LoaderTimeout) or text.startswith("DataLoader timed out"):
        # DataLoader's timeout, with workers, also counts their start
        starting = "" if isinstance(err, LoaderTimeout) else " (starting the workers included)"
        return (
            f"no batch within --loader-timeout {args.loader_timeout:g} s{starting}: reading a"
            f" sample from {args.data_dir} hangs (a stalled network file system?); check that"
            " its files read, or raise --loader-timeout"
        )
    if "Chunk prefetch thread crashed" in text:  # LitData's words for a chunk not downloaded
        reason = text.split("Original error: ", 1)[-1].strip().splitlines()[0][:300]
        run_dir = getattr(args, "run_dir", None)
        saved = ""
        if run_dir is not None and (run_dir / "last.pt").exists():
            saved = f"; --resume {run_dir.name} goes on from its last epoch"
        if reason.split(":")[0] in DOWNLOAD_FAILURES:
            return (
                f"{args.data_dir}: a chunk of the stream could not be downloaded ({reason}):"
                f" check that the server is up and reachable{saved}"
            )
    # torch's words for a worker's batch that did not fit in /dev/shm (but not for a worker
    # that ran out of file descriptors: README.md's FAQ has that one)
    out_of_shm = ("shared memory(shm)", "out of shared memory", "insufficient shared memory")
    if "DataLoader worker" in text and any(words in text for words in out_of_shm):
        if "Too many open files" not in text:
            size = ""
            if os.path.isdir("/dev/shm"):
                size = f" (/dev/shm holds {shutil.disk_usage('/dev/shm').total / 2**20:,.1f} MiB)"
            return (
                f"the DataLoader workers ran out of shared memory{size}, where they hand batches"
                " over: in Docker, give the container more with --shm-size=8g (or --ipc=host);"
                " or run with --num-workers 0, which needs none"
            )
    return None
