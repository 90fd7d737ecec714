import gc
import multiprocessing
import random
import statistics
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

import my_classes
import pytorch_script
from conftest import train
from my_classes import Dataset

CPU = torch.device("cpu")


def params(num_workers: int, seed: int = 0, device: torch.device = CPU, **changes) -> dict:
    settings = {"batch_size": 4, "prefetch_factor": 3, "data_format": "files"}
    settings |= changes
    return pytorch_script.loader_params(
        num_workers=num_workers, seed=seed, device=device, **settings
    )


def test_workers_never_outnumber_usable_cpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pytorch_script, "usable_cpus", lambda: 3)
    assert params(8)["num_workers"] == 3
    assert params(2)["num_workers"] == 2


def test_worker_options_only_with_workers_and_pinning_only_for_cuda() -> None:
    no_workers = params(0)
    assert no_workers["persistent_workers"] is False and no_workers["prefetch_factor"] is None
    with_workers = params(1)
    assert with_workers["persistent_workers"] is True and with_workers["prefetch_factor"] == 3
    assert params(0)["pin_memory"] is False
    assert params(0, device=torch.device("cuda"))["pin_memory"] is True
    assert params(0, device=torch.device("mps"))["pin_memory"] is False
    assert params(0)["collate_fn"] is None
    # DataLoader times workers only; with none, the script times its own reads (within()).
    assert params(0, timeout=5)["timeout"] == 0 and params(2, timeout=5)["timeout"] == 5
    assert params(0, data_format="packed")["collate_fn"] is my_classes.PackedDataset.collate_fn


class Augmented(torch.utils.data.Dataset):
    """Random 'augmentation' from the three generators a transform may use."""

    def __len__(self) -> int:
        return 32

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.tensor([torch.rand(()).item(), np.random.rand(), random.random()])


def draws(seed: int, num_workers: int) -> torch.Tensor:
    pytorch_script.seed_everything(seed)  # with 0 workers, the main process draws
    loader = torch.utils.data.DataLoader(
        Augmented(), shuffle=True, **params(num_workers, seed=seed)
    )
    return torch.cat([torch.cat(list(loader)) for _epoch in range(2)])


@pytest.mark.parametrize("num_workers", [0, 2])
def test_augmentation_repeats_for_a_seed_and_differs_between_workers_and_epochs(
    num_workers: int,
) -> None:
    first, again, other = draws(0, num_workers), draws(0, num_workers), draws(1, num_workers)
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    for column in range(3):  # torch, NumPy, random: no two samples drew the same number
        assert len(set(first[:, column].tolist())) == len(first)


def test_a_slow_loader_is_reported_as_data_bound(
    tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    load = my_classes.load_sample

    def slow_load(path: Path, ID: str) -> torch.Tensor:
        time.sleep(0.005)  # 0.3 s per batch of 64, against milliseconds of compute
        return load(path, ID)

    monkeypatch.setattr(my_classes, "load_sample", slow_load)
    flags = ["--max-epochs", "2", "--num-workers", "0", "--batch-size", "64"]
    assert train(tiny_data, tmp_path / "m.csv", *flags) == 0

    lines = capsys.readouterr().out.splitlines()
    shares = [
        int(line.split("data_wait ")[1].split("%")[0]) for line in lines if "data_wait" in line
    ]
    assert len(shares) == 2 and min(shares) > 50
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
    assert train(tiny_data, tmp_path / "m.csv", *flags) == 0
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


def worker_memory_after_a_million_samples(num_IDs: int) -> float:
    """Mean private memory (kB) of two workers that loaded a million samples drawn from num_IDs
    IDs: the same work either way, so only what is kept per ID can make a difference."""
    my_classes.load_sample = lambda path, ID: torch.zeros(())
    IDs = [f"id-{i + 1}" for i in range(num_IDs)]
    labels = {ID: i % 10 for i, ID in enumerate(IDs)}  # alive, as the script's labels are
    loader = torch.utils.data.DataLoader(
        WhichWorker(IDs, labels),
        batch_size=4096,
        sampler=[i % num_IDs for i in range(1_000_000)],
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
    few, many = (in_new_python(worker_memory_after_a_million_samples, n) for n in (1_000, 10**6))
    # The article's list of str and dict: about 30 MB more per worker here.
    assert many - few < 5 * 1024, f"workers grew from {few:.0f} to {many:.0f} kB"


def test_workers_keep_quiet_about_a_batch_cut_off_by_ctrl_c(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """multiprocessing's thread that hands a batch to the training process reports a broken
    connection through sys.excepthook: after Ctrl-C, one line from the training process is
    enough. Any other error still shows."""
    monkeypatch.setattr(sys, "excepthook", sys.__excepthook__)
    assert params(2)["worker_init_fn"] is pytorch_script.quiet_when_stopped
    assert params(0)["worker_init_fn"] is None
    pytorch_script.quiet_when_stopped(0)

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
