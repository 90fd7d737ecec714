"""The command line of pytorch_script.py, with the defaults you chose when generating the
project, parsed once into Settings; and the number parsers every script shares."""

import argparse
import dataclasses
import math
from pathlib import Path

import torch

from plumbing.data import location
from plumbing.distributed import get_device
from plumbing.errors import SetupError
from plumbing.files import is_plain_name

PROJECT = "{{ cookiecutter.project_slug }}"  # the experiment's name in a tracker (--tracker)
TEMPLATE_VERSION = "{{ cookiecutter._template_version }}"  # the template this project came from


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


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text} is not a positive number")
    return value


def seconds(text: str) -> float:
    value = float(text)
    if not value >= 0 or math.isinf(value):
        raise argparse.ArgumentTypeError(f"{text} is not a number of seconds (0 or more)")
    return value


def fraction(text: str) -> float:
    value = float(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not strictly between 0 and 1")
    return value


def fraction_or_none(text: str) -> float:
    """A share that may be 0 (none): 0 <= value < 1."""
    value = float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not from 0 (none) up to 1 (excluded)")
    return value


def shape(text: str) -> tuple[int, ...]:
    """'3,32,32' -> (3, 32, 32)."""
    try:
        numbers = tuple(int(part) for part in text.split(","))
    except ValueError:
        numbers = ()
    if not numbers or min(numbers) < 1:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a shape: give positive integers separated by commas, e.g. 3,32,32"
        )
    return numbers


# What --runs-dir holds beside the runs: MLflow's local store, plot_metrics.py's comparison.
NOT_RUN_NAMES = ("mlflow.db", "mlartifacts", "compare.png")


def run_name(text: str) -> str:
    """A run's name: a directory of --runs-dir, never a path out of it or into another run."""
    if not is_plain_name(text) or text.startswith("-"):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a run name: give a plain name, without / or \\ (e.g. lr-0.01)"
        )
    if text in NOT_RUN_NAMES:
        raise argparse.ArgumentTypeError(
            f"{text!r} is what --runs-dir holds beside the runs: choose another run name"
        )
    return text


def split_fractions(p: argparse.ArgumentParser, of: str) -> None:
    """--validation-fraction and --test-fraction, with the answers' defaults: shares of `of`
    (the samples, or each class) in partition.json's validation and test splits."""
    p.add_argument(
        "--validation-fraction",
        type=fraction,
        default={{ cookiecutter._validation_fraction | float }},
        help=f"share of {of} in partition['validation']",
    )
    p.add_argument(
        "--test-fraction",
        type=fraction_or_none,
        default={{ cookiecutter._test_fraction | float }},
        help=f"share of {of} in partition['test'], which training never reads (evaluate.py"
        " --split test); 0: no test split",
    )


def parser(description: str) -> argparse.ArgumentParser:
    """A parser whose --help shows each flag's default, as every script here has."""
    return argparse.ArgumentParser(
        description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )


@dataclasses.dataclass(frozen=True)
class Settings:
    """pytorch_script.py's flags, parsed once; given: those this command line gave (the others
    have their defaults, or a resumed run's values: plumbing/runs.py)."""

    data_dir: Path | str
    batch_size: int
    shuffle: bool
    num_workers: int
    prefetch_factor: int
    loader_timeout: float
    data_format: str
    max_epochs: int
    lr: float
    num_classes: int | None
    seed: int
    device: torch.device
    cudnn_benchmark: bool
    runs_dir: Path
    run_name: str | None
    resume: str | None
    tensorboard: bool
    tracker: str
    log_model: bool
    amp: bool
    dry_run: bool
    given: frozenset[str] = frozenset()

    def flags(self) -> dict[str, object]:
        """The flags as JSON values (paths and the device as text), as settings.json has them."""
        return {
            field.name: value if isinstance(value, (bool, int, float, type(None))) else str(value)
            for field in dataclasses.fields(self)
            if field.name != "given"
            for value in [getattr(self, field.name)]
        }


def training_settings(argv: list[str] | None, description: str) -> Settings:
    """The command line as Settings; an error in it exits (status 2), as argparse does."""
    p = training_parser(description)
    args = p.parse_args(argv)
    fields = {field.name for field in dataclasses.fields(Settings)}
    if set(vars(args)) - fields:  # a flag added to training_parser alone
        unknown = ", ".join(sorted(set(vars(args)) - fields))
        p.error(f"plumbing/cli.py: give Settings a field for each flag of yours ({unknown})")
    # The flags this command line gives: parsed again, with every default left out.
    for action in p._actions:
        action.default = argparse.SUPPRESS
    given = frozenset(vars(p.parse_args(argv)))
    return Settings(**vars(args), given=given)


