"""Write sample data in the article's layout: data/<ID>.pt, data/partition.json, data/labels.json.

    python make_sample_data.py                     # the sizes you chose when generating the project
    python make_sample_data.py --num-samples 20000 --shape 3,224,224 --force
    python make_sample_data.py --test-fraction 0 --force   # no test split: train and validation

Each class has its own random pattern; a sample is its class's pattern plus as much noise,
so a model can learn the classes, and a run that does not learn points to a bug.
"""

import argparse
import itertools
import json
import math
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from plumbing.cli import parser, positive_int, shape, split_fractions
from plumbing.errors import DataError, write_error
from plumbing.files import atomic_write_text


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--data-dir", type=Path, default=Path("data"), help="where to write")
    p.add_argument(
        "--num-samples",
        type=positive_int,
        default={{ cookiecutter._num_samples | int }},
        help="sample files to write",
    )
    p.add_argument(
        "--shape",
        type=shape,
        default={{ cookiecutter.sample_shape | replace(" ", "") | tojson }},
        help="shape of one sample",
    )
    p.add_argument(
        "--num-classes",
        type=positive_int,
        default={{ cookiecutter.num_classes | int }},
        help="classes, each with its own pattern",
    )
    split_fractions(p, of="the samples")
    p.add_argument("--seed", type=int, default=0, help="same seed, same data")
    p.add_argument("--force", action="store_true", help="replace the data already in --data-dir")
    args = p.parse_args(argv)
    num_validation = round(args.num_samples * args.validation_fraction)
    num_held_out = num_validation + round(args.num_samples * args.test_fraction)
    if not 2 <= args.num_classes <= args.num_samples or not 0 < num_validation < args.num_samples:
        p.error(
            f"{args.num_samples} samples at --validation-fraction {args.validation_fraction}"
            f" and {args.num_classes} classes: need at least 2 classes, a sample of each class,"
            " and a sample in each split"
        )
    if num_held_out >= args.num_samples:
        p.error(
            f"{args.num_samples} samples at --validation-fraction {args.validation_fraction} and"
            f" --test-fraction {args.test_fraction} leave none to train on"
        )
    return args


def make_sample_data(
    data_dir: Path,
    num_samples: int,
    shape: tuple[int, ...],
    num_classes: int,
    validation_fraction: float,
    seed: int = 0,
    force: bool = False,
    test_fraction: float = 0.0,
) -> tuple[dict[str, list[str]], dict[str, int]]:
    """Write the samples, then labels.json, then partition.json (with a test split when
    test_fraction is above 0); return (partition, labels)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    existing = [name for name in ("partition.json", "labels.json") if (data_dir / name).exists()]
    existing += [p.name for p in itertools.islice(data_dir.glob("*.pt"), 3)]
    if existing and not force:
        raise DataError(
            f"{data_dir} already holds data ({', '.join(existing)}, ...):"
            " pass --force to replace it, or choose another --data-dir"
        )
    # partition.json is written last, so its absence marks data that is not complete.
    (data_dir / "partition.json").unlink(missing_ok=True)

    generator = torch.Generator().manual_seed(seed)
    patterns = torch.randn(num_classes, *shape, generator=generator)
    # Balanced classes in a random order, and a random validation split.
    classes = torch.arange(num_samples) % num_classes
    classes = classes[torch.randperm(num_samples, generator=generator)].tolist()
    order = torch.randperm(num_samples, generator=generator).tolist()
    num_validation = round(num_samples * validation_fraction)
    num_held_out = num_validation + round(num_samples * test_fraction)

    labels = {}
    progress = tqdm(
        range(num_samples), desc="writing", unit="sample", delay=2, leave=False, disable=None
    )
    for i in progress:
        ID = f"id-{i + 1}"
        X = patterns[classes[i]] + torch.randn(shape, generator=generator)
        path = data_dir / f"{ID}.pt"
        try:
            torch.save(X, path)
        except (OSError, RuntimeError) as err:  # a full disk, a quota: torch says little
            path.unlink(missing_ok=True)
            raise DataError(
                write_error(path, err, "choose another --data-dir, then run again with --force")
            ) from None
        labels[ID] = classes[i]

    IDs = list(labels)
    partition = {
        "train": [IDs[i] for i in order[num_held_out:]],
        "validation": [IDs[i] for i in order[:num_validation]],
    }
    if num_held_out > num_validation:  # held out from training: evaluate.py --split test
        partition["test"] = [IDs[i] for i in order[num_validation:num_held_out]]
    atomic_write_text(data_dir / "labels.json", json.dumps(labels, indent=1) + "\n")
    atomic_write_text(data_dir / "partition.json", json.dumps(partition, indent=1) + "\n")
    return partition, labels


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    try:
        partition, _ = make_sample_data(
            args.data_dir,
            args.num_samples,
            args.shape,
            args.num_classes,
            args.validation_fraction,
            seed=args.seed,
            force=args.force,
            test_fraction=args.test_fraction,
        )
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    megabytes = args.num_samples * math.prod(args.shape) * 4 / 1e6
    splits = ", ".join(f"{len(IDs)} {split}" for split, IDs in partition.items())
    print(
        f"Wrote {args.num_samples} samples of shape {'x'.join(map(str, args.shape))}"
        f" ({args.num_classes} classes, {splits}, {megabytes:.0f} MB)"
        f" to {args.data_dir} in {time.perf_counter() - start:.1f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
