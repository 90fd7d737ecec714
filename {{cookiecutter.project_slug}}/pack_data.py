"""Pack what the project's Dataset returns for each sample into memory-mapped arrays per split.

    python pack_data.py              # data/packed/{train,validation,test}/{X,y}.npy
    python pack_data.py --check      # is data/packed up to date? (every file compared)
    python pytorch_script.py         # then reads data/packed, and says so
    python pack_data.py --format stream --output s3://bucket/data   # LitData chunks, for
    python pytorch_script.py --data-format stream --data-dir s3://bucket/data   # streaming

Each sample is what my_classes.Dataset returns for it, but for random_augmentation, which
still runs on every read, read by as many DataLoader workers as there are CPUs to use. The
per-file data stays as it is. pytorch_script.py uses the packed copy only while data/ holds
exactly the files it was packed from and my_classes.py makes a sample as it did then: after
changing either, run pack_data.py again. A start of training compares the index, the code
and 1,000 sample files with the pack, and the other files while it trains (stopping before
anything is saved if one changed); `pack_data.py --check` compares them all. A pack that was
killed (or stopped with Ctrl-C) goes on where it stopped when run again on the same data.
"""

import contextlib
import json
import os
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from my_classes import Dataset
from plumbing import loader
from plumbing.cli import non_negative_int, parser
from plumbing.data import load_partition, load_sample
from plumbing.errors import DataError, SetupError, one_line
from plumbing.files import atomic_write, atomic_write_text
from plumbing.loader import usable_cpus
from plumbing.packed import (
    FILES,
    FINGERPRINT,
    PACKED,
    Numbered,
    changed_file,
    file_times,
    fingerprint,
    packed_is_stale,
)

PACKING = "packing.json"  # in a pack still being written: the fingerprint it is packed from
DONE = "done"  # in each split of it: how many samples are written, and on disk
BATCH_BYTES = 2**22  # read in batches of about 4 MB: cheap to hand over, small in memory


