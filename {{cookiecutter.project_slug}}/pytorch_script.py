"""Train a classifier on data/<ID>.pt while DataLoader workers prepare the next batches.

    python make_sample_data.py             # once, unless you bring your own data (see README.md)
    python pytorch_script.py               # train; one line per epoch, rows in runs/metrics.csv
    python pytorch_script.py --resume      # go on from checkpoints/last.pt after a crash
    torchrun --standalone --nproc_per_node=4 pytorch_script.py   # 4 GPUs (or processes) here
    python pack_data.py                    # optional: batched reads from one file per split
    python bench_loader.py                 # which loader settings are fastest on this machine
    python pytorch_script.py --dry-run     # one epoch of two batches per split: a quick check
    python pytorch_script.py --tensorboard # also for TensorBoard: tensorboard --logdir runs
    python plot_metrics.py                 # the loss and accuracy curves, runs/metrics.png
    python pytorch_script.py --help        # every flag, with its default

On the default sample data, on a 2-core CPU, the last line reads like
    epoch 100/100  train_loss 0.0000  val_loss 0.0000  val_accuracy 1.0000  data_wait 9%  (0.4 s)
"""

import argparse
import contextlib
import csv
import gc
import math
import os
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from itertools import islice
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from my_classes import (
    PACKED,
    DataError,
    Dataset,
    Net,
    PackedDataset,
    error_message,
    load_error,
    load_partition,
    packed_is_stale,
    write_error,
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


def non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0 or math.isinf(value):
        raise argparse.ArgumentTypeError(f"{text} is not a number of seconds (0 or more)")
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
        "--loader-timeout",
        type=non_negative_float,
        default=0,
        help="seconds to wait for one batch (the first includes starting the workers) before"
        " failing, rather than hang on a stalled network file system; 0 waits for ever",
    )
    parser.add_argument(
        "--data-format",
        choices=["auto", "files", "packed"],
        default="auto",
        help="files: data/<ID>.pt; packed: data/packed from pack_data.py;"
        " auto: packed while data/ holds the files it was packed from",
    )
    parser.add_argument(
        "--max-epochs",
        type=positive_int,
        default={{ cookiecutter.max_epochs | int }},
        help="epochs to train",
    )
    parser.add_argument("--lr", type=positive_float, default=1e-3, help="Adam learning rate")
    parser.add_argument("--seed", type=int, default=0, help="same seed, same run (on the CPU)")
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
        help="one row per epoch: epoch,train_loss,val_loss,val_accuracy; default"
        " runs/metrics.csv, none for --dry-run",
    )
    parser.add_argument(
        "--tensorboard",
        action=argparse.BooleanOptionalAction,
        default={{ cookiecutter.use_tensorboard }},
        help="also log each epoch for TensorBoard, into the --metrics-csv path without .csv"
        " (tensorboard --logdir runs)",
    )
    parser.add_argument(
        "--checkpoint-dir",
        type=Path,
        default=Path("checkpoints"),
        help="last.pt after every epoch, best.pt at the best validation accuracy",
    )
    parser.add_argument("--resume", action="store_true", help="go on from <checkpoint-dir>/last.pt")
    parser.add_argument(
        "--amp",
        action="store_true",
        help="mixed precision: bfloat16 on the CPU, float16 with loss scaling on CUDA",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="one epoch of two batches per split, then stop; writes no checkpoint",
    )
    args = parser.parse_args(argv)
    if args.metrics_csv is None and not args.dry_run:
        args.metrics_csv = Path("runs/metrics.csv")
    return args


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


def pick_data_format(
    data_dir: Path, data_format: str, partition: dict[str, list[str]], say: Callable = print
) -> str:
    """'files' or 'packed', as asked; for 'auto', packed when pack_data.py's copy is current."""
    if data_format == "files":
        say(f"data: {data_dir}/<ID>.pt")
        return data_format
    stale = packed_is_stale(data_dir, partition)
    if data_format == "auto":
        if stale:
            hint = "" if stale.startswith("no packed") else "; `python pack_data.py` updates it"
            say(f"data: {data_dir}/<ID>.pt ({stale}{hint})")
            return "files"
        say(f"data: {data_dir / PACKED} (up to date)")
        return "packed"
    say(f"data: {data_dir / PACKED}")
    if stale:
        if not (data_dir / PACKED).exists():
            raise DataError(f"{stale}: run `python pack_data.py --data-dir {data_dir}` first")
        say(f"warning: {stale}; run `python pack_data.py` to update it")
    return data_format


