import argparse
import importlib.util
import io
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import my_classes
import numpy as np
import pack_data
import pytest
import pytorch_script
import torch
from make_sample_data import make_sample_data
from my_classes import Dataset
from plumbing import packed as packed_module
from plumbing.data import SPLITS, load_partition
from plumbing.errors import DataError
from plumbing.loader import make
from plumbing.packed import (
    FILES,
    FINGERPRINT,
    PACKED,
    PackedDataset,
    code_fingerprint,
    packed_is_stale,
)

from baked.helpers import in_one_python, kill_half_way, read_rows, snapshot, train


def loader(
    dataset: torch.utils.data.Dataset, num_workers: int, seed: int = 0, **overrides: object
) -> torch.utils.data.DataLoader:
    """The training loader pytorch_script.py makes for this dataset."""
    params = {"batch_size": 16, "shuffle": True, "num_workers": num_workers}
    args = argparse.Namespace(seed=seed, prefetch_factor=2, loader_timeout=0)
    return make(dataset, params, args, torch.device("cpu"), **overrides)


def split(data_dir: Path, name: str, dataset_class: type = Dataset, augment: bool = False):
    """The split read from the files, and from its packed copy."""
    partition, labels = load_partition(data_dir)
    files = dataset_class(partition[name], labels, data_dir, augment=augment)
    return files, PackedDataset(files, data_dir / PACKED / name)


def test_packed_samples_are_bitwise_the_per_file_samples(tiny_data: Path) -> None:
    assert pack_data.main(["--data-dir", str(tiny_data)]) == 0
    assert sorted(
        p.relative_to(tiny_data / PACKED).as_posix() for p in (tiny_data / PACKED).rglob("*.*")
    ) == [FILES, FINGERPRINT, "train/X.npy", "train/y.npy", "validation/X.npy", "validation/y.npy"]
    partition, _ = load_partition(tiny_data)
    for name in SPLITS:
        files, packed = split(tiny_data, name)
        assert len(packed) == len(files) == len(partition[name])
        assert list(packed.dataset.list_IDs) == list(partition[name])
        for index in range(len(files)):
            X, y = files[index]
            X_packed, y_packed = packed[index]
            assert X_packed.dtype == X.dtype and X_packed.shape == X.shape
            assert X_packed.numpy().tobytes() == X.numpy().tobytes()
            assert y_packed == y and type(y_packed) is int


@pytest.mark.parametrize("num_workers", [0, 2])
def test_packed_batches_equal_per_file_batches(
    tiny_data: Path, num_workers: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert pack_data.main(["--data-dir", str(tiny_data)]) == 0

    def one_at_a_time(self: PackedDataset, index: int) -> None:
        raise AssertionError("the loader must read whole batches with __getitems__")

    monkeypatch.setattr(PackedDataset, "__getitem__", one_at_a_time)
    files_set, packed_set = split(tiny_data, "train")
    files, packed = loader(files_set, num_workers), loader(packed_set, num_workers)
    for epoch in (1, 2):
        files.sampler.set_epoch(epoch)
        packed.sampler.set_epoch(epoch)
        pairs = list(zip(files, packed, strict=True))
        assert len(pairs) == 12
        for (X, y), (X_packed, y_packed) in pairs:
            assert torch.equal(X, X_packed) and torch.equal(y, y_packed)
            assert y_packed.dtype == torch.int64


@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 160, 160)])  # 256 B and 300 KB a sample
def test_one_read_per_batch_small_or_large_samples(tmp_path: Path, shape: tuple) -> None:
    data_dir = tmp_path / "data"
    make_sample_data(data_dir, num_samples=12, shape=shape, num_classes=3, validation_fraction=0.25)
    assert pack_data.main(["--data-dir", str(data_dir)]) == 0
    files, packed = split(data_dir, "train")
    X, y = packed.__getitems__([5, 0, 7])
    assert torch.equal(X, torch.stack([packed[i][0] for i in (5, 0, 7)]))
    assert y.tolist() == [packed[i][1] for i in (5, 0, 7)] and y.dtype == torch.int64
    assert torch.equal(X, torch.stack([files[i][0] for i in (5, 0, 7)]))


