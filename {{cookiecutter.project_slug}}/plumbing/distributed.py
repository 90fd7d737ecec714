"""The device, and the processes torchrun starts: one per GPU (or per --nproc_per_node), each
told its rank in environment variables. Without torchrun, one process of rank 0."""

import argparse
import os
from collections.abc import Callable, Sequence
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
    """This process's rank: 0 without torchrun."""
    return int(os.environ.get("RANK", 0))


def world_size() -> int:
    """How many processes train together: 1 without torchrun."""
    return int(os.environ.get("WORLD_SIZE", 1))


def local_world_size() -> int:
    """How many of them run on this machine (they share its CPUs)."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", 1))


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


def autocast(device: torch.device, enabled: bool) -> torch.autocast:
    """--amp's mixed precision on device: float16 on CUDA, bfloat16 elsewhere (the CPU has no
    fast float16); not enabled, nothing."""
    dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    return torch.autocast(device.type, dtype=dtype, enabled=enabled)


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


def unwrapped(module: nn.Module) -> nn.Module:
    """The user's model, inside DistributedDataParallel or not: what a checkpoint holds."""
    return module.module if isinstance(module, nn.parallel.DistributedDataParallel) else module


def all_sum(values: Sequence[float | torch.Tensor], device: torch.device) -> list[float]:
    """Each value (a number, or a tensor of one number on the device) summed over all ranks, as
    numbers: one wait for the device, however many values."""
    summed = torch.stack([torch.as_tensor(v, device=device).double() for v in values])
    if dist.is_initialized():
        dist.all_reduce(summed)
    return summed.tolist()


def sum_over_ranks(tensor: torch.Tensor) -> torch.Tensor:
    """tensor, summed over all ranks in place (as it is without torchrun)."""
    if dist.is_initialized():
        dist.all_reduce(tensor)
    return tensor


def once(function: Callable[..., T], *args: object) -> T:
    """function(*args) on rank 0 only, and its result, or its error, on every rank: what reads
    the data's index, chooses the run's directory or reaches a server is done once per job, and
    rank 0's decision is every rank's."""
    if not dist.is_initialized():
        return function(*args)
    result = None
    if rank() == 0:
        try:
            result = function(*args)
        except BaseException as err:  # raised on every rank, below (Ctrl-C, a time-out too)
            result = err
    box = [result]
    dist.broadcast_object_list(box, src=0)
    if isinstance(box[0], BaseException):
        raise on_every_rank(box[0])
    return box[0]


def ranks_note() -> str:
    return f" on each of {world_size()} ranks" if world_size() > 1 else ""