def loader_params(
    *,
    batch_size: int,
    num_workers: int,
    prefetch_factor: int,
    seed: int,
    device: torch.device,
    data_format: str,
    timeout: float = 0,
) -> dict:
    """The DataLoader arguments of both generators, decided here and nowhere else (the order of
    the samples is the samplers' business: see samplers())."""
    # More workers than CPUs only adds overhead; under torchrun the ranks of a machine share them.
    local_world_size = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    num_workers = min(num_workers, usable_cpus() // local_world_size)
    return {
        "batch_size": batch_size,
        "num_workers": num_workers,
        "pin_memory": device.type == "cuda",  # page-locked batches copy to a CUDA device faster
        "persistent_workers": num_workers > 0,  # start the workers once, not every epoch
        "prefetch_factor": prefetch_factor if num_workers > 0 else None,
        # DataLoader times its workers; with none, within() times the reads of this process.
        "timeout": timeout if num_workers > 0 else 0,
        # The seed of each worker (torch, random and NumPy) follows --seed: random augmentation
        # differs between workers and repeats from run to run.
        "generator": torch.Generator().manual_seed(seed),
        "collate_fn": PackedDataset.collate_fn if data_format == "packed" else None,
        "worker_init_fn": quiet_when_stopped if num_workers > 0 else None,
    }


def samplers(
    training_set: torch.utils.data.Dataset,
    validation_set: torch.utils.data.Dataset,
    shuffle: bool,
    seed: int,
) -> tuple[torch.utils.data.DistributedSampler, torch.utils.data.DistributedSampler]:
    """Which samples each rank reads, in which order: with torchrun every rank gets its share;
    without, the one process gets everything. The training order is a function of --seed and
    the epoch (set_epoch), so a resumed run sees the same order as an uninterrupted one."""
    rank, world_size = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    training_sampler = torch.utils.data.DistributedSampler(
        training_set, num_replicas=world_size, rank=rank, shuffle=shuffle, seed=seed
    )
    # In a fixed order: validation metrics do not depend on it. Ranks whose share comes up
    # short get samples repeated from the start: validate() leaves those out of its counts.
    validation_sampler = torch.utils.data.DistributedSampler(
        validation_set, num_replicas=world_size, rank=rank, shuffle=False
    )
    return training_sampler, validation_sampler


def train(
    model: nn.Module,
    training_generator: torch.utils.data.DataLoader,
    loss_fn: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    amp: bool,
    device: torch.device,
    max_batches: int | None = None,
    desc: str | None = None,
    timeout: float = 0,
) -> tuple[float, int, float]:
    """One pass over this rank's share of the training set; returns the summed loss, the number
    of samples, and the share of the time spent waiting for batches (near 0: compute-bound;
    near 1: data-bound). desc=None: no progress bar. timeout: seconds a batch may take to arrive
    (see within())."""
    model.train()
    non_blocking = device.type == "cuda"  # copies from pinned memory overlap with compute
    amp_dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    loss_sum = torch.zeros((), device=device)
    num_samples = 0
    batches = islice(training_generator, max_batches)
    if timeout:
        batches = within(batches, timeout)
    total = min(len(training_generator), max_batches or len(training_generator))
    start = ready = None
    waited = 0.0
    # The bar appears only in a terminal, when an epoch takes more than two seconds.
    for local_batch, local_labels in tqdm(
        batches, desc, total, leave=False, delay=2, unit="batch", disable=None if desc else True
    ):
        if start is None:  # counted from the first batch: starting workers is not waiting for data
            start = time.perf_counter()
        else:
            waited += time.perf_counter() - ready

        # Transfer to GPU, as float32 (the model's dtype: uint8 or float64 samples work as saved)
        local_batch = local_batch.to(device, torch.float32, non_blocking=non_blocking)
        local_labels = local_labels.to(device, non_blocking=non_blocking)

        # Model computations
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp):
            loss = loss_fn(model(local_batch), local_labels)
        # The scaler keeps small float16 gradients from vanishing; disabled, it passes through.
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

        # Summed on the device: calling .item() every step would wait for the GPU each time.
        loss_sum += loss.detach().float() * len(local_labels)
        num_samples += len(local_labels)
        ready = time.perf_counter()
    elapsed = time.perf_counter() - start if start else 0.0
    return loss_sum.item(), num_samples, waited / elapsed if elapsed else 0.0


