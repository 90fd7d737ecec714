"""What a run leaves to look at: the metrics CSV, TensorBoard's events, plot_metrics.py's PNG."""

import csv
import os
import sys
from pathlib import Path

import pytest

import plot_metrics
from conftest import train


def read_csv(path: Path) -> list[dict[str, float]]:
    with open(path, newline="") as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def tensorboard_scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """(step, value) of each scalar, as TensorBoard shows them."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir))
    events.Reload()
    return {
        tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]
    }


def test_tensorboard_shows_what_the_csv_holds_resumed_or_run_again(
    tiny_data: Path, tmp_path: Path
) -> None:
    pytest.importorskip("tensorboard", reason="pip install -e '.[dev]' installs it")
    metrics_csv = tmp_path / "runs" / "metrics.csv"
    flags = ["--tensorboard", "--num-workers", "0", "--checkpoint-dir", str(tmp_path / "c")]
    # Three epochs, then a new run of two: TensorBoard shows the new run only, as the CSV.
    assert train(tiny_data, metrics_csv, *flags, "--max-epochs", "3", "--seed", "1") == 0
    flags[-1] = str(tmp_path / "c2")
    assert train(tiny_data, metrics_csv, *flags, "--max-epochs", "2") == 0
    # Resumed to four epochs: epochs 3 and 4 are added once.
    assert train(tiny_data, metrics_csv, *flags, "--max-epochs", "4", "--resume") == 0

    rows = read_csv(metrics_csv)
    assert [row["epoch"] for row in rows] == [1, 2, 3, 4]
    scalars = tensorboard_scalars(tmp_path / "runs" / "metrics")
    assert set(scalars) == {"loss/train", "loss/validation", "accuracy/validation", "data_wait"}
    for tag, column in [
        ("loss/train", "train_loss"),
        ("loss/validation", "val_loss"),
        ("accuracy/validation", "val_accuracy"),
    ]:
        assert [step for step, _ in scalars[tag]] == [1, 2, 3, 4]
        assert [value for _, value in scalars[tag]] == pytest.approx(
            [row[column] for row in rows], abs=1e-5
        )


def test_tensorboard_missing_is_a_clear_error(
    tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails
    assert train(tiny_data, tmp_path / "m.csv", "--tensorboard", "--dry-run") == 1
    assert capsys.readouterr().err == (
        "error: --tensorboard needs the tensorboard package: pip install -e '.[tensorboard]',"
        " or pass --no-tensorboard\n"
    )


def test_plot_draws_loss_and_accuracy_curves(tiny_data: Path, tmp_path: Path, capsys) -> None:
    pytest.importorskip("matplotlib", reason="pip install -e '.[dev]' installs it")
    from matplotlib.image import imread

    metrics_csv = tmp_path / "runs" / "metrics.csv"
    assert train(tiny_data, metrics_csv, "--max-epochs", "4", "--num-workers", "0") == 0
    assert plot_metrics.main(["--metrics-csv", str(metrics_csv)]) == 0

    png = tmp_path / "runs" / "metrics.png"
    assert f"Plotted 4 epochs of {metrics_csv} into {png}" in capsys.readouterr().out
    image = imread(png)
    assert image.shape == (400, 1000, 4)  # two panels side by side, 10x4 inches at 100 dpi
    # Curves in the three colours, on white: matplotlib's first two and green.
    colours = {tuple((pixel[:3] * 255).round().astype(int)) for pixel in image.reshape(-1, 4)}
    assert {(31, 119, 180), (255, 127, 14), (44, 160, 44)} <= colours
    assert [p.name for p in png.parent.iterdir() if p.name.startswith(".")] == []


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "not found: train first (python pytorch_script.py)"),
        ("", "not a metrics CSV of pytorch_script.py"),
        ("epoch,train_loss,val_loss,val_accuracy\n", "no epoch finished yet"),
        ("epoch,train_loss,val_loss,val_accuracy\n1,0.5,0.6\n", "line 2: expected 4 numbers"),
    ],
)
def test_plot_names_a_csv_it_cannot_draw(
    tmp_path: Path, capsys, content: str | None, message: str
) -> None:
    pytest.importorskip("matplotlib", reason="pip install -e '.[dev]' installs it")
    metrics_csv = tmp_path / "metrics.csv"
    if content is not None:
        metrics_csv.write_text(content)
    assert plot_metrics.main(["--metrics-csv", str(metrics_csv)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {metrics_csv}") and message in err
    assert not (tmp_path / "metrics.png").exists()


def test_plot_draws_a_run_that_diverged(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib", reason="pip install -e '.[dev]' installs it")
    metrics_csv = tmp_path / "metrics.csv"
    metrics_csv.write_text(
        "epoch,train_loss,val_loss,val_accuracy\n1,2.3,2.2,0.1\n2,nan,inf,0.1\n3,nan,nan,0.1\n"
    )
    assert plot_metrics.main(["--metrics-csv", str(metrics_csv)]) == 0
    png = tmp_path / "metrics.png"
    assert png.read_bytes().startswith(b"\x89PNG")
    if os.name == "posix":  # readable by all, as any file the user makes
        assert png.stat().st_mode & 0o777 == 0o644
