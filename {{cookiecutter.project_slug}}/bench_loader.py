"""Measure how fast the training DataLoader delivers samples, for each storage format and setting.

    python bench_loader.py                # sweep: a table of samples/s, then the flags to use
    python bench_loader.py --format packed --num-workers 0 --batch-size 64 --epochs 2 --json
    python bench_loader.py --stream s3://bucket/data   # the sweep, and the stream there too

The sweep covers num_workers 0, 1, 2, 4, ... up to the usable CPUs, two batch sizes,
persistent_workers, prefetch_factor, pin_memory (on CUDA, where each batch is also copied to the
device), and the formats: files, packed once `python pack_data.py` ran, and with --stream URL
the stream that `python pack_data.py --format stream --output URL` wrote.
Each figure is the median of --repeats runs, over --epochs epochs of at most --max-samples
training samples, with the page cache (and a stream's chunk cache) warmed first. The best
setting depends on the machine, the storage and the sample size: measure it here rather than
guess.
"""

import argparse
import contextlib
import itertools
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from my_classes import Dataset
from plumbing import loader
from plumbing.cli import non_negative_int, parser, positive_int
from plumbing.data import load_partition
from plumbing.distributed import get_device
from plumbing.errors import ONE_LINE, DataError, one_line
from plumbing.loader import usable_cpus
from plumbing.packed import PACKED, START_CHECKS, PackedDataset, packed_is_stale


def training_sets(
    data_dir: Path, formats: list[str], max_samples: int, stream_at: str | None = None
) -> tuple[dict[str, torch.utils.data.Dataset], str | None]:
    """The training split in each of these formats, as training reads it, cut to its first
    max_samples samples (a stream: to as many, drawn by LitData); packed only while the pack
    is current. Also why it is not, if so."""
    datasets, stale = {}, None
    if "files" in formats or "packed" in formats:
        partition, labels = load_partition(data_dir)
        datasets["files"] = Dataset(partition["train"], labels, data_dir, augment=True)
        if "packed" in formats:  # as a start of training checks it (plumbing/packed.py)
            stale = packed_is_stale(data_dir, partition, Dataset, START_CHECKS)
        if "packed" in formats and not stale:
            datasets["packed"] = PackedDataset(datasets["files"], data_dir / PACKED / "train")
        datasets = {
            # Subset passes whole batches on to PackedDataset.__getitems__.
            name: torch.utils.data.Subset(dataset, range(max_samples))
            if len(dataset) > max_samples
            else dataset
            for name, dataset in datasets.items()
            if name in formats
        }
    if "stream" in formats:
        datasets["stream"] = streamed_training_set(stream_at, max_samples)
    return datasets, stale


def streamed_training_set(url: str, max_samples: int) -> torch.utils.data.Dataset:
    """The stream's training split, as pytorch_script.py --data-format stream reads it."""
    args = argparse.Namespace(data_dir=url, shuffle=True, seed=0)
    with contextlib.redirect_stdout(sys.stderr):  # its "data: URL (streamed)": not the JSON
        _, (training_set, _) = loader.open_stream(args, Dataset)
    if len(training_set) > max_samples:
        share = max_samples / len(training_set)
        training_set = type(training_set)(
            training_set.url, training_set.dataset, True, 0, subsample=share
        )
    return training_set


def samples_per_s(
    dataset: torch.utils.data.Dataset,
    data_format: str,
    setting: dict,
    device: torch.device,
    epochs: int,
) -> float:
    """Samples per second over `epochs` epochs, worker start-up included, as training sees it:
    on CUDA, up to the batches' arrival on the device."""
    start = time.perf_counter()
    params = {key: setting[key] for key in ("batch_size", "num_workers")} | {"shuffle": True}
    args = argparse.Namespace(seed=0, prefetch_factor=setting["prefetch_factor"], loader_timeout=0)
    generator = loader.make(
        dataset,
        params,
        args,
        device,
        # what training does not vary, but the sweep does
        persistent_workers=setting["persistent_workers"],
        pin_memory=setting["pin_memory"],
        collate_fn=PackedDataset.collate_fn if data_format == "packed" else None,
    )
    num_samples = 0
    for epoch in range(1, epochs + 1):
        loader.set_epoch(generator, epoch)
        for X, y in generator:
            if device.type == "cuda":
                X.to(device, non_blocking=setting["pin_memory"])
            num_samples += len(y)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    del generator  # stop persistent workers before the clock stops
    return num_samples / (time.perf_counter() - start)


