"""last.pt and best.pt: what they hold, how they are written, and how a run resumes from one.

A run's state is a dict of named objects, each with state_dict() and load_state_dict(), as
torch.distributed.checkpoint's Stateful protocol has them: the model, the optimizer, the
gradient scaler, and whatever you add in pytorch_script.py (a scheduler, an EMA model, an
early-stopping counter, an object of your own). A checkpoint holds each one's state_dict()
under its name, beside what the run keeps (META): tensors and plain types only, so that
torch.load(path, weights_only=True) loads it:

    checkpoint = torch.load("runs/run-1/best.pt", weights_only=True)
    model = build_model(tuple(checkpoint["input_shape"]), checkpoint["num_classes"])
    model.load_state_dict(checkpoint["model"])
"""

import dataclasses
import io
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Protocol

import torch
import torch.distributed as dist
from torch import nn

from plumbing.cli import Settings
from plumbing.data import index_of
from plumbing.distributed import once, rank, unwrapped, world_size
from plumbing.errors import CheckpointError, SetupError, load_error, write_error
from plumbing.facts import Facts
from plumbing.files import atomic_write
from plumbing.seeding import rng_states, set_rng_states

META = (
    "state",  # the names of the state's entries, each saved under its name
    "classes",  # the class of each entry, to say so when another one would load it
    "model_class",  # the model's class (that of the entry "model")
    "grads",  # gradients not yet stepped (accumulated over batches), of each model; or None
    "epoch",  # the last complete epoch
    "best_score",  # the best score so far, which chose best.pt
    "rng",  # the random generators of the training process
    "input_shape",
    "num_classes",
    "settings",  # what a run resumed from it must share with it: --batch-size, the data
    "inside",  # where training stopped inside the next epoch (a signal), or None
    "class_names",  # classes.json's names of the classes (label 0 first), or None
)
# What checkpoints of template 0.4 held, besides these: the model, optimizer and scaler.
BEFORE_0_5 = ("model", "optimizer", "scaler")
REQUIRED = ("model_class", "epoch", "best_score", "rng", "input_shape", "num_classes")


class Stateful(Protocol):
    def state_dict(self) -> dict: ...

    def load_state_dict(self, state_dict: dict) -> object: ...


State = Mapping[str, Stateful]


def check_state(state: State) -> None:
    """Every entry must be saved and loaded: a state_dict() and a load_state_dict(), and a
    name of its own."""
    for name, entry in state.items():
        if name in META or not isinstance(name, str):
            raise SetupError(
                f"state[{name!r}]: that name is the checkpoint's own ({', '.join(META)}):"
                " give the entry another in pytorch_script.py"
            )
        if not (callable(getattr(entry, "state_dict", None))
                and callable(getattr(entry, "load_state_dict", None))):  # fmt: skip
            raise SetupError(
                f"state[{name!r}] is a {type(entry).__name__}, which has no state_dict() and"
                " load_state_dict() to save it with: give it both (README.md, 'What to change"
                " where'), or leave it out of the state"
            )


@dataclasses.dataclass
class Position:
    """Where one rank's training stopped inside an epoch, and the sums of the epoch so far."""

    epoch: int
    batches: int  # trained in this epoch
    loss_sum: torch.Tensor  # the loss times the batch size, summed on the device
    num_samples: int
    rng: dict | None = None  # this rank's random generators there (rng_states)
    loader: dict | None = None  # the place of LitData's loader (streamed data), else None
    lr: float | None = None  # the learning rate at the epoch's start (metrics.csv's)

    def go_on(self, training_generator: torch.utils.data.DataLoader) -> None:
        """Skip the batches trained, without reading them, and draw on as the run would have."""
        if self.loader is not None:
            training_generator.load_state_dict(self.loader)
        else:
            training_generator.sampler.set_epoch(
                self.epoch, start=self.batches * training_generator.batch_size
            )
        set_rng_states(self.rng)


