"""Random numbers that repeat: the seeds of the training process and of each DataLoader worker,
from --seed, the epoch and the rank, and the state of every generator, saved and restored."""

import random

import numpy as np
import torch

from plumbing.distributed import rank


def seed_everything(seed: int) -> None:
    """Seed torch (the CPU and every GPU), NumPy and random in this process."""
    seed_reads(seed)
    torch.manual_seed(seed)  # every GPU's generator as well


def seed_reads(seed: int) -> None:
    """Seed what reading a sample may draw from (random_augmentation, on the CPU): torch's CPU
    generator, NumPy and random; in about 10 µs, where torch.manual_seed takes 130 µs until
    CUDA starts (it queues a seeding of every GPU for then): per sample, that adds up."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.default_generator.manual_seed(seed)


def epoch_seed(seed: int, epoch: int, part: int) -> int:
    """The seed of this rank's main process for an epoch (part 0), or of the DataLoader worker
    that reads a batch (part 1 + the batch's first sample). Ranks and batches draw apart; runs
    repeat."""
    key = [seed % 2**63, epoch, rank(), part]
    return int(np.random.SeedSequence(key).generate_state(1)[0])


def seed_epoch(seed: int, epoch: int) -> None:
    """Seed this process for an epoch: what it draws (random augmentation with --num-workers 0,
    dropout) is then a function of the seed, the epoch and the rank, resumed or not."""
    seed_everything(epoch_seed(seed, epoch, part=0))


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
    np.random.set_state((kind, keys.cpu().numpy(), position, has_gauss, gauss))
    torch.set_rng_state(states["torch"].cpu())
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([state.cpu() for state in states["cuda"]])
