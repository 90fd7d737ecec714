"""What a run finds out as it starts, beside the Settings of its command line: the device, the
shape of a sample, the number of classes, the digest of the data's index; and, once chosen, its
directory."""

import dataclasses
from pathlib import Path

import torch

from plumbing import distributed, loader
from plumbing.cli import Settings
from plumbing.data import class_names, digest, num_classes


@dataclasses.dataclass(frozen=True)
class Facts:
    device: torch.device
    input_shape: tuple[int, ...]  # of one sample
    num_classes: int
    data_digest: str  # of partition.json and labels.json: which samples, and their labels
    run_dir: Path | None = None  # runs/<name>; None for --dry-run, which writes nothing
    class_names: tuple[str, ...] | None = None  # classes.json's, if the data has one

    def as_dict(self) -> dict[str, object]:
        """As settings.json and a tracker have them (the device and paths as text)."""
        return {
            "input_shape": list(self.input_shape),
            "num_classes": self.num_classes,
            "device": str(self.device),
            "data_digest": self.data_digest,
        }


def find(
    settings: Settings,
    device: torch.device,
    labels: dict,
    training_generator: torch.utils.data.DataLoader,
) -> Facts:
    """The facts of the data that training_generator reads and labels label: the shape of its
    first sample (read within --loader-timeout), the classes (--num-classes, or those
    classes.json names, or the largest label + 1) and their names, the digest of its index
    (under torchrun, found by rank 0)."""
    loader.check_batch_fits(training_generator, settings.data_dir)
    dataset = training_generator.dataset
    index_digest = getattr(dataset, "index_digest", None)  # a stream's, read with its index
    if index_digest is None:
        index_digest = distributed.once(digest, settings.data_dir)
    names = getattr(dataset, "class_names", None)  # a stream's, read with its index
    if not loader.streamed(dataset):
        names = distributed.once(class_names, settings.data_dir)
    return Facts(
        device=device,
        input_shape=loader.shape_of(dataset, settings.loader_timeout),
        num_classes=num_classes(labels, settings.num_classes, settings.data_dir, names),
        data_digest=index_digest,
        class_names=tuple(names) if names else None,
    )
