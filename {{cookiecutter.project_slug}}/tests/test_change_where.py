"""The README's "what to change where" table, row by row: each test makes that one edit in a
copy of this project, as a user would, then trains, resumes and checks the result."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import pytorch_script
from conftest import read_rows

PROJECT = Path(pytorch_script.__file__).parent

# Each row: the file, the text there now, and what a user writes instead. One place, one file.
MODEL = (
    "my_classes.py",
    '''def build_model(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """The model to train, for samples of input_shape in num_classes classes: the one place
    pytorch_script.py, the checkpoints' users and the tests build it."""
    return Net(input_shape, num_classes)''',
    '''class ResidualNet(nn.Module):
    """A small residual network: its constructor takes other arguments than Net's."""

    def __init__(
        self, in_channels: int, image_size: tuple[int, int], num_classes: int, width: int = 8
    ) -> None:
        super().__init__()
        self.stem = nn.Conv2d(in_channels, width, kernel_size=3, padding=1)
        self.block = nn.Sequential(
            nn.Conv2d(width, width, kernel_size=3, padding=1),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.Conv2d(width, width, kernel_size=3, padding=1),
        )
        self.head = nn.Linear(width * image_size[0] * image_size[1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        x = torch.relu(x + self.block(x))
        return self.head(x.flatten(1))


def build_model(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    channels, height, width = input_shape
    return ResidualNet(channels, (height, width), num_classes, width=8)''',
)
LOSS = (
    "pytorch_script.py",
    "loss_fn = nn.CrossEntropyLoss()",
    "loss_fn = nn.CrossEntropyLoss(label_smoothing=0.1)",
)
OPTIMIZER = (
    "pytorch_script.py",
    "optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)",
    "optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)",
)
READ = (
    "my_classes.py",
    '        return load_sample(self.data_dir / f"{ID}.pt", ID)',
    '        X = load_sample(self.data_dir / f"{ID}.pt", ID)\n'
    "        return (X - X.mean()) / X.std()  # each sample normalised",
)
AUGMENTATION = (
    "my_classes.py",
    '''        E.g. a horizontal flip: `if torch.rand(()) < 0.5: X = X.flip(-1)`."""
        return X''',
    '''        E.g. a horizontal flip: `if torch.rand(()) < 0.5: X = X.flip(-1)`."""
        if torch.rand(()) < 0.5:
            X = X.flip(-1)
        return X''',
)
BEST_METRIC = ("pytorch_script.py", "score = val_accuracy", "score = -val_loss")


def edited_project(tmp_path: Path, *edits: tuple[str, str, str]) -> Path:
    """A copy of this project's code with each edit made in its one place."""
    copy = tmp_path / "project"
    shutil.copytree(
        PROJECT, copy, ignore=shutil.ignore_patterns("data", "runs", "tests", "__pycache__", ".*")
    )
    for file, old, new in edits:
        path = copy / file
        text = path.read_text(encoding="utf-8")
        if text.count(old) != 1:  # never in the template's own tests, which check that
            pytest.skip(f"{file} no longer holds the template's text that this row edits: you"
                        " have made this change, or another there, yourself")  # fmt: skip
        path.write_text(text.replace(old, new), encoding="utf-8")
    return copy


def train(project: Path, data_dir: Path, *flags: str) -> str:
    """pytorch_script.py of the edited copy, on the CPU; its output."""
    command = [sys.executable, "pytorch_script.py", "--device", "cpu", "--data-dir", str(data_dir)]
    command += ["--runs-dir", str(project / "runs"), "--batch-size", "32", "--no-tensorboard"]
    result = subprocess.run(
        [*command, *flags], cwd=project, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, f"{flags} exited {result.returncode}:\n{result.stderr}"
    return result.stdout


def weights(run_dir: Path, name: str = "last.pt") -> dict[str, torch.Tensor]:
    return torch.load(run_dir / name, weights_only=True)["model"]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("row", "flags", "least_accuracy"),
    [
        (MODEL, [], 0.8),
        (LOSS, [], 0.8),
        (OPTIMIZER, ["--lr", "0.05"], 0.8),
        (READ, [], 0.8),
    ],
    ids=["model", "loss", "optimizer", "read"],
)
def test_one_edit_trains_and_resumes(
    tmp_path: Path, tiny_data: Path, row: tuple, flags: list[str], least_accuracy: float
) -> None:
    project = edited_project(tmp_path, row)
    train(project, tiny_data, "--max-epochs", "3", "--run-name", "edited", *flags)
    out = train(project, tiny_data, "--max-epochs", "5", "--resume", "edited", *flags)

    assert "resuming" in out and "after epoch 3" in out
    rows = read_rows(project / "runs" / "edited" / "metrics.csv")
    assert [row["epoch"] for row in rows] == [1, 2, 3, 4, 5]
    accuracy = rows[-1]["val_accuracy"]
    assert accuracy >= least_accuracy, (
        f"with the {row[0]} edit ({row[2].splitlines()[0]!r}), 5 epochs of {tiny_data} reached"
        f" val_accuracy {accuracy:.3f}; expected at least {least_accuracy} (chance 0.25)"
    )


@pytest.mark.slow
def test_a_new_model_class_is_saved_and_named_in_the_checkpoint(
    tmp_path: Path, tiny_data: Path
) -> None:
    project = edited_project(tmp_path, MODEL)
    train(project, tiny_data, "--max-epochs", "1", "--run-name", "edited")
    checkpoint = torch.load(project / "runs/edited/last.pt", weights_only=True)
    assert checkpoint["model_class"] == "ResidualNet"
    assert "block.1.running_mean" in checkpoint["model"]  # BatchNorm's buffers are saved too


@pytest.mark.slow
@pytest.mark.parametrize("data_format", ["files", "packed"])
@pytest.mark.parametrize("num_workers", ["0", "2"])
def test_random_augmentation_resumes_bit_for_bit(
    tmp_path: Path, tiny_data: Path, num_workers: str, data_format: str
) -> None:
    project = edited_project(tmp_path, AUGMENTATION)
    if data_format == "packed":
        subprocess.run(
            [sys.executable, "pack_data.py", "--data-dir", str(tiny_data)], cwd=project, check=True
        )
    flags = ["--num-workers", num_workers, "--data-format", data_format]
    train(project, tiny_data, "--max-epochs", "4", "--run-name", "whole", *flags)
    train(project, tiny_data, "--max-epochs", "2", "--run-name", "halves", *flags)
    train(project, tiny_data, "--max-epochs", "4", "--resume", "halves", *flags)
    whole, halves = weights(project / "runs/whole"), weights(project / "runs/halves")
    assert all(torch.equal(whole[k], halves[k]) for k in whole), "resumed weights differ"

    if (num_workers, data_format) != ("0", "files"):
        return
    # The flip ran: without it, the same run ends elsewhere.
    plain = edited_project(tmp_path / "plain")
    train(plain, tiny_data, "--max-epochs", "4", "--run-name", "whole", *flags)
    unflipped = weights(plain / "runs/whole")
    assert not all(torch.equal(whole[k], unflipped[k]) for k in whole)


@pytest.mark.slow
def test_the_best_metric_chooses_best_pt(tmp_path: Path, tiny_data: Path) -> None:
    project = edited_project(tmp_path, BEST_METRIC)
    train(project, tiny_data, "--max-epochs", "2", "--run-name", "edited", "--lr", "0.02")
    train(project, tiny_data, "--max-epochs", "4", "--resume", "edited", "--lr", "0.02")
    rows = read_rows(project / "runs/edited/metrics.csv")
    lowest_loss = min(rows, key=lambda row: row["val_loss"])["epoch"]
    best = torch.load(project / "runs/edited/best.pt", weights_only=True)
    assert best["epoch"] == lowest_loss
    assert best["best_score"] == pytest.approx(-min(row["val_loss"] for row in rows), abs=1e-5)
