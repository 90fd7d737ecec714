import argparse
import functools
import gc
import multiprocessing
import random
import signal
import statistics
import sys
import threading
import time
import types
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import my_classes
import numpy as np
import pack_data
import pytest
import torch
from my_classes import Dataset
from plumbing import loader, preemption, seeding
from plumbing.data import load_partition
from plumbing.errors import SetupError
from plumbing.packed import PACKED, PackedDataset

from baked.helpers import train

CPU = torch.device("cpu")


class Numbers(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 32

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.tensor([index])


def make(
    num_workers: int,
    seed: int = 0,
    device: torch.device = CPU,
    dataset: torch.utils.data.Dataset | None = None,
    timeout: float = 0,
) -> torch.utils.data.DataLoader:
    """The DataLoader pytorch_script.py makes, for these settings."""
    params = {"batch_size": 4, "shuffle": True, "num_workers": num_workers}
    args = argparse.Namespace(seed=seed, prefetch_factor=3, loader_timeout=timeout)
    return loader.make(Numbers() if dataset is None else dataset, params, args, device)


@pytest.mark.filterwarnings("ignore:This DataLoader will create")  # on a machine of 2 CPUs
def test_workers_never_outnumber_usable_cpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loader, "usable_cpus", lambda: 3)
    assert make(8).num_workers == 3
    assert make(2).num_workers == 2
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "3")  # torchrun: three ranks share the three CPUs
    assert make(2).num_workers == 1


def test_worker_options_only_with_workers_and_pinning_only_for_cuda(tiny_data: Path) -> None:
    no_workers = make(0)
    assert no_workers.persistent_workers is False and no_workers.prefetch_factor is None
    with_workers = make(1)
    assert with_workers.persistent_workers is True and with_workers.prefetch_factor == 3
    assert make(0).pin_memory is False
    assert make(0, device=torch.device("cuda")).pin_memory is True
    assert make(0, device=torch.device("mps")).pin_memory is False
    assert make(0).collate_fn is torch.utils.data.default_collate
    # DataLoader times workers only; with none, the script times its own reads (within()).
    assert make(0, timeout=5).timeout == 0 and make(2, timeout=5).timeout == 5
    assert pack_data.main(["--data-dir", str(tiny_data)]) == 0
    partition, labels = load_partition(tiny_data)
    packed = PackedDataset(
        Dataset(partition["train"], labels, tiny_data), tiny_data / PACKED / "train"
    )
    assert make(0, dataset=packed).collate_fn is PackedDataset.collate_fn


