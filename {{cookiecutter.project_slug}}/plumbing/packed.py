"""pack_data.py's copy of the data: what the project's Dataset returns for each sample, in
memory-mapped arrays per split, read a whole batch at a time. A cache, trusted only while it
holds what the Dataset would read now."""

import argparse
import ast
import hashlib
import inspect
import json
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from plumbing import distributed
from plumbing.data import SPLITS, like_first, load_sample
from plumbing.errors import DataError

PACKED = "packed"  # data/packed/<split>/{X,y}.npy
FINGERPRINT = "fingerprint.json"  # data/packed/fingerprint.json: what it was packed from


class PackedDataset(torch.utils.data.Dataset):
    """dataset's samples and labels as dataset[i] returned them when packed (without
    augmentation), from split_dir/X.npy and y.npy; and dataset's random_augmentation on every
    read of a training sample, as from the files.

    X.npy holds every sample of the split in one memory-mapped array, so a batch is one read of
    the rows it needs instead of one file per sample: __getitems__ returns it already stacked,
    and collate_fn passes it through.
    """

    def __init__(self, dataset: torch.utils.data.Dataset, split_dir: str | Path) -> None:
        self.dataset, self.split_dir = dataset, Path(split_dir)
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


def data_fingerprint(data_dir: str | Path, partition: dict[str, list[str]]) -> str:
    """A digest of partition.json, labels.json and the size and times of every listed sample.

    Any change to a sample file changes its ctime, even a copy that keeps its modification time
    (cp -p, rsync -a, unzip), so the digest changes too.
    """
    data_dir = Path(data_dir)
    digest = hashlib.sha256()
    for name in ("partition.json", "labels.json"):
        digest.update((data_dir / name).read_bytes())
    for split in SPLITS:
        for ID in partition[split]:
            stat = (data_dir / f"{ID}.pt").stat()
            digest.update(f"{ID}/{stat.st_size}/{stat.st_mtime_ns}/{stat.st_ctime_ns}\n".encode())
    return digest.hexdigest()


def fingerprint(data_dir: Path, partition: dict[str, list[str]], dataset_class: type) -> dict:
    return {
        "data": data_fingerprint(data_dir, partition),
        "code": code_fingerprint(dataset_class),
    }


def packed_is_stale(
    data_dir: str | Path,
    partition: dict[str, list[str]],
    dataset_class: type,
    now: dict | None = None,
) -> str | None:
    """Why data_dir/packed cannot stand in for what dataset_class reads from data_dir now, or
    None when it can. now: the fingerprint of data_dir, if the caller has it already."""
    data_dir = Path(data_dir)
    packed = data_dir / PACKED
    try:
        packed_from = json.loads((packed / FINGERPRINT).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return f"no packed data in {packed}"
    except (OSError, ValueError):
        packed_from = {}
    if now is None:
        try:
            now = fingerprint(data_dir, partition, dataset_class)
        except OSError:
            now = {}
    if not isinstance(packed_from, dict) or packed_from.get("data") != now.get("data"):
        return f"{packed} was packed from other files than {data_dir} holds now"
    if packed_from.get("code") != now.get("code"):
        return (
            f"{packed} was packed by other code for reading a sample than"
            f" {dataset_class.__module__}.py has now"
        )
    return None


def choose(
    args: argparse.Namespace, partition: dict[str, list[str]], *datasets: torch.utils.data.Dataset
) -> tuple[torch.utils.data.Dataset, ...]:
    """The datasets, read from the files or from their packed copy: as --data-format asks, or
    for 'auto', packed while the copy is current. Says which, in one line (rank 0)."""
    data_format, data_dir, say = args.data_format, args.data_dir, distributed.say
    if data_format == "files":
        say(f"data: {data_dir}/<ID>.pt")
        return datasets
    stale = packed_is_stale(data_dir, partition, type(datasets[0]))
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
    return tuple(
        PackedDataset(dataset, data_dir / PACKED / split)
        for dataset, split in zip(datasets, SPLITS, strict=True)
    )
