"""Evaluate a trained run on a split its training never read: loss, accuracy, each class's
precision, recall and F1, and the confusion matrix.

    python evaluate.py                          # the latest run's best.pt, on the test split
    python evaluate.py run-1 --split validation --checkpoint last   # as its last epoch did
    torchrun --standalone --nproc_per_node=4 evaluate.py run-1     # each sample once, 4 GPUs

The model is built by my_classes.build_model and given the checkpoint's weights (its EMA's,
when the run kept one: see --weights); the split is read by my_classes.Dataset without
augmentation, from the files, data/packed or a stream, as the run read its data. It prints a
table and writes runs/<run>/eval/<split>-<checkpoint>/: metrics.json, per_class.csv,
confusion.csv, predictions.csv (each sample's ID, label and class predicted) and, with the
plots extra, confusion.png. On the validation split, the loss and accuracy are those the run's
metrics.csv has for the checkpoint's epoch (tested).
"""

import argparse
import dataclasses
import sys
from pathlib import Path

import torch
from torch import nn

from my_classes import Dataset, build_model
from plumbing import checkpoints, distributed, evaluation, exits, loader, packed, runs
from plumbing.cli import location, non_negative_int, parser, positive_int, run_name
from plumbing.data import class_names, load_partition
from plumbing.distributed import get_device
from plumbing.errors import DataError, SetupError


def evaluation_of(args: argparse.Namespace) -> None:
    run_dir, path = runs.finished(args.runs_dir, args.run, args.checkpoint)
    settings = runs.started_as(run_dir)  # read as the run read its data
    given = {k: v for k, v in vars(args).items() if k in SETTINGS and v is not None}
    settings = dataclasses.replace(settings, **given)
    device = distributed.setup(settings.device)
    model, checkpoint, weights = checkpoints.for_inference(path, build_model, args.weights)
    model = model.to(device)

    # The split, as validation reads it: no augmentation
    dataset, IDs = split_of(settings, args.split, checkpoint["num_classes"])
    params = {"batch_size": settings.batch_size, "shuffle": False}
    params["num_workers"] = settings.num_workers
    generator = loader.make(dataset, params, settings, device)
    if isinstance(generator.sampler, loader.EpochSampler):
        generator.sampler.even = False  # every sample once, under torchrun too
    names = checkpoint.get("class_names") or distributed.once(class_names, settings.data_dir)
    names = evaluation.names_of(checkpoint["num_classes"], names)

    shape, where = tuple(checkpoint["input_shape"]), f"{settings.data_dir} ({args.split})"
    batches = evaluation.Pass(generator, device, settings.amp, settings.loader_timeout,
                              input_shape=shape, where=where)  # fmt: skip
    loss_fn = nn.CrossEntropyLoss()  # as pytorch_script.py's: the loss you train with
    metrics = evaluate(model, batches, loss_fn)
    results = evaluation.report(metrics, batches.true, batches.predicted, names)

    if distributed.rank() == 0:
        out_dir = run_dir / "eval" / f"{args.split}-{args.checkpoint}"
        about = {"checkpoint": str(path), "epoch": checkpoint["epoch"], "weights": weights}
        about |= {"split": args.split, "data_dir": str(settings.data_dir)}
        written = evaluation.write(out_dir, about | results, IDs, batches.true, batches.predicted)
        print(
            f"{path} (epoch {checkpoint['epoch']}, weights {weights!r}) on the {args.split} split"
            f" of {settings.data_dir}: {results['samples']} samples"
        )
        print(evaluation.table(results))
        print(f"written to {out_dir}: {', '.join(written)}")


@torch.no_grad()
def evaluate(model: nn.Module, batches: evaluation.Pass, loss_fn: nn.Module) -> dict[str, float]:
    """One pass over the split: the mean loss (and what else you measure here); the accuracy,
    each class's precision, recall and F1, and the confusion matrix come from what
    batches.record keeps. Every sample of every rank counted once."""
    model.eval()
    loss_sum = num_samples = 0
    for local_batch, local_labels in batches:  # on the device already
        with batches.autocast():
            outputs = model(local_batch)
        loss_sum += loss_fn(outputs.float(), local_labels) * len(local_labels)
        num_samples += len(local_labels)
        batches.record(outputs)  # each sample's class
    loss_sum, num_samples = distributed.all_sum([loss_sum, num_samples], batches.device)
    return {"loss": loss_sum / num_samples}


def split_of(
    settings: object, split: str, num_classes: int
) -> tuple[torch.utils.data.Dataset, object]:
    """The split's Dataset (files, packed or a stream, as settings say) and its IDs (None for
    a stream, whose samples are read in its own order)."""
    if settings.data_format == "stream":
        if distributed.world_size() > 1:
            raise SetupError("evaluate.py reads a stream in one process: run it without torchrun")
        # In LitData's order, as training's validation reads it: every sample once
        _, (dataset,) = loader.open_stream(settings, Dataset, splits=(split,))
        return dataset, None
    partition, labels = load_partition(settings.data_dir)
    if split not in partition:
        hint = " (make_sample_data.py --test-fraction, import_data.py --test-fraction)"
        raise DataError(
            f"{settings.data_dir / 'partition.json'} has no {split!r} split, only"
            f" {', '.join(partition)}: pass --split validation, or add one{hint}"
        )
    IDs = partition[split]
    largest = int(labels.of(IDs).max())
    if largest >= num_classes:
        raise DataError(
            f"{settings.data_dir / 'labels.json'}: the {split} split holds label {largest}, the"
            f" model tells {num_classes} classes apart (0 to {num_classes - 1})"
        )
    dataset = Dataset(IDs, labels, settings.data_dir)  # augment stays off
    (dataset,) = packed.choose(settings, partition, dataset, splits=(split,))
    return dataset, IDs


# The run's flags that a command line here may give instead: where and how to read the split
SETTINGS = ("data_dir", "data_format", "batch_size", "num_workers", "device", "amp")


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("run", nargs="?", type=run_name, metavar="RUN", help="default: the latest")
    p.add_argument("--split", default="test", help="test, validation or train")
    p.add_argument("--checkpoint", choices=["best", "last"], default="best", help="which one")
    p.add_argument(
        "--weights",
        default="auto",
        help="the state's entry to evaluate: model, ema, ...; auto: ema if the run has one"
        " (validation used it), else model",
    )
    p.add_argument("--runs-dir", type=Path, default=Path("runs"), help="where runs are")
    p.add_argument("--data-dir", type=location, help="default: the run's")
    p.add_argument("--data-format", choices=["auto", "files", "packed", "stream"],
                   help="default: the run's")  # fmt: skip
    p.add_argument("--batch-size", type=positive_int, help="default: the run's")
    p.add_argument("--num-workers", type=non_negative_int, help="default: the run's")
    p.add_argument("--device", type=get_device, default="auto", help="cuda, mps, cpu, ...")
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, help="default: the run's")
    args = p.parse_args(argv)
    return exits.reported(lambda: evaluation_of(args))


if __name__ == "__main__":  # required: DataLoader workers re-import this file under spawn
    sys.exit(main())