def test_pack_is_skipped_while_current_and_redone_when_stale(
    tiny_data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    partition, _ = load_partition(tiny_data)

    def stale() -> str | None:
        return packed_is_stale(tiny_data, partition, Dataset)

    assert stale() == f"no packed data in {tiny_data / PACKED}"
    assert pack_data.main(["--data-dir", str(tiny_data)]) == 0
    assert stale() is None
    assert pack_data.main(["--data-dir", str(tiny_data)]) == 0
    assert "is up to date; nothing to do" in capsys.readouterr().out

    later = time.time() + 5
    os.utime(tiny_data / "id-3.pt", (later, later))
    assert stale() == f"{tiny_data / PACKED} was packed from other files than {tiny_data} holds now"
    assert pack_data.main(["--data-dir", str(tiny_data)]) == 0
    assert "Packed" in capsys.readouterr().out
    assert stale() is None


def test_a_copy_that_keeps_old_timestamps_makes_the_pack_stale(tiny_data: Path) -> None:
    """cp -p, rsync -a and unzip keep modification times: the pack must not be trusted."""
    assert pack_data.main(["--data-dir", str(tiny_data)]) == 0
    path = tiny_data / "id-5.pt"
    times = (path.stat().st_atime, path.stat().st_mtime)
    torch.save(torch.ones(1, 8, 8), path)
    os.utime(path, times)  # as cp -p leaves it: new content, old modification time
    assert packed_is_stale(tiny_data, load_partition(tiny_data)[0], Dataset) is not None


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (torch.zeros(1, 8, 9), "is torch.float32 of shape (1, 8, 9), but sample"),
        (torch.zeros(1, 8, 8, dtype=torch.float64), "is torch.float64 of shape (1, 8, 8)"),
    ],
)
def test_pack_refuses_mixed_shapes_and_dtypes_and_keeps_the_old_pack(
    tiny_data: Path, capsys: pytest.CaptureFixture[str], bad: torch.Tensor, message: str
) -> None:
    assert pack_data.main(["--data-dir", str(tiny_data)]) == 0
    old = snapshot(tiny_data / PACKED)
    partition, _ = load_partition(tiny_data)
    ID = partition["validation"][7]
    torch.save(bad, tiny_data / f"{ID}.pt")

    assert pack_data.main(["--data-dir", str(tiny_data)]) == 1

    assert f"error: sample '{ID}' {message}" in capsys.readouterr().err
    assert snapshot(tiny_data / PACKED) == old  # the same files, untouched
    assert sorted(p.name for p in tiny_data.iterdir() if p.is_dir()) == [PACKED]


