"""The article's Dataset (one sample per file, data/<ID>.pt), its packed twin, and the model.

from my_classes import Dataset, Net, PackedDataset, load_partition

partition, labels = load_partition("data")  # {'train': [IDs], 'validation': [IDs]}, {ID: class}
training_set = Dataset(partition["train"], labels, "data")
X, y = training_set[0]
training_set = PackedDataset("data/packed/train")  # after `python pack_data.py`: the same (X, y)
"""

import errno
import hashlib
import io
import json
import math
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

SPLITS = ("train", "validation")
PACKED = "packed"  # pack_data.py writes data/packed/<split>/{X,y,IDs}.npy
FINGERPRINT = "fingerprint.txt"  # and data/packed/fingerprint.txt: what it packed


class DataError(Exception):
    """Data that cannot be used as it is; the message names the file or ID, and what to do."""


class Dataset(torch.utils.data.Dataset):
    """Characterizes a dataset for PyTorch: sample <ID> is the tensor saved in data_dir/<ID>.pt."""

    def __init__(
        self, list_IDs: Sequence[str], labels: dict[str, int], data_dir: str | Path = "data"
    ) -> None:
        """Initialization."""
        # NumPy arrays rather than the list of str and the dict: a DataLoader worker that reads a
        # Python object writes its reference count, so the page holding it is copied into the
        # worker (about 62 MB per million IDs and worker over an epoch). An array is one object.
        self.list_IDs = np.array(list_IDs, dtype=str)
        self.labels = np.fromiter((labels[ID] for ID in list_IDs), np.int64, len(list_IDs))
        self.data_dir = Path(data_dir)
        # Every sample must have the shape and dtype of the first: a batch stacks them.
        if len(self.list_IDs):
            self.first_ID = str(self.list_IDs[0])
            X = load_sample(self.data_dir / f"{self.first_ID}.pt", self.first_ID)
            self.shape, self.dtype = X.shape, X.dtype

    def __len__(self) -> int:
        """Denotes the total number of samples."""
        return len(self.list_IDs)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        """Generates one sample of data."""
        # Select sample
        ID = str(self.list_IDs[index])

        # Load data and get label
        X = load_sample(self.data_dir / f"{ID}.pt", ID)
        y = int(self.labels[index])

        if X.shape != self.shape or X.dtype != self.dtype:
            raise DataError(
                f"sample {ID!r} is {X.dtype} of shape {tuple(X.shape)}, but sample"
                f" {self.first_ID!r} is {self.dtype} of shape {tuple(self.shape)}:"
                " all samples must have one shape and dtype"
            )
        return X, y


class PackedDataset(torch.utils.data.Dataset):
    """One split packed by pack_data.py: the same (X, y) as Dataset, read a whole batch at a time.

    X.npy holds every sample of the split in one memory-mapped array, so a batch is one read of
    the rows it needs instead of one file per sample. Give DataLoader
    collate_fn=PackedDataset.collate_fn: __getitems__ returns the batch already stacked.
    """

    def __init__(self, split_dir: str | Path) -> None:
        self.split_dir = Path(split_dir)
        # allow_pickle stays False: these files can hold arrays only, never code. The samples
        # stay on disk (mmap, copy-on-write so torch can wrap them; nothing writes to them).
        self.X = torch.from_numpy(np.load(self.split_dir / "X.npy", mmap_mode="c"))
        self.labels = torch.from_numpy(np.load(self.split_dir / "y.npy"))
        self.list_IDs = np.load(self.split_dir / "IDs.npy")
        if not len(self.X) == len(self.labels) == len(self.list_IDs):
            raise DataError(
                f"{self.split_dir}: X.npy, y.npy and IDs.npy differ in length; run pack_data.py"
            )

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.X[index].clone(), int(self.labels[index])

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch of these indices, in their order, as (X, y) tensors: one gather per array."""
        rows = torch.as_tensor(indices)
        # Measured with benchmarks/loaders.py: torch gathers small samples on all its threads,
        # 1.6x NumPy's speed at 12 KB a sample; NumPy copies large ones twice as fast (600 KB).
        if self.X[0].nbytes <= 128 * 1024:
            X = self.X.index_select(0, rows)
        else:
            X = torch.from_numpy(self.X.numpy()[rows.numpy()])
        return X, self.labels.index_select(0, rows)

    def __getstate__(self) -> dict:
        # Workers started with spawn (macOS, Windows) get the directory and map the files
        # themselves, rather than a pickled copy of every sample.
        return {"split_dir": self.split_dir}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["split_dir"])

    @staticmethod
    def collate_fn(batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """__getitems__ made the batch already: pass it through."""
        return batch


def load_sample(path: Path, ID: str) -> torch.Tensor:
    """Load one saved tensor, naming the file if it is missing or unreadable."""
    try:
        # A .pt file is a pickle: weights_only=True loads tensors and plain types, never runs code.
        # Read whole, then parsed from memory: fewer system calls than torch.load(path).
        # map_location: a tensor saved from a GPU loads to the CPU, as DataLoader workers need.
        X = torch.load(io.BytesIO(path.read_bytes()), weights_only=True, map_location="cpu")
    except FileNotFoundError:
        raise DataError(
            f"sample {ID!r}: {path} not found; restore it or remove {ID!r} from partition.json"
        ) from None
    except Exception as err:  # torch.load's own errors do not say which file was bad
        raise DataError(
            f"sample {ID!r}: cannot load {path} ({load_error(err)}); it must be a tensor saved"
            " with torch.save(tensor, path)"
        ) from None
    if not isinstance(X, torch.Tensor):
        raise DataError(
            f"sample {ID!r}: {path} holds a {type(X).__name__}, not a tensor;"
            " save each sample with torch.save(tensor, path)"
        )
    return X


def error_message(err: Exception) -> str:
    """One line for the user; an error raised in a DataLoader worker arrives wrapped in the
    worker's traceback, its own message on the last line."""
    return str(err).strip().splitlines()[-1].removeprefix(f"{__name__}.DataError: ")


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