def contents(state: State, settings: Settings, facts: Facts, epoch: int, best_score: float) -> dict:
    """A checkpoint of state after epoch `epoch`."""
    entries = {name: unwrapped(entry) for name, entry in state.items()}
    checkpoint = {name: entry.state_dict() for name, entry in entries.items()}
    for name, entry in entries.items():
        if not isinstance(entry, (nn.Module, torch.optim.Optimizer, torch.amp.GradScaler)):
            loadable(name, checkpoint[name])
    classes = {name: type(entry).__qualname__ for name, entry in entries.items()}
    return checkpoint | {
        "state": list(entries),
        "classes": classes,
        "model_class": classes.get("model"),
        "grads": grads(entries),
        "epoch": epoch,
        "best_score": best_score,
        "rng": rng_states(),
        "input_shape": list(facts.input_shape),
        "num_classes": facts.num_classes,
        "settings": kept(settings, facts),
        "inside": None,
        "class_names": list(facts.class_names) if facts.class_names else None,
    }


def grads(entries: Mapping[str, Stateful]) -> dict | None:
    """The gradients of each model's parameters that an optimizer has not stepped yet (none
    in the template's loop, which frees them after each step: with gradient accumulation, those
    of the batches since the last step); None if there are none."""
    found = {
        name: {key: p.grad for key, p in entry.named_parameters() if p.grad is not None}
        for name, entry in entries.items()
        if isinstance(entry, nn.Module)
    }
    found = {name: tensors for name, tensors in found.items() if tensors}
    return found or None


def loadable(name: str, state_dict: object) -> None:
    """An entry's state_dict() must load with weights_only=True, as last.pt does: tensors and
    plain types (a NumPy number, a deque would make every checkpoint refuse to load)."""
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    buffer.seek(0)
    try:
        torch.load(buffer, weights_only=True)
    except Exception as err:
        raise SetupError(
            f"state[{name!r}].state_dict() holds what torch.load(..., weights_only=True) refuses"
            f" ({load_error(err)}): make it tensors and plain types (float(x), x.tolist())"
        ) from None


def kept(settings: Settings, facts: Facts) -> dict:
    """What a run resumed from the checkpoint must share with the run that saved it."""
    # The order of the samples too: a run resumed inside an epoch skips the ones trained.
    order = {"seed": settings.seed, "shuffle": settings.shuffle}
    return {"batch_size": settings.batch_size, "data": facts.data_digest, "order": order}


def save_inside_epoch(
    state: State,
    settings: Settings,
    facts: Facts,
    where: Position,
    best_score: float,
    training_generator: torch.utils.data.DataLoader,
) -> None:
    """Save last.pt where training stopped inside an epoch (on every rank: rank 0 writes what
    each rank has there). best.pt stays: no epoch ended."""
    here = {"loss_sum": where.loss_sum.cpu(), "num_samples": where.num_samples}
    here["rng"] = rng_states()
    # LitData's loader keeps its own place (plain numbers and names); a DataLoader's is batches
    here["loader"] = getattr(training_generator, "state_dict", lambda: None)()
    ranks = [here]
    if dist.is_initialized():  # as bytes: all_gather_object would unpickle tensors unsafely
        ranks = [None] * world_size()
        buffer = io.BytesIO()
        torch.save(here, buffer)
        dist.all_gather_object(ranks, buffer.getvalue())
        ranks = [torch.load(io.BytesIO(state), weights_only=True) for state in ranks]

    def write() -> None:
        checkpoint = contents(state, settings, facts, where.epoch - 1, best_score)
        checkpoint["inside"] = {"epoch": where.epoch, "batches": where.batches, "ranks": ranks}
        checkpoint["inside"]["lr"] = where.lr
        save(checkpoint, facts.run_dir / "last.pt")

    # Every rank waits for the save: the first to exit could end the others' job (srun).
    if facts.run_dir is not None:
        once(write)


def save(checkpoint: dict, path: Path) -> None:
    """Written beside path and renamed over it: a crash, a full disk or Ctrl-C at any moment
    leaves the previous checkpoint or the new one, whole."""
    try:
        atomic_write(path, lambda f: torch.save(checkpoint, f))
    except (OSError, RuntimeError) as err:  # a full disk, a quota: torch says little
        raise CheckpointError(
            write_error(path, err, "pass another --runs-dir, then --resume")
        ) from None


