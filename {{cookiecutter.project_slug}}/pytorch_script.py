"""Train a classifier on data/<ID>.pt while DataLoader workers prepare the next batches.

    python make_sample_data.py             # once, unless you bring your own data (see README.md)
    python pytorch_script.py               # train: one line per epoch; writes runs/run-1/
    python pytorch_script.py --resume      # go on with the latest run, after a crash
    torchrun --standalone --nproc_per_node=4 pytorch_script.py   # 4 GPUs (or processes) here
    sbatch train.sbatch                    # on SLURM, requeued through time limits and preemption
    python pack_data.py                    # optional: batched reads from one file per split
    python bench_loader.py                 # which loader settings are fastest on this machine
    python pytorch_script.py --dry-run     # one epoch of two batches per split: a quick check
    python pytorch_script.py --tracker mlflow  # also to MLflow, or wandb, or --tensorboard
    python plot_metrics.py                 # the loss and accuracy curves of the latest run
    python pytorch_script.py --help        # every flag, with its default

The Dataset and the model are in my_classes.py, the loss and the optimizer in run() below;
plumbing/ holds the rest (checkpoints, metrics files, torchrun, signals, loader safety).

On the default sample data, on a 2-core CPU, the last line reads like
    epoch 100/100  train_loss 0.0000  val_loss 0.0000  val_accuracy 1.0000  data_wait 9%  (0.4 s)
"""

import argparse
import gc
import time

import torch
from torch import nn

from my_classes import Dataset, build_model
from plumbing import checkpoints, cli, distributed, loader, metrics, packed, preemption, runs
from plumbing.data import load_partition, num_classes
from plumbing.errors import exit_now, exit_status


def run(args: argparse.Namespace) -> None:
    """The article's script, complete."""
    loader.seed_everything(args.seed)  # the same on every rank: the same initial weights

    # CUDA for PyTorch
    args.device = device = distributed.setup(args.device)  # under torchrun: this process's GPU
    torch.backends.cudnn.benchmark = args.cudnn_benchmark

    # Parameters
    params = {
        "batch_size": args.batch_size,
        "shuffle": args.shuffle,
        "num_workers": args.num_workers,
    }
    max_epochs = args.max_epochs

    # Datasets (each reads its first sample now: within --loader-timeout)
    if args.data_format == "stream":  # pack_data.py --format stream's chunks: a dir or s3://...
        labels, (training_set, validation_set) = loader.open_stream(args, Dataset)
    else:
        partition, labels = load_partition(args.data_dir)  # {'train': [IDs], ...}, {ID: class}
        with loader.deadline(args.loader_timeout):
            training_set = Dataset(partition["train"], labels, args.data_dir, augment=True)
            validation_set = Dataset(partition["validation"], labels, args.data_dir)
        # pack_data.py's copy of what they read, while it is current: batched reads, same samples
        training_set, validation_set = packed.choose(args, partition, training_set, validation_set)

    # Generators (plumbing/loader.py adds what makes them fast, safe and repeatable)
    training_generator = loader.make(training_set, params, args, device)
    validation_generator = loader.make(validation_set, params | {"shuffle": False}, args, device)
    loader.check_batch_fits(training_generator, args.data_dir)

    # Model, loss and optimizer
    args.input_shape = loader.shape_of(training_set, args.loader_timeout)
    # The largest label + 1 (--num-classes sets it: a class absent from the data, say)
    args.num_classes = num_classes(labels, args.num_classes, args.data_dir)
    model = build_model(args.input_shape, args.num_classes).to(device)
    loss_fn = nn.CrossEntropyLoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)

    fit(model, loss_fn, optimizer, training_generator, validation_generator, max_epochs, args)


def fit(
    model: nn.Module,
    loss_fn: nn.Module,
    optimizer: torch.optim.Optimizer,
    training_generator: torch.utils.data.DataLoader,
    validation_generator: torch.utils.data.DataLoader,
    max_epochs: int,
    args: argparse.Namespace,
) -> None:
    """The loop over epochs, in a new run directory or on from a checkpoint (--resume)."""
    device, say = args.device, distributed.say  # rank 0 speaks for all
    # Mixed precision (--amp): float16 on CUDA needs its gradients scaled
    scaler = torch.amp.GradScaler(device.type, enabled=args.amp and device.type == "cuda")
    start_epoch, best_score, inside = runs.start(args, model, optimizer, scaler, say)
    say(loader.describe(training_generator, validation_generator, args))
    model = distributed.parallel(model)
    log = metrics.Log(args, start_epoch, loader.data_bound_hint(args, training_generator), say)
    # Objects made so far live as long as the run: keep the garbage collector of each forked
    # worker from writing to them, which would copy their pages into it (tens of MB each).
    gc.freeze()
    # SIGTERM, SIGUSR1 (a cluster's preemption or time limit): stop after a batch, resumable
    stop = preemption.StopSignals()
    try:
        # Loop over epochs
        for epoch in range(start_epoch, max_epochs + 1):
            start = time.perf_counter()
            loader.set_epoch(training_generator, epoch)  # a new order, the same on every rank
            loader.seed_epoch(args.seed, epoch)  # what this epoch draws, resumed or not

            # Training (a run stopped inside this epoch goes on after its last batch)
            try:
                train_loss, data_wait = train(
                    model, training_generator, loss_fn, optimizer, scaler, args, device, epoch,
                    stop, inside,
                )  # fmt: skip
            except preemption.Stopped as stopped:  # last.pt keeps where: --resume goes on there
                checkpoints.save_inside_epoch(
                    args, model, optimizer, scaler, stopped.position, best_score, training_generator
                )
                raise
            inside = None

            # Validation
            val_loss, val_accuracy = validate(model, validation_generator, loss_fn, args, device)

            log.epoch(epoch, train_loss, val_loss, val_accuracy, data_wait, start)
            # best.pt keeps the epoch of the highest score (for the lowest loss: -val_loss)
            score = val_accuracy
            if log.run_dir:
                best_score = checkpoints.save_epoch(
                    args, model, optimizer, scaler, epoch, score, best_score
                )
            if epoch < max_epochs and stop.agreed():  # a signal during validation or saving
                raise preemption.Stopped(stop.name, epoch)
        if start_epoch > max_epochs:
            say(f"nothing to do: {args.run_dir} is at epoch {start_epoch - 1} of {max_epochs}")
    finally:
        gc.unfreeze()
        log.close()
        stop.close()