def pack_split(
    dataset: Dataset,
    out_dir: Path,
    first: tuple[str, torch.Size, torch.dtype],
    num_workers: int,
    nonfinite: list[str],
) -> None:
    """Write dataset[i] of every sample, as training reads it but for random_augmentation, to
    out_dir/X.npy and out_dir/y.npy in order, read in batches by num_workers DataLoader
    workers; each must be like `first`, the first training sample (ID, shape, dtype). Goes on
    after the samples out_dir/done counts, if a killed run left it. The IDs of samples with
    NaN or infinite values are added to nonfinite."""
    _, shape, dtype = first
    try:
        np_dtype = torch.empty(0, dtype=dtype).numpy().dtype
    except TypeError:
        raise DataError(
            f"samples of dtype {dtype} cannot be packed: NumPy has no such dtype"
        ) from None
    done = int((out_dir / DONE).read_text()) if (out_dir / DONE).exists() else 0
    if done == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
        # open_memmap writes the .npy header, then the rows go straight to the file: the split
        # is never in memory all at once.
        X = np.lib.format.open_memmap(
            out_dir / "X.npy", mode="w+", dtype=np_dtype, shape=(len(dataset), *shape)
        )
        y = np.lib.format.open_memmap(
            out_dir / "y.npy", mode="w+", dtype=np.int64, shape=(len(dataset),)
        )
    else:
        X, y = (np.load(out_dir / name, mmap_mode="r+") for name in ("X.npy", "y.npy"))
    batch_size = max(1, min(1024, BATCH_BYTES // max(1, X[0].nbytes)))
    batches = loader.in_order(Numbered(dataset, done, first), batch_size, num_workers)
    progress = tqdm(
        total=len(dataset), initial=done, desc=f"packing {out_dir.name}", unit="sample",
        leave=False, disable=None,
    )  # fmt: skip
    saved = time.monotonic()
    try:
        for rows, samples, labels in batches:
            start, stop = int(rows[0]), int(rows[-1]) + 1
            X[start:stop], y[start:stop] = samples.numpy(), labels.numpy()
            if samples.is_floating_point():
                finite = torch.isfinite(samples.flatten(1)).all(1)
                nonfinite += [dataset.list_IDs[int(row)] for row in rows[~finite]]
            progress.update(stop - start)
            if time.monotonic() - saved > 1:  # what a killed run keeps: once a second
                save_progress(X, y, out_dir, stop)
                saved = time.monotonic()
        save_progress(X, y, out_dir, len(dataset))
    finally:
        progress.close()
        del X, y  # unmapped, so that the directory can be removed on failure (Windows)


def save_progress(X: np.memmap, y: np.memmap, out_dir: Path, done: int) -> None:
    """The first `done` samples on disk, and out_dir/done says so."""
    X.flush()
    y.flush()
    atomic_write_text(out_dir / DONE, f"{done}\n")


def left_by_killed_runs(data_dir: Path) -> list[Path]:
    """The temporary directories of pack runs killed on this machine (kill -9, a crash,
    Ctrl-C); not those of a run still going, here or on another machine of a cluster."""
    if os.name == "nt":  # there, os.kill(pid, 0) would end the process rather than probe it
        return []
    host, left = socket.gethostname(), []
    for tmp in data_dir.glob(f"{PACKED}.tmp-*"):
        made_by = tmp.name.removeprefix(f"{PACKED}.tmp-").rsplit("-", 2)
        if len(made_by) == 3 and made_by[0] == host and made_by[1].isdigit():
            try:
                os.kill(int(made_by[1]), 0)  # raises if no such process
            except ProcessLookupError:
                left.append(tmp)
            except PermissionError:  # it runs, as another user
                pass
    return left


def go_on_or_start(data_dir: Path, packing: str, times: np.ndarray) -> Path:
    """The temporary directory to pack into: a killed run's, packing from the same data (index
    and file times) with the same code, taken over and gone on with; else a new one. The
    others killed runs left are removed."""
    prefix = f"{PACKED}.tmp-{socket.gethostname()}-{os.getpid()}-"
    tmp = Path(tempfile.mkdtemp(dir=data_dir, prefix=prefix))
    tmp.chmod(0o755)  # mkdtemp makes it private; the packed data is shared like data/
    taken = False
    for left in left_by_killed_runs(data_dir):
        if not taken and same_pack(left, packing, times):
            tmp.rmdir()
            left.rename(tmp)  # now this run's: no other run takes it over too
            done = sum(int(f.read_text()) for f in tmp.glob(f"*/{DONE}"))
            print(f"going on with the pack a killed run left in {left.name}: {done} samples done")
            taken = True
        else:
            shutil.rmtree(left, ignore_errors=True)
    return tmp


def same_pack(left: Path, packing: str, times: np.ndarray) -> bool:
    """Whether left was packing from what packing and times describe."""
    try:
        return (left / PACKING).read_text() == packing and np.array_equal(
            np.load(left / FILES), times
        )
    except (OSError, ValueError, EOFError):
        return False


def pack(
    data_dir: Path,
    force: bool = False,
    num_workers: int | None = None,
    allow_nonfinite: bool = False,
) -> Path | None:
    """Write data_dir/packed beside it and swap it in whole; returns its path, or None when it
    was up to date already (unless force). num_workers: DataLoader workers that read the
    samples (default: one per usable CPU). Samples with NaN or infinite values are refused,
    naming them, unless allow_nonfinite."""
    partition, labels = load_partition(data_dir)
    # Taken before reading the samples: a change made during packing shows as a stale pack.
    try:
        packed_from, times = fingerprint(data_dir, Dataset), file_times(data_dir, partition)
    except FileNotFoundError as err:  # a sample file gone: said as the Dataset would say it
        load_sample(Path(err.filename), Path(err.filename).name.removesuffix(".pt"))
        raise
    if not force and packed_is_stale(data_dir, partition, Dataset, checks=0) is None:
        with contextlib.suppress(OSError, ValueError):
            if np.array_equal(np.load(data_dir / PACKED / FILES), times):
                return None
    # As training reads them, without random_augmentation (augment stays off)
    datasets = {split: Dataset(IDs, labels, data_dir) for split, IDs in partition.items()}
    like, _ = datasets["train"][0]
    first = (partition["train"][0], like.shape, like.dtype)
    needed = sum(len(IDs) for IDs in partition.values()) * like.element_size() * like.numel()
    free = shutil.disk_usage(data_dir).free
    if needed > free:  # a memory-mapped write to a full disk kills the process without a word
        raise DataError(
            f"packing needs {needed / 1e9:.1f} GB in {data_dir}; {free / 1e9:.1f} GB free"
        )

    packed, old = data_dir / PACKED, data_dir / f"{PACKED}.old"
    shutil.rmtree(old, ignore_errors=True)  # from a run stopped between the two renames below
    # Packed into a temporary directory first: until the renames, the previous pack is
    # untouched. A run that fails removes it; one killed or stopped leaves it to go on with.
    packing = json.dumps(packed_from) + "\n"
    tmp = go_on_or_start(data_dir, packing, times)
    num_workers = usable_cpus() if num_workers is None else num_workers
    keep = False
    try:
        # FILES whole before PACKING, which says the pack can be gone on with
        atomic_write(tmp / FILES, lambda f: np.save(f, times))
        atomic_write_text(tmp / PACKING, packing)
        nonfinite: list[str] = []
        for split, dataset in datasets.items():  # the test split's too
            pack_split(dataset, tmp / split, first, num_workers, nonfinite)
        if nonfinite and not allow_nonfinite:  # the previous pack stays
            names = ", ".join(repr(ID) for ID in nonfinite[:5])
            more = f" and {len(nonfinite) - 5} more" if len(nonfinite) > 5 else ""
            raise DataError(
                f"{len(nonfinite)} samples hold NaN or infinite values ({names}{more}): fix or"
                " remove them, or pack them anyway with --allow-nonfinite"
            )
        for name in [PACKING, *(f"{split}/{DONE}" for split in datasets)]:
            (tmp / name).unlink()
        atomic_write_text(tmp / FINGERPRINT, packing)
        if packed.exists():
            packed.rename(old)
        tmp.rename(packed)
    except KeyboardInterrupt:
        keep = True  # to go on with
        raise
    except BaseException:
        if old.exists() and not packed.exists():
            old.rename(packed)
        raise
    finally:
        if not keep:
            shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(old, ignore_errors=True)
    return packed


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--data-dir", type=Path, default=Path("data"), help="what to pack")
    p.add_argument("--force", action="store_true", help="pack even if up to date")
    p.add_argument(
        "--allow-nonfinite",
        action="store_true",
        help="pack samples with NaN or infinite values too (refused, and named, otherwise)",
    )
    p.add_argument(
        "--check",
        action="store_true",
        help="only say whether DATA_DIR/packed is up to date, from every sample file's size and"
        " times (exit status 1 if not)",
    )
    p.add_argument(
        "--num-workers",
        type=non_negative_int,
        help="DataLoader workers that read the samples (default: one per usable CPU)",
    )
    p.add_argument(
        "--format",
        choices=["packed", "stream"],
        default="packed",
        help="packed: memory-mapped arrays in DATA_DIR/packed, for this machine; stream:"
        " LitData chunks at --output, for streaming (pip install -e '.[stream]')",
    )
    p.add_argument(
        "--output", help="--format stream: a directory, or a URL such as s3://bucket/data"
    )
    args = p.parse_args(argv)
    if args.format == "stream":
        if not args.output:
            p.error("--format stream needs --output: a directory, or a URL (s3://bucket/data)")
        return write_stream(args.data_dir, args.output)

    if args.check:
        return check(args.data_dir)
    start = time.perf_counter()
    try:
        packed = pack(args.data_dir, args.force, args.num_workers, args.allow_nonfinite)
    except KeyboardInterrupt:
        print("interrupted: run pack_data.py again to go on where it stopped", file=sys.stderr)
        return 130
    except (DataError, OSError) as err:
        print(f"error: {one_line(err)}", file=sys.stderr)  # a worker's: its last line
        return 1
    if packed is None:
        print(f"{args.data_dir / PACKED} is up to date; nothing to do (--force packs anyway)")
        return 0
    size = sum(path.stat().st_size for path in packed.rglob("*.npy")) / 1e6
    print(
        f"Packed {args.data_dir} into {packed} ({size:.0f} MB)"
        f" in {time.perf_counter() - start:.1f} s"
    )
    return 0


def check(data_dir: Path) -> int:
    """Whether data_dir/packed holds what the Dataset reads from data_dir now: every file."""
    try:
        partition, _ = load_partition(data_dir)
        stale = packed_is_stale(data_dir, partition, Dataset, checks=0)
        stale = stale or changed_file(data_dir, partition)
    except (DataError, OSError) as err:
        print(f"error: {one_line(err)}", file=sys.stderr)
        return 1
    if stale:
        print(f"error: {stale}: run `python pack_data.py --data-dir {data_dir}`", file=sys.stderr)
        return 1
    listed = sum(len(IDs) for IDs in partition.values())
    print(f"{data_dir / PACKED} is up to date: {listed} sample files, as packed")
    return 0


def write_stream(data_dir: Path, output: str) -> int:
    """Write data_dir's samples, as the Dataset reads them, as LitData chunks at output."""
    start = time.perf_counter()
    try:
        from plumbing import stream  # LitData: pip install -e ".[stream]"

        stream.write(data_dir, output, Dataset, usable_cpus())
    except (DataError, SetupError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"Wrote {data_dir} as a stream to {output} in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
