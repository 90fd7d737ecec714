"""last.pt and best.pt: what they hold, how they are written, and how a run resumes from one.

They hold tensors and plain types only, so that torch.load(path, weights_only=True) loads them:

    checkpoint = torch.load("runs/run-1/best.pt", weights_only=True)
    model = build_model(tuple(checkpoint["input_shape"]), checkpoint["num_classes"])
    model.load_state_dict(checkpoint["model"])
"""

import argparse
import io
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from plumbing.distributed import from_rank_0, rank, unwrapped
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
    "settings",  # what a run resumed from it must share with it: --batch-size, the data
    "inside",  # where training stopped inside the next epoch (a signal), or None
)
NEW_IN_0_4 = ("settings", "inside")  # what checkpoints of template 0.3 lack, and still load


@dataclass
class Position:
    """Where one rank's training stopped inside an epoch, and the sums of the epoch so far."""

    epoch: int
    batches: int  # trained in this epoch
    loss_sum: torch.Tensor  # the loss times the batch size, summed on the device
    num_samples: int
    rng: dict | None = None  # this rank's random generators there (rng_states)
    loader: dict | None = None  # the place of LitData's loader (streamed data), else None

    def go_on(self, training_generator: torch.utils.data.DataLoader) -> None:
        """Skip the batches trained, without reading them, and draw on as the run would have."""
        if self.loader is not None:
            training_generator.load_state_dict(self.loader)
        else:
            training_generator.sampler.set_epoch(
                self.epoch, start=self.batches * training_generator.batch_size
            )
        set_rng_states(self.rng)


def contents(
    args: argparse.Namespace,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    epoch: int,
    best_score: float,
) -> dict:
    model = unwrapped(model)
    return {
        "model": model.state_dict(),
        "model_class": type(model).__qualname__,
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict(),
        "epoch": epoch,
        "best_score": best_score,
        "rng": rng_states(),
        "input_shape": list(args.input_shape),
        "num_classes": args.num_classes,
        "settings": settings(args),
        "inside": None,
    }


def settings(args: argparse.Namespace) -> dict:
    """What a run resumed from the checkpoint must share with the run that saved it."""
    # The order of the samples too: a run resumed inside an epoch skips the ones trained.
    order = {"seed": args.seed, "shuffle": args.shuffle}
    return {"batch_size": args.batch_size, "data": args.data_digest, "order": order}


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
    checkpoint = contents(args, model, optimizer, scaler, epoch, max(score, best_score))
    save(checkpoint, args.run_dir / "last.pt")
    if score > best_score:
        save(checkpoint, args.run_dir / "best.pt")
    return max(score, best_score)


def save_inside_epoch(
    args: argparse.Namespace,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    position: Position,
    best_score: float,
    training_generator: torch.utils.data.DataLoader,
) -> None:
    """Save last.pt where training stopped inside an epoch (on every rank: rank 0 writes what
    each rank has there). best.pt stays: no epoch ended."""
    getattr(training_generator.dataset, "confirm", lambda: None)()  # as Batches does
    here = {"loss_sum": position.loss_sum.cpu(), "num_samples": position.num_samples}
    here["rng"] = rng_states()
    # LitData's loader keeps its own place (plain numbers and names); a DataLoader's is batches
    here["loader"] = getattr(training_generator, "state_dict", lambda: None)()
    ranks = [here]
    if dist.is_initialized():  # as bytes: all_gather_object would unpickle tensors unsafely
        ranks = [None] * dist.get_world_size()
        buffer = io.BytesIO()
        torch.save(here, buffer)
        dist.all_gather_object(ranks, buffer.getvalue())
        ranks = [torch.load(io.BytesIO(state), weights_only=True) for state in ranks]
    failed = None
    if args.run_dir is not None and rank() == 0:
        checkpoint = contents(args, model, optimizer, scaler, position.epoch - 1, best_score)
        checkpoint["inside"] = {"epoch": position.epoch, "batches": position.batches}
        checkpoint["inside"]["ranks"] = ranks
        try:
            save(checkpoint, args.run_dir / "last.pt")
        except CheckpointError as err:
            failed = str(err)
    # Every rank waits for the save: the first to exit could end the others' job (srun).
    failed = from_rank_0(failed)
    if failed:
        raise CheckpointError(failed)


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
    missing = [
        key
        for key in KEYS
        if key not in NEW_IN_0_4 and (not isinstance(checkpoint, dict) or key not in checkpoint)
    ]
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
    args: argparse.Namespace,
) -> tuple[int, float, Position | None]:
    """Load path into model, optimizer, scaler and the random generators; returns the epoch to
    start from, the best score so far, and this rank's Position when the run stopped inside
    that epoch. This run's --lr applies, as every other flag."""
    checkpoint = load(path, args.device)
    saved_for = (tuple(checkpoint["input_shape"]), checkpoint["num_classes"])
    if saved_for != (args.input_shape, args.num_classes):
        raise CheckpointError(
            f"{path} was saved for samples of shape {saved_for[0]} in {saved_for[1]} classes;"
            f" the data has shape {args.input_shape} in {args.num_classes}: start a new run"
            " (--run-name)"
        )
    saved_with = checkpoint.get("settings") or settings(args)  # older checkpoints: not known
    if saved_with["batch_size"] != args.batch_size:
        raise CheckpointError(
            f"{path} was saved with --batch-size {saved_with['batch_size']}, this run has"
            f" {args.batch_size}: resume with --batch-size {saved_with['batch_size']}, or start"
            " a new run (--run-name)"
        )
    if saved_with["data"] != args.data_digest:
        raise CheckpointError(
            f"{path} was saved on other data: {index_of(args.data_dir)} or labels.json"
            " changed since; put them back, or start a new run (--run-name)"
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
    return checkpoint["epoch"] + 1, checkpoint["best_score"], position(path, checkpoint, args)


def position(path: Path, checkpoint: dict, args: argparse.Namespace) -> Position | None:
    """This rank's Position in a checkpoint saved inside an epoch; None for one saved at its end."""
    inside = checkpoint.get("inside")
    if not inside:
        return None
    order = checkpoint["settings"].get("order", settings(args)["order"])
    if order != settings(args)["order"]:
        flags = f"--seed {order['seed']} --{'' if order['shuffle'] else 'no-'}shuffle"
        raise CheckpointError(
            f"{path} was saved inside epoch {inside['epoch']} of a run with {flags}, whose"
            f" order of samples it goes on in: resume with {flags}, or start a new run"
            " (--run-name)"
        )
    world_size = dist.get_world_size() if dist.is_initialized() else 1
    if len(inside["ranks"]) != world_size:
        raise CheckpointError(
            f"{path} was saved inside epoch {inside['epoch']} by {len(inside['ranks'])}"
            f" processes, this run has {world_size}: resume with as many (torchrun"
            " --nproc_per_node), or start a new run (--run-name)"
        )
    mine = inside["ranks"][rank()]
    return Position(
        inside["epoch"], inside["batches"], mine["loss_sum"], mine["num_samples"], mine["rng"],
        mine.get("loader"),
    )  # fmt: skip


def index_of(data_dir: Path | str) -> str:
    """data_dir's partition.json; a stream's is in URL/index (plumbing/stream.py)."""
    if isinstance(data_dir, Path) and not (data_dir / "index").is_dir():
        return str(data_dir / "partition.json")
    return f"{data_dir}/index: its partition.json"


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