def load(path: Path) -> dict:
    """A checkpoint written by save, on the CPU (load_state_dict puts each entry where its
    object is); tensors and plain types only (weights_only)."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path} not found") from None
    except Exception as err:
        raise CheckpointError(
            f"{path} is not a checkpoint this script can load ({load_error(err)}): copy best.pt"
            f" over it to resume from there, or start a new run with another --run-name"
        ) from None
    missing = [key for key in REQUIRED if not isinstance(checkpoint, dict) or key not in checkpoint]
    if missing:
        raise CheckpointError(
            f"{path} is not a checkpoint of pytorch_script.py (it lacks {', '.join(missing)}):"
            " start a new run (--run-name)"
        )
    return checkpoint


def restore(
    path: Path, state: State, settings: Settings, facts: Facts
) -> tuple[int, float, Position | None]:
    """Load path into every entry of state and the random generators; returns the epoch to
    start from, the best score so far, and this rank's Position when the run stopped inside
    that epoch. Refused in one line, with nothing loaded, when it belongs to other data,
    another --batch-size or other entries than state's."""
    checkpoint = load(path)
    new = "start a new run (--run-name)"
    saved_for = (tuple(checkpoint["input_shape"]), checkpoint["num_classes"])
    if saved_for != (facts.input_shape, facts.num_classes):
        raise CheckpointError(
            f"{path} was saved for samples of shape {saved_for[0]} in {saved_for[1]} classes;"
            f" the data has shape {facts.input_shape} in {facts.num_classes}: {new}"
        )
    saved_with = checkpoint.get("settings") or kept(settings, facts)  # 0.3: not known
    if saved_with["batch_size"] != settings.batch_size:
        raise CheckpointError(
            f"{path} was saved with --batch-size {saved_with['batch_size']}, this run has"
            f" {settings.batch_size}: resume with --batch-size {saved_with['batch_size']}, or"
            f" {new}"
        )
    if saved_with["data"] != facts.data_digest:
        raise CheckpointError(
            f"{path} was saved on other data: {index_of(settings.data_dir)} or labels.json"
            f" changed since; put them back, or {new}"
        )
    entries = {name: unwrapped(entry) for name, entry in state.items()}
    check_entries(path, checkpoint, entries)
    try:
        for name, entry in entries.items():
            entry.load_state_dict(checkpoint[name])
    except (RuntimeError, ValueError, KeyError, TypeError) as err:
        reason = str(err).strip().splitlines()[-1].strip()[:200]
        raise CheckpointError(
            f"{path}: its {name!r} does not load into this run's {type(entry).__qualname__}"
            f" ({reason}): {new}"
        ) from None
    for name, tensors in (checkpoint.get("grads") or {}).items():
        for key, parameter in entries[name].named_parameters():
            grad = tensors.get(key)
            parameter.grad = None if grad is None else grad.to(parameter.device)
    if "lr" in settings.given:  # this command's --lr, over the one the optimizer saved
        for entry in entries.values():
            for group in getattr(entry, "param_groups", []):
                group["lr"] = settings.lr
    set_rng_states(checkpoint["rng"])
    inside = position(path, checkpoint, settings, facts)
    return checkpoint["epoch"] + 1, checkpoint["best_score"], inside


def check_entries(path: Path, checkpoint: dict, entries: Mapping[str, Stateful]) -> None:
    """The entries of the checkpoint are the state's, of the same classes, and each model's
    parameters have the same names and shapes."""
    saved, classes = saved_entries(checkpoint)
    if set(saved) != set(entries):
        added = [name for name in entries if name not in saved]
        gone = [name for name in saved if name not in entries]
        differ = "; ".join(
            f"{what} {', '.join(map(repr, names))}"
            for what, names in (("this run adds", added), ("it has no", gone))
            if names
        )
        raise CheckpointError(
            f"{path} holds the entries {', '.join(saved)}, this run's state"
            f" {', '.join(entries)} ({differ}): resume with the state it"
            " was saved with, or start a new run (--run-name)"
        )
    for name, entry in entries.items():
        if classes.get(name, type(entry).__qualname__) != type(entry).__qualname__:
            what = "the model" if name == "model" else f"{name!r} of class"
            raise CheckpointError(
                f"{path} was written by {what} {classes[name]}, this run builds"
                f" {type(entry).__qualname__}: start a new run (--run-name)"
            )
        if isinstance(entry, nn.Module):
            mismatch = differing_keys(entry.state_dict(), checkpoint[name])
            if mismatch:
                of = "" if name == "model" else f" {name!r}"
                raise CheckpointError(
                    f"{path} does not fit this{of} {type(entry).__qualname__} ({mismatch}):"
                    " start a new run (--run-name)"
                )


