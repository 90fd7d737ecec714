"""What the project's tests share: your data, and pytorch_script.py run on a few of its samples.

The data is data/ when it holds any (partition.json), else sample data of the shape and classes
you chose when generating the project (make_sample_data.py's defaults). The tests build your
Dataset and your model, and run your pytorch_script.py: they test your code, as it stands."""

import json
import os
import random
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

import make_sample_data
import pytorch_script
from plumbing.data import load_partition

PROJECT = Path(__file__).resolve().parents[1]

# One thread for torch: the tests' batches are small, and more threads would only contend with
# the DataLoader workers of a run for the same cores.
torch.set_num_threads(1)
os.environ["OMP_NUM_THREADS"] = "1"


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """data/ when it holds data; else sample data of the answers' shape and classes."""
    if (PROJECT / "data" / "partition.json").exists():
        return PROJECT / "data"
    answers = make_sample_data.parse_args([])
    where = tmp_path_factory.mktemp("sample") / "data"
    make_sample_data.make_sample_data(
        where, num_samples=96, shape=answers.shape, num_classes=answers.num_classes,
        validation_fraction=0.25,
    )  # fmt: skip
    return where


@pytest.fixture(scope="session")
def index(data_dir: Path) -> tuple[dict, dict, int]:
    """partition, labels, and the number of classes (the largest label + 1)."""
    partition, labels = load_partition(data_dir)
    return partition, labels, max(labels.values()) + 1


def some(IDs: list[str] | object, count: int) -> list[str]:
    """count IDs drawn at random (the same each run), or all of them if there are fewer."""
    IDs = list(IDs)
    return random.Random(0).sample(IDs, min(count, len(IDs)))


def few(data_dir: Path, where: Path, num_train: int, num_validation: int, copies: int = 1) -> Path:
    """A data directory of a few of data_dir's samples (links to their files, and to whatever
    else data_dir holds but .pt files and packed data: a Dataset may read from there too);
    the training split listed `copies` times over, in the same order each time (<ID>~2, ...)."""
    partition, labels = load_partition(data_dir)
    chosen = {
        "train": some(partition["train"], num_train),
        "validation": some(partition["validation"], num_validation),
    }
    where.mkdir(parents=True)
    for entry in os.scandir(data_dir):
        if not entry.name.endswith(".pt") and entry.name not in ("partition.json", "labels.json",
                                                                   "packed"):  # fmt: skip
            link(Path(entry.path), where / entry.name)
    for ID in chosen["train"] + chosen["validation"]:
        link(data_dir / f"{ID}.pt", where / f"{ID}.pt")
    label = {ID: labels[ID] for ID in chosen["train"] + chosen["validation"]}
    for copy in range(2, copies + 1):
        for ID in chosen["train"][:num_train]:
            link(data_dir / f"{ID}.pt", where / f"{ID}~{copy}.pt")
            chosen["train"].append(f"{ID}~{copy}")
            label[f"{ID}~{copy}"] = label[ID]
    (where / "partition.json").write_text(json.dumps(chosen), encoding="utf-8")
    (where / "labels.json").write_text(json.dumps(label), "utf-8")
    return where


def link(source: Path, target: Path) -> None:
    try:
        target.symlink_to(source.resolve(), target_is_directory=source.is_dir())
    except OSError:  # Windows without the right to make links
        (shutil.copytree if source.is_dir() else shutil.copy2)(source, target)


def train(data_dir: Path, runs_dir: Path, num_classes: int, *flags: str) -> int:
    """pytorch_script.main on the CPU, with 0 workers, no TensorBoard or tracker (a test's run
    belongs in none of yours), for the classes of all your data."""
    argv = ["--device", "cpu", "--data-dir", str(data_dir), "--runs-dir", str(runs_dir)]
    argv += ["--num-workers", "0", "--no-tensorboard", "--tracker", "none"]
    argv += ["--num-classes", str(num_classes), "--data-format", "files"]
    return pytorch_script.main([*argv, *flags])


class SignalledAfter:
    """batches, with SIGTERM raised in this process after batch `number`, as a cluster sends
    it to preempt a job: the run's own handler takes it."""

    def __init__(self, batches: object, number: int) -> None:
        self.batches, self.number = batches, number

    def __iter__(self) -> Iterator:
        for batch in self.batches:
            yield batch
            if self.batches.number == self.number:
                signal.raise_signal(signal.SIGTERM)

    def __getattr__(self, name: str) -> object:
        return getattr(self.batches, name)