def train(
    model: nn.Module,
    training_generator: torch.utils.data.DataLoader,
    loss_fn: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    args: argparse.Namespace,
    device: torch.device,
    epoch: int,
    stop: preemption.StopSignals,
    inside: checkpoints.Position | None = None,
) -> tuple[float, float]:
    """One pass over the training set, or over what a run stopped inside this epoch left of
    it; returns the mean loss (over every rank) and the share of the time spent waiting for
    batches. A signal stops it after a batch: preemption.Stopped."""
    model.train()
    loss_sum = torch.zeros((), device=device)
    num_samples = done = 0
    if inside:  # the batches trained before the stop: skipped, not read again
        inside.go_on(training_generator)
        loss_sum, num_samples, done = inside.loss_sum.to(device), inside.num_samples, inside.batches
    desc = f"epoch {epoch}/{args.max_epochs}" if distributed.rank() == 0 else None
    batches = loader.Batches(training_generator, args.loader_timeout, max_batches(args), desc)
    nonfinite = metrics.Watch(training_generator, epoch)  # a NaN or infinite loss stops the run
    for local_batch, local_labels in batches:
        # Transfer to GPU, as float32 (the model's dtype: uint8 or float64 samples work as saved)
        local_batch, local_labels = to_device(local_batch, local_labels, device)

        # Model computations
        optimizer.zero_grad(set_to_none=True)
        with autocast(device, args.amp):
            loss = loss_fn(model(local_batch), local_labels)
        # The scaler keeps small float16 gradients from vanishing; disabled, it passes through.
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

        # Summed on the device: calling .item() every step would wait for the GPU each time.
        loss_sum += loss.detach().float() * len(local_labels)
        num_samples += len(local_labels)
        done += 1
        nonfinite.note(loss_sum, done, args)  # on the device, no wait: read every 100 batches
        if stop.requested():  # a signal: stop here, on every rank
            nonfinite.check(args)  # (a NaN is not saved)
            where = checkpoints.Position(epoch, done, loss_sum, num_samples)
            raise preemption.Stopped(stop.name, epoch, where)
    loss_sum, num_samples = distributed.all_sum([loss_sum.item(), num_samples], device)
    nonfinite.check(args)
    return loss_sum / num_samples, batches.data_wait


@torch.no_grad()
def validate(
    model: nn.Module,
    validation_generator: torch.utils.data.DataLoader,
    loss_fn: nn.Module,
    args: argparse.Namespace,
    device: torch.device,
) -> tuple[float, float]:
    """One pass over the validation set; returns the mean loss and the accuracy, every sample
    of every rank counted once."""
    model.eval()
    share = loader.share(validation_generator)  # without the padding of torchrun
    loss_sum = torch.zeros((), device=device)
    num_correct = torch.zeros((), dtype=torch.long, device=device)
    num_samples = 0
    for local_batch, local_labels in loader.Batches(
        validation_generator, args.loader_timeout, max_batches(args)
    ):
        keep = min(len(local_labels), share - num_samples)
        if keep <= 0:
            break
        local_batch, local_labels = to_device(local_batch[:keep], local_labels[:keep], device)

        # Model computations
        with autocast(device, args.amp):
            outputs = model(local_batch)
        loss_sum += loss_fn(outputs.float(), local_labels) * keep
        num_correct += (outputs.argmax(dim=1) == local_labels).sum()
        num_samples += keep
    totals = [loss_sum.item(), num_correct.item(), num_samples]
    loss_sum, num_correct, num_samples = distributed.all_sum(totals, device)
    return loss_sum / num_samples, num_correct / num_samples


def to_device(
    X: torch.Tensor, y: torch.Tensor, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    non_blocking = device.type == "cuda"  # copies from pinned memory overlap with compute
    X = X.to(device, torch.float32, non_blocking=non_blocking)
    return X, y.to(device, non_blocking=non_blocking)


def autocast(device: torch.device, enabled: bool) -> torch.autocast:
    """--amp: float16 on CUDA, bfloat16 elsewhere (the CPU has no fast float16)."""
    dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    return torch.autocast(device.type, dtype=dtype, enabled=enabled)


def max_batches(args: argparse.Namespace) -> int | None:
    return 2 if args.dry_run else None


def main(argv: list[str] | None = None) -> int:
    args = cli.training_args(argv, description=__doc__.splitlines()[0])
    return exit_status(run, args)


if __name__ == "__main__":  # required: DataLoader workers re-import this file under spawn
    exit_now(main())  # sys.exit(main()); after a signal, a second sooner (plumbing/errors.py)