def test_training_picks_packed_data_while_it_is_current(
    tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = tmp_path / "runs" / "r"  # --dry-run writes nothing there
    assert train(tiny_data, run_dir, "--dry-run", "--num-workers", "0") == 0
    assert f"data: {tiny_data}/<ID>.pt (no packed data in" in capsys.readouterr().out
    assert train(tiny_data, run_dir, "--dry-run", "--data-format", "packed") == 1
    assert capsys.readouterr().err == (
        f"error: no packed data in {tiny_data / PACKED}: run `python pack_data.py --data-dir"
        f" {tiny_data}`, or train from the files with --data-format files\n"
    )

    assert pack_data.main(["--data-dir", str(tiny_data)]) == 0
    assert train(tiny_data, run_dir, "--dry-run", "--num-workers", "0") == 0
    assert f"data: {tiny_data / PACKED} (up to date)" in capsys.readouterr().out.splitlines()
    assert train(tiny_data, run_dir, "--dry-run", "--data-format", "packed") == 0
    assert f"data: {tiny_data / PACKED}" in capsys.readouterr().out.splitlines()

    torch.save(torch.ones(1, 8, 8), tiny_data / "id-3.pt")  # the data changes
    assert train(tiny_data, run_dir, "--dry-run", "--num-workers", "0") == 0
    stale = f"{tiny_data / PACKED} was packed from other files than {tiny_data} holds now"
    assert f"data: {tiny_data}/<ID>.pt ({stale}; `python pack_data.py` updates it)" in (
        capsys.readouterr().out.splitlines()
    )
    assert train(tiny_data, run_dir, "--dry-run", "--data-format", "packed") == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {stale}: run `python pack_data.py") and err.count("\n") == 1


@pytest.mark.parametrize("data_format", ["auto", "packed"])
def test_a_file_changed_beyond_the_start_checks_stops_training_before_anything_is_saved(
    tiny_data: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    data_format: str,
) -> None:
    """A start compares START_CHECKS files (here none); the others are compared while the
    first epoch trains, and a changed one stops the run before its first checkpoint: an
    earlier last.pt and metrics.csv stay byte for byte."""
    monkeypatch.setattr(packed_module, "START_CHECKS", 0)
    assert pack_data.main(["--data-dir", str(tiny_data)]) == 0
    run_dir = tmp_path / "runs" / "r"
    flags = ["--num-workers", "0", "--data-format", data_format]
    assert train(tiny_data, run_dir, *flags, "--max-epochs", "1") == 0  # unchanged: checked, on
    before = snapshot(run_dir)
    capsys.readouterr()

    partition, _ = load_partition(tiny_data)
    changed = tiny_data / f"{partition['validation'][-1]}.pt"
    torch.save(torch.ones(1, 8, 8), changed)
    assert train(tiny_data, run_dir, *flags, "--max-epochs", "2", "--resume") == 1

    out, err = capsys.readouterr()
    assert f"data: {tiny_data / PACKED}" in out  # trusted at start, as far as it looked
    assert err == (
        f"error: {tiny_data / PACKED} was packed from other files than {tiny_data} holds now"
        f" ({changed} changed since): run `python pack_data.py --data-dir {tiny_data}`, or"
        " train from the files with --data-format files\n"
    )
    assert snapshot(run_dir) == before


def test_pack_data_check_compares_every_file(
    tiny_data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert pack_data.main(["--data-dir", str(tiny_data), "--check"]) == 1
    assert capsys.readouterr().err == (
        f"error: no packed data in {tiny_data / PACKED}: run `python pack_data.py --data-dir"
        f" {tiny_data}`\n"
    )
    assert pack_data.main(["--data-dir", str(tiny_data)]) == 0
    capsys.readouterr()
    assert pack_data.main(["--data-dir", str(tiny_data), "--check"]) == 0
    assert (
        capsys.readouterr().out
        == f"{tiny_data / PACKED} is up to date: 256 sample files, as packed\n"
    )

    partition, _ = load_partition(tiny_data)
    gone = tiny_data / f"{partition['train'][-1]}.pt"
    gone.unlink()
    assert pack_data.main(["--data-dir", str(tiny_data), "--check"]) == 1
    assert f"holds now ({gone} is gone): run `python pack_data.py" in capsys.readouterr().err


def test_packed_training_matches_per_file_training(tiny_data: Path, tmp_path: Path) -> None:
    assert pack_data.main(["--data-dir", str(tiny_data)]) == 0
    runs = {}
    for data_format in ("files", "packed"):
        run_dir = tmp_path / "runs" / data_format
        flags = ["--max-epochs", "2", "--num-workers", "0", "--data-format", data_format]
        assert train(tiny_data, run_dir, *flags) == 0
        # All but the share of time spent waiting for batches, which timing decides
        rows = read_rows(run_dir / "metrics.csv")
        runs[data_format] = [{k: v for k, v in row.items() if k != "data_wait"} for row in rows]
    assert len(runs["files"]) == 2 and runs["files"] == runs["packed"]


def test_packed_dataset_pickles_as_its_directory(tiny_data: Path) -> None:
    """Workers started with spawn get the path, not a copy of every sample."""
    assert pack_data.main(["--data-dir", str(tiny_data)]) == 0
    files, packed = split(tiny_data, "train")
    copy = pickle.loads(pickle.dumps(packed))
    assert len(pickle.dumps(packed)) - len(pickle.dumps(files)) < 1000 < packed.X.nbytes
    assert torch.equal(copy.__getitems__([3, 1])[0], packed.__getitems__([3, 1])[0])


@pytest.mark.slow
def test_packed_batches_with_spawned_workers(tiny_data: Path) -> None:
    assert pack_data.main(["--data-dir", str(tiny_data)]) == 0
    _, packed = split(tiny_data, "validation")
    forked = list(loader(packed, 0))
    spawned = loader(packed, 1, multiprocessing_context="spawn")
    for (X, y), (X_spawned, y_spawned) in zip(forked, spawned, strict=True):
        assert torch.equal(X, X_spawned) and torch.equal(y, y_spawned)


def test_packed_files_hold_no_pickles(tiny_data: Path) -> None:
    assert pack_data.main(["--data-dir", str(tiny_data)]) == 0
    for path in (tiny_data / PACKED).rglob("*.npy"):
        np.load(path, mmap_mode="r", allow_pickle=False)  # raises if the file needs pickle


