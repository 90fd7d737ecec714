"""Edits of the template's own model, loss, optimizer, read, augmentation and score, each in a
copy of the baked project: it trains, resumes and learns tiny_data (the template's thresholds,
which a user's model need not reach: tests/test_change_where.py tests the README's rows)."""

from pathlib import Path

import pytest
import pytorch_script
import torch

from baked.helpers import AUGMENTATION, edited_project, in_one_python, read_rows, train, weights

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
    "optimizer = torch.optim.Adam(model.parameters(), lr=settings.lr)",
    "optimizer = torch.optim.SGD(model.parameters(), lr=settings.lr, momentum=0.9)",
)
READ = (
    "my_classes.py",
    "            X = X.float() / 255\n        return X\n",
    "            X = X.float() / 255\n        return (X - X.mean()) / X.std()  # normalised\n",
)
BEST_METRIC = ("pytorch_script.py", "score = val_accuracy", "score = -val_loss")


def train_edited(project: Path, data_dir: Path, *runs: list[str], pack: bool = False) -> list[str]:
    """pytorch_script.py of the edited copy on the CPU, once for each list of flags in runs, one
    run after the other in one new Python (pack: pack_data.py first); the output of each run."""
    common = ["--device", "cpu", "--data-dir", str(data_dir), "--runs-dir", str(project / "runs")]
    common += ["--batch-size", "32", "--no-tensorboard", "--tracker", "none"]
    scripts = [("pack_data.py", ["--data-dir", str(data_dir)])] if pack else []
    scripts += [("pytorch_script.py", [*common, *flags]) for flags in runs]
    results = in_one_python(project, *scripts)
    for result in results:
        assert result.returncode == 0, f"{result.args} exited {result.returncode}:\n{result.stderr}"
    return [result.stdout for result in results if result.args[0] == "pytorch_script.py"]


def trains_and_resumes(
    tmp_path: Path, data_dir: Path, row: tuple, flags: list[str], least_accuracy: float
) -> Path:
    """The project with row's edit trains 3 epochs, then 2 more resumed, and learns; returns the
    run's directory."""
    project = edited_project(tmp_path, row)
    _, out = train_edited(
        project,
        data_dir,
        ["--max-epochs", "3", "--run-name", "edited", *flags],
        ["--max-epochs", "5", "--resume", "edited", *flags],
    )

    assert "resuming" in out and "after epoch 3" in out
    run_dir = project / "runs" / "edited"
    rows = read_rows(run_dir / "metrics.csv")
    assert [row["epoch"] for row in rows] == [1, 2, 3, 4, 5]
    accuracy = rows[-1]["val_accuracy"]
    assert accuracy >= least_accuracy, (
        f"with the {row[0]} edit ({row[2].splitlines()[0]!r}), 5 epochs of {data_dir} reached"
        f" val_accuracy {accuracy:.3f}; expected at least {least_accuracy} (chance 0.25)"
    )
    return run_dir


@pytest.mark.slow
@pytest.mark.parametrize(
    ("row", "flags", "least_accuracy"),
    [
        (LOSS, [], 0.8),
        (OPTIMIZER, ["--lr", "0.05"], 0.8),
        (READ, [], 0.8),
    ],
    ids=["loss", "optimizer", "read"],
)
def test_one_edit_trains_and_resumes(
    tmp_path: Path, tiny_data: Path, row: tuple, flags: list[str], least_accuracy: float
) -> None:
    trains_and_resumes(tmp_path, tiny_data, row, flags, least_accuracy)


@pytest.mark.slow
def test_a_new_model_class_trains_resumes_and_is_named_in_the_checkpoint(
    tmp_path: Path, tiny_data: Path
) -> None:
    run_dir = trains_and_resumes(tmp_path, tiny_data, MODEL, [], 0.8)
    checkpoint = torch.load(run_dir / "last.pt", weights_only=True)
    assert checkpoint["model_class"] == "ResidualNet"
    assert "block.1.running_mean" in checkpoint["model"]  # BatchNorm's buffers are saved too


@pytest.mark.slow
def test_random_augmentation_resumes_bit_for_bit(tmp_path: Path, tiny_data: Path) -> None:
    """With 0 and 2 workers, from the files and packed: 4 epochs in one run, or 2 and then 2
    more resumed, end with the same weights."""
    project = edited_project(tmp_path, AUGMENTATION)
    settings = {
        f"{num_workers}-{data_format}": ["--num-workers", num_workers, "--data-format", data_format]
        for num_workers in ("0", "2")
        for data_format in ("files", "packed")
    }
    whole = [["--max-epochs", "4", "--run-name", f"whole-{n}", *f] for n, f in settings.items()]
    first = [["--max-epochs", "2", "--run-name", f"halves-{n}", *f] for n, f in settings.items()]
    then = [["--max-epochs", "4", "--resume", f"halves-{n}", *f] for n, f in settings.items()]
    # Each resumed run comes after the runs of the other settings: nothing its first half left
    # in the process can stand in for what last.pt holds, as in a new process.
    train_edited(project, tiny_data, *whole, *first, *then, pack=True)
    for name in settings:
        whole, halves = (weights(project / "runs" / f"{run}-{name}") for run in ("whole", "halves"))
        assert all(torch.equal(whole[k], halves[k]) for k in whole), (
            f"{name}: 2 epochs and 2 more resumed end with other weights than 4 in one run"
        )

    # The flip ran: without it (this project, unedited, in this process), the same run ends
    # elsewhere.
    plain = tmp_path / "runs" / "plain"
    assert train(tiny_data, plain, "--max-epochs", "4", *settings["0-files"]) == 0
    unflipped, flipped = weights(plain), weights(project / "runs" / "whole-0-files")
    assert not all(torch.equal(flipped[k], unflipped[k]) for k in flipped), (
        "the edited random_augmentation changed nothing: did it run?"
    )


@pytest.mark.slow
def test_the_best_metric_chooses_best_pt(tmp_path: Path, tiny_data: Path) -> None:
    project = edited_project(tmp_path, BEST_METRIC)
    train_edited(
        project,
        tiny_data,
        ["--max-epochs", "2", "--run-name", "edited", "--lr", "0.02"],
        ["--max-epochs", "4", "--resume", "edited", "--lr", "0.02"],
    )
    rows = read_rows(project / "runs/edited/metrics.csv")
    lowest_loss = min(rows, key=lambda row: row["val_loss"])["epoch"]
    best = torch.load(project / "runs/edited/best.pt", weights_only=True)
    assert best["epoch"] == lowest_loss
    assert best["best_score"] == pytest.approx(-min(row["val_loss"] for row in rows), abs=1e-5)
