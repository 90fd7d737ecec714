"""The article's Dataset, which loads one sample per file, and the model: what you edit.

    from my_classes import Dataset, build_model
    from plumbing.data import load_partition

    partition, labels = load_partition("data")  # {'train': [IDs], 'validation': [IDs]}, {ID: class}
    # (read-only, kept in arrays: list(partition["train"]) and dict(labels) make them plain)
    training_set = Dataset(partition["train"], labels, "data")
    X, y = training_set[0]
    model = build_model(tuple(X.shape), num_classes=max(labels.values()) + 1)

pytorch_script.py and the tests build both through these names, so a model or a Dataset you
change here is the one they train and check.
"""

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from plumbing.data import StringArray, labels_of, like_first, load_sample


class Dataset(torch.utils.data.Dataset):
    "Characterizes a dataset for PyTorch"

    def __init__(
        self,
        list_IDs: Sequence[str],
        labels: Mapping[str, int],
        data_dir: str | Path = "data",
        augment: bool = False,
    ) -> None:
        "Initialization"
        # Arrays, not the list and the dict: DataLoader workers then share them rather than
        # copy them (see plumbing/data.py).
        self.list_IDs = StringArray(list_IDs)
        self.labels = labels_of(list_IDs, labels)
        self.data_dir = Path(data_dir)
        self.augment = augment  # the training set's samples only
        if len(self.list_IDs):  # every sample must be like the first: a batch stacks them
            X = self.read(self.list_IDs[0])
            self.first = (self.list_IDs[0], X.shape, X.dtype)

    def __len__(self) -> int:
        "Denotes the total number of samples"
        return len(self.list_IDs)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        "Generates one sample of data"
        # Select sample
        ID = self.list_IDs[index]

        # Load data and get label
        X = self.read(ID)
        y = int(self.labels[index])
        like_first(X, ID, self.first)

        if self.augment:
            X = self.random_augmentation(X)
        return X, y

    def read(self, ID: str) -> torch.Tensor:
        """Sample ID, the same tensor on every call: pack_data.py packs what this returns."""
        X = load_sample(self.data_dir / f"{ID}.pt", ID)
        if X.dtype == torch.uint8:  # images, kept 4x smaller on disk (import_data.py): to [0, 1]
            X = X.float() / 255
        return X

    def random_augmentation(self, X: torch.Tensor) -> torch.Tensor:
        """A random change to one training sample, on every read, from the files, packed or a
        stream; draw on the CPU (torch, NumPy or random: seeded for each read, so repeatable).
        E.g. a horizontal flip: `if torch.rand(()) < 0.5: X = X.flip(-1)`."""
        return X


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


def build_model(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """The model to train, for samples of input_shape in num_classes classes: the one place
    pytorch_script.py, the checkpoints' users and the tests build it."""
    return Net(input_shape, num_classes)