def check(settings: Settings) -> Settings:
    """settings, once complete (a resumed run's values included): --dry-run trains one epoch."""
    if settings.log_model and settings.tracker == "none":
        raise SetupError(
            "--log-model stores best.pt in a tracker: add --tracker mlflow or --tracker wandb"
        )
    return dataclasses.replace(settings, max_epochs=1) if settings.dry_run else settings


def training_parser(description: str) -> argparse.ArgumentParser:
    p = parser(description)
    p.add_argument(
        "--data-dir",
        type=location,
        default=Path("data"),
        help="holds <ID>.pt, partition.json and labels.json; with --data-format stream, the"
        " stream's directory or URL (s3://bucket/data)",
    )
    p.add_argument(
        "--batch-size",
        type=positive_int,
        default={{ cookiecutter.batch_size | int }},
        help="samples per batch",
    )
    p.add_argument(
        "--shuffle",
        action=argparse.BooleanOptionalAction,
        default={{ cookiecutter.shuffle }},
        help="shuffle the training set every epoch",
    )
    p.add_argument(
        "--num-workers",
        type=non_negative_int,
        default={{ cookiecutter.num_workers | int }},
        help="DataLoader worker processes, capped at the CPUs this process may use;"
        " 0 loads in the main process",
    )
    p.add_argument(
        "--prefetch-factor",
        type=positive_int,
        default=2,
        help="batches each worker prepares ahead (ignored with 0 workers)",
    )
    p.add_argument(
        "--loader-timeout",
        type=seconds,
        default=0.0,
        help="seconds to wait for one batch (the first includes starting the workers) before"
        " failing, rather than hang on a stalled network file system; 0 waits for ever",
    )
    p.add_argument(
        "--data-format",
        choices=["auto", "files", "packed", "stream"],
        default="auto",
        help="files: data/<ID>.pt; packed: data/packed from pack_data.py;"
        " auto: packed while it holds what the Dataset reads from data/ now;"
        " stream: LitData chunks from pack_data.py --format stream, local or in object storage",
    )
    p.add_argument(
        "--max-epochs",
        type=positive_int,
        default={{ cookiecutter.max_epochs | int }},
        help="epochs to train",
    )
    p.add_argument("--lr", type=positive_float, default=1e-3, help="learning rate")
    p.add_argument(
        "--num-classes",
        type=positive_int,
        help="classes the model tells apart (default: the largest label + 1)",
    )
    p.add_argument("--seed", type=int, default=0, help="same seed, same run (on the CPU)")
    p.add_argument(
        "--device",
        type=get_device,
        default="auto",
        help="cuda, mps, cpu, ...; auto takes CUDA or another accelerator when there is one",
    )
    p.add_argument(
        "--cudnn-benchmark",
        action=argparse.BooleanOptionalAction,
        default={{ cookiecutter._cudnn_benchmark }},
        help="let cuDNN time its algorithms for your input shapes; fast when shapes do not change",
    )
    p.add_argument(
        "--runs-dir",
        type=Path,
        default=Path("runs"),
        help="one directory per run: metrics.csv, checkpoints, settings, TensorBoard events",
    )
    p.add_argument(
        "--run-name",
        type=run_name,
        help="this run's directory in --runs-dir; default: the next run-N",
    )
    p.add_argument(
        "--resume",
        nargs="?",
        const="",
        type=lambda text: text and run_name(text),  # '' (--resume alone): the latest run
        metavar="RUN",
        help="go on from RUN's last.pt (default: the latest run, or --run-name);"
        " with no such run yet, start it: a requeued job can always pass --resume",
    )
    p.add_argument(
        "--tensorboard",
        action=argparse.BooleanOptionalAction,
        default={{ cookiecutter._use_tensorboard }},
        help="also log each epoch for TensorBoard, in the run's directory"
        " (tensorboard --logdir runs)",
    )
    p.add_argument(
        "--tracker",
        choices=["none", "mlflow", "wandb"],
        default="{{ cookiecutter.tracker }}",
        help="also log each epoch and the run's settings to MLflow (runs/mlflow.db, or"
        " MLFLOW_TRACKING_URI) or Weights & Biases (offline unless logged in); README.md",
    )
    p.add_argument(
        "--log-model",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="with --tracker: also store best.pt there when the run finishes",
    )
    p.add_argument(
        "--amp",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="mixed precision: bfloat16 on the CPU, float16 with loss scaling on CUDA",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="one epoch of two batches per split, then stop; writes nothing",
    )
    return p
