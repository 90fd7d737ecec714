"""Read and check the article's two dicts and one sample file, and keep IDs compactly."""

import collections
import hashlib
import io
import itertools
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from plumbing import distributed
from plumbing.errors import DataError, load_error
from plumbing.files import is_plain_name
from plumbing.index import Labels, StringArray, plain_index

SPLITS = ("train", "validation")  # what training reads: every partition.json has them
OPTIONAL = ("test",)  # held out: what training never reads (evaluate.py --split test)
CLASSES = "classes.json"  # optional, beside labels.json: ["cat", "dog", ...], label 0 is cat


def is_url(location: str | Path) -> bool:
    """Whether --data-dir names object storage (s3://bucket/data), not a directory."""
    return "://" in str(location)


def location(text: str) -> Path | str:
    """A directory, or a URL as it is (a Path would make s3://bucket/data s3:/bucket/data)."""
    return text if is_url(text) else Path(text)


def index_of(data_dir: Path | str) -> str:
    """Where data_dir's partition.json is: a stream's is in URL/index (plumbing/stream.py)."""
    if not is_url(data_dir) and not (Path(data_dir) / "index").is_dir():
        return str(Path(data_dir) / "partition.json")
    return f"{data_dir}/index: its partition.json"


def labels_of(list_IDs: Sequence[str], labels: Mapping[str, int]) -> np.ndarray:
    """The label of each ID, in the order of list_IDs, as one array (as StringArray, for the
    workers' sake)."""
    if isinstance(labels, Labels):
        return labels.of(list_IDs)
    return np.fromiter((labels[ID] for ID in list_IDs), np.int64, len(list_IDs))


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


def like_first(X: torch.Tensor, ID: str, first: tuple[str, torch.Size, torch.dtype]) -> None:
    """Every sample must have the shape and dtype of the first: a batch stacks them."""
    first_ID, shape, dtype = first
    if X.shape != shape or X.dtype != dtype:
        raise DataError(
            f"sample {ID!r} is {X.dtype} of shape {tuple(X.shape)}, but sample {first_ID!r} is"
            f" {dtype} of shape {tuple(shape)}: all samples must have one shape and dtype"
        )


def load_partition(data_dir: str | Path) -> tuple[dict[str, StringArray], Labels]:
    """Read and check data_dir/partition.json and data_dir/labels.json, the article's two dicts:
    partition[split] a sequence of IDs ('train', 'validation', and 'test' if the file has it),
    labels a mapping of ID to class (every ID of labels.json, listed or not), both kept in
    arrays (26 MB for a million IDs, where lists and a dict take 170 MB; plumbing/index.py).
    Under torchrun, rank 0 reads them, and the other ranks get its arrays."""
    return distributed.once(_load_partition, Path(data_dir))


def _load_partition(data_dir: Path) -> tuple[dict[str, StringArray], Labels]:
    index = plain_index(data_dir, SPLITS, OPTIONAL)
    if index is not None:
        return index
    # Not in the plain form the project's tools write, or wrong: read whole, and say what
    # is wrong.
    partition, labels = (_parse(data_dir / name) for name in ("partition.json", "labels.json"))
    partition, labels = _checked(data_dir, partition, labels)
    partition = {split: StringArray(IDs) for split, IDs in partition.items()}
    classes = {split: labels_of(IDs, labels) for split, IDs in partition.items()}
    listed = {ID for IDs in partition.values() for ID in IDs}
    unlisted = StringArray([ID for ID in labels if ID not in listed])
    return partition, Labels(partition, classes, (unlisted, labels_of(unlisted, labels)))


