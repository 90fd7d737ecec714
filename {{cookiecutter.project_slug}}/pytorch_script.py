"""Train a classifier on data/<ID>.pt while DataLoader workers prepare the next batches.

    python make_sample_data.py             # once, unless you bring your own data (see README.md)
    python pytorch_script.py               # train; one line per epoch, rows in runs/metrics.csv
    python pack_data.py                    # optional: batched reads from one file per split
    python bench_loader.py                 # which loader settings are fastest on this machine
    python pytorch_script.py --dry-run     # one epoch of two batches per split: a quick check
    python pytorch_script.py --help        # every flag, with its default

On the default sample data, on a 2-core CPU, the last line reads like
    epoch 100/100  train_loss 0.0000  val_loss 0.0000  val_accuracy 1.0000  data_wait 19%  (0.4 s)
"""

import argparse
import csv
import gc
import os
import random
import sys
import time
import traceback
from itertools import islice
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from my_classes import (
    PACKED,
    DataError,
    Dataset,
    Net,
    PackedDataset,
    load_partition,
    packed_is_stale,
)

# Above this share of training time spent waiting for batches, the run says it is data-bound.
DATA_WAIT_WARNING = 0.3


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive integer")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text} is not a positive number")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} is negative")
    return value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path("data"),
        help="holds <ID>.pt, partition.json and labels.json",
    )
    parser.add_argument(
        "--batch-size",
        type=positive_int,
        default={{ cookiecutter.batch_size | int }},
        help="samples per batch",
    )
    parser.add_argument(
        "--shuffle",
        action=argparse.BooleanOptionalAction,
        default={{ cookiecutter.shuffle }},
        help="shuffle the training set every epoch",
    )
    parser.add_argument(
        "--num-workers",
        type=non_negative_int,
        default={{ cookiecutter.num_workers | int }},
        help="DataLoader worker processes, capped at the CPUs this process may use;"
        " 0 loads in the main process",
    )
    parser.add_argument(
        "--prefetch-factor",
        type=positive_int,
        default=2,
        help="batches each worker prepares ahead (ignored with 0 workers)",
    )
    parser.add_argument(
        "--data-format",
        choices=["auto", "files", "packed"],
        default="auto",
        help="files: data/<ID>.pt; packed: data/packed from pack_data.py;"
        " auto: packed while it is newer than every file in data/",
    )
    parser.add_argument(
        "--max-epochs",
        type=positive_int,
        default={{ cookiecutter.max_epochs | int }},
        help="epochs to train",
    )
    parser.add_argument("--lr", type=positive_float, default=1e-3, help="Adam learning rate")
    parser.add_argument(
        "--seed", type=int, default=0, help="same seed and --num-workers, same run (on the CPU)"
    )
    parser.add_argument(
        "--device",
        type=get_device,
        default="auto",
        help="cuda, mps, cpu, ...; auto takes CUDA or another accelerator when there is one",
    )
    parser.add_argument(
        "--cudnn-benchmark",
        action=argparse.BooleanOptionalAction,
        default={{ cookiecutter.cudnn_benchmark }},
        help="let cuDNN time its algorithms for your input shapes; fast when shapes do not change",
    )
    parser.add_argument(
        "--metrics-csv",
        type=Path,
        default=Path("runs/metrics.csv"),
        help="one row per epoch: epoch,train_loss,val_loss,val_accuracy (replaced at each run)",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="one epoch of two batches per split, then stop"
    )
    return parser.parse_args(argv)


def get_device(name: str) -> torch.device:
    """'auto': the accelerator PyTorch finds (CUDA, MPS, ...), else the CPU; or the one named."""
    accelerator = (
        torch.accelerator.current_accelerator() if torch.accelerator.is_available() else None
    )
    if name == "auto":
        return accelerator or torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise argparse.ArgumentTypeError(
            f"{name!r} is not a device: try auto, cpu, cuda, mps"
        ) from None
    if device.type != "cpu" and (accelerator is None or accelerator.type != device.type):
        raise argparse.ArgumentTypeError(
            f"{name!r}: torch {torch.__version__} finds no {device.type} device; try auto or cpu"
        )
    return device


