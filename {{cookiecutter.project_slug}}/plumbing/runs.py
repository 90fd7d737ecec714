"""One directory per run, runs/<name>/: its metrics.csv, TensorBoard events, last.pt, best.pt
and settings.json together, so that no run overwrites or appends to another's; and a resumed
run's settings, as it was started."""

import argparse
import dataclasses
import json
import re
from pathlib import Path

from plumbing import cli, distributed
from plumbing.errors import CheckpointError, SetupError
from plumbing.files import atomic_write_text

# Flags that say where and how this start runs, not what the run trains: --resume takes them
# from its own command line, never from the run's settings.json.
THIS_START = ("resume", "run_name", "runs_dir", "device", "dry_run")


def continued(settings: cli.Settings) -> cli.Settings:
    """settings, for --resume of a run that has settings.json: the flags of its latest start,
    with those this command line gives over them (a requeued job that repeats its flags runs
    as before), and given: those that differ from the run's. --resume without a name is
    resolved to the run it goes on with."""
    if settings.resume is None:
        return settings
    name = settings.resume or settings.run_name or latest(settings.runs_dir)
    if not name:
        return settings
    settings = dataclasses.replace(settings, resume=name)
    run = run_flags(settings.runs_dir / name, settings.given)
    # A flag given again with the value the run has is no change (a requeued job repeats its
    # flags): --lr given so does not reset a scheduled learning rate.
    given = {flag for flag in settings.given if run.get(flag, ...) != getattr(settings, flag)}
    kept = {flag: value for flag, value in run.items() if flag not in settings.given}
    return dataclasses.replace(settings, **kept, given=frozenset(given))


def started_as(run_dir: Path) -> cli.Settings:
    """The Settings of a run's latest start, from its settings.json (the defaults for what it
    does not say), as evaluate.py and predict.py read the run's data."""
    return dataclasses.replace(cli.training_settings([], ""), **run_flags(run_dir))


def run_flags(run_dir: Path, given: frozenset[str] = frozenset()) -> dict[str, object]:
    """The flags of the run's latest start, as the parser takes them, but those that say where
    and how a start runs (THIS_START); one that no longer parses is one line, unless given
    (this command line gives it again)."""
    path = run_dir / "settings.json"
    stored = latest_start(run_dir)  # {} for a run whose first start wrote none yet
    run = {}
    for action in cli.training_parser("")._actions:
        flag, value = action.dest, stored.get(action.dest)
        if flag not in stored or flag in THIS_START:
            continue
        if isinstance(value, str) and callable(action.type):
            try:
                value = action.type(value)
            except (argparse.ArgumentTypeError, TypeError, ValueError) as err:
                if flag in given:  # given again: this command's value stands
                    continue
                raise SetupError(
                    f"{path}: the run's --{flag.replace('_', '-')} {value!r} no longer parses"
                    f" ({err}): correct it there, or give the flag on the command line"
                ) from None
        run[flag] = value
    return run


def finished(runs_dir: Path, name: str | None, checkpoint: str = "best") -> tuple[Path, Path]:
    """A run's directory (name's, or the latest run's) and its checkpoint (best.pt, last.pt),
    for evaluate.py, predict.py and export_model.py; one line when there is none."""
    name = name or latest(runs_dir)
    if name is None:
        raise CheckpointError(f"no run in {runs_dir}: train one first (python pytorch_script.py)")
    path = runs_dir / name / f"{checkpoint}.pt"
    if not path.is_file():
        there = sorted(p.name for p in runs_dir.glob("*/") if (p / "settings.json").exists())
        known = f"; runs there: {', '.join(there[:8])}" if there else ""
        raise CheckpointError(f"{path} not found: name a run that finished an epoch{known}")
    return runs_dir / name, path


def open_dir(settings: cli.Settings) -> tuple[Path | None, bool]:
    """The run's directory (None for --dry-run, which writes nothing), made now by rank 0 so
    that no other run takes it, and whether to go on from its last.pt; every rank gets rank
    0's."""
    if settings.dry_run:
        return None, False
    return distributed.once(choose, settings.runs_dir, settings.run_name, settings.resume)


def choose(runs_dir: Path, run_name: str | None, resume: str | None) -> tuple[Path, bool]:
    """The run's directory, made now, and whether to go on from its last.pt. resume: None
    without --resume, '' for the latest run (or --run-name), else the run named."""
    if resume is not None:
        if resume and run_name and resume != run_name:
            raise CheckpointError(
                f"--resume {resume} and --run-name {run_name} name two runs: give one"
            )
        name = resume or run_name or latest(runs_dir)
        if name and (runs_dir / name).exists() and not (runs_dir / name).is_dir():
            raise CheckpointError(f"{runs_dir / name} is a file, not a run: choose another name")
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
    elif run_name and (runs_dir / run_name).is_dir():
        raise CheckpointError(
            f"{runs_dir / run_name} holds an earlier run: --resume {run_name} goes on with it,"
            " --run-name NAME starts a new one beside it"
        )
    elif run_name and (runs_dir / run_name).exists():
        raise CheckpointError(
            f"{runs_dir / run_name} is a file, not a run: choose another --run-name"
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


def starts(path: Path) -> list[dict]:
    """settings.json's list: the flags of each start of the run, the first and each --resume."""
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        entries = err
    if not (isinstance(entries, list) and all(isinstance(entry, dict) for entry in entries)):
        reason = f" ({entries})" if isinstance(entries, Exception) else ""
        raise CheckpointError(
            f"{path} is not a list of the run's starts{reason}: restore it (it holds the run's"
            " flags, which --resume goes on with), or move it away and give every flag again"
        )
    return entries


def save_settings(run_dir: Path, entry: dict) -> None:
    """Append this start's entry to settings.json (a list of them: the first start's, and each
    --resume's)."""
    path = run_dir / "settings.json"
    earlier = starts(path) if path.exists() else []
    text = json.dumps([*earlier, entry], indent=1, default=str)  # paths as text
    atomic_write_text(path, text + "\n")


def latest_start(run_dir: Path) -> dict:
    """The flags of the run's latest start, or {} where there is no settings.json."""
    path = run_dir / "settings.json"
    return ((starts(path) if path.exists() else []) or [{}])[-1]