def load_partition(data_dir: str | Path) -> tuple[dict[str, list[str]], dict[str, int]]:
    """Read and check data_dir/partition.json and data_dir/labels.json, the article's two dicts."""
    data_dir = Path(data_dir)
    partition = _read_json(data_dir / "partition.json")
    labels = _read_json(data_dir / "labels.json")

    where = data_dir / "partition.json"
    if not isinstance(partition, dict) or set(partition) != set(SPLITS):
        keys = sorted(partition) if isinstance(partition, dict) else type(partition).__name__
        raise DataError(
            f"{where}: expected an object with exactly the keys 'train' and 'validation',"
            f" got {keys}"
        )
    seen: dict[str, str] = {}
    for split in SPLITS:
        IDs = partition[split]
        if not isinstance(IDs, list) or not IDs:
            raise DataError(f"{where}: {split!r} must be a non-empty list of sample IDs")
        for ID in IDs:
            if not isinstance(ID, str) or not _is_plain_name(ID):
                raise DataError(
                    f"{where}: {split!r} holds the ID {ID!r}; an ID must be a string, a file"
                    " name without directories, so that data/<ID>.pt stays inside data/"
                )
            if ID in seen:
                where_else = "twice in" if seen[ID] == split else f"in {seen[ID]!r} and"
                raise DataError(f"{where}: the ID {ID!r} appears {where_else} {split!r}")
            seen[ID] = split

    where = data_dir / "labels.json"
    if not isinstance(labels, dict):
        raise DataError(
            f"{where}: expected an object mapping ID to class, got {type(labels).__name__}"
        )
    for ID in seen:
        if ID not in labels:
            raise DataError(f"{where}: no label for the ID {ID!r} listed in partition.json")
        label = labels[ID]
        if not isinstance(label, int) or isinstance(label, bool) or label < 0:
            raise DataError(
                f"{where}: the label of {ID!r} is {label!r}; labels are integers 0, 1, 2, ..."
            )
    return partition, {ID: labels[ID] for ID in seen}  # only the labels of listed IDs


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


def packed_is_stale(
    data_dir: str | Path, partition: dict[str, list[str]] | None = None
) -> str | None:
    """Why data_dir/packed cannot stand in for data_dir/<ID>.pt, or None when it can: when it
    was packed from exactly the files data_dir holds now. partition: load_partition's, if the
    caller has it already."""
    data_dir = Path(data_dir)
    packed = data_dir / PACKED
    try:
        packed_from = (packed / FINGERPRINT).read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return f"no packed data in {packed}"
    try:
        partition = partition or load_partition(data_dir)[0]
        now = data_fingerprint(data_dir, partition)
    except (DataError, OSError):
        now = None
    if now != packed_from:
        return f"{packed} was packed from other files than {data_dir} holds now"
    return None


def _read_json(path: Path) -> object:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        where = "" if path.is_absolute() else f" (from {Path.cwd()})"
        raise DataError(
            f"{path} not found{where}: pass --data-dir, run `python make_sample_data.py` for"
            " sample data, or put your own data in the article's layout (see README.md)"
        ) from None
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"{path}: not valid JSON ({err})") from None


def _is_plain_name(ID: str) -> bool:
    return ID not in ("", ".", "..") and "/" not in ID and "\\" not in ID and "\0" not in ID


class Net(nn.Module):
    """A small CNN for (channels, height, width) samples; an MLP for samples of any other shape."""

    def __init__(self, input_shape: Sequence[int], num_classes: int) -> None:
        super().__init__()
        if len(input_shape) == 3:
            # Strided convolutions keep large images cheap.
            convolutions = nn.Sequential(
                nn.Conv2d(input_shape[0], 32, kernel_size=3, stride=2, padding=1),
                nn.ReLU(),
                nn.Conv2d(32, 64, kernel_size=3, stride=2, padding=1),
                nn.ReLU(),
            )
            height, width = convolutions(torch.zeros(1, *input_shape)).shape[-2:]
            # Averaged down to about 4x4 whatever the image size. (Not AdaptiveAvgPool2d: on
            # Apple's MPS it fails for sizes that 4 does not divide, pytorch issue 96056.)
            pool = nn.AvgPool2d((max(height // 4, 1), max(width // 4, 1)))
            self.features = nn.Sequential(convolutions, pool, nn.Flatten())
            num_features = self.features(torch.zeros(1, *input_shape)).shape[1]
        else:
            self.features = nn.Flatten()
            num_features = math.prod(input_shape)
        self.classifier = nn.Sequential(
            nn.Linear(num_features, 128), nn.ReLU(), nn.Linear(128, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))
