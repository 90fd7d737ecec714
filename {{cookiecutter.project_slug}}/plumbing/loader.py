"""The DataLoader arguments, decided here and nowhere else, and what keeps loading safe: worker
seeds, time-outs, and one line for the failures whose cause is known."""

import contextlib
import functools
import math
import os
import shutil
import signal
import sys
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch

from plumbing import distributed, preemption
from plumbing.errors import DataError, LoaderTimeout, SetupError, on_every_rank
from plumbing.seeding import epoch_seed, seed_reads


def usable_cpus() -> int:
    """CPUs this process may run on, which can be fewer than the machine has (taskset, SLURM)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def capped_workers(num_workers: int) -> int:
    """At most the CPUs: more only add overhead. Under torchrun a machine's ranks share them."""
    return min(num_workers, usable_cpus() // distributed.local_world_size())


def make(
    dataset: torch.utils.data.Dataset,
    params: dict,
    settings: object,
    device: torch.device,
    **overrides: object,
) -> torch.utils.data.DataLoader:
    """DataLoader(dataset, **params), completed: the article's params (batch_size, shuffle,
    num_workers) plus what makes loading fast and repeatable, from settings (its seed,
    prefetch_factor and loader_timeout: plumbing.cli.Settings). overrides: for bench_loader.py,
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
            prefetch_factor=settings.prefetch_factor if num_workers > 0 else None,
            timeout=settings.loader_timeout if num_workers > 0 else 0,
        )
    if num_workers == 0 and settings.loader_timeout and not CAN_TIME_READS:
        raise SetupError(
            "--loader-timeout without DataLoader workers needs a timer signal, which this system"
            f" lacks: use --num-workers 1 or more ({usable_cpus()} CPUs usable)"
        )
    # Each rank's share under torchrun, in an order that is a function of the seed and epoch.
    sampler = EpochSampler(dataset, shuffle=params["shuffle"], seed=settings.seed)
    arguments = dict(
        batch_size=params["batch_size"],
        sampler=sampler,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",  # page-locked batches copy to a CUDA device faster
        persistent_workers=num_workers > 0,  # start the workers once, not every epoch
        prefetch_factor=settings.prefetch_factor if num_workers > 0 else None,
        # DataLoader times its workers; with none, training.Pass times the reads of this process.
        timeout=settings.loader_timeout if num_workers > 0 else 0,
        generator=torch.Generator().manual_seed(settings.seed),
        # PackedDataset hands over whole batches, already stacked.
        collate_fn=getattr(dataset, "collate_fn", None),
        worker_init_fn=(
            functools.partial(
                init_worker, settings.seed, sampler.shared_epoch, preemption.holding()
            )
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


def open_stream(settings: object, dataset_class: type, **splits: object) -> tuple[dict, tuple]:
    """The labels and the splits of the stream at --data-dir, training's two unless splits
    name others (plumbing/stream.py's open_splits)."""
    from plumbing import stream  # LitData, an optional extra: pip install -e ".[stream]"

    return stream.open_splits(settings, dataset_class, **splits)


def set_epoch(generator: torch.utils.data.DataLoader, epoch: int) -> None:
    """The generator's order for this epoch: a function of --seed and the epoch."""
    if streamed(generator.dataset):
        generator.current_epoch = epoch - 1  # LitData's loader counts one up as it starts
    else:
        generator.sampler.set_epoch(epoch)


def check_batch_fits(training_generator: torch.utils.data.DataLoader, data_dir: Path) -> None:
    """A training split smaller than one batch would make each epoch one step of a part batch
    (every rank finds it: one line)."""
    batch_size = training_generator.batch_size
    if streamed(training_generator.dataset):
        if len(training_generator) == 0:
            raise on_every_rank(
                DataError(
                    f"{data_dir}: the training split holds fewer samples than one batch"
                    f" (--batch-size {batch_size}) for each rank: lower --batch-size"
                )
            )
        return
    sampler = training_generator.sampler
    if len(sampler) < batch_size:
        ranks = f", {len(sampler)} for each of the ranks" if sampler.num_replicas > 1 else ""
        raise on_every_rank(
            DataError(
                f"{data_dir / 'partition.json'}: 'train' lists {len(sampler.dataset)}"
                f" samples{ranks}, fewer than one batch (--batch-size {batch_size}): lower"
                " --batch-size or add samples"
            )
        )


def shape_of(dataset: torch.utils.data.Dataset, timeout: float) -> tuple[int, ...]:
    """The shape of the first sample, read within timeout seconds (0: no limit)."""
    with deadline(timeout):
        return tuple(dataset[0][0].shape)


def describe(
    training_generator: torch.utils.data.DataLoader,
    validation_generator: torch.utils.data.DataLoader,
    settings: object,
    facts: object,
) -> str:
    """One line on what the run trains on, and how it loads it (settings: plumbing.cli's,
    facts: plumbing.facts')."""
    num_workers = training_generator.num_workers
    note = ""
    if num_workers < settings.num_workers:
        note = f" (of {settings.num_workers} asked: {usable_cpus()} CPUs)"
    num_train, num_validation = (len(g.dataset) for g in (training_generator, validation_generator))
    return (
        f"device {facts.device}; {num_train} train and {num_validation} validation"
        f" samples of shape {facts.input_shape}, {facts.num_classes} classes; batch_size"
        f" {settings.batch_size}, shuffle {settings.shuffle}, num_workers {num_workers}{note}"
        f"{distributed.ranks_note()}"
    )


def data_bound_hint(data_dir: Path | str, training_generator: torch.utils.data.DataLoader) -> str:
    """What to try when the run waits for its batches."""
    dataset = training_generator.dataset
    if streamed(dataset):
        return f"`python bench_loader.py --stream {data_dir}` finds faster loader settings."
    where = "" if data_dir == Path("data") else f" --data-dir {data_dir}"
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
        # Every rank the same number of samples, some read twice, as DistributedDataParallel's
        # training needs (its steps are collective); validation's counts each sample once.
        self.even = True

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
        rank = self.rank if rank is None else rank
        if not self.even:
            return indices[rank :: self.num_replicas]
        if self.drop_last:
            indices = indices[: self.total_size]
        else:  # repeated from the start to make it evenly divisible, as DistributedSampler
            indices = indices.repeat(math.ceil(self.total_size / len(indices)))[: self.total_size]
        return indices[rank : self.total_size : self.num_replicas]

    def __len__(self) -> int:
        if self.even:
            length = super().__len__()
        else:
            length = len(range(self.rank, len(self.dataset), self.num_replicas))
        return max(length - self.start, 0)  # 0: stopped after the epoch's last batch


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


def loader_failure(err: BaseException, settings: object, run_dir: Path | None = None) -> str | None:
    """What to do about a DataLoader failure that has a known cause; None for any other.
    settings: the run's (its data_dir and loader_timeout)."""
    text = str(err) if isinstance(err, RuntimeError) else ""
    if isinstance(err, LoaderTimeout) or text.startswith("DataLoader timed out"):
        # DataLoader's timeout, with workers, also counts their start
        starting = "" if isinstance(err, LoaderTimeout) else " (starting the workers included)"
        return (
            f"no batch within --loader-timeout {settings.loader_timeout:g} s{starting}: reading a"
            f" sample from {settings.data_dir} hangs (a stalled network file system?); check that"
            " its files read, or raise --loader-timeout"
        )
    if "Chunk prefetch thread crashed" in text:  # LitData's words for a chunk not downloaded
        reason = text.split("Original error: ", 1)[-1].strip().splitlines()[0][:300]
        saved = ""
        if run_dir is not None and (run_dir / "last.pt").exists():
            saved = f"; --resume {run_dir.name} goes on from its last epoch"
        if reason.split(":")[0] in DOWNLOAD_FAILURES:
            return (
                f"{settings.data_dir}: a chunk of the stream could not be downloaded ({reason}):"
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
