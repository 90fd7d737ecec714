"""Import a folder of images, or a table of numbers, into the article's layout: OUT/<ID>.pt,
OUT/partition.json (train, validation, test), OUT/labels.json and OUT/classes.json.

    python import_data.py images --out mydata                 # images/<class>/*.jpg
    python import_data.py images --out mydata --size 96,128 --channels 1
    python import_data.py X.npy y.npy --out mydata            # an array (N, ...), N labels
    python import_data.py table.csv --label-column species --out mydata   # a sample a row
    python pytorch_script.py --data-dir mydata                # then train on it

Images (one subfolder per class, torchvision's ImageFolder layout) are turned upright,
converted to RGB (or grayscale) and resized to one size, and kept as uint8: 4 times smaller
than float32, scaled to [0, 1] by my_classes.Dataset.read. Labels that are names (folders,
strings) become 0, 1, ... in sorted order, and classes.json keeps the names. The split is
stratified by class and seeded: the same sources and --seed give the same partition.json.
DataLoader workers, one per CPU, read and write the samples; a run stopped (Ctrl-C, kill)
goes on where it stopped when run again with the same arguments. partition.json is written
last: a folder without it holds no complete data set.
"""

import argparse
import collections
import contextlib
import csv
import dataclasses
import hashlib
import itertools
import json
import math
import random
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from plumbing import images, loader
from plumbing.cli import non_negative_int, parser, shape, split_fractions
from plumbing.data import CLASSES
from plumbing.errors import DataError, SetupError, one_line
from plumbing.files import atomic_write_text, is_plain_name, replace_write

IMPORT = "import.json"  # OUT/import.json: what the samples were made from, to go on with


@dataclasses.dataclass
class Source:
    """The samples to import: an ID, a label and a way to read each; what import.json records."""

    IDs: list[str]
    labels: list[int]
    names: list[str] | None  # of the classes, label 0 first; None for labels that are numbers
    record: dict

    def read(self, i: int) -> torch.Tensor:
        raise NotImplementedError


@dataclasses.dataclass
class Images(Source):
    paths: list[Path] = dataclasses.field(default_factory=list)
    size: tuple[int, int] = (64, 64)
    channels: int = 3

    def read(self, i: int) -> torch.Tensor:
        return images.to_tensor(self.paths[i], self.size, self.channels)