def as_np_save_writes(dataset: torch.utils.data.Dataset) -> dict[str, bytes]:
    """X.npy and y.npy of dataset, as np.save writes the arrays of its samples, read one by
    one: what pack_data.py wrote before it read with DataLoader workers."""
    X = np.stack([dataset[i][0].numpy() for i in range(len(dataset))])
    y = np.array([dataset[i][1] for i in range(len(dataset))], dtype=np.int64)
    files = {}
    for name, array in (("X.npy", X), ("y.npy", y)):
        out = io.BytesIO()
        np.save(out, array)
        files[name] = out.getvalue()
    return files


@pytest.mark.parametrize("num_workers", [0, 2])
def test_pack_writes_each_split_as_np_save_would(tiny_data: Path, num_workers: int) -> None:
    assert pack_data.pack(tiny_data, num_workers=num_workers) == tiny_data / PACKED
    partition, labels = load_partition(tiny_data)
    for name in SPLITS:
        expected = as_np_save_writes(Dataset(partition[name], labels, tiny_data))
        packed = tiny_data / PACKED / name
        assert {path.name: path.read_bytes() for path in packed.iterdir()} == expected


SLOW_PACK = """
import sys, time
import my_classes, pack_data

read = my_classes.load_sample
my_classes.load_sample = lambda path, ID: (time.sleep(0.01), read(path, ID))[1]
pack_data.BATCH_BYTES = 16 * 256  # batches of 16 samples of 1x8x8 float32
sys.exit(pack_data.main(["--data-dir", sys.argv[1], "--num-workers", "0"]))
"""


@pytest.mark.skipif(os.name == "nt", reason="a killed run's directory is found by process id")
@pytest.mark.parametrize("stop", ["kill -9", "Ctrl-C"])
@pytest.mark.slow
def test_a_stopped_pack_goes_on_where_it_stopped(
    tiny_data: Path, monkeypatch: pytest.MonkeyPatch, capsys, stop: str
) -> None:
    """Killed, or interrupted, part way through the training split, then run again: the
    samples already written are not read again, and the pack is as one never stopped."""

    def part_way() -> int:
        done = [int(f.read_text()) for f in tiny_data.glob(f"{PACKED}.tmp-*/train/done")]
        return done[0] if done and 0 < done[0] < 192 else 0

    command = [sys.executable, "-c", SLOW_PACK, str(tiny_data)]  # 10 ms a sample, 1 process
    if stop == "kill -9":
        kill_half_way(command, part_way)
    else:
        # Ctrl-C's default action in the pack, even when these tests were started with SIGINT
        # ignored (nohup, a shell's `&`), which a child would inherit.
        process = subprocess.Popen(
            command, cwd=Path(pack_data.__file__).parent, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, text=True,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.default_int_handler),
        )  # fmt: skip
        deadline = time.monotonic() + 120
        while not part_way():
            assert process.poll() is None, "it finished before it could be interrupted"
            assert time.monotonic() < deadline, "it never got part way"
            time.sleep(0.02)
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) == 130
        assert process.stderr.read() == (
            "interrupted: run pack_data.py again to go on where it stopped\n"
        )
    done = part_way()
    assert done

    reads, read = [], my_classes.load_sample
    monkeypatch.setattr(
        my_classes, "load_sample", lambda path, ID: reads.append(ID) or read(path, ID)
    )
    capsys.readouterr()
    assert pack_data.main(["--data-dir", str(tiny_data), "--num-workers", "0"]) == 0
    assert f": {done} samples done" in capsys.readouterr().out
    # the first sample of each split (Dataset's check), train's again (the pack's), the rest
    assert len(reads) == 3 + (192 - done) + 64
    partition, labels = load_partition(tiny_data)
    for name in SPLITS:
        expected = as_np_save_writes(Dataset(partition[name], labels, tiny_data))
        packed = tiny_data / PACKED / name
        assert {path.name: path.read_bytes() for path in packed.iterdir()} == expected
    assert not list(tiny_data.glob(f"{PACKED}.tmp*"))
    assert packed_is_stale(tiny_data, partition, Dataset) is None