def seed_everything(seed: int) -> None:
    """Seed torch, NumPy and random here; DataLoader workers get theirs from params["generator"]."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def usable_cpus() -> int:
    """CPUs this process may run on, which can be fewer than the machine has (taskset, SLURM)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def pick_data_format(data_dir: Path, data_format: str) -> str:
    """'files' or 'packed', as asked; for 'auto', packed when pack_data.py's copy is current."""
    stale = packed_is_stale(data_dir)
    if data_format == "auto":
        data_format = "files" if stale else "packed"
        print(
            f"data: {data_dir / PACKED} (up to date)"
            if not stale
            else f"data: {data_dir}/<ID>.pt ({stale})"
        )
    elif data_format == "packed" and stale:
        if not (data_dir / PACKED).exists():
            raise DataError(f"{stale}: run `python pack_data.py` first")
        print(f"warning: {stale}; run `python pack_data.py` to update it")
    return data_format


def loader_params(
    *,
    batch_size: int,
    shuffle: bool,
    num_workers: int,
    prefetch_factor: int,
    seed: int,
    device: torch.device,
    data_format: str,
) -> dict:
    """The DataLoader arguments of both generators, decided here and nowhere else."""
    num_workers = min(num_workers, usable_cpus())  # more workers than CPUs only adds overhead
    return {
        "batch_size": batch_size,
        "shuffle": shuffle,
        "num_workers": num_workers,
        "pin_memory": device.type == "cuda",  # page-locked batches copy to a CUDA device faster
        "persistent_workers": num_workers > 0,  # start the workers once, not every epoch
        "prefetch_factor": prefetch_factor if num_workers > 0 else None,
        # Shuffle order, and the seed of each worker (torch, random and NumPy), follow --seed:
        # random augmentation differs between workers and repeats from run to run. (Each new
        # iterator draws from it too: with 0 workers that is every epoch, so change
        # --num-workers and the order changes.)
        "generator": torch.Generator().manual_seed(seed),
        "collate_fn": PackedDataset.collate_fn if data_format == "packed" else None,
    }


def train(
    model: nn.Module,
    training_generator: torch.utils.data.DataLoader,
    loss_fn: nn.Module,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    max_batches: int | None = None,
    desc: str = "train",
) -> tuple[float, float]:
    """One pass over the training set; returns the mean loss per sample, and the share of the
    time spent waiting for batches (near 0: compute-bound; near 1: data-bound)."""
    model.train()
    non_blocking = device.type == "cuda"  # copies from pinned memory overlap with compute
    loss_sum = torch.zeros((), device=device)
    num_samples = 0
    batches = islice(training_generator, max_batches)
    total = min(len(training_generator), max_batches or len(training_generator))
    start = ready = time.perf_counter()
    waited = 0.0
    # The bar appears only in a terminal, when an epoch takes more than two seconds.
    for local_batch, local_labels in tqdm(
        batches, desc=desc, total=total, leave=False, delay=2, unit="batch", disable=None
    ):
        waited += time.perf_counter() - ready

        # Transfer to GPU, as float32 (the model's dtype: uint8 or float64 samples work as saved)
        local_batch = local_batch.to(device, torch.float32, non_blocking=non_blocking)
        local_labels = local_labels.to(device, non_blocking=non_blocking)

        # Model computations
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(local_batch), local_labels)
        loss.backward()
        optimizer.step()

        # Summed on the device: calling .item() every step would wait for the GPU each time.
        loss_sum += loss.detach() * len(local_labels)
        num_samples += len(local_labels)
        ready = time.perf_counter()
    return loss_sum.item() / num_samples, waited / (time.perf_counter() - start)


@torch.no_grad()
def validate(
    model: nn.Module,
    validation_generator: torch.utils.data.DataLoader,
    loss_fn: nn.Module,
    device: torch.device,
    max_batches: int | None = None,
) -> tuple[float, float]:
    """One pass over the validation set; returns (mean loss, accuracy)."""
    model.eval()
    non_blocking = device.type == "cuda"
    loss_sum = torch.zeros((), device=device)
    num_correct = torch.zeros((), dtype=torch.long, device=device)
    num_samples = 0
    for local_batch, local_labels in islice(validation_generator, max_batches):
        # Transfer to GPU, as float32 (the model's dtype: uint8 or float64 samples work as saved)
        local_batch = local_batch.to(device, torch.float32, non_blocking=non_blocking)
        local_labels = local_labels.to(device, non_blocking=non_blocking)

        # Model computations
        outputs = model(local_batch)
        loss_sum += loss_fn(outputs, local_labels) * len(local_labels)
        num_correct += (outputs.argmax(dim=1) == local_labels).sum()
        num_samples += len(local_labels)
    return loss_sum.item() / num_samples, num_correct.item() / num_samples


