"""last.pt and best.pt: what they hold, how they are written, and how a run resumes from one.

They hold tensors and plain types only, so that torch.load(path, weights_only=True) loads them:

    checkpoint = torch.load("runs/run-1/best.pt", weights_only=True)
    model = build_model(tuple(checkpoint["input_shape"]), checkpoint["num_classes"])
    model.load_state_dict(checkpoint["model"])
"""

import argparse
import random
from pathlib import Path

import numpy as np
import torch
from torch import nn

from plumbing.distributed import unwrapped
from plumbing.errors import CheckpointError, load_error, write_error
from plumbing.files import atomic_write

KEYS = (
    "model",  # the model's state_dict
    "model_class",  # the name of the model's class, to say so when another model would load it
    "optimizer",
    "scaler",  # the gradient scaler of --amp on CUDA
    "epoch",  # the last complete epoch
    "best_score",  # the best score so far, which chose best.pt
    "rng",  # the random generators of the training process
    "input_shape",
    "num_classes",
)


def save_epoch(
    args: argparse.Namespace,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    epoch: int,
    score: float,
    best_score: float,
) -> float:
    """Save the run's last.pt, and best.pt too when score beats best_score; returns the new
    best score."""
    model = unwrapped(model)
    checkpoint = {
        "model": model.state_dict(),
        "model_class": type(model).__qualname__,
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict(),
        "epoch": epoch,
        "best_score": max(score, best_score),
        "rng": rng_states(),
        "input_shape": list(args.input_shape),
        "num_classes": args.num_classes,
    }
    save(checkpoint, args.run_dir / "last.pt")
    if score > best_score:
        save(checkpoint, args.run_dir / "best.pt")
    return max(score, best_score)


def save(checkpoint: dict, path: Path) -> None:
    """Written beside path and renamed over it: a crash, a full disk or Ctrl-C at any moment
    leaves the previous checkpoint or the new one, whole."""
    try:
        atomic_write(path, lambda f: torch.save(checkpoint, f))
    except (OSError, RuntimeError) as err:  # a full disk, a quota: torch says little
        raise CheckpointError(
            write_error(path, err, "pass another --runs-dir, then --resume")
        ) from None


def load(path: Path, device: torch.device) -> dict:
    """A checkpoint written by save; tensors and plain types only (weights_only)."""
    try:
        checkpoint = torch.load(path, map_location=device, weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path} not found") from None
    except Exception as err:
        raise CheckpointError(
            f"{path} is not a checkpoint this script can load ({load_error(err)}): copy best.pt"
            f" over it to resume from there, or start a new run with another --run-name"
        ) from None
    missing = [key for key in KEYS if not isinstance(checkpoint, dict) or key not in checkpoint]
    if missing:
        raise CheckpointError(
            f"{path} is not a checkpoint of pytorch_script.py (it lacks {', '.join(missing)}):"
            " start a new run (--run-name)"
        )
    return checkpoint


def resume(
    path: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    input_shape: tuple[int, ...],
    num_classes: int,
    device: torch.device,
) -> tuple[int, float]:
    """Load path into model, optimizer, scaler and the random generators; returns the epoch to
    start from and the best score so far. This run's --lr applies, as every other flag."""
    checkpoint = load(path, device)
    saved_for = (tuple(checkpoint["input_shape"]), checkpoint["num_classes"])
    if saved_for != (input_shape, num_classes):
        raise CheckpointError(
            f"{path} was saved for samples of shape {saved_for[0]} in {saved_for[1]} classes;"
            f" the data has shape {input_shape} in {num_classes}: start a new run (--run-name)"
        )
    if checkpoint["model_class"] != type(model).__qualname__:
        raise CheckpointError(
            f"{path} was written by the model {checkpoint['model_class']}, this run builds"
            f" {type(model).__qualname__}: start a new run (--run-name)"
        )
    mismatch = differing_keys(model.state_dict(), checkpoint["model"])
    if mismatch:
        raise CheckpointError(
            f"{path} does not fit this {type(model).__qualname__} ({mismatch}): start a new run"
            " (--run-name)"
        )
    lrs = [group["lr"] for group in optimizer.param_groups]
    try:
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scaler.load_state_dict(checkpoint["scaler"])
    except (RuntimeError, ValueError, KeyError) as err:
        reason = str(err).strip().splitlines()[-1].strip()[:200]
        raise CheckpointError(
            f"{path} was saved with another optimizer or --amp ({reason}): start a new run"
            " (--run-name)"
        ) from None
    for group, lr in zip(optimizer.param_groups, lrs, strict=True):
        group["lr"] = lr
    set_rng_states(checkpoint["rng"])
    return checkpoint["epoch"] + 1, checkpoint["best_score"]


def differing_keys(expected: dict, saved: dict, show: int = 3) -> str:
    """The parameters that differ in name or shape, the first few and their count; '' if none."""
    differ = sorted(
        set(expected) ^ set(saved)
        | {k for k in set(expected) & set(saved) if expected[k].shape != saved[k].shape}
    )
    if not differ:
        return ""
    more = ", ..." if len(differ) > show else ""
    return f"{len(differ)} parameters differ in name or shape: {', '.join(differ[:show])}{more}"


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