@dataclasses.dataclass
class Rows(Source):
    """Rows of an array (a .npy file, memory-mapped, or a CSV's numbers), each reshaped."""

    X: np.ndarray | None = None
    path: Path | None = None  # the .npy file X maps, which a spawned worker maps again
    shape: tuple[int, ...] | None = None

    def read(self, i: int) -> torch.Tensor:
        X = torch.from_numpy(np.array(self.X[i]))  # a copy: torch.save writes this row alone
        return X.reshape(self.shape) if self.shape else X

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        if self.path is not None:  # not a pickled copy of the whole array
            state["X"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        if self.path is not None:
            self.X = np.load(self.path, mmap_mode="r", allow_pickle=False)


class Writing(torch.utils.data.Dataset):
    """What a DataLoader worker does for sample i: read it and write OUT/<ID>.pt, unless going
    on and it is there. Returns (i, whether it wrote it, why it could not be read or '')."""

    def __init__(self, source: Source, out: Path, going_on: bool) -> None:
        self.source, self.out, self.going_on = source, out, going_on

    def __len__(self) -> int:
        return len(self.source.IDs)

    def __getitem__(self, i: int) -> tuple[int, bool, str]:
        path = self.out / f"{self.source.IDs[i]}.pt"
        if self.going_on and path.exists():  # written whole (replace_write) before it stopped
            return i, False, ""
        try:
            X = self.source.read(i)
        except DataError as err:
            return i, False, str(err)
        replace_write(path, lambda f: torch.save(X, f))
        return i, True, ""


def open_images(root: Path, size: tuple[int, int], channels: int) -> Images:
    """The images under root's class subfolders; IDs '<class>-<file name>'."""
    found = images.class_folders(root)
    paths, labels, IDs, taken = [], [], [], set()
    for label, (name, files) in enumerate(found.items()):
        for path in files:
            stem = "-".join(path.relative_to(root / name).with_suffix("").parts)
            ID = base = f"{name}-{stem}".replace("\\", "_")  # a file name, as an ID must be
            for n in itertools.count(2):  # cat/1.jpg and cat/1.png: cat-1, cat-1-2
                if ID not in taken:
                    break
                ID = f"{base}-{n}"
            taken.add(ID)
            paths.append(path)
            labels.append(label)
            IDs.append(ID)
    record = {"images": str(root.resolve()), "size": list(size), "channels": channels}
    record["files"] = digest_of(paths)
    return Images(IDs, labels, list(found), record, paths, size, channels)


def digest_of(paths: Sequence[Path]) -> str:
    """What changes when a file is added, removed, replaced or edited."""
    sha = hashlib.sha256()
    for path in paths:
        stat = path.stat()
        sha.update(f"{path}\t{stat.st_size}\t{stat.st_mtime_ns}\n".encode("utf-8", "replace"))
    return sha.hexdigest()[:16]


def as_labels(values: Sequence[object], where: str) -> tuple[list[int], list[str] | None]:
    """Labels that are whole numbers 0, 1, ... as they are; names, as their rank in sorted
    order, with the names."""
    texts = [str(value).strip() for value in values]
    if all(text.isdigit() for text in texts):
        return [int(text) for text in texts], None
    if any(not text for text in texts):
        raise DataError(f"{where}: a label is empty; give each sample a class")
    names = sorted(set(texts))
    rank = {name: label for label, name in enumerate(names)}
    return [rank[text] for text in texts], names


def open_arrays(X_path: Path, y_path: Path, sample_shape: tuple[int, ...] | None) -> Rows:
    """X.npy's rows (memory-mapped) and y.npy's labels; IDs id-1, id-2, ..."""
    try:
        X = np.load(X_path, mmap_mode="r", allow_pickle=False)
        y = np.load(y_path, allow_pickle=False)
    except (OSError, ValueError) as err:  # missing, not .npy, an array of Python objects
        raise DataError(f"cannot read {X_path} and {y_path} as NumPy arrays ({err})") from None
    if X.ndim < 1 or y.ndim != 1 or len(X) != len(y) or X.dtype.kind not in "biuf":
        raise DataError(
            f"{X_path} holds {X.dtype} {X.shape}, {y_path} {y.dtype} {y.shape}: expected numbers"
            " of shape (N, ...) and N labels (whole numbers 0, 1, ... or names)"
        )
    if y.dtype.kind == "f":
        raise DataError(f"{y_path}: labels of dtype {y.dtype}; give whole numbers or names")
    labels, names = as_labels(y.tolist(), str(y_path))
    record = {"arrays": [str(X_path.resolve()), str(y_path.resolve())], "shape": sample_shape}
    record["files"] = digest_of([X_path, y_path])
    IDs = [f"id-{i + 1}" for i in range(len(X))]
    return Rows(IDs, labels, names, record, X, X_path, reshaped(X.shape[1:], sample_shape))


def open_csv(path: Path, label_column: str, id_column: str | None, sample_shape: tuple) -> Rows:
    """A CSV with a header: a sample a row, its numbers (every column but the label's and the
    ID's) as float32."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"cannot read {path} ({err})") from None
    header, rows = (rows[0], rows[1:]) if rows else ([], [])
    for column in (label_column, id_column):
        if column is not None and column not in header:
            raise DataError(f"{path}: no column {column!r} in its header {header[:8]}")
    if not rows:
        raise DataError(f"{path}: no rows below its header")
    short = next((n for n, row in enumerate(rows, 2) if len(row) != len(header)), None)
    if short is not None:
        raise DataError(
            f"{path}, line {short}: {len(rows[short - 2])} fields, its header {len(header)}"
        )
    keep = [c for c, name in enumerate(header) if name not in (label_column, id_column)]
    try:
        X = np.array([[row[c] for c in keep] for row in rows], dtype=np.float32)
    except (ValueError, IndexError):
        line = next(n for n, row in enumerate(rows, 2) if not all_numbers(row, keep))
        raise DataError(f"{path}, line {line}: not a number in each of its columns") from None
    labels, names = as_labels([row[header.index(label_column)] for row in rows], str(path))
    IDs = [f"id-{i + 1}" for i in range(len(rows))]
    if id_column is not None:
        IDs = [row[header.index(id_column)] for row in rows]
        bad = [ID for ID in IDs if not is_plain_name(ID)]
        bad += [ID for ID, count in collections.Counter(IDs).items() if count > 1]
        if bad:
            raise DataError(f"{path}: the ID {bad[0]!r} is not a file name, or given twice")
    record = {"csv": str(path.resolve()), "label_column": label_column, "id_column": id_column}
    record |= {"shape": sample_shape, "files": digest_of([path])}
    return Rows(IDs, labels, names, record, X, None, reshaped(X.shape[1:], sample_shape))


def all_numbers(row: list[str], columns: list[int]) -> bool:
    try:
        return all(isinstance(float(row[c]), float) for c in columns)
    except (ValueError, IndexError):
        return False


def reshaped(row: tuple[int, ...], sample_shape: tuple[int, ...] | None) -> tuple | None:
    if sample_shape is not None and math.prod(sample_shape) != math.prod(row):
        raise DataError(
            f"--shape {','.join(map(str, sample_shape))} holds {math.prod(sample_shape)} numbers,"
            f" a sample {math.prod(row)}"
        )
    return sample_shape


def stratified(labels: Sequence[int], validation: float, test: float, seed: int) -> dict:
    """Row numbers per split: within each class, shuffled, then its share to validation and
    to test, the rest to training; each split shuffled."""
    rng = random.Random(seed)
    by_class: dict[int, list[int]] = {}
    for row, label in enumerate(labels):
        by_class.setdefault(label, []).append(row)
    splits: dict[str, list[int]] = {"train": [], "validation": [], "test": []}
    for label in sorted(by_class):
        rows = by_class[label]
        rng.shuffle(rows)
        num_validation, num_test = round(len(rows) * validation), round(len(rows) * test)
        splits["validation"] += rows[:num_validation]
        splits["test"] += rows[num_validation : num_validation + num_test]
        splits["train"] += rows[num_validation + num_test :]
    for rows in splits.values():
        rng.shuffle(rows)
    return splits


def prepare(out: Path, record: dict, force: bool) -> tuple[bool, bool]:
    """Whether to go on with an import into out that was stopped (the same sources and
    settings), and whether out is new. Refuses other data there, unless force."""
    new = not out.exists()
    going_on = False
    with contextlib.suppress(OSError, ValueError):
        going_on = json.loads((out / IMPORT).read_text(encoding="utf-8")) == record
    going_on = going_on and not (out / "partition.json").exists()
    if not going_on and not force and not new:
        there = [n for n in ("partition.json", "labels.json", IMPORT) if (out / n).exists()]
        there += [p.name for p in itertools.islice(out.glob("*.pt"), 3)]
        if there:
            raise DataError(
                f"{out} already holds data ({', '.join(there)}, ...): pass --force to replace"
                " it, or choose another --out"
            )
    out.mkdir(parents=True, exist_ok=True)
    for left in out.glob(".*.pt.*.tmp"):  # a sample a killed run was writing
        left.unlink(missing_ok=True)
    if not going_on:
        (out / "partition.json").unlink(missing_ok=True)  # no complete data set until the end
        atomic_write_text(out / IMPORT, json.dumps(record, indent=1) + "\n")
    return going_on, new


def write_samples(
    source: Source, out: Path, going_on: bool, num_workers: int, skip_unreadable: bool
) -> dict[int, str]:
    """Every sample to out/<ID>.pt, by num_workers DataLoader workers; returns those that
    could not be read, and why (skip_unreadable), else stops at the first, removing what this
    run wrote."""
    batch_size = 16 if isinstance(source, Images) else 256
    batches = loader.in_order(Writing(source, out, going_on), batch_size, num_workers)
    written, unreadable = [], {}
    progress = tqdm(total=len(source.IDs), desc="importing", unit="sample", leave=False,
                    disable=None)  # fmt: skip
    try:
        for rows, wrote, errors in batches:
            written += [int(i) for i in rows[wrote]]
            unreadable |= {int(i): error for i, error in zip(rows, errors, strict=True) if error}
            if unreadable and not skip_unreadable:
                raise DataError(
                    f"{next(iter(unreadable.values()))}: remove it, or pass --skip-unreadable to"
                    " import the others"
                )
            progress.update(len(rows))
    except DataError:
        del batches  # its workers stop, and write no more
        done = set(written) if going_on else range(len(source.IDs))
        for i in done:  # what this run wrote: a data set that was not there stays not there
            (out / f"{source.IDs[i]}.pt").unlink(missing_ok=True)
        raise
    finally:
        progress.close()
    return unreadable


def import_data(args: object) -> str:
    """The import; returns the line that says what it wrote."""
    start = time.perf_counter()
    source = open_source(args)
    going_on, new = prepare(args.out, source.record, args.force)
    if going_on:
        done = sum((args.out / f"{ID}.pt").exists() for ID in source.IDs)
        print(f"going on with the import a stopped run left in {args.out}: {done} samples there")
    num_workers = loader.usable_cpus() if args.num_workers is None else args.num_workers
    try:
        unreadable = write_samples(source, args.out, going_on, num_workers, args.skip_unreadable)
    except DataError:
        if new:
            shutil.rmtree(args.out, ignore_errors=True)
        elif not going_on:
            (args.out / IMPORT).unlink(missing_ok=True)
        raise
    kept = [i for i in range(len(source.IDs)) if i not in unreadable]
    labels = [source.labels[i] for i in kept]
    rows = stratified(labels, args.validation_fraction, args.test_fraction, args.seed)
    partition = {split: [source.IDs[kept[r]] for r in rows[split]] for split in rows}
    for split in ("train", "validation"):
        if not partition[split]:
            raise DataError(
                f"{len(kept)} samples leave the {split} split empty at --validation-fraction"
                f" {args.validation_fraction} and --test-fraction {args.test_fraction}"
            )
    if not partition["test"]:
        del partition["test"]
    IDs = [ID for split in partition.values() for ID in split]
    by_ID = dict(zip(source.IDs, source.labels, strict=True))
    atomic_write_text(args.out / "labels.json", json.dumps({ID: by_ID[ID] for ID in IDs}) + "\n")
    if source.names:
        atomic_write_text(args.out / CLASSES, json.dumps(source.names, ensure_ascii=False) + "\n")
    else:
        (args.out / CLASSES).unlink(missing_ok=True)  # an earlier import's names are not these
    atomic_write_text(
        args.out / "partition.json", json.dumps(partition, ensure_ascii=False, indent=1) + "\n"
    )
    return summary(args, source, partition, unreadable, num_workers, time.perf_counter() - start)


def summary(
    args: object, source: Source, partition: dict, unreadable: dict, workers: int, took: float
) -> str:
    first = torch.load(args.out / f"{partition['train'][0]}.pt", weights_only=True)
    count = sum(len(IDs) for IDs in partition.values())
    classes = len(source.names) if source.names else len(set(source.labels))
    named = ""
    if source.names:
        named = f" ({', '.join(source.names[:5])}{', ...' if classes > 5 else ''})"
    splits = ", ".join(f"{len(IDs)} {split}" for split, IDs in partition.items())
    megabytes = count * first.element_size() * first.numel() / 1e6
    line = (
        f"Imported {count} samples of {'x'.join(map(str, first.shape))} {str(first.dtype)[6:]} in"
        f" {classes} classes{named} into {args.out}: {splits} ({megabytes:.0f} MB) in {took:.1f}"
        f" s, {count / took:,.0f} samples/s with {max(workers, 1)} processes"
    )
    if unreadable:
        line += f"; skipped {len(unreadable)} unreadable: {next(iter(unreadable.values()))}"
    return line


def open_source(args: object) -> Source:
    sources = args.sources
    if len(sources) == 1 and sources[0].is_dir():
        images.pillow()  # the extra, before anything is written
        return open_images(sources[0], args.size, args.channels)
    if len(sources) == 1 and sources[0].suffix.lower() == ".csv":
        return open_csv(sources[0], args.label_column, args.id_column, args.shape)
    if len(sources) == 2 and all(source.suffix == ".npy" for source in sources):
        return open_arrays(*sources, args.shape)
    if len(sources) == 1 and not sources[0].exists():
        raise DataError(f"{sources[0]}: no such folder or file")
    raise DataError(
        f"{' '.join(map(str, sources))}: give a folder of images in class subfolders, a CSV"
        " file, or two .npy files (the samples, then their labels)"
    )


def size(text: str) -> tuple[int, int]:
    """'64' -> (64, 64); '96,128' -> (96, 128): height, width."""
    numbers = shape(text)
    if len(numbers) > 2:
        raise argparse.ArgumentTypeError(f"{text!r}: give SIDE or HEIGHT,WIDTH, e.g. 64 or 96,128")
    return (numbers[0], numbers[-1])


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("sources", nargs="+", type=Path, metavar="SOURCE",
                   help="a folder of images, one subfolder per class; a CSV file; or two .npy"
                   " files, the samples (N, ...) and their labels (N)")  # fmt: skip
    p.add_argument("--out", type=Path, default=Path("data"), help="the data directory to write")
    p.add_argument("--size", type=size, default=(64, 64), help="images: SIDE or HEIGHT,WIDTH")
    p.add_argument("--channels", type=int, choices=[1, 3], default=3,
                   help="images: 3 for RGB, 1 for grayscale")  # fmt: skip
    p.add_argument("--label-column", default="label", help="CSV: the column of the labels")
    p.add_argument("--id-column", help="CSV: a column of IDs (default: id-1, id-2, ...)")
    p.add_argument("--shape", type=shape, help="arrays, CSV: reshape each sample, e.g. 1,28,28")
    split_fractions(p, of="each class")
    p.add_argument("--seed", type=int, default=0, help="the split's: same seed, same split")
    p.add_argument("--num-workers", type=non_negative_int,
                   help="DataLoader workers to read and write (default: one per CPU)")  # fmt: skip
    p.add_argument("--skip-unreadable", action="store_true",
                   help="leave out the images that cannot be read, and count them")  # fmt: skip
    p.add_argument("--force", action="store_true", help="replace the data already in --out")
    args = p.parse_args(argv)
    try:
        print(import_data(args))
    except KeyboardInterrupt:
        print("interrupted: run it again to go on where it stopped", file=sys.stderr)
        return 130
    except (DataError, SetupError, OSError) as err:
        print(f"error: {one_line(err)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # required: DataLoader workers re-import this file under spawn
    sys.exit(main())
