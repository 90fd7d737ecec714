"""The device, and the processes torchrun starts: one per GPU (or per --nproc_per_node), each
told its rank in environment variables. Without torchrun, one process of rank 0."""

import argparse
import os
from collections.abc import Callable
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import nn

from plumbing.errors import on_every_rank

T = TypeVar("T")


def get_device(name: str) -> torch.device:
    """'auto': the accelerator PyTorch finds (CUDA, MPS, ...), else the CPU; or the one named."""
    accelerator = (
        torch.accelerator.current_accelerator() if torch.accelerator.is_available() else None
    )
    if name == "auto":
        return accelerator or torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise argparse.ArgumentTypeError(
            f"{name!r} is not a device: try auto, cpu, cuda, mps"
        ) from None
    if device.type != "cpu" and (accelerator is None or accelerator.type != device.type):
        raise argparse.ArgumentTypeError(
            f"{name!r}: torch {torch.__version__} finds no {device.type} device; try auto or cpu"
        )
    return device


def rank() -> int:
    return int(os.environ.get("RANK", 0))


def say(text: str) -> None:
    """print, on rank 0 only: one voice, not one per rank."""
    if rank() == 0:
        print(text)


def setup(device: torch.device) -> torch.device:
    """Join torchrun's other processes, if started by it; returns this process's device."""
    if "WORLD_SIZE" in os.environ:
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device


def barrier() -> None:
    """Wait for every rank here (nothing to wait for without torchrun)."""
    if dist.is_initialized():
        dist.barrier()


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def parallel(model: nn.Module) -> nn.Module:
    """Under torchrun, gradients are averaged over the ranks after each backward pass."""
    return nn.parallel.DistributedDataParallel(model) if dist.is_initialized() else model


def unwrapped(model: nn.Module) -> nn.Module:
    """The user's model, inside DistributedDataParallel or not: what a checkpoint holds."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def all_sum(values: list[float], device: torch.device) -> list[float]:
    """Each value summed over all ranks; the values as they are without torchrun."""
    if not dist.is_initialized():
        return values
    summed = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(summed)
    return summed.tolist()


def from_rank_0(value: object) -> object:
    """Rank 0's value on every rank (what rank 0 decided: a run's name, say)."""
    if not dist.is_initialized():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def once(function: Callable[..., T], *args: object) -> T:
    """function(*args) on rank 0 only, and its result, or its error, on every rank: work that
    reads the data's index is done once per job, not once per rank."""
    if not dist.is_initialized():
        return function(*args)
    result = None
    if rank() == 0:
        try:
            result = function(*args)
        except BaseException as err:  # raised on every rank, below (Ctrl-C, a time-out too)
            result = err
    result = from_rank_0(result)
    if isinstance(result, BaseException):
        raise on_every_rank(result)
    return result


def ranks_note() -> str:
    ranks = dist.get_world_size() if dist.is_initialized() else 1
    return f" on each of {ranks} ranks" if ranks > 1 else ""


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", 1))


def share(sampler: torch.utils.data.DistributedSampler) -> int:
    """How many samples are this rank's own, without the repeats that pad its share."""
    return len(range(sampler.rank, len(sampler.dataset), sampler.num_replicas))