def measure(
    dataset: torch.utils.data.Dataset,
    data_format: str,
    setting: dict,
    device: torch.device,
    epochs: int,
    repeats: int,
) -> float:
    """Median samples/s of one loader setting."""
    return statistics.median(
        samples_per_s(dataset, data_format, setting, device, epochs) for _ in range(repeats)
    )


def worker_counts(cpus: int) -> list[int]:
    """0, 1, 2, 4, ... and the number of CPUs: a sweep that stays short on a big machine."""
    return sorted({0, cpus} | {2**k for k in range(cpus.bit_length()) if 2**k < cpus})


def settings(batch_size: int, device: torch.device, data_format: str) -> list[dict]:
    """Every combination the sweep measures; worker-only options only where there are workers.
    A stream's loader (LitData's) starts its workers every epoch, and pins memory on CUDA."""
    rows = []
    pin_memory = [False, True] if device.type == "cuda" else [False]
    if data_format == "stream":  # LitData's loader pins on CUDA, as training's does
        pin_memory = [device.type == "cuda"]
    for batch, workers, pin in itertools.product(
        [batch_size, 4 * batch_size], worker_counts(usable_cpus()), pin_memory
    ):
        worker_options = [(True, 2), (True, 4), (False, 2)] if workers else [(False, None)]
        if data_format == "stream" and workers:
            worker_options = [(False, 2), (False, 4)]
        for persistent, prefetch in worker_options:
            rows.append(
                {
                    "batch_size": batch,
                    "num_workers": workers,
                    "persistent_workers": persistent,
                    "prefetch_factor": prefetch,
                    "pin_memory": pin,
                }
            )
    return rows


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--data-dir", type=Path, default=Path("data"), help="as for training")
    p.add_argument(
        "--format", choices=["files", "packed", "stream"], help="measure one setting in this format"
    )
    p.add_argument(
        "--stream",
        metavar="URL",
        help="the stream (a directory or s3://...) to measure, as --data-dir when training with"
        " --data-format stream",
    )
    p.add_argument("--num-workers", type=non_negative_int, help="with --format (default 0)")
    p.add_argument(
        "--batch-size",
        type=positive_int,
        default={{ cookiecutter.batch_size | int }},
        help="the batch size to train with; the sweep also tries four times it",
    )
    p.add_argument("--prefetch-factor", type=positive_int, help="with --format (default 2)")
    p.add_argument("--epochs", type=positive_int, default=2, help="epochs per measurement")
    p.add_argument("--repeats", type=positive_int, default=3, help="measurements per median")
    p.add_argument(
        "--max-samples", type=positive_int, default=8192, help="training samples per epoch, at most"
    )
    p.add_argument(
        "--device", type=get_device, default="auto", help="decides pin_memory, as in training"
    )
    p.add_argument("--json", action="store_true", help="one JSON object (with --format)")
    args = p.parse_args(argv)
    if not args.format and (args.json or args.num_workers is not None or args.prefetch_factor):
        p.error("--json, --num-workers and --prefetch-factor measure one setting: give --format")
    if args.format == "stream" and not args.stream:
        p.error("--format stream measures the stream at --stream URL: give it")
    args.num_workers = args.num_workers or 0
    args.prefetch_factor = args.prefetch_factor or 2
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = args.device
    try:
        if args.format:
            return measure_one(args, device)
        return sweep(args, device)
    except (*ONE_LINE, OSError) as err:
        print(f"error: {one_line(err)}", file=sys.stderr)
        return 1


