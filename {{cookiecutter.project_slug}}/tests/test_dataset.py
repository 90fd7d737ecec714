"""Your Dataset (my_classes.py) on your data: each split (the test split too, where there is
one) opens and reads samples of one shape and dtype with their labels, the labels lie within
the classes, augmentation keeps a sample's shape, and pack_data.py's copy, when current, holds
what the Dataset reads."""

from pathlib import Path

import pytest
import torch

from conftest import some
from my_classes import Dataset
from plumbing import cli
from plumbing.data import num_classes
from plumbing.packed import PACKED, PackedDataset, packed_is_stale


@pytest.mark.parametrize("split", ["train", "validation", "test"])
def test_each_split_reads_samples_of_one_shape_and_dtype_with_their_labels(
    data_dir: Path, index: tuple, split: str
) -> None:
    partition, labels, _ = index
    if split not in partition:
        pytest.skip(f"{data_dir / 'partition.json'} has no test split (it may have one)")
    dataset = Dataset(partition[split], labels, data_dir, augment=split == "train")
    assert len(dataset) == len(partition[split]) > 0
    positions = some(range(len(dataset)), 16)
    first, _ = dataset[positions[0]]
    for i in positions:
        X, y = dataset[i]
        ID = partition[split][i]
        assert isinstance(X, torch.Tensor), f"sample {ID!r} is a {type(X).__name__}"
        assert (X.shape, X.dtype) == (first.shape, first.dtype), f"sample {ID!r}"
        assert torch.isfinite(X.float()).all(), f"sample {ID!r} holds NaN or infinite values"
        assert int(y) == labels[ID], f"sample {ID!r}: label {y}, labels.json says {labels[ID]}"


def test_labels_lie_within_the_classes(data_dir: Path, index: tuple) -> None:
    """0, 1, ..., below the classes the model is built for (--num-classes, or the largest
    label + 1, unless that is far above the labels in use: a label typed wrong)."""
    _, labels, _ = index
    classes = num_classes(labels, cli.training_settings([], "").num_classes, data_dir)
    values = list(labels.values())
    assert min(values) >= 0 and max(values) < classes


def test_augmentation_keeps_the_shape_and_dtype(data_dir: Path, index: tuple) -> None:
    partition, labels, _ = index
    plain = Dataset(partition["train"], labels, data_dir)
    augmented = Dataset(partition["train"], labels, data_dir, augment=True)
    for i in some(range(len(plain)), 8):
        (X, y), (A, b) = plain[i], augmented[i]
        assert (A.shape, A.dtype, int(b)) == (X.shape, X.dtype, int(y))


@pytest.mark.parametrize("split", ["train", "validation"])
def test_packed_data_holds_what_the_dataset_reads(data_dir: Path, index: tuple, split: str) -> None:
    partition, labels, _ = index
    stale = packed_is_stale(data_dir, partition, Dataset)
    if stale:
        pytest.skip(f"{stale}: `python pack_data.py` packs the data, and this test checks it")
    dataset = Dataset(partition[split], labels, data_dir)
    packed = PackedDataset(dataset, data_dir / PACKED / split)
    for i in some(range(len(dataset)), 16):
        (X, y), (P, q) = dataset[i], packed[i]
        assert torch.equal(X, P) and int(y) == int(q), f"sample {partition[split][i]!r}"