@torch.no_grad()
def validate(
    model: nn.Module,
    validation_generator: torch.utils.data.DataLoader,
    loss_fn: nn.Module,
    amp: bool,
    device: torch.device,
    max_batches: int | None = None,
    timeout: float = 0,
) -> tuple[float, int, int]:
    """One pass over this rank's share of the validation set; returns the summed loss, the
    number of correct predictions and the number of samples, padding left out."""
    model.eval()
    non_blocking = device.type == "cuda"
    amp_dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    # The sampler pads the shares of the last ranks with repeats, at their end: stop before.
    sampler = validation_generator.sampler
    share = len(range(sampler.rank, len(validation_generator.dataset), sampler.num_replicas))
    loss_sum = torch.zeros((), device=device)
    num_correct = torch.zeros((), dtype=torch.long, device=device)
    num_samples = 0
    batches = islice(validation_generator, max_batches)
    if timeout:
        batches = within(batches, timeout)
    for local_batch, local_labels in batches:
        keep = min(len(local_labels), share - num_samples)
        if keep <= 0:
            break
        # Transfer to GPU, as float32 (the model's dtype: uint8 or float64 samples work as saved)
        local_batch = local_batch[:keep].to(device, torch.float32, non_blocking=non_blocking)
        local_labels = local_labels[:keep].to(device, non_blocking=non_blocking)

        # Model computations
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp):
            outputs = model(local_batch)
        loss_sum += loss_fn(outputs.float(), local_labels) * keep
        num_correct += (outputs.argmax(dim=1) == local_labels).sum()
        num_samples += keep
    return loss_sum.item(), num_correct.item(), num_samples


def all_sum(values: list[float], device: torch.device) -> list[float]:
    """Each value summed over all ranks; the values as they are without torchrun."""
    if not dist.is_initialized():
        return values
    summed = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(summed)
    return summed.tolist()


def rng_states() -> dict:
    """This process's random generators, as tensors and plain types that weights_only loads."""
    kind, keys, position, has_gauss, gauss = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": [kind, torch.from_numpy(keys.copy()), position, has_gauss, gauss],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_states(states: dict) -> None:
    random.setstate(states["python"])
    kind, keys, position, has_gauss, gauss = states["numpy"]
    np.random.set_state((kind, keys.numpy(), position, has_gauss, gauss))
    torch.set_rng_state(states["torch"].cpu())
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([state.cpu() for state in states["cuda"]])


