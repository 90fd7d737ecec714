"""Classify samples with a trained run, or with export_model.py's program: the IDs of a split,
sample files or images, into a CSV of each one's class and probability.

    python predict.py run-1 --split test                # the IDs of data/partition.json's split
    python predict.py run-1 new/x.pt new/y.pt           # sample files, read as training reads them
    python predict.py run-1 photos/ --top-k 3           # images, made as import_data.py makes them
    python predict.py runs/run-1/model.pt2 photos/      # the exported program (export_model.py)

Each input goes through my_classes.Dataset.read, as in training (images first through the
transform of import_data.py, to the model's input shape), in batches read by DataLoader
workers. The CSV (runs/<run>/predictions.csv unless --out says) has a row per input: its ID
(or path), its label where the split has one, then the class (its name, where the run's data
had classes.json) and its probability, for the --top-k most likely classes. RUN, the first
argument, is a run's name in --runs-dir or a .pt2 file; without it, the latest run.
"""

import argparse
import dataclasses
import sys
import tempfile
from pathlib import Path

import torch
from torch import nn

from my_classes import Dataset, build_model
from plumbing import checkpoints, cli, evaluation, exits, exported, images, loader, runs
from plumbing.cli import location, non_negative_int, parser, positive_int
from plumbing.data import class_names, load_partition
from plumbing.distributed import get_device
from plumbing.errors import DataError
from plumbing.files import atomic_write_text


@dataclasses.dataclass
class Inputs:
    """What to classify: one Dataset, the name of each of its samples, their labels if known."""

    dataset: torch.utils.data.Dataset
    names: list[str]
    labels: list[int] | None = None


def prediction(args: argparse.Namespace) -> None:
    model, meta, settings, out = model_of(args)
    names = evaluation.names_of(meta["num_classes"], meta.get("class_names"))
    with tempfile.TemporaryDirectory(prefix="predict-") as scratch:
        inputs = inputs_of(args, settings, tuple(meta["input_shape"]), Path(scratch))
        params = {"batch_size": settings.batch_size, "shuffle": False,
                  "num_workers": settings.num_workers}  # fmt: skip
        generator = loader.make(inputs.dataset, params, settings, settings.device)
        batches = evaluation.Pass(generator, settings.device, keep_probabilities=True)
        predict(model, batches)
    k = min(args.top_k, meta["num_classes"])
    top = batches.probabilities.topk(k, dim=1)
    header = ["ID", *(["label"] if inputs.labels is not None else []), "class", "probability"]
    header += [f"{what}_{n}" for n in range(2, k + 1) for what in ("class", "probability")]
    rows = []
    for i, name in enumerate(inputs.names):
        row = [name, *([names[inputs.labels[i]]] if inputs.labels is not None else [])]
        for c, p in zip(top.indices[i].tolist(), top.values[i].tolist(), strict=True):
            row += [names[c], f"{p:.6f}"]
        rows.append(row)
    atomic_write_text(out, evaluation.csv_text(header, rows))
    print(f"Wrote the classes of {len(rows)} inputs to {out}")


@torch.no_grad()
def predict(model: nn.Module, batches: evaluation.Pass) -> None:
    """One pass over the inputs: batches.record keeps each one's probability for each class
    (the softmax of the model's outputs)."""
    for local_batch, _ in batches:  # on the device already
        outputs = model(local_batch)
        batches.record(outputs)


def model_of(args: argparse.Namespace) -> tuple[object, dict, cli.Settings, Path]:
    """The model (a run's checkpoint, built by build_model, or an exported program), what it
    takes and gives, the settings to read the inputs with, and the CSV to write."""
    settings = cli.training_settings([], "")  # the project's defaults
    if args.run is not None and args.run.suffix == ".pt2":
        model, meta = exported.load(args.run)
        device = torch.device("cpu")  # where it was exported
        out = args.run.with_name("predictions.csv")
    else:
        run_dir, path = runs.finished(args.runs_dir, args.run and args.run.name, args.checkpoint)
        model, checkpoint, _ = checkpoints.for_inference(path, build_model, args.weights)
        settings = runs.started_as(run_dir)
        device = args.device
        model = model.to(device)
        meta = {key: checkpoint.get(key) for key in ("input_shape", "num_classes", "class_names")}
        out = run_dir / "predictions.csv"
    given = {k: v for k, v in vars(args).items() if k in ("batch_size", "num_workers") and v}
    settings = dataclasses.replace(settings, **given, device=device)
    if args.data_dir is not None:
        settings = dataclasses.replace(settings, data_dir=args.data_dir)
    if not meta.get("class_names") and args.split:
        meta["class_names"] = class_names(settings.data_dir)
    return model, meta, settings, args.out or out


