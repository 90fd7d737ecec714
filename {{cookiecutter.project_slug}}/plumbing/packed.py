"""pack_data.py's copy of the data: what the project's Dataset returns for each sample, in
memory-mapped arrays per split, read a whole batch at a time. A cache, trusted only while it
holds what the Dataset would read now."""

import ast
import contextlib
import hashlib
import inspect
import itertools
import json
import os
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from plumbing import distributed
from plumbing.data import SPLITS, digest, like_first, load_sample
from plumbing.errors import DataError, on_every_rank, one_line

PACKED = "packed"  # data/packed/<split>/{X,y}.npy
FINGERPRINT = "fingerprint.json"  # data/packed/fingerprint.json: what it was packed from
FILES = "files.npy"  # data/packed/files.npy: the size and times of each sample file then
START_CHECKS = 1000  # sample files a start compares with FILES; the others, while training


class PackedDataset(torch.utils.data.Dataset):
    """dataset's samples and labels as dataset[i] returned them when packed (without
    augmentation), from split_dir/X.npy and y.npy; and dataset's random_augmentation on every
    read of a training sample, as from the files.

    X.npy holds every sample of the split in one memory-mapped array, so a batch is one read of
    the rows it needs instead of one file per sample: __getitems__ returns it already stacked,
    and collate_fn passes it through.
    """

    def __init__(
        self,
        dataset: torch.utils.data.Dataset,
        split_dir: str | Path,
        verification: "Verification | None" = None,
    ) -> None:
        self.dataset, self.split_dir = dataset, Path(split_dir)
        self.verification = verification
        # allow_pickle stays False: this file holds an array only, never code. The samples stay
        # on disk (mmap, copy-on-write so torch can wrap them; nothing writes to them).
        try:
            self.X = torch.from_numpy(np.load(self.split_dir / "X.npy", mmap_mode="c"))
            self.labels = torch.from_numpy(np.load(self.split_dir / "y.npy"))
        except (OSError, ValueError) as err:  # missing, truncated, not an array
            raise DataError(
                f"{self.split_dir}: cannot read the packed data ({err}): run"
                " `python pack_data.py --force`"
            ) from None
        self.augment = dataset.augment and not returns_its_input(dataset.random_augmentation)
        if not len(self.X) == len(self.labels) == len(dataset):
            raise DataError(
                f"{self.split_dir} holds {len(self.X)} samples and {len(self.labels)} labels,"
                f" the split {len(dataset)}: run `python pack_data.py --force`"
            )

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        X = self.X[index].clone()
        if self.augment:
            X = self.dataset.random_augmentation(X)
        return X, int(self.labels[index])

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch of these indices, in their order, as (X, y) tensors: one gather per array."""
        rows = torch.as_tensor(indices)
        # Measured with benchmarks/loaders.py: torch gathers small samples on all its threads,
        # 1.6x NumPy's speed at 12 KB a sample; NumPy copies large ones twice as fast (600 KB).
        if self.X[0].nbytes <= 128 * 1024:
            X = self.X.index_select(0, rows)
        else:
            X = torch.from_numpy(self.X.numpy()[rows.numpy()])
        if self.augment:
            X = each(self.dataset.random_augmentation, X)
        return X, self.labels.index_select(0, rows)

    def begin(self) -> None:
        """As a pass over it begins: the check of every file starts (Verification)."""
        if self.verification is not None:
            self.verification.start()

    def confirm(self) -> None:
        """Once a pass over it is read: stop if the files of the pack changed (Verification)."""
        if self.verification is not None:
            self.verification.confirm()

    def __getstate__(self) -> dict:
        # Workers started with spawn (macOS, Windows) get the directory and map the file
        # themselves, rather than a pickled copy of every sample.
        return {"dataset": self.dataset, "split_dir": self.split_dir}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["dataset"], state["split_dir"])

    @staticmethod
    def collate_fn(batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """__getitems__ made the batch already: pass it through."""
        return batch


def begin(dataset: torch.utils.data.Dataset) -> None:
    """As a pass over dataset begins: a packed copy's check of every file starts; any other
    Dataset has nothing to check."""
    getattr(dataset, "begin", lambda: None)()


def confirm(dataset: torch.utils.data.Dataset) -> None:
    """Once a pass over dataset is read, before anything of it is saved: stop if the files of a
    packed copy changed (a DataError); any other Dataset has nothing to check."""
    getattr(dataset, "confirm", lambda: None)()


class Numbered(torch.utils.data.Dataset):
    """What pack_data.py reads: dataset[i] for i from start on, as (i, X, y), each checked to be
    like first, the first training sample (ID, shape, dtype), in the DataLoader worker."""

    def __init__(self, dataset: torch.utils.data.Dataset, start: int, first: tuple) -> None:
        self.dataset, self.start, self.first = dataset, start, first

    def __len__(self) -> int:
        return len(self.dataset) - self.start

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor, int]:
        i = self.start + index
        X, y = self.dataset[i]
        like_first(X, self.dataset.list_IDs[i], self.first)  # a split must match the other too
        return i, X, y


def each(function: Callable[[torch.Tensor], torch.Tensor], X: torch.Tensor) -> torch.Tensor:
    """function applied to each sample of the batch X."""
    return torch.stack([function(row) for row in X.unbind()])


def _returns_its_input(self: object, X: torch.Tensor) -> torch.Tensor:
    return X


def returns_its_input(method: Callable) -> bool:
    """Whether method's code is exactly `return X` (the template's random_augmentation, before
    you write yours): calling it on every sample would cost half the speed of batched reads and
    change nothing. Any other code, even one that often returns X, is called."""
    code = getattr(getattr(method, "__func__", method), "__code__", None)
    return code is not None and code.co_code == _returns_its_input.__code__.co_code


def code_fingerprint(dataset_class: type) -> str:
    """A digest of the code that makes a sample: the module of the Dataset class (my_classes.py)
    but its models (nn.Module classes, build_model) and random_augmentation, which runs on
    every read, packed or not; and plumbing/data.py, which loads the files. So an edit of how a
    sample is read, in the class or in a helper beside it, makes the pack stale; an edit of the
    model does not. Comments and blank lines do not count."""
    module = sys.modules.get(dataset_class.__module__)
    try:
        tree = ast.parse(inspect.getsource(module))
        loading = inspect.getsource(sys.modules[load_sample.__module__])
    except (OSError, TypeError):  # no source file: never trusted
        return "no source"
    tree.body = [node for node in tree.body if not _is_model(node, module)]
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == dataset_class.__name__:
            # Left out by name, not as the function the class holds now, which a test or a
            # notebook may have replaced.
            node.body = [n for n in node.body if getattr(n, "name", "") != "random_augmentation"]
    code = ast.unparse(tree) + ast.unparse(ast.parse(loading))
    return hashlib.sha256(code.encode()).hexdigest()


def _is_model(node: ast.stmt, module: object) -> bool:
    if isinstance(node, ast.FunctionDef):
        return node.name == "build_model"
    value = getattr(module, node.name, None) if isinstance(node, ast.ClassDef) else None
    return isinstance(value, type) and issubclass(value, torch.nn.Module)


def fingerprint(data_dir: Path, dataset_class: type) -> dict:
    """What a pack was made from, but the sample files: the index (partition.json and
    labels.json) and the code that reads a sample. Their times are in FILES."""
    return {"index": digest(data_dir), "code": code_fingerprint(dataset_class)}


def file_times(
    data_dir: str | Path, partition: dict[str, Sequence[str]], rows: np.ndarray | None = None
) -> np.ndarray:
    """Size, modification and change time (ns) of each listed sample file, split after split
    of the partition (the test split's too), or of those at rows. Any change to a file changes
    its ctime, even a copy that keeps its modification time (cp -p, rsync -a, unzip)."""
    if rows is None:
        IDs = itertools.chain.from_iterable(partition.values())
        count = sum(len(IDs) for IDs in partition.values())
    else:
        splits = [(split, len(IDs)) for split, IDs in partition.items()]
        IDs, count = (_listed(partition, splits, int(row)) for row in rows), len(rows)
    times = np.empty((count, 3), dtype=np.int64)
    for i, ID in enumerate(IDs):
        stat = os.stat(os.path.join(data_dir, f"{ID}.pt"))
        times[i] = stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns
    return times


def _listed(partition: dict[str, Sequence[str]], splits: list[tuple[str, int]], row: int) -> str:
    for split, length in splits:
        if row < length:
            return partition[split][row]
        row -= length
    raise IndexError(row)


def packed_is_stale(
    data_dir: str | Path,
    partition: dict[str, Sequence[str]],
    dataset_class: type,
    checks: int | None = None,
) -> str | None:
    """Why data_dir/packed cannot stand in for what dataset_class reads from data_dir now, or
    None when it can, as far as the index, the code and `checks` sample files drawn at random
    (every file if None, or if there are fewer) tell; changed_file() checks every file."""
    data_dir = Path(data_dir)
    packed = data_dir / PACKED
    try:
        packed_from = json.loads((packed / FINGERPRINT).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return f"no packed data in {packed}"
    except (OSError, ValueError):
        packed_from = {}
    now = {}
    with contextlib.suppress(OSError):
        now = fingerprint(data_dir, dataset_class)
    changed = f"{packed} was packed from other files than {data_dir} holds now"
    if not isinstance(packed_from, dict) or packed_from.get("index") != now.get("index"):
        return changed
    if packed_from.get("code") != now.get("code"):
        return (
            f"{packed} was packed by other code for reading a sample than"
            f" {dataset_class.__module__}.py has now"
        )
    listed = sum(len(IDs) for IDs in partition.values())
    rows = None  # every file
    if checks is not None and checks < listed:
        rows = np.sort(np.random.default_rng().choice(listed, checks, replace=False))
    try:
        times = np.load(packed / FILES, mmap_mode="r")
        if times.shape != (listed, 3):
            return changed
        now_times = file_times(data_dir, partition, rows)
    except (OSError, ValueError):  # a sample file gone; FILES missing or damaged
        return changed
    return None if np.array_equal(now_times, times if rows is None else times[rows]) else changed


def changed_file(data_dir: str | Path, partition: dict[str, Sequence[str]]) -> str | None:
    """Why data_dir/packed is stale, naming the first sample file that is not as it was packed
    (every file compared with FILES, read a block at a time, not mapped: a million files'
    times would stay in memory); None if none changed."""
    data_dir = Path(data_dir)
    stale = f"{data_dir / PACKED} was packed from other files than {data_dir} holds now"
    start = 0
    with open(data_dir / PACKED / FILES, "rb") as f:
        np.lib.format.read_magic(f)  # np.save wrote it: version 1.0
        np.lib.format.read_array_header_1_0(f)
        for IDs in partition.values():
            for block in range(0, len(IDs), 4096):
                rows = np.arange(start + block, start + min(block + 4096, len(IDs)))
                then = np.fromfile(f, dtype=np.int64, count=3 * len(rows)).reshape(-1, 3)
                try:
                    now = file_times(data_dir, partition, rows)
                except OSError as err:
                    return f"{stale} ({err.filename} is gone)"
                differ = np.flatnonzero((now != then).any(axis=1))
                if len(differ):
                    return f"{stale} ({data_dir / IDs[block + int(differ[0])]}.pt changed since)"
            start += len(IDs)
    return None


class Verification:
    """changed_file() in a thread of rank 0, from the first batch on (start(): not during the
    start-up, whose Python it would slow down); confirm() waits for it on every rank, and
    stops the run if the pack is stale, before anything is saved."""

    def __init__(self, data_dir: Path, partition: dict[str, Sequence[str]]) -> None:
        self.data_dir, self.stale, self.confirmed = data_dir, None, False
        self.thread = None
        if distributed.rank() == 0:
            self.thread = threading.Thread(
                target=self._check, args=(partition,), name="check-packed", daemon=True
            )

    def start(self) -> None:
        if self.thread is not None and self.thread.ident is None:  # not started yet
            self.thread.start()

    def _check(self, partition: dict[str, Sequence[str]]) -> None:
        try:
            self.stale = changed_file(self.data_dir, partition)
        except Exception as err:  # the check must say why it could not be done
            self.stale = f"{self.data_dir / PACKED} could not be checked ({one_line(err)})"

    def _checked(self) -> bool:
        return self.thread is None or not self.thread.is_alive()

    def confirm(self) -> None:
        if self.confirmed:
            return
        self.start()
        # The other ranks wait in a collective meanwhile: a minute at a time, well within its
        # time-out, however slow the file system.
        while not distributed.once(self._checked):
            if self.thread is not None:  # rank 0's; the others wait for its answer
                self.thread.join(timeout=60)
        stale = distributed.once(lambda: self.stale)
        self.confirmed = True
        if stale:
            raise on_every_rank(
                DataError(
                    f"{stale}: run `python pack_data.py --data-dir {self.data_dir}`, or train"
                    " from the files with --data-format files"
                )
            )


def choose(
    settings: object,
    partition: dict[str, Sequence[str]],
    *datasets: torch.utils.data.Dataset,
    splits: Sequence[str] = SPLITS,
) -> tuple[torch.utils.data.Dataset, ...]:
    """The datasets (of these splits), read from the files or from their packed copy: as
    --data-format asks, or for 'auto', packed while the copy is current. Says which, in one
    line (rank 0).

    Whether it is current is checked on rank 0, from the index, the code and START_CHECKS
    sample files at start; the other files in a thread while training, which stops before
    the first checkpoint if one of them changed (PackedDataset.confirm)."""
    data_format, data_dir, say = settings.data_format, settings.data_dir, distributed.say
    if data_format == "files":
        say(f"data: {data_dir}/<ID>.pt")
        return datasets
    stale = distributed.once(packed_is_stale, data_dir, partition, type(datasets[0]), START_CHECKS)
    if stale and data_format == "auto":
        hint = "" if stale.startswith("no packed") else "; `python pack_data.py` updates it"
        say(f"data: {data_dir}/<ID>.pt ({stale}{hint})")
        return datasets
    if stale:
        raise DataError(
            f"{stale}: run `python pack_data.py --data-dir {data_dir}`, or train from the files"
            " with --data-format files"
        )
    say(f"data: {data_dir / PACKED}" + (" (up to date)" if data_format == "auto" else ""))
    listed = sum(len(IDs) for IDs in partition.values())
    verification = Verification(data_dir, partition) if listed > START_CHECKS else None
    return tuple(
        PackedDataset(dataset, data_dir / PACKED / split, verification)
        for dataset, split in zip(datasets, splits, strict=True)
    )
