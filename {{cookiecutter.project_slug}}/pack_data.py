"""Pack what the project's Dataset returns for each sample into memory-mapped arrays per split.

    python pack_data.py              # data/packed/{train,validation}/{X,y}.npy
    python pytorch_script.py         # then reads data/packed, and says so
    python pack_data.py --format stream --output s3://bucket/data   # LitData chunks, for
    python pytorch_script.py --data-format stream --data-dir s3://bucket/data   # streaming

Each sample is what my_classes.Dataset returns for it, but for random_augmentation, which
still runs on every read. The per-file data stays as it is. pytorch_script.py uses the packed
copy only while data/ holds exactly the files it was packed from and my_classes.py makes a
sample as it did then: after changing either, run pack_data.py again.
"""

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
from plumbing.cli import parser
from plumbing.data import SPLITS, like_first, load_partition
from plumbing.errors import DataError, SetupError
from plumbing.files import atomic_write_text
from plumbing.loader import usable_cpus
from plumbing.packed import FINGERPRINT, PACKED, fingerprint, packed_is_stale


def pack_split(dataset: Dataset, out_dir: Path, first: tuple[str, torch.Size, torch.dtype]) -> None:
    """Stream dataset[i] of every sample, as training reads it but for random_augmentation, into
    out_dir/X.npy and out_dir/y.npy, one sample at a time; each must be like `first`, the
    first training sample (ID, shape, dtype)."""
    _, shape, dtype = first
    try:
        np_dtype = torch.empty(0, dtype=dtype).numpy().dtype
    except TypeError:
        raise DataError(
            f"samples of dtype {dtype} cannot be packed: NumPy has no such dtype"
        ) from None
    out_dir.mkdir(parents=True)
    # open_memmap writes the .npy header, then the rows go straight to the file: the split is
    # never in memory all at once.
    X = np.lib.format.open_memmap(
        out_dir / "X.npy", mode="w+", dtype=np_dtype, shape=(len(dataset), *shape)
    )
    y = np.empty(len(dataset), dtype=np.int64)
    progress = tqdm(
        range(len(dataset)), desc=f"packing {out_dir.name}", unit="sample", leave=False,
        disable=None,
    )  # fmt: skip
    try:
        for i in progress:
            sample, label = dataset[i]
            like_first(sample, dataset.list_IDs[i], first)  # a split must match the other too
            X[i], y[i] = sample.numpy(), label
        X.flush()
    finally:
        del X  # unmapped, so that the directory can be removed on failure (Windows)
    np.save(out_dir / "y.npy", y)


def remove_what_killed_runs_left(data_dir: Path) -> None:
    """Remove the temporary directories of pack runs killed on this machine (kill -9, a crash);
    not those of a run still going, here or on another machine of a cluster."""
    if os.name == "nt":  # there, os.kill(pid, 0) would end the process rather than probe it
        return
    host = socket.gethostname()
    for tmp in data_dir.glob(f"{PACKED}.tmp-*"):
        made_by = tmp.name.removeprefix(f"{PACKED}.tmp-").rsplit("-", 2)
        if len(made_by) == 3 and made_by[0] == host and made_by[1].isdigit():
            try:
                os.kill(int(made_by[1]), 0)  # raises if no such process
            except ProcessLookupError:
                shutil.rmtree(tmp, ignore_errors=True)
            except PermissionError:  # it runs, as another user
                pass


def pack(data_dir: Path, force: bool = False) -> Path | None:
    """Write data_dir/packed beside it and swap it in whole; returns its path, or None when it
    was up to date already (unless force)."""
    partition, labels = load_partition(data_dir)
    # Taken before reading the samples: a change made during packing shows as a stale pack.
    packed_from = fingerprint(data_dir, partition, Dataset)
    if not force and packed_is_stale(data_dir, partition, Dataset, now=packed_from) is None:
        return None
    # As training reads them, without random_augmentation (augment stays off)
    datasets = {split: Dataset(partition[split], labels, data_dir) for split in SPLITS}
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
    remove_what_killed_runs_left(data_dir)
    # Packed into a new temporary directory first: until the renames, the previous pack is
    # untouched, and an interrupted run removes the temporary one.
    prefix = f"{PACKED}.tmp-{socket.gethostname()}-{os.getpid()}-"
    tmp = Path(tempfile.mkdtemp(dir=data_dir, prefix=prefix))
    tmp.chmod(0o755)  # mkdtemp makes it private; the packed data is shared like data/
    try:
        for split in SPLITS:
            pack_split(datasets[split], tmp / split, first)
        atomic_write_text(tmp / FINGERPRINT, json.dumps(packed_from) + "\n")
        if packed.exists():
            packed.rename(old)
        tmp.rename(packed)
    except BaseException:
        if old.exists() and not packed.exists():
            old.rename(packed)
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(old, ignore_errors=True)
    return packed


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--data-dir", type=Path, default=Path("data"), help="what to pack")
    p.add_argument("--force", action="store_true", help="pack even if up to date")
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

    start = time.perf_counter()
    try:
        packed = pack(args.data_dir, args.force)
    except (DataError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
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