def saved_entries(checkpoint: dict) -> tuple[Sequence[str], dict[str, str]]:
    """The names of a checkpoint's state entries, and the class of each (one of template 0.4
    held the model, optimizer and scaler, and named the model's class alone)."""
    saved = checkpoint.get("state", BEFORE_0_5)
    return saved, checkpoint.get("classes", {"model": checkpoint["model_class"]})


def position(path: Path, checkpoint: dict, settings: Settings, facts: Facts) -> Position | None:
    """This rank's Position in a checkpoint saved inside an epoch; None for one saved at its end."""
    inside = checkpoint.get("inside")
    if not inside:
        return None
    ours = kept(settings, facts)["order"]
    order = checkpoint["settings"].get("order", ours)
    if order != ours:
        flags = f"--seed {order['seed']} --{'' if order['shuffle'] else 'no-'}shuffle"
        raise CheckpointError(
            f"{path} was saved inside epoch {inside['epoch']} of a run with {flags}, whose"
            f" order of samples it goes on in: resume with {flags}, or start a new run"
            " (--run-name)"
        )
    if len(inside["ranks"]) != world_size():
        raise CheckpointError(
            f"{path} was saved inside epoch {inside['epoch']} by {len(inside['ranks'])}"
            f" processes, this run has {world_size()}: resume with as many (torchrun"
            " --nproc_per_node), or start a new run (--run-name)"
        )
    mine = inside["ranks"][rank()]
    return Position(
        inside["epoch"], inside["batches"], mine["loss_sum"], mine["num_samples"], mine["rng"],
        mine.get("loader"), inside.get("lr"),
    )  # fmt: skip


def for_inference(
    path: Path, build: Callable[[tuple[int, ...], int], nn.Module], weights: str = "auto"
) -> tuple[nn.Module, dict, str]:
    """The model a checkpoint holds, for evaluate.py, predict.py and export_model.py: built by
    build (my_classes.build_model) for its input shape and classes, given the weights of the
    state's entry `weights`, in eval mode, on the CPU; with the checkpoint and that entry's
    name. 'auto': 'ema' where the state has one, as with the README's EMA row (validation,
    and so best.pt, used those weights), else 'model'. One line when it is another model."""
    checkpoint = load(path)
    saved, classes = saved_entries(checkpoint)
    name = ("ema" if "ema" in saved else "model") if weights == "auto" else weights
    if name not in saved:
        raise CheckpointError(
            f"{path} has no entry {name!r} (its state: {', '.join(saved)}): pass --weights model"
        )
    state = checkpoint[name]
    model_class = classes.get(name)
    if model_class == "AveragedModel":  # its model, under "module.", and a count of its own
        state = {k.removeprefix("module."): v for k, v in state.items() if k != "n_averaged"}
        model_class = classes.get("model")
    model = build(tuple(checkpoint["input_shape"]), checkpoint["num_classes"])
    built = type(model).__qualname__
    if model_class is not None and model_class != built:
        raise CheckpointError(
            f"{path} holds a {model_class}, and build_model builds a {built}: use the"
            " my_classes.py that trained it, or train this model"
        )
    mismatch = differing_keys(model.state_dict(), state)
    if mismatch:
        raise CheckpointError(
            f"{path} does not fit the {built} that build_model builds for"
            f" {tuple(checkpoint['input_shape'])} in {checkpoint['num_classes']} classes"
            f" ({mismatch}): use the my_classes.py that trained it, or train this model"
        )
    model.load_state_dict(state)
    return model.eval(), checkpoint, name


def differing_keys(expected: dict, saved: dict, show: int = 3) -> str:
    """The parameters that differ in name or shape, the first few and their count; '' if none."""
    differ = sorted(
        set(expected) ^ set(saved)
        | {
            k
            for k in set(expected) & set(saved)
            if getattr(expected[k], "shape", None) != getattr(saved[k], "shape", None)
        }
    )
    if not differ:
        return ""
    more = ", ..." if len(differ) > show else ""
    return f"{len(differ)} parameters differ in name or shape: {', '.join(differ[:show])}{more}"
