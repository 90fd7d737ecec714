"""One directory per run, runs/<name>/: its metrics.csv, TensorBoard events, last.pt, best.pt
and settings.json together, so that no run overwrites or appends to another's."""

import argparse
import json
import re
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from plumbing import checkpoints, distributed
from plumbing.cli import data_location
from plumbing.data import digest
from plumbing.errors import CheckpointError
from plumbing.files import atomic_write_text


def start(
    args: argparse.Namespace,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    say: Callable[[str], None],
) -> tuple[int, float, checkpoints.Position | None]:
    """Set args.run_dir (None for --dry-run, which writes nothing) and, with --resume, load its
    last.pt; returns the first epoch to train, the best score so far, and where training
    stopped inside that epoch, if it did (a signal)."""
    if not hasattr(args, "data_digest"):  # set by a stream, whose index is not a local file
        # checkpoints say which data they were saved on (read by rank 0, as the index is)
        args.data_digest = distributed.once(digest, args.data_dir)
    if args.dry_run:
        args.run_dir = None
        return 1, float("-inf"), None
    # Rank 0 chooses (and takes) the directory; under torchrun every other rank follows it.
    decision = None
    if distributed.rank() == 0:
        try:
            run_dir, resuming = choose(args.runs_dir, args.run_name, args.resume)
            decision = (str(run_dir), resuming)
        except CheckpointError as err:
            decision = str(err)
    decision = distributed.from_rank_0(decision)
    if isinstance(decision, str):
        raise CheckpointError(decision)
    args.run_dir, resuming = Path(decision[0]), decision[1]
    if not resuming:
        nothing = "nothing to resume yet: " if args.resume is not None else ""
        say(f"{nothing}starting {args.run_dir}")
        return 1, float("-inf"), None
    data_dir = started_with(args.run_dir).get("data_dir")
    if data_dir is not None and data_location(data_dir) != args.data_dir:  # a URL: as it is
        say(f"warning: {args.run_dir} was started with --data-dir {data_dir}; this run reads"
            f" {args.data_dir}")  # fmt: skip
    last = args.run_dir / "last.pt"
    if not last.exists():  # a rank on another machine, whose --runs-dir is not rank 0's
        raise CheckpointError(
            f"{last} not found here, where rank 0 resumes from it: give every machine one"
            " --runs-dir, on a file system they share"
        )
    start_epoch, best_score, inside = checkpoints.resume(last, model, optimizer, scaler, args)
    if inside:
        say(f"resuming {args.run_dir} after batch {inside.batches} of epoch {inside.epoch}")
    else:
        say(f"resuming {args.run_dir} after epoch {start_epoch - 1}")
    return start_epoch, best_score, inside


def choose(runs_dir: Path, run_name: str | None, resume: str | None) -> tuple[Path, bool]:
    """The run's directory, made now so that no other run takes it, and whether to go on from
    its last.pt. resume: None without --resume, '' for the latest run (or --run-name), else
    the run named."""
    if resume is not None:
        if resume and run_name and resume != run_name:
            raise CheckpointError(
                f"--resume {resume} and --run-name {run_name} name two runs: give one"
            )
        name = resume or run_name or latest(runs_dir)
        if name and (runs_dir / name / "last.pt").exists():
            return runs_dir / name, True
        # Nothing to go on from yet (a first start, or one stopped before its first checkpoint):
        # start it, so that a requeued job can always pass --resume.
        if name and (runs_dir / name).exists():
            if not only_what_a_run_writes(runs_dir / name):
                raise CheckpointError(
                    f"{runs_dir / name} has no last.pt, and holds more than a run stopped"
                    " before its first checkpoint: choose another run name"
                )
            return runs_dir / name, False
    elif run_name and (runs_dir / run_name).exists():
        raise CheckpointError(
            f"{runs_dir / run_name} holds an earlier run: --resume {run_name} goes on with it,"
            " --run-name NAME starts a new one beside it"
        )
    else:
        name = run_name
    while True:
        run_dir = runs_dir / (name or next_name(runs_dir))
        try:
            run_dir.mkdir(parents=True)
            return run_dir, False
        except FileExistsError:  # another run took it a moment ago
            if name:
                raise CheckpointError(
                    f"{run_dir} was taken by another run a moment ago: choose another run name"
                ) from None


def only_what_a_run_writes(run_dir: Path) -> bool:
    """Whether run_dir holds no more than a run that stopped before its first checkpoint
    writes (settings.json, TensorBoard events, a tracker's files, a metrics.csv of at most its
    first epoch), which a run that starts over may replace: not a run with checkpoints, nor
    something else."""
    if not run_dir.is_dir():
        return False
    for path in run_dir.iterdir():
        if path.name == "metrics.csv":
            if len(path.read_text(encoding="utf-8", errors="replace").splitlines()) > 2:
                return False
        elif not (
            path.name in ("settings.json", "tracker.json")
            or (path.name == "wandb" and path.is_dir())  # --tracker wandb's files of its run
            or path.name.startswith(("events.out.tfevents.", ".last.pt.", ".best.pt."))
        ):
            return False
    return True


def latest(runs_dir: Path) -> str | None:
    """The run that wrote its settings or its last.pt last, or None."""
    written = [path for name in ("last.pt", "settings.json") for path in runs_dir.glob(f"*/{name}")]
    if not written:
        return None
    return max(written, key=lambda path: path.stat().st_mtime_ns).parent.name


def next_name(runs_dir: Path) -> str:
    """run-1, run-2, ...: one more than the highest there."""
    numbers = [0] + [
        int(match[1])
        for path in runs_dir.glob("run-*")
        if (match := re.fullmatch(r"run-(\d+)", path.name))
    ]
    return f"run-{max(numbers) + 1}"


def save_settings(run_dir: Path, settings: dict) -> None:
    """settings.json: the flags of each start of the run, the first and each --resume."""
    path = run_dir / "settings.json"
    try:
        starts = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        starts = []
    if not isinstance(starts, list):
        starts = []
    starts.append(settings)
    text = json.dumps(starts, indent=1, default=str)  # paths and the device as text
    atomic_write_text(path, text + "\n")


def started_with(run_dir: Path) -> dict:
    """The flags of the run's first start, or {} where settings.json says nothing."""
    try:
        starts = json.loads((run_dir / "settings.json").read_text(encoding="utf-8"))
        return starts[0] if isinstance(starts, list) and isinstance(starts[0], dict) else {}
    except (OSError, ValueError, IndexError):
        return {}