def measure_one(args: argparse.Namespace, device: torch.device) -> int:
    datasets, stale = training_sets(args.data_dir, [args.format], args.max_samples, args.stream)
    if stale:
        raise DataError(f"{stale}: run `python pack_data.py` first")
    dataset = datasets[args.format]
    setting = {
        "batch_size": args.batch_size,
        "num_workers": min(args.num_workers, usable_cpus()),
        "persistent_workers": args.num_workers > 0 and args.format != "stream",
        "prefetch_factor": args.prefetch_factor if args.num_workers > 0 else None,
        "pin_memory": device.type == "cuda",
    }
    rate = measure(dataset, args.format, setting, device, args.epochs, args.repeats)
    result = {"format": args.format, **setting, "epochs": args.epochs, "samples": len(dataset)}
    result["samples_per_s"] = round(rate, 1)
    print(json.dumps(result) if args.json else f"{rate:,.0f} samples/s")
    return 0


def sweep(args: argparse.Namespace, device: torch.device) -> int:
    formats = ["files", "packed", "stream"] if args.stream else ["files", "packed"]
    if args.stream and not (args.data_dir / "partition.json").exists():  # the stream alone
        formats = ["stream"]
    datasets, stale = training_sets(args.data_dir, formats, args.max_samples, args.stream)
    if stale:
        print(f"packed: not measured ({stale}); `python pack_data.py` adds it")
    jobs = [(f, s) for f in datasets for s in settings(args.batch_size, device, f)]
    warm_up = {"batch_size": 256, "num_workers": 0, "persistent_workers": False}
    warm_up |= {"prefetch_factor": None, "pin_memory": False}
    for data_format, dataset in datasets.items():  # read everything once: warm caches
        measure(dataset, data_format, warm_up, device, epochs=1, repeats=1)

    results = []
    for data_format, setting in tqdm(jobs, desc="measuring", unit="setting", disable=None):
        rate = measure(
            datasets[data_format], data_format, setting, device, args.epochs, args.repeats
        )
        results.append((rate, data_format, setting))

    results.sort(key=lambda row: -row[0])
    best = results[0][0]
    samples = ", ".join(f"{len(dataset)} {name}" for name, dataset in datasets.items())
    print(f"{samples} samples x {args.epochs} epochs, median of {args.repeats}")
    header = ["format", "workers", "batch", "persistent", "prefetch", "pin", "samples/s", "of best"]
    print("{:7} {:>7} {:>6} {:>10} {:>8} {:>5} {:>11} {:>7}".format(*header))
    for rate, data_format, s in results:
        print(
            f"{data_format:7} {s['num_workers']:7d} {s['batch_size']:6d}"
            f" {str(s['persistent_workers']):>10} {str(s['prefetch_factor'] or '-'):>8}"
            f" {str(s['pin_memory']):>5} {rate:11,.0f} {rate / best:7.0%}"
        )
    # pytorch_script.py keeps workers alive between epochs and pins memory on CUDA itself, so
    # recommend among those rows, at the batch size training uses.
    usable = [
        row
        for row in results
        if row[2]["batch_size"] == args.batch_size
        and row[2]["persistent_workers"] == (row[2]["num_workers"] > 0 and row[1] != "stream")
        and row[2]["pin_memory"] == (device.type == "cuda")
    ]
    rate, data_format, s = usable[0]
    flags = f"--data-format {data_format} --batch-size {args.batch_size}"
    if data_format == "stream":
        flags += f" --data-dir {args.stream}"
    flags += f" --num-workers {s['num_workers']}"
    if s["num_workers"]:
        flags += f" --prefetch-factor {s['prefetch_factor']}"
    print(f"fastest at --batch-size {args.batch_size}: {rate:,.0f} samples/s with")
    print(f"    python pytorch_script.py {flags}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