def inputs_of(
    args: argparse.Namespace, settings: cli.Settings, input_shape: tuple, scratch: Path
) -> Inputs:
    """The split's IDs (--split), or the sample files and images named, as one Dataset."""
    if args.split:
        if args.inputs:
            raise DataError("give --split or inputs, not both")
        partition, labels = load_partition(settings.data_dir)
        if args.split not in partition:
            raise DataError(
                f"{settings.data_dir / 'partition.json'} has no {args.split!r} split, only"
                f" {', '.join(partition)}"
            )
        IDs = partition[args.split]
        dataset = Dataset(IDs, labels, settings.data_dir)
        like(dataset, input_shape, f"{settings.data_dir}/{IDs[0]}.pt")
        return Inputs(dataset, list(IDs), labels.of(IDs).tolist())
    if not args.inputs:
        raise DataError("nothing to classify: give sample files, images or folders, or --split")
    samples, pictures = [], []
    for given in args.inputs:
        path = Path(given)
        if path.is_dir():
            pictures += images.images_in(path)
            samples += sorted(p for p in path.rglob("*.pt") if not p.name.startswith("."))
        elif path.suffix == ".pt" and path.is_file():
            samples.append(path)
        elif images.is_image(path) and path.is_file():
            pictures.append(path)
        else:
            raise DataError(f"{given}: not a sample file (.pt), an image, or a folder of them")
    if not samples + pictures:
        raise DataError(f"{', '.join(args.inputs)}: no sample files (.pt) or images there")
    parts, names = [], []
    for folder in dict.fromkeys(path.parent for path in samples):  # a Dataset per folder
        stems = [path.stem for path in samples if path.parent == folder]
        parts.append(Dataset(stems, dict.fromkeys(stems, 0), folder))
        like(parts[-1], input_shape, str(folder / f"{stems[0]}.pt"))
        names += [str(folder / f"{stem}.pt") for stem in stems]
    if pictures:
        parts.append(decoded(pictures, input_shape, scratch, settings.num_workers))
        names += [str(path) for path in pictures]
    return Inputs(torch.utils.data.ConcatDataset(parts), names)


def decoded(paths: list[Path], input_shape: tuple, scratch: Path, num_workers: int) -> Dataset:
    """The images, made as import_data.py makes them for the model's input shape, saved in
    scratch as samples: a Dataset reads them as training reads its data."""
    if len(input_shape) != 3 or input_shape[0] not in (1, 3):
        raise DataError(
            f"{paths[0]}: the model takes samples of shape {input_shape}, not images (channels"
            " 1 or 3, height, width)"
        )
    channels, size = input_shape[0], tuple(input_shape[1:])
    batches = loader.in_order(images.Decoded(paths, size, channels), 64, num_workers)
    done = 0
    for batch in batches:
        for X in batch:
            torch.save(X.clone(), scratch / f"{done}.pt")
            done += 1
    IDs = [str(n) for n in range(done)]
    return Dataset(IDs, dict.fromkeys(IDs, 0), scratch)


def like(dataset: Dataset, input_shape: tuple, where: str) -> None:
    """The samples must be of the model's input shape."""
    shape = tuple(dataset[0][0].shape)
    if shape != input_shape:
        raise DataError(f"{where} is of shape {shape}, the model takes {input_shape}")


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("inputs", nargs="*", metavar="[RUN] INPUT", help="a run (or a .pt2 file),"
                   " then sample files, images, or folders of them")  # fmt: skip
    p.add_argument("--split", help="classify the IDs of this split of --data-dir instead")
    p.add_argument("--top-k", type=positive_int, default=1, help="classes per input, likeliest 1st")
    p.add_argument("--checkpoint", choices=["best", "last"], default="best", help="which one")
    p.add_argument("--weights", default="auto", help="model, ema, ...; auto: ema if there is one")
    p.add_argument("--runs-dir", type=Path, default=Path("runs"), help="where runs are")
    p.add_argument("--data-dir", type=location, help="for --split; default: the run's")
    p.add_argument("--batch-size", type=positive_int, help="default: the run's")
    p.add_argument("--num-workers", type=non_negative_int, help="default: the run's")
    p.add_argument("--device", type=get_device, default="auto", help="for a run: cuda, cpu, ...")
    p.add_argument("--out", type=Path, help="the CSV; default: predictions.csv beside the model")
    args = p.parse_intermixed_args(argv)  # RUN and INPUTs around the flags
    args.run = None
    first = args.inputs[0] if args.inputs else ""
    if first.endswith(".pt2") or (first and (args.runs_dir / first).is_dir()):
        args.run, args.inputs = Path(first), args.inputs[1:]
    return exits.reported(lambda: prediction(args))


if __name__ == "__main__":  # required: DataLoader workers re-import this file under spawn
    sys.exit(main())