@pytest.mark.parametrize("num_workers", ["0", "2"])
def test_bad_pack_never_replaces_a_good_one_half_way(
    tiny_data: Path, num_workers: str, capsys
) -> None:
    assert pack_data.main(["--data-dir", str(tiny_data)]) == 0
    partition, _ = load_partition(tiny_data)
    bad = tiny_data / f"{partition['validation'][-1]}.pt"
    bad.write_bytes(b"garbage")
    capsys.readouterr()
    assert pack_data.main(["--data-dir", str(tiny_data), "--num-workers", num_workers]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: sample {bad.stem!r}: cannot load {bad} (")
    assert err.count("\n") == 1
    assert not list(tiny_data.glob(f"{PACKED}.tmp*"))
    partition, labels = load_partition(tiny_data)
    validation_set = Dataset(partition["validation"], labels, tiny_data)
    assert len(PackedDataset(validation_set, tiny_data / PACKED / "validation")) == 64


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="a named pipe holds the pack half-way")
@pytest.mark.slow
def test_a_pack_killed_half_way_leaves_the_previous_pack(tiny_data: Path) -> None:
    assert pack_data.main(["--data-dir", str(tiny_data)]) == 0
    before = snapshot(tiny_data / PACKED)
    partition, _ = load_partition(tiny_data)
    held = tiny_data / f"{partition['train'][100]}.pt"
    sample = held.read_bytes()
    held.unlink()
    os.mkfifo(held)  # reading it blocks: the pack stops there, its train/X.npy half-written

    # One process: a DataLoader worker blocked on the pipe would outlive the kill
    command = [sys.executable, "pack_data.py", "--data-dir", str(tiny_data), "--num-workers", "0"]
    kill_half_way(command, lambda: any(tiny_data.glob(f"{PACKED}.tmp-*/train/X.npy")))

    assert snapshot(tiny_data / PACKED) == before
    held.unlink()
    held.write_bytes(sample)
    assert pack_data.main(["--data-dir", str(tiny_data), "--force"]) == 0
    assert not list(tiny_data.glob(f"{PACKED}.*"))  # the killed run's files are gone too
    assert packed_is_stale(tiny_data, partition, Dataset) is None


@pytest.mark.skipif(os.name == "nt", reason="no cleanup there: os.kill cannot probe a process")
def test_a_pack_leaves_the_work_of_runs_still_going_alone(tiny_data: Path) -> None:
    import socket

    here = socket.gethostname()
    running = tiny_data / f"{PACKED}.tmp-{here}-{os.getpid()}-abc123"  # this very process
    elsewhere = tiny_data / f"{PACKED}.tmp-another-host-1-abc123"  # a cluster job elsewhere
    for tmp in (running, elsewhere):
        (tmp / "train").mkdir(parents=True)
    assert pack_data.main(["--data-dir", str(tiny_data)]) == 0
    assert running.exists() and elsewhere.exists()


@pytest.mark.skipif(os.name == "nt", reason="a killed run's directory is found by process id")
def test_a_killed_pack_with_an_empty_files_list_is_started_over(tiny_data: Path) -> None:
    """Killed as it began to write files.npy: not gone on with, and removed."""
    import socket

    assert pack_data.main(["--data-dir", str(tiny_data)]) == 0
    ended = subprocess.Popen([sys.executable, "-c", ""])
    ended.wait()
    left = tiny_data / f"{PACKED}.tmp-{socket.gethostname()}-{ended.pid}-abc123"
    left.mkdir()
    shutil.copy(tiny_data / PACKED / FINGERPRINT, left / pack_data.PACKING)
    (left / FILES).touch()
    assert pack_data.main(["--data-dir", str(tiny_data), "--force"]) == 0
    assert (
        not left.exists()
        and packed_is_stale(tiny_data, load_partition(tiny_data)[0], Dataset) is None
    )


def test_a_pack_of_another_length_than_its_split_is_refused(tiny_data: Path) -> None:
    assert pack_data.main(["--data-dir", str(tiny_data)]) == 0
    partition, labels = load_partition(tiny_data)
    fewer = Dataset(partition["train"][:10], labels, tiny_data)
    with pytest.raises(DataError, match="train holds 192 samples and 192 labels, the split 10"):
        PackedDataset(fewer, tiny_data / PACKED / "train")


@pytest.mark.parametrize("num_workers", ["0", "2"])
def test_a_damaged_pack_is_named_in_one_line(
    tiny_data: Path, tmp_path: Path, capsys, num_workers: str
) -> None:
    """Cut short (a full disk, a copy that stopped): the fingerprint, which covers data/, still
    matches; reading the pack fails, in one line."""
    assert pack_data.main(["--data-dir", str(tiny_data)]) == 0
    X = tiny_data / PACKED / "train" / "X.npy"
    X.write_bytes(X.read_bytes()[: X.stat().st_size // 2])
    capsys.readouterr()
    flags = ["--data-format", "packed", "--num-workers", num_workers]
    assert train(tiny_data, tmp_path / "runs" / "run-1", *flags) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {tiny_data / PACKED / 'train'}: cannot read the packed data (")
    assert err.endswith("): run `python pack_data.py --force`\n") and err.count("\n") == 1
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_an_edit_of_getitem_is_packed_with_the_samples(
    tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Packing stores what __getitem__ returns, not only what read() does: an edit there (the
    labels folded into two classes) comes back from the pack as from the files."""
    edited = edited_dataset_class(tmp_path, monkeypatch, "my_classes_two_classes", "__getitem__")
    monkeypatch.setattr(pack_data, "Dataset", edited)
    assert pack_data.main(["--data-dir", str(tiny_data)]) == 0
    partition, labels = load_partition(tiny_data)
    assert packed_is_stale(tiny_data, partition, edited) is None
    files = edited(partition["train"], labels, tiny_data)
    packed = PackedDataset(files, tiny_data / PACKED / "train")
    X, y = packed.__getitems__(list(range(len(files))))
    assert y.tolist() == [files[i][1] for i in range(len(files))]
    assert set(y.tolist()) == {0, 1} and max(labels.values()) == 3  # the edit took effect
    assert torch.equal(X, torch.stack([files[i][0] for i in range(len(files))]))


class Recorded(Dataset):
    """The article's Dataset whose random_augmentation records each sample it is given and
    returns it plus one."""

    given: list[torch.Tensor] = []

    def random_augmentation(self, X: torch.Tensor) -> torch.Tensor:
        self.given.append(X.clone())
        return X + 1


def test_packed_batches_get_the_augmentation_of_each_sample(
    tiny_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert pack_data.main(["--data-dir", str(tiny_data)]) == 0
    monkeypatch.setattr(Recorded, "given", [])
    files, packed = split(tiny_data, "train", Recorded, augment=True)
    X, y = packed.__getitems__([5, 0, 7])

    read = [files.read(files.list_IDs[i]) for i in (5, 0, 7)]
    assert len(Recorded.given) == 3
    assert all(torch.equal(given, X) for given, X in zip(Recorded.given, read, strict=True))
    assert torch.equal(X, torch.stack(read) + 1)
    assert torch.equal(packed[5][0], read[0] + 1) and len(Recorded.given) == 4
    # Without augment (the validation set), never.
    _, plain = split(tiny_data, "train", Recorded)
    assert torch.equal(plain.__getitems__([5, 0, 7])[0], torch.stack(read))
    assert torch.equal(plain[5][0], read[0]) and len(Recorded.given) == 4


class Noisy(Dataset):
    def random_augmentation(self, X: torch.Tensor) -> torch.Tensor:
        return X + torch.rand(X.shape)


def test_a_random_augmentation_takes_effect_in_both_formats(tiny_data: Path) -> None:
    """Packed data holds what read() returns, never an augmented sample: each read draws anew."""
    assert pack_data.main(["--data-dir", str(tiny_data)]) == 0
    files, packed = split(tiny_data, "train", Noisy, augment=True)
    for read in (files.__getitem__, packed.__getitem__, lambda i: packed.__getitems__([i])):
        first, again = read(3)[0], read(3)[0]
        assert not torch.equal(first, again)
        assert (first - files.read(files.list_IDs[3])).abs().max() < 1  # noise on the sample


def test_an_augmentation_that_returns_its_input_leaves_the_batch_as_it_is(
    tiny_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The template's random_augmentation is `return X`: a packed batch is then not split into
    samples and stacked again. Any other augmentation runs, sample by sample."""

    class ReturnsItsInput(Dataset):
        """As the template's Dataset comes (whatever yours does now)."""

        def random_augmentation(self, X: torch.Tensor) -> torch.Tensor:
            return X

    assert pack_data.main(["--data-dir", str(tiny_data)]) == 0
    files, packed = split(tiny_data, "train", ReturnsItsInput, augment=True)

    def no_sample_by_sample(*args: object, **kwargs: object) -> None:
        raise AssertionError("the batch was split into samples")

    monkeypatch.setattr(packed_module, "each", no_sample_by_sample)
    monkeypatch.setattr(ReturnsItsInput, "random_augmentation", no_sample_by_sample)
    X, _ = packed.__getitems__([5, 0, 7])
    X_one, _ = packed[5]
    monkeypatch.undo()
    assert torch.equal(X, torch.stack([files[i][0] for i in (5, 0, 7)]))
    assert torch.equal(X_one, X[0])

    class SometimesFlipped(Dataset):
        """Returns most samples as they are, but is not `return X`: it runs on each."""

        def random_augmentation(self, X: torch.Tensor) -> torch.Tensor:
            return X.flip(-1) if torch.equal(X, files[0][0]) else X

    _, packed = split(tiny_data, "train", SometimesFlipped, augment=True)
    X, _ = packed.__getitems__([5, 0, 7])
    assert torch.equal(X, torch.stack([files[5][0], files[0][0].flip(-1), files[7][0]]))
    assert torch.equal(packed[0][0], files[0][0].flip(-1))


class InPlace(Dataset):
    def random_augmentation(self, X: torch.Tensor) -> torch.Tensor:
        return X.add_(1)  # changes the very tensor it is given


@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 160, 160)])  # torch's gather, NumPy's
def test_an_augmentation_in_place_never_changes_the_pack(tmp_path: Path, shape: tuple) -> None:
    data_dir = tmp_path / "data"
    make_sample_data(data_dir, num_samples=12, shape=shape, num_classes=3, validation_fraction=0.25)
    assert pack_data.main(["--data-dir", str(data_dir)]) == 0
    on_disk = snapshot(data_dir / PACKED)
    files, packed = split(data_dir, "train", InPlace, augment=True)
    expected = files.read(files.list_IDs[4]) + 1
    for _read in range(2):
        assert torch.equal(packed[4][0], expected)
        assert torch.equal(packed.__getitems__([4, 2])[0][0], expected)
    assert torch.equal(packed.X[4], files.read(files.list_IDs[4]))  # the mapped copy
    assert snapshot(data_dir / PACKED) == on_disk


def test_training_augments_each_training_sample_in_both_formats(
    tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """my_classes.Dataset.random_augmentation, as a user writes it there, runs in training from
    packed data as from the files: on every training sample, on no validation sample."""
    assert pack_data.main(["--data-dir", str(tiny_data)]) == 0
    counts = {}
    for data_format in ("files", "packed"):
        given: list[torch.Size] = []

        def flip(self: Dataset, X: torch.Tensor, given: list = given) -> torch.Tensor:
            given.append(X.shape)
            return X.flip(-1)

        monkeypatch.setattr(Dataset, "random_augmentation", flip)
        flags = ["--dry-run", "--num-workers", "0", "--data-format", data_format]
        assert train(tiny_data, tmp_path / "runs" / data_format, *flags) == 0
        assert set(given) == {(1, 8, 8)}
        counts[data_format] = len(given)
    assert counts["packed"] == counts["files"] >= 2 * 32  # both batches of 32 of the dry run


READ = '        X = load_sample(self.data_dir / f"{ID}.pt", ID)\n'
EDITS = {
    # read() now returns zeros, and notes each ID it reads beside my_classes.py.
    "read": (
        READ,
        '        with open(Path(__file__).with_name("reads.txt"), "a") as log:\n'
        '            log.write(ID + "\\n")\n'
        "        return torch.zeros(1, 8, 8)\n",
    ),
    "__getitem__": (
        "        y = int(self.labels[index])\n",
        "        y = int(self.labels[index]) % 2\n",
    ),
    "random_augmentation": (
        "        return X\n\n\nclass Net",
        "        return X.flip(-1) if torch.rand(()) < 0.5 else X\n\n\nclass Net",
    ),
    # read() through a helper beside the Dataset
    "helper": (READ, '        X = scale(load_sample(self.data_dir / f"{ID}.pt", ID))\n'),
    # The model: not how a sample is read.
    "model": ("nn.Linear(num_features, 128)", "nn.Linear(num_features, 256)"),
}


def edited_dataset_class(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, edit: str | None, more: str = ""
) -> type:
    """my_classes.Dataset after an edit, imported from an edited copy of my_classes.py, with
    more code at its end."""
    source = Path(my_classes.__file__).read_text(encoding="utf-8")
    if edit:
        old, new = EDITS[edit]
        assert source.count(old) == 1, f"my_classes.py changed: edit {edit} anew"
        source = source.replace(old, new) + more
    path = tmp_path / f"{name}.py"
    path.write_text(source, encoding="utf-8")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, module)  # where inspect finds the class's source
    spec.loader.exec_module(module)
    return module.Dataset


@pytest.mark.parametrize(
    ("edit", "stale"),
    [
        (None, False),
        ("read", True),
        ("__getitem__", True),
        ("random_augmentation", False),
        ("model", False),
    ],
)
def test_a_dataset_edit_makes_the_pack_stale_but_for_the_augmentation(
    tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, edit: str | None, stale: bool
) -> None:
    """random_augmentation runs on every read, from packed data too; any other edit of the
    Dataset may change what a sample is, so the pack no longer stands for it."""
    assert pack_data.main(["--data-dir", str(tiny_data)]) == 0
    name = f"my_classes_{edit or 'as_is'}".strip("_")
    edited = edited_dataset_class(tmp_path, monkeypatch, name, edit)
    partition, _ = load_partition(tiny_data)
    expected = (
        f"{tiny_data / PACKED} was packed by other code for reading a sample than {name}.py has now"
    )
    assert packed_is_stale(tiny_data, partition, edited) == (expected if stale else None)


def test_an_edit_of_a_helper_that_read_calls_makes_the_pack_stale(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """How a sample is read can live beside the class, in a function of my_classes.py."""
    helper = "\n\ndef scale(X: torch.Tensor) -> torch.Tensor:\n    return X * {}\n"
    one, thousand = (
        code_fingerprint(
            edited_dataset_class(tmp_path, monkeypatch, f"scale_{n}", "helper", helper.format(n))
        )
        for n in (1, 1000)
    )
    assert one != thousand


@pytest.mark.slow
def test_a_pack_made_before_read_was_edited_is_never_used(tiny_data: Path, tmp_path: Path) -> None:
    """The project copied, its Dataset.read edited after packing: training from the files says so
    in one line and reads through the edited read(); --data-format packed refuses; pack_data.py
    then packs what the edited read() returns."""
    assert pack_data.main(["--data-dir", str(tiny_data)]) == 0
    project = tmp_path / "project"
    here = Path(pytorch_script.__file__).parent
    shutil.copytree(
        here / "plumbing", project / "plumbing", ignore=shutil.ignore_patterns("__pycache__")
    )
    for script in here.glob("*.py"):
        shutil.copy(script, project)
    old, new = EDITS["read"]
    source = (project / "my_classes.py").read_text(encoding="utf-8")
    assert source.count(old) == 1
    (project / "my_classes.py").write_text(source.replace(old, new), encoding="utf-8")

    flags = ["--data-dir", str(tiny_data), "--device", "cpu", "--dry-run", "--num-workers", "0"]
    flags += ["--batch-size", "32", "--no-tensorboard", "--tracker", "none"]
    # Both runs in one new Python, which imports the edited copy's modules (and torch once).
    auto, packed = in_one_python(
        project,
        ("pytorch_script.py", flags),
        ("pytorch_script.py", [*flags, "--data-format", "packed"]),
    )
    assert auto.returncode == 0, auto.stderr
    stale = (
        f"{tiny_data / PACKED} was packed by other code for reading a sample than my_classes.py"
        " has now"
    )
    data_lines = [line for line in auto.stdout.splitlines() if line.startswith("data: ")]
    assert data_lines == [f"data: {tiny_data}/<ID>.pt ({stale}; `python pack_data.py` updates it)"]
    reads = (project / "reads.txt").read_text().split()  # the refused run adds no other ID
    partition, _ = load_partition(tiny_data)
    assert len(set(reads) & set(partition["train"])) >= 2 * 32  # the dry run's two batches
    assert len(set(reads) & set(partition["validation"])) >= 2 * 32

    assert packed.returncode == 1
    assert packed.stderr == (
        f"error: {stale}: run `python pack_data.py --data-dir {tiny_data}`, or train from the"
        " files with --data-format files\n"
    )

    # Once the reads are counted (packing reads every sample):
    (pack,) = in_one_python(project, ("pack_data.py", ["--data-dir", str(tiny_data)]))
    assert pack.returncode == 0, pack.stderr
    for name in SPLITS:
        X = np.load(tiny_data / PACKED / name / "X.npy")
        assert X.shape[1:] == (1, 8, 8) and not X.any()  # what the edited read() returns