def run(args: argparse.Namespace) -> None:
    """The article's script, complete: parameters, datasets, generators, model, loop over epochs."""
    seed_everything(args.seed)

    # CUDA for PyTorch
    device = args.device
    torch.backends.cudnn.benchmark = args.cudnn_benchmark

    # Storage: one file per sample, or pack_data.py's copy of them
    data_format = pick_data_format(args.data_dir, args.data_format)

    # Parameters
    params = loader_params(
        batch_size=args.batch_size,
        shuffle=args.shuffle,
        num_workers=args.num_workers,
        prefetch_factor=args.prefetch_factor,
        seed=args.seed,
        device=device,
        data_format=data_format,
    )
    max_epochs = 1 if args.dry_run else args.max_epochs
    max_batches = 2 if args.dry_run else None

    # Datasets
    partition, labels = load_partition(args.data_dir)  # IDs, and the class of each ID
    if data_format == "packed":
        training_set = PackedDataset(args.data_dir / PACKED / "train")
        validation_set = PackedDataset(args.data_dir / PACKED / "validation")
    else:
        training_set = Dataset(partition["train"], labels, args.data_dir)
        validation_set = Dataset(partition["validation"], labels, args.data_dir)

    # Generators
    training_generator = torch.utils.data.DataLoader(training_set, **params)
    # In a fixed order, and with a generator of its own, which leaves the training order alone.
    validation_generator = torch.utils.data.DataLoader(
        validation_set,
        **{**params, "shuffle": False, "generator": torch.Generator().manual_seed(args.seed)},
    )

    # Model: its input shape comes from the first sample, its outputs from the labels.
    input_shape = tuple(training_set[0][0].shape)
    num_classes = max(labels.values()) + 1
    model = Net(input_shape, num_classes).to(device)
    loss_fn = nn.CrossEntropyLoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)

    num_workers = params["num_workers"]
    workers_note = ""
    if num_workers < args.num_workers:
        workers_note = f" (of {args.num_workers} asked: {usable_cpus()} CPUs)"
    print(
        f"device {device}; {len(training_set)} train and {len(validation_set)} validation samples"
        f" of shape {input_shape}, {num_classes} classes; batch_size {args.batch_size},"
        f" shuffle {args.shuffle}, num_workers {num_workers}{workers_note}"
    )
    warned = False

    # Objects made so far live as long as the run: keep the garbage collector of each forked
    # worker from writing to them, which would copy their pages into it (tens of MB each).
    gc.freeze()

    args.metrics_csv.parent.mkdir(parents=True, exist_ok=True)
    with open(args.metrics_csv, "w", newline="", encoding="utf-8") as metrics_file:
        metrics = csv.writer(metrics_file, lineterminator="\n")
        metrics.writerow(["epoch", "train_loss", "val_loss", "val_accuracy"])

        # Loop over epochs
        for epoch in range(1, max_epochs + 1):
            start = time.perf_counter()
            # Training
            train_loss, data_wait = train(
                model,
                training_generator,
                loss_fn,
                optimizer,
                device,
                max_batches,
                desc=f"epoch {epoch}/{max_epochs}",
            )
            # Validation
            val_loss, val_accuracy = validate(
                model, validation_generator, loss_fn, device, max_batches
            )

            print(
                f"epoch {epoch}/{max_epochs}  train_loss {train_loss:.4f}  val_loss {val_loss:.4f}"
                f"  val_accuracy {val_accuracy:.4f}  data_wait {data_wait:.0%}"
                f"  ({time.perf_counter() - start:.1f} s)"
            )
            if data_wait > DATA_WAIT_WARNING and not warned:
                warned = True
                print(
                    f"warning: {data_wait:.0%} of the training time went to waiting for batches:"
                    " the run is data-bound. `python bench_loader.py` finds faster loader"
                    " settings; `python pack_data.py` packs the data for batched reads."
                )
            metrics.writerow([epoch, f"{train_loss:.6f}", f"{val_loss:.6f}", f"{val_accuracy:.6f}"])
            metrics_file.flush()  # each finished epoch is on disk, even if a later one crashes


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        run(args)
    except (DataError, OSError) as err:
        # Free the DataLoader workers now: the exception's frames hold them in a reference
        # cycle, which only the garbage collector would break, 10 s later (torch's shutdown).
        traceback.clear_frames(err.__traceback__)
        # An error raised in a DataLoader worker arrives wrapped in the worker's traceback.
        message = str(err).strip().splitlines()[-1].removeprefix("my_classes.DataError: ")
        print(f"error: {message}", file=sys.stderr)
        return 1
    finally:
        gc.unfreeze()  # for callers in this process (tests, the cookiecutter hook)
    return 0


if __name__ == "__main__":  # required: DataLoader workers re-import this file under spawn
    sys.exit(main())
