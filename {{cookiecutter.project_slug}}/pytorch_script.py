"""Train a classifier on data/<ID>.pt while DataLoader workers prepare the next batches.

    python make_sample_data.py             # once, unless you bring your own data (see README.md)
    python pytorch_script.py               # train; one line per epoch, rows in runs/metrics.csv
    python pytorch_script.py --dry-run     # one epoch of two batches per split: a quick check
    python pytorch_script.py --help        # every flag, with its default

On the sample data the last line reads like
    epoch 100/100  train_loss 0.0000  val_loss 0.0000  val_accuracy 1.0000  (0.6 s)
"""

import argparse
import csv
import os
import sys
import time
import traceback
from itertools import islice
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from my_classes import DataError, Dataset, Net, load_partition


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive integer")
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
        "--max-epochs",
        type=positive_int,
        default={{ cookiecutter.max_epochs | int }},
    )
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
    parser.add_argument("--seed", type=int, default=0, help="same seed, same run (on CPU)")
    parser.add_argument(
        "--device",
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
    """'auto': the accelerator PyTorch finds (CUDA, MPS, ...), else the CPU."""
    if name != "auto":
        return torch.device(name)
    if torch.accelerator.is_available():
        return torch.accelerator.current_accelerator()
    return torch.device("cpu")


def usable_cpus() -> int:
    """CPUs this process may run on, which can be fewer than the machine has (taskset, SLURM)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def train(
    model: nn.Module,
    training_generator: torch.utils.data.DataLoader,
    loss_fn: nn.Module,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    max_batches: int | None = None,
    desc: str = "train",
) -> float:
    """One pass over the training set; returns the mean loss per sample."""
    model.train()
    non_blocking = device.type == "cuda"  # copies from pinned memory overlap with compute
    loss_sum = torch.zeros((), device=device)
    num_samples = 0
    batches = islice(training_generator, max_batches)
    total = min(len(training_generator), max_batches or len(training_generator))
    # The bar appears only when an epoch takes more than two seconds.
    for local_batch, local_labels in tqdm(
        batches, desc=desc, total=total, leave=False, delay=2, unit="batch"
    ):
        # Transfer to GPU
        local_batch = local_batch.to(device, non_blocking=non_blocking)
        local_labels = local_labels.to(device, non_blocking=non_blocking)

        # Model computations
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(local_batch), local_labels)
        loss.backward()
        optimizer.step()

        # Summed on the device: calling .item() every step would wait for the GPU each time.
        loss_sum += loss.detach() * len(local_labels)
        num_samples += len(local_labels)
    return loss_sum.item() / num_samples


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
        # Transfer to GPU
        local_batch = local_batch.to(device, non_blocking=non_blocking)
        local_labels = local_labels.to(device, non_blocking=non_blocking)

        # Model computations
        outputs = model(local_batch)
        loss_sum += loss_fn(outputs, local_labels) * len(local_labels)
        num_correct += (outputs.argmax(dim=1) == local_labels).sum()
        num_samples += len(local_labels)
    return loss_sum.item() / num_samples, num_correct.item() / num_samples


def run(args: argparse.Namespace) -> None:
    """The article's script, complete: parameters, datasets, generators, model, loop over epochs."""
    torch.manual_seed(args.seed)

    # CUDA for PyTorch
    device = get_device(args.device)
    torch.backends.cudnn.benchmark = args.cudnn_benchmark

    # Parameters
    num_workers = min(args.num_workers, usable_cpus())  # more workers than CPUs only adds overhead
    params = {
        "batch_size": args.batch_size,
        "shuffle": args.shuffle,
        "num_workers": num_workers,
        "pin_memory": device.type == "cuda",  # page-locked batches copy to a CUDA device faster
        "persistent_workers": num_workers > 0,  # start the workers once, not every epoch
        "generator": torch.Generator().manual_seed(args.seed),  # the shuffle order follows --seed
    }
    max_epochs = 1 if args.dry_run else args.max_epochs
    max_batches = 2 if args.dry_run else None

    # Datasets
    partition, labels = load_partition(args.data_dir)  # IDs, and the class of each ID

    # Generators
    training_set = Dataset(partition["train"], labels, args.data_dir)
    training_generator = torch.utils.data.DataLoader(training_set, **params)

    validation_set = Dataset(partition["validation"], labels, args.data_dir)
    # In a fixed order: validation metrics do not depend on it.
    validation_generator = torch.utils.data.DataLoader(
        validation_set, **{**params, "shuffle": False}
    )

    # Model: its input shape comes from the first sample, its outputs from the labels.
    input_shape = tuple(training_set[0][0].shape)
    num_classes = max(labels.values()) + 1
    model = Net(input_shape, num_classes).to(device)
    loss_fn = nn.CrossEntropyLoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)

    workers_note = ""
    if num_workers < args.num_workers:
        workers_note = f" (of {args.num_workers} asked: {usable_cpus()} CPUs)"
    print(
        f"device {device}; {len(training_set)} train and {len(validation_set)} validation samples"
        f" of shape {input_shape}, {num_classes} classes; batch_size {args.batch_size},"
        f" shuffle {args.shuffle}, num_workers {num_workers}{workers_note}"
    )

    args.metrics_csv.parent.mkdir(parents=True, exist_ok=True)
    with open(args.metrics_csv, "w", newline="", encoding="utf-8") as metrics_file:
        metrics = csv.writer(metrics_file)
        metrics.writerow(["epoch", "train_loss", "val_loss", "val_accuracy"])

        # Loop over epochs
        for epoch in range(1, max_epochs + 1):
            start = time.perf_counter()
            # Training
            train_loss = train(
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
                f"  val_accuracy {val_accuracy:.4f}  ({time.perf_counter() - start:.1f} s)"
            )
            metrics.writerow([epoch, f"{train_loss:.6f}", f"{val_loss:.6f}", f"{val_accuracy:.6f}"])
            metrics_file.flush()  # each finished epoch is on disk, even if a later one crashes


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        run(args)
    except DataError as err:
        # Free the DataLoader workers now: the exception's frames hold them in a reference
        # cycle, which only the garbage collector would break, 10 s later (torch's shutdown).
        traceback.clear_frames(err.__traceback__)
        # An error raised in a DataLoader worker arrives wrapped in the worker's traceback.
        message = str(err).strip().splitlines()[-1].removeprefix("my_classes.DataError: ")
        print(f"error: {message}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # required: DataLoader workers re-import this file under spawn
    sys.exit(main())