def test_a_read_timeout_without_workers_needs_a_timer_signal(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(loader, "CAN_TIME_READS", False)  # as on Windows
    with pytest.raises(SetupError, match="use --num-workers 1 or more"):
        make(0, timeout=5)
    assert make(1, timeout=5).timeout == 5 and make(0).timeout == 0


class Augmented(torch.utils.data.Dataset):
    """Random 'augmentation' from the three generators a transform may use."""

    def __len__(self) -> int:
        return 32

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.tensor([torch.rand(()).item(), np.random.rand(), random.random()])


def draws(seed: int, num_workers: int) -> torch.Tensor:
    seeding.seed_everything(seed)  # with 0 workers, the main process draws
    generator = make(num_workers, seed=seed, dataset=Augmented())
    epochs = []
    for epoch in (1, 2):
        generator.sampler.set_epoch(epoch)
        epochs.append(torch.cat(list(generator)))
    return torch.cat(epochs)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_augmentation_repeats_for_a_seed_and_differs_between_workers_and_epochs(
    num_workers: int,
) -> None:
    first, again, other = draws(0, num_workers), draws(0, num_workers), draws(1, num_workers)
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    for column in range(3):  # torch, NumPy, random: no two samples drew the same number
        assert len(set(first[:, column].tolist())) == len(first)


class RandomlyAugmented(Dataset):
    """The article's Dataset with a random_augmentation that draws from torch, NumPy and
    random, as a user's transforms may: the draws replace three pixels."""

    def random_augmentation(self, X: torch.Tensor) -> torch.Tensor:
        X = X.clone()
        X[0, 0, :3] = torch.tensor([torch.rand(()).item(), np.random.rand(), random.random()])
        return X


def epoch_draws(generator: torch.utils.data.DataLoader, epoch: int) -> torch.Tensor:
    generator.sampler.set_epoch(epoch)
    return torch.cat([X[:, 0, 0, :3] for X, _ in generator])


def test_the_draws_of_an_epoch_depend_only_on_seed_epoch_and_worker(tiny_data: Path) -> None:
    """Persistent workers live for the whole run: a resumed run, whose workers start at its
    first epoch, must draw what an uninterrupted run draws in that epoch."""
    partition, labels = load_partition(tiny_data)
    training_set = RandomlyAugmented(partition["train"], labels, tiny_data, augment=True)
    uninterrupted = make(2, seed=7, dataset=training_set)
    draws = [epoch_draws(uninterrupted, epoch) for epoch in (1, 2, 3)]
    resumed = make(2, seed=7, dataset=training_set)
    assert torch.equal(epoch_draws(resumed, 3), draws[2])
    assert torch.equal(epoch_draws(resumed, 2), draws[1])  # even when going back
    assert not torch.equal(draws[1], draws[2])
    for column in range(3):  # torch, NumPy, random: new numbers each epoch and sample
        assert len(set(torch.cat(draws)[:, column].tolist())) == 3 * len(training_set)
    assert not torch.equal(epoch_draws(make(2, seed=8, dataset=training_set), 3), draws[2])


@pytest.mark.slow
@pytest.mark.parametrize("start_method", ["spawn", "forkserver"])
def test_workers_started_anew_also_seed_themselves_for_each_epoch(
    tiny_data: Path, start_method: str
) -> None:
    """macOS, Windows and Python 3.14 start workers with spawn or forkserver: the epoch reaches
    them in shared memory all the same."""
    if start_method not in multiprocessing.get_all_start_methods():
        pytest.skip(f"{start_method} is not available on {sys.platform}")
    partition, labels = load_partition(tiny_data)
    training_set = RandomlyAugmented(partition["train"], labels, tiny_data, augment=True)
    params = {"batch_size": 32, "shuffle": True, "num_workers": 2}
    args = argparse.Namespace(seed=7, prefetch_factor=2, loader_timeout=0)

    def started(how: str) -> torch.utils.data.DataLoader:
        return loader.make(training_set, params, args, CPU, multiprocessing_context=how)

    uninterrupted = started(start_method)
    draws = [epoch_draws(uninterrupted, epoch) for epoch in (1, 2)]
    assert torch.equal(epoch_draws(started(start_method), 2), draws[1])
    assert not torch.equal(draws[0], draws[1])
    if "fork" in multiprocessing.get_all_start_methods():  # whichever start method
        assert torch.equal(epoch_draws(started("fork"), 2), draws[1])


@pytest.mark.slow
def test_a_slow_loader_is_reported_as_data_bound(
    tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    load = my_classes.load_sample

    def slow_load(path: Path, ID: str) -> torch.Tensor:
        time.sleep(0.005)  # 0.3 s per batch of 64, against milliseconds of compute
        return load(path, ID)

    monkeypatch.setattr(my_classes, "load_sample", slow_load)
    flags = ["--max-epochs", "2", "--num-workers", "0", "--batch-size", "64"]
    assert train(tiny_data, tmp_path / "runs" / "slow", *flags) == 0

    lines = capsys.readouterr().out.splitlines()
    shares = [
        int(line.split("data_wait ")[1].split("%")[0]) for line in lines if "data_wait" in line
    ]
    assert len(shares) == 2 and shares[-1] > 50  # the first epoch also warms up the model
    warnings = [line for line in lines if line.startswith("warning: ")]
    assert len(warnings) == 1, "warn once per run, not every epoch"
    assert warnings[0].endswith(
        f" the run is data-bound. `python bench_loader.py --data-dir {tiny_data}` finds faster"
        f" loader settings; `python pack_data.py --data-dir {tiny_data}` packs the data for"
        " batched reads."
    )


def test_the_garbage_collector_is_frozen_while_workers_run(
    tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    events: list[str] = []
    load, freeze, unfreeze = my_classes.load_sample, gc.freeze, gc.unfreeze
    monkeypatch.setattr(my_classes, "load_sample", lambda *a: events.append("load") or load(*a))
    monkeypatch.setattr(gc, "freeze", lambda: events.append("freeze") or freeze())
    monkeypatch.setattr(gc, "unfreeze", lambda: events.append("unfreeze") or unfreeze())
    flags = ["--dry-run", "--num-workers", "0", "--batch-size", "8"]
    assert train(tiny_data, tmp_path / "runs" / "gc", *flags) == 0
    # The first sample of each split and the model's input shape; then the epoch, frozen.
    assert events == ["load"] * 3 + ["freeze"] + ["load"] * 32 + ["unfreeze"]
    assert gc.get_freeze_count() == 0


def private_memory_kb(pid: int) -> int:
    """Pages the process has written to itself: what copy-on-write costs it (USS)."""
    fields = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        name, value = line.split(":")
        fields[name] = int(value.split()[0])
    return fields["Private_Clean"] + fields["Private_Dirty"]


class WhichWorker(Dataset):
    """The article's Dataset, IDs and labels included, without reading files: the worker's id."""

    def __getitem__(self, index: int) -> tuple[int, int]:
        _X, y = super().__getitem__(index)
        return torch.utils.data.get_worker_info().id, y


MANY = 250_000  # IDs, and samples loaded


def worker_memory_after_many_samples(num_IDs: int) -> float:
    """Mean private memory (kB) of two workers that loaded MANY samples drawn from num_IDs IDs:
    the same work either way, so only what is kept per ID can make a difference."""
    my_classes.load_sample = lambda path, ID: torch.zeros(())
    IDs = [f"id-{i + 1}" for i in range(num_IDs)]
    labels = {ID: i % 10 for i, ID in enumerate(IDs)}  # alive, as the script's labels are
    loader = torch.utils.data.DataLoader(
        WhichWorker(IDs, labels),
        batch_size=4096,
        sampler=[i % num_IDs for i in range(MANY)],
        num_workers=2,
        persistent_workers=True,
        multiprocessing_context="fork",  # the workers share this process's memory (and patch)
    )
    gc.freeze()  # as pytorch_script.py does before its workers start
    for _ in loader:
        pass
    return statistics.mean(private_memory_kb(w.pid) for w in loader._iterator._workers)


def in_new_python(function: Callable[[int], float], arg: int) -> float:
    """function(arg) in a fresh interpreter: this test process's history would blur memory use."""
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=spawn) as pool:
        return pool.submit(function, arg).result()


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/<pid>/smaps_rollup")
def test_worker_memory_does_not_grow_with_the_number_of_IDs() -> None:
    # The article's list of str and dict: about 7 MB more per worker here for 250,000 IDs (30 MB
    # for a million). A worker's private memory also grows when the training process writes to
    # a page they shared (its allocator reusing free room among the IDs), which no Dataset can
    # prevent and which varies from run to run: the least growth of up to three tries is what
    # the Dataset costs.
    growths = []
    while len(growths) < 3 and (not growths or growths[-1] >= 1024):
        few, many = (in_new_python(worker_memory_after_many_samples, n) for n in (1_000, MANY))
        growths.append(many - few)
    assert min(growths) < 1024, f"workers grew by {growths} kB for {MANY:,} IDs, in each try"


def test_workers_keep_quiet_about_a_batch_cut_off_by_ctrl_c(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """multiprocessing's thread that hands a batch to the training process reports a broken
    connection through sys.excepthook: after Ctrl-C, one line from the training process is
    enough. Any other error still shows. The signals that stop a run are left to it too."""
    monkeypatch.setattr(sys, "excepthook", sys.__excepthook__)
    generator = make(2, seed=5)
    init = generator.worker_init_fn
    assert isinstance(init, functools.partial) and init.func is loader.init_worker
    assert init.args == (5, generator.sampler.shared_epoch, preemption.holding())
    assert make(0).worker_init_fn is None
    # What a worker runs first: init_worker(seed, epoch, worker_id), as DataLoader calls it.
    worker = types.SimpleNamespace(dataset=Numbers())
    monkeypatch.setattr(torch.utils.data, "get_worker_info", lambda: worker)
    handlers = {}  # what it does to this process's signals, kept from this process
    monkeypatch.setattr(signal, "signal", lambda signum, action: handlers.update({signum: action}))
    init(0)
    # A cluster's SIGTERM and SIGUSR1 reach every process of a job: the training process stops
    # the run (tests/test_preemption.py), its workers must not die first.
    assert set(handlers) == {signal.SIGTERM, signal.SIGUSR1}

    def report(error: BaseException) -> None:
        sys.excepthook(type(error), error, None)

    for error in (ConnectionResetError(104, "reset"), BrokenPipeError(32, "pipe"), ValueError()):
        thread = threading.Thread(target=report, args=(error,), name="Thread-1 (_serve)")
        thread.start()
        thread.join()
    report(ConnectionResetError(104, "in a thread of the user's own"))
    err = capsys.readouterr().err
    assert "[Errno 104] reset" not in err and "[Errno 32] pipe" not in err
    assert "ValueError" in err and "in a thread of the user's own" in err


def test_ranks_and_workers_draw_apart_and_every_epoch_anew(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under torchrun each rank augments its own way: the same flips on every GPU would waste
    the augmentation. Each seed is still a function of the seed, the epoch, the rank and the
    process or batch, so a resumed run draws what an uninterrupted one draws."""
    seeds = set()
    for rank in ("0", "1"):
        monkeypatch.setenv("RANK", rank)
        for epoch in (1, 2):
            for part in (0, 1, 2):
                seeds.add(seeding.epoch_seed(7, epoch, part))
                assert seeding.epoch_seed(7, epoch, part) == seeding.epoch_seed(7, epoch, part)
    assert len(seeds) == 2 * 2 * 3
    monkeypatch.setenv("RANK", "1")
    seeding.seed_epoch(7, 3)
    first = torch.rand(3)
    monkeypatch.setenv("RANK", "0")
    seeding.seed_epoch(7, 3)
    assert not torch.equal(first, torch.rand(3))


@pytest.mark.parametrize("shuffle", [True, False])
@pytest.mark.parametrize(("length", "ranks"), [(10, 1), (10, 3), (2, 4), (1000, 2)])
def test_the_epoch_sampler_gives_distributed_samplers_order_from_a_tensor(
    monkeypatch: pytest.MonkeyPatch, shuffle: bool, length: int, ranks: int
) -> None:
    """The same order as torch's DistributedSampler (padding, ranks, seeds, epochs), without its
    list of Python ints; and from any sample number on, for a run resumed inside an epoch."""
    dataset = range(length)
    for rank in range(ranks):
        monkeypatch.setenv("WORLD_SIZE", str(ranks))  # as torchrun sets them
        monkeypatch.setenv("RANK", str(rank))
        ours = loader.EpochSampler(dataset, shuffle=shuffle, seed=7)
        torchs = torch.utils.data.DistributedSampler(dataset, ranks, rank, shuffle=shuffle, seed=7)
        for epoch in (0, 3):
            ours.set_epoch(epoch)
            torchs.set_epoch(epoch)
            assert list(ours) == list(torchs)
            ours.set_epoch(epoch, start=1)
            assert list(ours) == list(torchs)[1:]