def keep_metrics_until(metrics_csv: Path, last_epoch: int) -> None:
    """Drop the rows after last_epoch, of an epoch that ended after its checkpoint was saved."""
    with open(metrics_csv, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    rows = rows[:1] + [row for row in rows[1:] if row and int(row[0]) <= last_epoch]
    tmp = metrics_csv.with_name(metrics_csv.name + ".tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        csv.writer(f, lineterminator="\n").writerows(rows)
    os.replace(tmp, metrics_csv)


@contextlib.contextmanager
def ctrl_c_deferred() -> Iterator[None]:
    """Hold Ctrl-C back until the block is done, then raise KeyboardInterrupt as usual."""
    if threading.current_thread() is not threading.main_thread():  # only it gets signals
        yield
        return
    received = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if received:
        raise KeyboardInterrupt


def tensorboard_writer_class() -> type:
    """torch's SummaryWriter, or a DataError that says how to install tensorboard."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise DataError(
            "--tensorboard needs the tensorboard package: pip install -e '.[tensorboard]',"
            " or pass --no-tensorboard"
        ) from None
    return SummaryWriter


def open_metrics(args: argparse.Namespace, start_epoch: int) -> tuple:
    """The metrics CSV, open to append rows (a header written if new), and a TensorBoard writer
    into its path without .csv (runs/metrics.csv: runs/metrics/) or None. With --resume, rows
    and TensorBoard steps after the checkpoint's epoch are dropped (purge_step)."""
    args.metrics_csv.parent.mkdir(parents=True, exist_ok=True)
    writer = None
    if args.tensorboard:
        SummaryWriter = tensorboard_writer_class()
        writer = SummaryWriter(args.metrics_csv.with_suffix(""), purge_step=start_epoch)
    appending = args.resume and args.metrics_csv.exists()
    if appending:
        keep_metrics_until(args.metrics_csv, start_epoch - 1)
    metrics_file = open(args.metrics_csv, "a" if appending else "w", encoding="utf-8")
    if not appending:
        metrics_file.write("epoch,train_loss,val_loss,val_accuracy\n")
    return metrics_file, writer


def save_checkpoint(checkpoint: dict, path: Path) -> None:
    """Write to a temporary file beside path, flush it to the disk, then rename it over path:
    a crash at any moment leaves the previous checkpoint or the new one, whole, and no litter."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with ctrl_c_deferred():  # Ctrl-C waits for the save, rather than leave its file half-made
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            os.chmod(name, 0o644)  # mkstemp makes it private; a checkpoint is shared like any file
            with os.fdopen(fd, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(name, path)
        except BaseException as err:
            Path(name).unlink(missing_ok=True)
            if isinstance(err, (OSError, RuntimeError)):  # a full disk, a quota: torch says little
                raise DataError(
                    write_error(path, err, "pass another --checkpoint-dir, then --resume")
                ) from None
            raise


def load_checkpoint(path: Path, device: torch.device) -> dict:
    """A checkpoint written by save_checkpoint; tensors and plain types only (weights_only)."""
    try:
        checkpoint = torch.load(path, map_location=device, weights_only=True)
    except FileNotFoundError:
        raise DataError(
            f"{path} not found: --resume goes on from the last.pt of an earlier run with the same"
            " --checkpoint-dir"
        ) from None
    except Exception as err:
        raise DataError(
            f"{path} is not a checkpoint this script can load ({load_error(err)}): copy"
            f" best.pt over it to resume from there, or start a new run with --checkpoint-dir"
            f" DIR (or after deleting {path.parent})"
        ) from None
    keys = {"model", "optimizer", "scaler", "epoch", "best_val_accuracy", "rng", "input_shape"}
    keys |= {"num_classes"}
    if not isinstance(checkpoint, dict) or not keys <= set(checkpoint):
        raise DataError(f"{path} is not a checkpoint of pytorch_script.py (it lacks {keys})")
    return checkpoint


def run(args: argparse.Namespace) -> None:
    """The article's script, complete: parameters, datasets, generators, model, loop over epochs."""
    # torchrun starts one process per GPU (or per --nproc_per_node) and tells each its rank.
    rank = int(os.environ.get("RANK", 0))
    last = args.checkpoint_dir / "last.pt"
    if last.exists() and not (args.resume or args.dry_run):
        raise DataError(
            f"{last} holds an earlier run: --resume goes on with it, --checkpoint-dir DIR starts"
            f" a new run beside it (or delete {args.checkpoint_dir})"
        )
    say = print if rank == 0 else lambda *_, **__: None  # one voice, not one per rank
    seed_everything(args.seed)  # the same on every rank: the same initial weights

    # CUDA for PyTorch
    device = args.device
    if "WORLD_SIZE" in os.environ:
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    torch.backends.cudnn.benchmark = args.cudnn_benchmark

    # partition and labels (the IDs, and the class of each ID), and where the samples are read
    # from: one file per sample, or pack_data.py's copy of them
    partition, labels = load_partition(args.data_dir)
    data_format = pick_data_format(args.data_dir, args.data_format, partition, say)

    # Parameters
    params = loader_params(
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        prefetch_factor=args.prefetch_factor,
        timeout=args.loader_timeout,
        seed=args.seed,
        device=device,
        data_format=data_format,
    )
    max_epochs = 1 if args.dry_run else args.max_epochs
    max_batches = 2 if args.dry_run else None
    # Reads this process makes itself: every batch with no workers
    main_timeout = args.loader_timeout if params["num_workers"] == 0 else 0
    if main_timeout and not CAN_TIME_READS:
        raise DataError(
            "--loader-timeout without DataLoader workers needs a timer signal, which this system"
            f" lacks: use --num-workers 1 or more ({usable_cpus()} CPUs usable)"
        )

    # Datasets
    if data_format == "packed":
        training_set = PackedDataset(args.data_dir / PACKED / "train")
        validation_set = PackedDataset(args.data_dir / PACKED / "validation")
    else:
        training_set = Dataset(partition["train"], labels, args.data_dir)
        validation_set = Dataset(partition["validation"], labels, args.data_dir)

    # Generators
    training_sampler, validation_sampler = samplers(
        training_set, validation_set, args.shuffle, args.seed
    )
    training_generator = torch.utils.data.DataLoader(
        training_set, sampler=training_sampler, **params
    )
    validation_generator = torch.utils.data.DataLoader(
        validation_set, sampler=validation_sampler, **params
    )

    # A training split smaller than one batch would make each epoch one step of a part batch.
    if len(training_sampler) < args.batch_size:
        ranks = f", {len(training_sampler)} for each of the ranks" if dist.is_initialized() else ""
        raise DataError(
            f"{args.data_dir / 'partition.json'}: 'train' lists {len(training_set)} samples{ranks},"
            f" fewer than one batch (--batch-size {args.batch_size}): lower --batch-size or add"
            " samples"
        )

    # Model: its input shape comes from the first sample, its outputs from the labels.
    with deadline(args.loader_timeout):
        input_shape = tuple(training_set[0][0].shape)
    num_classes = max(labels.values()) + 1
    model = Net(input_shape, num_classes).to(device)
    loss_fn = nn.CrossEntropyLoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    scaler = torch.amp.GradScaler(device.type, enabled=args.amp and device.type == "cuda")
    start_epoch, best_val_accuracy = 1, -1.0
    if args.resume:
        path = last
        checkpoint = load_checkpoint(path, device)
        saved_for = (tuple(checkpoint["input_shape"]), checkpoint["num_classes"])
        if saved_for != (input_shape, num_classes):
            raise DataError(
                f"{path} was saved for samples of shape {saved_for[0]} in {saved_for[1]} classes;"
                f" {args.data_dir} has shape {input_shape} in {num_classes}: start a new run"
                " with --checkpoint-dir DIR"
            )
        try:
            model.load_state_dict(checkpoint["model"])
            optimizer.load_state_dict(checkpoint["optimizer"])
            scaler.load_state_dict(checkpoint["scaler"])
        except (RuntimeError, ValueError, KeyError) as err:
            reason = str(err).strip().splitlines()[-1].strip()
            raise DataError(
                f"{path} was saved for another model, data or --amp ({reason});"
                " start a new run with --checkpoint-dir DIR"
            ) from None
        for group in optimizer.param_groups:
            group["lr"] = args.lr  # this run's --lr, as every other flag of this run
        set_rng_states(checkpoint["rng"])
        start_epoch = checkpoint["epoch"] + 1
        best_val_accuracy = checkpoint["best_val_accuracy"]
        say(f"resuming after epoch {checkpoint['epoch']} from {path}")
    if dist.is_initialized():
        # Gradients are averaged over the ranks after each backward pass.
        model = nn.parallel.DistributedDataParallel(model)
    unwrapped = model.module if dist.is_initialized() else model

    num_workers = params["num_workers"]
    workers_note = ""
    if num_workers < args.num_workers:
        workers_note = f" (of {args.num_workers} asked: {usable_cpus()} CPUs)"
    world_note = f" on each of {dist.get_world_size()} ranks" if dist.is_initialized() else ""
    say(
        f"device {device}; {len(training_set)} train and {len(validation_set)} validation samples"
        f" of shape {input_shape}, {num_classes} classes; batch_size {args.batch_size},"
        f" shuffle {args.shuffle}, num_workers {num_workers}{workers_note}{world_note}"
    )
    warned = False

    metrics_file = writer = None  # rank 0 writes the metrics and the checkpoints
    if rank == 0 and args.metrics_csv and args.tensorboard:
        tensorboard_writer_class()  # now, rather than fail after the first epoch
    try:
        # Objects made so far live as long as the run: keep the garbage collector of each forked
        # worker from writing to them, which would copy their pages into it (tens of MB each).
        gc.freeze()

        # Loop over epochs
        for epoch in range(start_epoch, max_epochs + 1):
            start = time.perf_counter()
            training_sampler.set_epoch(epoch)  # a new order every epoch, the same on every rank

            # Training
            loss_sum, num_samples, data_wait = train(
                model,
                training_generator,
                loss_fn,
                optimizer,
                scaler,
                args.amp,
                device,
                max_batches,
                desc=f"epoch {epoch}/{max_epochs}" if rank == 0 else None,
                timeout=main_timeout,
            )
            loss_sum, num_samples = all_sum([loss_sum, num_samples], device)
            train_loss = loss_sum / num_samples

            # Validation
            results = validate(
                model, validation_generator, loss_fn, args.amp, device, max_batches, main_timeout
            )
            val_loss_sum, num_correct, num_samples = all_sum(list(results), device)
            val_loss, val_accuracy = val_loss_sum / num_samples, num_correct / num_samples

            say(
                f"epoch {epoch}/{max_epochs}  train_loss {train_loss:.4f}  val_loss {val_loss:.4f}"
                f"  val_accuracy {val_accuracy:.4f}  data_wait {data_wait:.0%}"
                f"  ({time.perf_counter() - start:.1f} s)"
            )
            if data_wait > DATA_WAIT_WARNING and not warned:
                warned = True
                where = "" if args.data_dir == Path("data") else f" --data-dir {args.data_dir}"
                pack = (
                    ""
                    if data_format == "packed"
                    else (f"; `python pack_data.py{where}` packs the data for batched reads")
                )
                say(
                    f"warning: {data_wait:.0%} of the training time went to waiting for batches:"
                    f" the run is data-bound. `python bench_loader.py{where}` finds faster loader"
                    f" settings{pack}."
                )
            if rank == 0 and args.metrics_csv and metrics_file is None:
                # Opened once an epoch is done: a run that fails in its first epoch leaves the
                # metrics of the run before as they were.
                metrics_file, writer = open_metrics(args, start_epoch)
                metrics = csv.writer(metrics_file, lineterminator="\n")
            if metrics_file:
                metrics.writerow(
                    [epoch, f"{train_loss:.6f}", f"{val_loss:.6f}", f"{val_accuracy:.6f}"]
                )
                metrics_file.flush()  # each finished epoch is on disk, even if a later one crashes
            if writer:
                writer.add_scalar("loss/train", train_loss, epoch)
                writer.add_scalar("loss/validation", val_loss, epoch)
                writer.add_scalar("accuracy/validation", val_accuracy, epoch)
                writer.add_scalar("data_wait", data_wait, epoch)
                writer.flush()
            if rank == 0 and not args.dry_run:
                checkpoint = {
                    "model": unwrapped.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scaler": scaler.state_dict(),
                    "epoch": epoch,
                    "best_val_accuracy": max(val_accuracy, best_val_accuracy),
                    "rng": rng_states(),
                    "input_shape": list(input_shape),
                    "num_classes": num_classes,
                }
                save_checkpoint(checkpoint, args.checkpoint_dir / "last.pt")
                if val_accuracy > best_val_accuracy:
                    save_checkpoint(checkpoint, args.checkpoint_dir / "best.pt")
            best_val_accuracy = max(val_accuracy, best_val_accuracy)
        if start_epoch > max_epochs:
            say(f"nothing to do: {last} is at epoch {start_epoch - 1}, --max-epochs {max_epochs}")
    finally:
        gc.unfreeze()
        if metrics_file:
            metrics_file.close()
        if writer:
            writer.close()


# When loading fails: --loader-timeout, and the DataLoader errors whose cause is known


class LoaderTimeout(BaseException):
    """No batch within --loader-timeout. A BaseException, as KeyboardInterrupt: it arrives in the
    middle of a read, and no `except Exception` on the way may take it for a bad file."""


def _expired(signum: int, frame: object) -> None:
    raise LoaderTimeout


# Reads in this process (the first sample; every batch with --num-workers 0) are timed by a
# timer signal, which Windows lacks.
CAN_TIME_READS = hasattr(signal, "setitimer")


@contextlib.contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Raise LoaderTimeout in this process if the block takes longer than seconds (0: no limit).
    A read the system cannot interrupt (a hard-mounted NFS) is not stopped: DataLoader workers
    are, by their timeout."""
    if (
        not seconds
        or not CAN_TIME_READS
        or threading.current_thread() is not threading.main_thread()  # only it gets signals
        or signal.getitimer(signal.ITIMER_REAL)[0]  # a timer of a test runner or a job: keep it
    ):
        yield
        return
    previous = signal.signal(signal.SIGALRM, _expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def within(batches: Iterable, seconds: float) -> Iterator:
    """The batches, each read within seconds (0: no limit)."""
    iterator = iter(batches)
    while True:
        with deadline(seconds):
            batch = next(iterator, None)
        if batch is None:
            return
        yield batch


def loader_failure(err: BaseException, args: argparse.Namespace) -> str | None:
    """What to do about a DataLoader failure that has a known cause; None for any other."""
    text = str(err) if isinstance(err, RuntimeError) else ""
    if isinstance(err, LoaderTimeout) or text.startswith("DataLoader timed out"):
        # DataLoader's timeout, with workers, also counts their start
        starting = "" if isinstance(err, LoaderTimeout) else " (starting the workers included)"
        return (
            f"no batch within --loader-timeout {args.loader_timeout:g} s{starting}: reading a"
            f" sample from {args.data_dir} hangs (a stalled network file system?); check that"
            " its files read, or raise --loader-timeout"
        )
    # torch's words for a worker's batch that did not fit in /dev/shm (but not for a worker
    # that ran out of file descriptors: README.md's FAQ has that one)
    out_of_shm = ("shared memory(shm)", "out of shared memory", "insufficient shared memory")
    if "DataLoader worker" in text and any(words in text for words in out_of_shm):
        if "Too many open files" not in text:
            size = ""
            if os.path.isdir("/dev/shm"):
                size = f" (/dev/shm holds {shutil.disk_usage('/dev/shm').total / 2**20:,.1f} MiB)"
            return (
                f"the DataLoader workers ran out of shared memory{size}, where they hand batches"
                " over: in Docker, give the container more with --shm-size=8g (or --ipc=host);"
                " or run with --num-workers 0, which needs none"
            )
    return None


def quiet_when_stopped(worker_id: int) -> None:
    """In each DataLoader worker: when the training process stops (Ctrl-C) while it takes a
    batch from this worker, the thread of multiprocessing that hands the batch over loses its
    connection and would print a traceback. The training process says what happened."""
    print_error = sys.excepthook  # that thread reports through it

    def excepthook(exc_type: type, exc: BaseException, tb: object) -> None:
        handing_over = threading.current_thread().name.endswith("(_serve)")
        if not (handing_over and issubclass(exc_type, (ConnectionError, EOFError))):
            print_error(exc_type, exc, tb)

    sys.excepthook = excepthook


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        run(args)
    except (DataError, OSError, RuntimeError, LoaderTimeout, KeyboardInterrupt) as err:
        message = loader_failure(err, args)
        if isinstance(err, RuntimeError) and message is None:
            raise  # not a known data-loading failure: the whole traceback helps more
        # Free the DataLoader workers now: the exception's frames hold them in a reference
        # cycle, which only the garbage collector would break, 10 s later (torch's shutdown).
        traceback.clear_frames(err.__traceback__)
        who = f" (rank {os.environ['RANK']})" if "RANK" in os.environ else ""
        if isinstance(err, KeyboardInterrupt):
            print(
                f"interrupted{who}: {args.checkpoint_dir / 'last.pt'} holds the last complete"
                " epoch, if any; --resume goes on from it",
                file=sys.stderr,
            )
            return 130
        print(f"error{who}: {message or error_message(err)}", file=sys.stderr)
        return 1
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":  # required: DataLoader workers re-import this file under spawn
    sys.exit(main())
