"""The article's Dataset (one sample per file, data/<ID>.pt), the helpers it needs, and the model.

from my_classes import Dataset, Net, load_partition

partition, labels = load_partition("data")  # {'train': [IDs], 'validation': [IDs]}, {ID: class}
training_set = Dataset(partition["train"], labels, "data")
X, y = training_set[0]
"""

import json
import math
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

SPLITS = ("train", "validation")


class DataError(Exception):
    """Data that cannot be used as it is; the message names the file or ID, and what to do."""


class Dataset(torch.utils.data.Dataset):
    """Characterizes a dataset for PyTorch: sample <ID> is the tensor saved in data_dir/<ID>.pt."""

    def __init__(
        self, list_IDs: Sequence[str], labels: dict[str, int], data_dir: str | Path = "data"
    ) -> None:
        """Initialization."""
        self.labels = labels
        self.list_IDs = list_IDs
        self.data_dir = Path(data_dir)

    def __len__(self) -> int:
        """Denotes the total number of samples."""
        return len(self.list_IDs)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        """Generates one sample of data."""
        # Select sample
        ID = self.list_IDs[index]

        # Load data and get label
        X = load_sample(self.data_dir / f"{ID}.pt", ID)
        y = self.labels[ID]

        return X, y


def load_sample(path: Path, ID: str) -> torch.Tensor:
    """Load one saved tensor, naming the file if it is missing or unreadable."""
    try:
        # A .pt file is a pickle: weights_only=True loads tensors and plain types, never runs code.
        X = torch.load(path, weights_only=True)
    except FileNotFoundError:
        raise DataError(
            f"sample {ID!r}: {path} not found; restore it or remove {ID!r} from partition.json"
        ) from None
    except Exception as err:  # torch.load's own errors do not say which file was bad
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DataError(
            f"sample {ID!r}: cannot load {path} ({reason});"
            " re-create it with torch.save(tensor, path)"
        ) from err
    if not isinstance(X, torch.Tensor):
        raise DataError(
            f"sample {ID!r}: {path} holds a {type(X).__name__}, not a tensor;"
            " save each sample with torch.save(tensor, path)"
        )
    return X


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
                    f"{where}: {split!r} holds the ID {ID!r}; an ID must be a file name"
                    " without directories, so that data/<ID>.pt stays inside data/"
                )
            if ID in seen:
                raise DataError(f"{where}: the ID {ID!r} appears in {seen[ID]!r} and {split!r}")
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
    return partition, labels


def _read_json(path: Path) -> object:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(
            f"{path} not found: run `python make_sample_data.py` for sample data,"
            " or put your own data in the article's layout (see README.md)"
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
            # Strided convolutions keep large images cheap; the adaptive pool gives the
            # classifier a fixed input size whatever the height and width.
            self.features = nn.Sequential(
                nn.Conv2d(input_shape[0], 32, kernel_size=3, stride=2, padding=1),
                nn.ReLU(),
                nn.Conv2d(32, 64, kernel_size=3, stride=2, padding=1),
                nn.ReLU(),
                nn.AdaptiveAvgPool2d(4),
                nn.Flatten(),
            )
            num_features = 64 * 4 * 4
        else:
            self.features = nn.Flatten()
            num_features = math.prod(input_shape)
        self.classifier = nn.Sequential(
            nn.Linear(num_features, 128), nn.ReLU(), nn.Linear(128, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))