def _checked(
    data_dir: Path, partition: object, labels: object
) -> tuple[dict[str, list[str]], dict[str, int]]:
    """load_partition's checks, on the two files parsed: the partition (its splits in the
    order of SPLITS, then OPTIONAL), and every label."""
    where = data_dir / "partition.json"
    allowed = (*SPLITS, *OPTIONAL)
    if not isinstance(partition, dict) or not set(SPLITS) <= set(partition) <= set(allowed):
        keys = sorted(partition) if isinstance(partition, dict) else type(partition).__name__
        raise DataError(
            f"{where}: expected an object with the keys 'train' and 'validation', and 'test' if"
            f" it holds a test split (nothing else), got {keys}"
        )
    partition = {split: partition[split] for split in allowed if split in partition}
    seen: dict[str, str] = {}
    for split, IDs in partition.items():
        if not isinstance(IDs, list) or not IDs:
            raise DataError(f"{where}: {split!r} must be a non-empty list of sample IDs")
        for ID in IDs:
            if not isinstance(ID, str) or not is_plain_name(ID):
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
    for ID, label in labels.items():  # every label, of the IDs listed or not: all are kept
        if not isinstance(label, int) or isinstance(label, bool) or not 0 <= label < 2**63:
            raise DataError(
                f"{where}: the label of {ID!r} is {label!r}; labels are integers 0, 1, 2, ..."
            )
    return partition, labels


def num_classes(
    labels: Mapping[str, int],
    given: int | None,
    data_dir: str | Path,
    names: Sequence[str] | None = None,
) -> int:
    """How many classes the model tells apart: given (--num-classes), else as many as
    classes.json names (names), else the largest label plus one, unless that is far more than
    the labels in use (a label typed wrong, 1048576 for 6, would make the last layer of a
    million classes). Under torchrun, found by rank 0."""
    return distributed.once(_num_classes, labels, given, data_dir, names)


def _num_classes(
    labels: Mapping[str, int], given: int | None, data_dir: str | Path, names: Sequence[str] | None
) -> int:
    values = list(labels.values())
    largest, where = max(values), Path(data_dir) / "labels.json"
    ID = next(itertools.islice(labels, values.index(largest), None))
    if names is not None:
        if largest >= len(names):
            raise DataError(
                f"{where}: the label of {ID!r} is {largest}, but {CLASSES} names {len(names)}"
                f" classes (labels 0 to {len(names) - 1}): correct one of the two files"
            )
        if given is not None and given != len(names):
            raise DataError(
                f"--num-classes {given}, but {Path(data_dir) / CLASSES} names {len(names)}"
                f" classes: pass --num-classes {len(names)}, or leave it out"
            )
        return len(names)
    if given is not None:
        if largest >= given:
            raise DataError(
                f"{where}: the label of {ID!r} is {largest}, but --num-classes {given} allows"
                f" labels 0 to {given - 1}: correct it, or pass --num-classes {largest + 1}"
            )
        return given
    in_use = len(set(values))
    if largest + 1 > max(1000, 2 * in_use):
        raise DataError(
            f"{where}: the label of {ID!r} is {largest}, but only {in_use} different labels are"
            f" in use: correct it, or pass --num-classes {largest + 1} to train with that many"
            " classes anyway"
        )
    return largest + 1


def class_names(data_dir: str | Path) -> list[str] | None:
    """The name of each class, in the order of the labels, from data_dir/classes.json; None
    where there is none (a stream's is in its index: plumbing/stream.py)."""
    path = Path(data_dir) / CLASSES
    if is_url(data_dir) or not path.exists():
        return None
    names = _parse(path)
    if not (isinstance(names, list) and names and all(isinstance(n, str) and n for n in names)):
        raise DataError(
            f'{path}: expected a list of class names, one string for each label (["cat",'
            ' "dog"]: label 0 is cat, 1 dog)'
        )
    twice = [name for name, count in collections.Counter(names).items() if count > 1]
    if twice:
        raise DataError(f"{path}: the name {twice[0]!r} is given to two classes")
    return names


def digest(data_dir: str | Path) -> str:
    """A digest of partition.json and labels.json: which samples a run trains on, and their
    labels (the sample files are not read: a checkpoint names the data it was saved on)."""
    sha = hashlib.sha256()
    for name in ("partition.json", "labels.json"):
        sha.update((Path(data_dir) / name).read_bytes())
    return sha.hexdigest()[:16]


def _parse(path: Path) -> object:
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        where = "" if path.is_absolute() else f" (from {Path.cwd()})"
        raise DataError(
            f"{path} not found{where}: pass --data-dir, run `python make_sample_data.py` for"
            " sample data, or put your own data in the article's layout (see README.md)"
        ) from None
    except ValueError as err:  # not UTF-8, not JSON, a number of over 4,300 digits
        raise DataError(f"{path}: not valid JSON ({err})") from None
