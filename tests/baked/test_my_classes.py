import json
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch
from my_classes import Dataset, Net, build_model
from plumbing.data import StringArray, labels_of, load_partition
from plumbing.errors import DataError


def test_dataset_returns_each_saved_tensor_and_its_label(tiny_data: Path) -> None:
    partition, labels = load_partition(tiny_data)
    training_set = Dataset(partition["train"], labels, tiny_data)

    assert len(training_set) == len(partition["train"]) == 192
    for index, ID in enumerate(partition["train"]):
        X, y = training_set[index]
        assert torch.equal(X, torch.load(tiny_data / f"{ID}.pt"))
        assert X.shape == (1, 8, 8) and X.dtype == torch.float32
        assert y == labels[ID] and type(y) is int


def test_read_is_deterministic_and_augmentation_only_for_the_training_set(
    tiny_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """read(ID) is what pack_data.py packs; random_augmentation runs on every read of a
    Dataset made with augment=True (the training set), and only there."""
    calls: list[torch.Tensor] = []

    def flip(self: Dataset, X: torch.Tensor) -> torch.Tensor:
        calls.append(X)
        return X.flip(-1)

    monkeypatch.setattr(Dataset, "random_augmentation", flip)
    partition, labels = load_partition(tiny_data)
    ID = partition["train"][4]
    saved = torch.load(tiny_data / f"{ID}.pt")
    plain = Dataset(partition["train"], labels, tiny_data)
    augmented = Dataset(partition["train"], labels, tiny_data, augment=True)

    assert torch.equal(plain.read(ID), saved) and torch.equal(augmented.read(ID), saved)
    assert torch.equal(plain[4][0], saved) and calls == []
    for _read in range(2):  # on every read, not once
        X, y = augmented[4]
        assert torch.equal(X, saved.flip(-1)) and y == labels[ID]
    assert len(calls) == 2 and all(torch.equal(X, saved) for X in calls)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_loader_yields_every_sample_once_per_epoch(tiny_data: Path, num_workers: int) -> None:
    partition, labels = load_partition(tiny_data)
    validation_set = Dataset(partition["validation"], labels, tiny_data)
    generator = torch.utils.data.DataLoader(
        validation_set, batch_size=16, shuffle=True, num_workers=num_workers
    )
    expected = sorted(labels[ID] for ID in partition["validation"])
    for _epoch in range(2):
        batches = list(generator)
        assert [len(y) for _, y in batches] == [16, 16, 16, 16]
        assert all(X.shape == (16, 1, 8, 8) and X.dtype == torch.float32 for X, _ in batches)
        assert all(y.dtype == torch.int64 for _, y in batches)
        assert sorted(torch.cat([y for _, y in batches]).tolist()) == expected


def test_your_own_data_in_the_article_layout(tmp_path: Path) -> None:
    """Any tensor shape and dtype, any ID names: what a user who brings their own data writes."""
    partition = {"train": ["cat-1", "dog-1"], "validation": ["cat-2"]}
    labels = {"cat-1": 0, "dog-1": 1, "cat-2": 0}
    for i, ID in enumerate(labels):
        torch.save(torch.full((5, 7), float(i), dtype=torch.float64), tmp_path / f"{ID}.pt")
    (tmp_path / "partition.json").write_text(json.dumps(partition))
    (tmp_path / "labels.json").write_text(json.dumps(labels))

    read_partition, read_labels = load_partition(tmp_path)
    assert {split: list(IDs) for split, IDs in read_partition.items()} == partition
    assert dict(read_labels) == labels
    X, y = Dataset(partition["train"], labels, tmp_path)[1]
    assert torch.equal(X, torch.full((5, 7), 1.0, dtype=torch.float64)) and y == 1


def test_an_empty_split_makes_an_empty_dataset(tmp_path: Path) -> None:
    assert len(Dataset([], {}, tmp_path)) == 0


def test_missing_sample_names_the_id_and_path(tiny_data: Path) -> None:
    partition, labels = load_partition(tiny_data)
    ID = partition["train"][3]
    (tiny_data / f"{ID}.pt").unlink()
    with pytest.raises(DataError, match=f"sample '{ID}': .*{ID}.pt not found"):
        Dataset(partition["train"], labels, tiny_data)[3]


@pytest.mark.parametrize("content", [b"", b"not a tensor file", b"PK\x03\x04 truncated zip"])
def test_unreadable_sample_names_the_id_and_path(tiny_data: Path, content: bytes) -> None:
    partition, labels = load_partition(tiny_data)
    ID = partition["validation"][0]
    (tiny_data / f"{ID}.pt").write_bytes(content)
    with pytest.raises(DataError, match=f"sample '{ID}': cannot load .*{ID}.pt"):
        Dataset(partition["validation"], labels, tiny_data)[0]


def test_sample_that_is_not_a_tensor_is_refused(tiny_data: Path) -> None:
    partition, labels = load_partition(tiny_data)
    ID = partition["train"][0]
    torch.save({"x": torch.zeros(3)}, tiny_data / f"{ID}.pt")
    with pytest.raises(DataError, match="holds a dict, not a tensor"):
        Dataset(partition["train"], labels, tiny_data)[0]


GOOD_PARTITION = {"train": ["a", "b"], "validation": ["c"]}
GOOD_LABELS = {"a": 0, "b": 1, "c": 0}


@pytest.mark.parametrize(
    ("partition", "labels", "message"),
    [
        ({"train": ["a", "b"]}, GOOD_LABELS, "the keys 'train' and 'validation', and 'test' if"),
        ({"train": ["a", "b"], "validation": []}, GOOD_LABELS, "'validation' must be a non-empty"),
        ({"train": "a", "validation": ["c"]}, GOOD_LABELS, "'train' must be a non-empty list"),
        ({"train": ["a", "c"], "validation": ["c"]}, GOOD_LABELS, "'c' appears in 'train' and"),
        ({"train": ["a", "../b"], "validation": ["c"]}, GOOD_LABELS, "ID '../b'"),
        ({"train": ["a", "/etc/b"], "validation": ["c"]}, GOOD_LABELS, "ID '/etc/b'"),
        ({"train": ["a", 7], "validation": ["c"]}, GOOD_LABELS, "ID 7"),
        (GOOD_PARTITION, {"a": 0, "b": 1}, "labels.json: no label for the ID 'c'"),
        (GOOD_PARTITION, {"a": 0, "b": "1", "c": 0}, "label of 'b' is '1'"),
        (GOOD_PARTITION, {"a": 0, "b": -1, "c": 0}, "label of 'b' is -1"),
        (GOOD_PARTITION, {"a": 0, "b": 1.5, "c": 0}, "label of 'b' is 1.5"),
        (GOOD_PARTITION, ["a", "b", "c"], "labels.json: expected an object"),
    ],
)
def test_bad_partition_or_labels_are_named(
    tmp_path: Path, partition: object, labels: object, message: str
) -> None:
    (tmp_path / "partition.json").write_text(json.dumps(partition))
    (tmp_path / "labels.json").write_text(json.dumps(labels))
    with pytest.raises(DataError, match=message):
        load_partition(tmp_path)


def test_missing_or_malformed_json_is_named(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="partition.json not found: pass --data-dir, run `python"):
        load_partition(tmp_path)
    (tmp_path / "partition.json").write_text(json.dumps(GOOD_PARTITION))
    (tmp_path / "labels.json").write_text('{"a": 0,')
    with pytest.raises(DataError, match="labels.json: not valid JSON"):
        load_partition(tmp_path)


def test_the_model_maps_a_batch_to_class_scores_and_learns_from_it() -> None:
    """The model build_model makes, whichever it is: samples of the tests' shape in, one score
    per class out, and gradients for every parameter."""
    model = build_model((1, 8, 8), num_classes=5)
    scores = model(torch.randn(4, 1, 8, 8))
    assert scores.shape == (4, 5), f"{type(model).__name__} gives scores of shape {scores.shape}"
    torch.nn.functional.cross_entropy(scores, torch.tensor([0, 1, 2, 3])).backward()
    missing = [name for name, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"{type(model).__name__}: no gradient reaches {missing}"


@pytest.mark.parametrize(
    "shape", [(3, 32, 32), (1, 28, 28), (1, 8, 8), (3, 1, 1), (3, 227, 160), (20,), (4, 16)]
)
def test_net_maps_any_sample_shape_to_class_scores(shape: tuple[int, ...]) -> None:
    """The template's Net itself (build_model may build another model now)."""
    model = Net(shape, num_classes=5)
    assert model(torch.randn(2, *shape)).shape == (2, 5)
    # Apple's MPS has no adaptive pooling for sizes that do not divide evenly.
    assert not any("Adaptive" in type(layer).__name__ for layer in model.modules())


def test_ids_keep_their_order_and_text() -> None:
    IDs = ["id-1", "chat-été", "猫/dog", "🐈", "", "x" * 500, "id-2"]
    stored = StringArray(IDs)
    assert len(stored) == len(IDs) and list(stored) == IDs
    assert stored[1] == "chat-été" and stored[3] == "🐈" and stored[4] == ""
    assert stored[-1] == "id-2" and stored[-7] == "id-1"
    assert stored[np.int64(5)] == "x" * 500  # as a sampler's indices may arrive
    for index in (7, -8, 10**9):
        with pytest.raises(IndexError):
            stored[index]
    assert stored[1:3] == IDs[1:3] and stored[::-2] == IDs[::-2] and stored[9:] == []
    assert list(StringArray([])) == []


def test_labels_are_one_int64_array_in_the_order_of_the_ids() -> None:
    labels = labels_of(["b", "c", "a"], {"a": 0, "b": 1, "c": 2, "unused": 3})
    assert labels.dtype == np.int64 and labels.tolist() == [1, 2, 0]


def test_ids_cost_their_length_not_the_longest_id_times_their_number() -> None:
    """A million typical IDs and one long one: NumPy's fixed-width str array would hold each
    in 500 characters of 4 bytes, 2 GB; the IDs are 9 MB of text."""
    IDs = [f"id-{i + 1}" for i in range(1_000_000)] + ["x" * 500]
    text = sum(len(ID) for ID in IDs)
    assert np.dtype(f"<U{max(map(len, IDs))}").itemsize * len(IDs) > 2e9  # the old storage

    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        stored = StringArray(IDs)
        kept = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert kept < text + 8 * len(IDs) + 1e6 < 30e6, f"{kept / 1e6:.1f} MB for {text / 1e6:.1f} MB"
    assert stored[0] == "id-1" and stored[999_999] == "id-1000000" and stored[-1] == "x" * 500
