"""What a run leaves to look at in its directory: metrics.csv, TensorBoard's events, and
plot_metrics.py's PNG."""

import csv
import os
import shutil
import sys
from pathlib import Path

import plot_metrics
import pytest
from plumbing import metrics

from baked.helpers import snapshot, train

HEADER = "epoch,train_loss,val_loss,val_accuracy,lr,data_wait\n"
BLUE, ORANGE = (31, 119, 180), (255, 127, 14)  # matplotlib's first two colours


def read_csv(path: Path) -> list[dict[str, float]]:
    with open(path, newline="") as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def colours(png: Path) -> set[tuple[int, int, int]]:
    from matplotlib.image import imread

    return {tuple((pixel[:3] * 255).round().astype(int)) for pixel in imread(png).reshape(-1, 4)}


def tensorboard_scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """(step, value) of each scalar, as TensorBoard shows them."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir))
    events.Reload()
    return {
        tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]
    }


def assert_tensorboard_shows_the_csv(run_dir: Path) -> None:
    rows = read_csv(run_dir / "metrics.csv")
    scalars = tensorboard_scalars(run_dir)
    tags = {"loss/train", "loss/validation", "accuracy/validation", "lr", "data_wait"}
    assert set(scalars) == tags
    for tag, column in [
        ("loss/train", "train_loss"),
        ("loss/validation", "val_loss"),
        ("accuracy/validation", "val_accuracy"),
        ("lr", "lr"),
        ("data_wait", "data_wait"),
    ]:
        assert [step for step, _ in scalars[tag]] == [row["epoch"] for row in rows], tag
        assert [value for _, value in scalars[tag]] == pytest.approx(
            [row[column] for row in rows], abs=1e-5
        ), tag


def test_csv_has_a_row_per_epoch_with_every_column(tiny_data: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "runs" / "run-1"
    assert train(tiny_data, run_dir, "--max-epochs", "2", "--num-workers", "0") == 0
    text = (run_dir / "metrics.csv").read_text()
    assert text.startswith(HEADER)
    rows = read_csv(run_dir / "metrics.csv")
    assert [row["epoch"] for row in rows] == [1, 2]
    assert all(0 <= row["val_accuracy"] <= 1 and 0 <= row["data_wait"] <= 1 for row in rows)
    assert metrics.read(run_dir / "metrics.csv")["epoch"] == [1.0, 2.0]


def test_tensorboard_events_are_in_the_runs_own_directory(tiny_data: Path, tmp_path: Path) -> None:
    pytest.importorskip("tensorboard", reason="pip install -e '.[dev]' installs it")
    runs_dir = tmp_path / "runs"
    flags = ["--tensorboard", "--num-workers", "0"]
    assert train(tiny_data, runs_dir / "run-1", *flags, "--max-epochs", "3", "--seed", "1") == 0
    assert train(tiny_data, runs_dir / "run-2", *flags, "--max-epochs", "2") == 0

    assert sorted(p.name for p in runs_dir.iterdir()) == ["run-1", "run-2"]  # nothing beside
    for run_dir, epochs in [(runs_dir / "run-1", 3), (runs_dir / "run-2", 2)]:
        assert len(list(run_dir.glob("events.out.tfevents.*"))) == 1
        assert_tensorboard_shows_the_csv(run_dir)
        assert len(read_csv(run_dir / "metrics.csv")) == epochs


def test_tensorboard_shows_each_epoch_once_when_resumed(tiny_data: Path, tmp_path: Path) -> None:
    """Resumed from an epoch before the last logged one (a crash came between the row and the
    checkpoint): TensorBoard, like the CSV, drops the steps after the checkpoint's epoch."""
    pytest.importorskip("tensorboard", reason="pip install -e '.[dev]' installs it")
    run_dir = tmp_path / "runs" / "run-1"
    flags = ["--tensorboard", "--num-workers", "0", "--seed", "1"]
    assert train(tiny_data, run_dir, *flags, "--max-epochs", "2") == 0
    shutil.copy(run_dir / "last.pt", tmp_path / "epoch-2.pt")
    assert train(tiny_data, run_dir, *flags, "--max-epochs", "3", "--resume") == 0
    shutil.copy(tmp_path / "epoch-2.pt", run_dir / "last.pt")  # epoch 3 logged, not saved

    assert train(tiny_data, run_dir, *flags, "--max-epochs", "4", "--resume") == 0
    assert [row["epoch"] for row in read_csv(run_dir / "metrics.csv")] == [1, 2, 3, 4]
    assert_tensorboard_shows_the_csv(run_dir)


@pytest.mark.parametrize("flags", [["--dry-run"], ["--max-epochs", "1"]])
def test_tensorboard_missing_is_a_clear_error_before_training(
    tiny_data: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys,
    flags: list[str],
) -> None:
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails
    run_dir = tmp_path / "runs" / "run-1"
    assert train(tiny_data, run_dir, "--tensorboard", "--num-workers", "0", *flags) == 1
    captured = capsys.readouterr()
    assert captured.err == (
        "error: --tensorboard needs the tensorboard package: pip install -e '.[tensorboard]',"
        " or pass --no-tensorboard\n"
    )
    assert "epoch 1/1" not in captured.out  # said before an epoch is spent
    assert not run_dir.exists()


@pytest.mark.slow
def test_plot_draws_the_latest_run_by_default(
    tiny_data: Path, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("matplotlib", reason="pip install -e '.[dev]' installs it")
    from matplotlib.image import imread

    monkeypatch.chdir(tmp_path)  # runs/ is where pytorch_script.py writes by default
    runs_dir = Path("runs")
    assert train(tiny_data, runs_dir / "run-1", "--max-epochs", "2", "--num-workers", "0") == 0
    assert train(tiny_data, runs_dir / "run-2", "--max-epochs", "4", "--num-workers", "0") == 0
    run_1 = snapshot(runs_dir / "run-1")
    capsys.readouterr()
    assert plot_metrics.main([]) == 0

    png = runs_dir / "run-2" / "metrics.png"
    assert capsys.readouterr().out == f"Plotted 4 epochs of run-2 into {png}\n"
    image = imread(png)
    assert image.shape == (400, 1000, 4)  # two panels side by side, 10x4 inches at 100 dpi
    # One run, one colour (matplotlib's first): validation dashed beside training.
    drawn = colours(png)
    assert BLUE in drawn and ORANGE not in drawn
    assert [p.name for p in png.parent.iterdir() if p.name.startswith(".")] == []
    assert snapshot(runs_dir / "run-1") == run_1

    # A run by name, or by its directory, drawn into its own directory.
    assert plot_metrics.main(["run-1"]) == 0
    assert plot_metrics.main([str(tmp_path / "runs" / "run-1")]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"Plotted 2 epochs of run-1 into {runs_dir / 'run-1' / 'metrics.png'}",
        f"Plotted 2 epochs of run-1 into {tmp_path / 'runs' / 'run-1' / 'metrics.png'}",
    ]


@pytest.mark.slow
def test_plot_compares_runs_in_one_figure(tiny_data: Path, tmp_path: Path, capsys) -> None:
    pytest.importorskip("matplotlib", reason="pip install -e '.[dev]' installs it")
    from matplotlib.image import imread

    runs_dir = tmp_path / "runs"
    flags = ["--num-workers", "0"]
    assert train(tiny_data, runs_dir / "run-1", *flags, "--max-epochs", "2") == 0
    assert train(tiny_data, runs_dir / "run-2", *flags, "--max-epochs", "3", "--lr", "0.01") == 0
    capsys.readouterr()

    assert plot_metrics.main(["run-1", "run-2", "--runs-dir", str(runs_dir)]) == 0
    png = runs_dir / "compare.png"
    out = capsys.readouterr().out
    assert out == f"Plotted 2 epochs of run-1, 3 epochs of run-2 into {png}\n"
    assert png.stat().st_size > 0 and png.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert imread(png).shape == (400, 1000, 4)
    assert {BLUE, ORANGE} <= colours(png)  # a colour for each run
    assert not (runs_dir / "run-1" / "metrics.png").exists()
    assert not (runs_dir / "run-2" / "metrics.png").exists()

    out_png = tmp_path / "both.png"
    argv = ["run-1", "run-2", "--runs-dir", str(runs_dir), "--out", str(out_png)]
    assert plot_metrics.main(argv) == 0
    assert capsys.readouterr().out.endswith(f" into {out_png}\n")
    assert out_png.read_bytes().startswith(b"\x89PNG")


def test_plot_with_no_run_says_to_train_first(tmp_path: Path, capsys) -> None:
    pytest.importorskip("matplotlib", reason="pip install -e '.[dev]' installs it")
    runs_dir = tmp_path / "runs"
    assert plot_metrics.main(["--runs-dir", str(runs_dir)]) == 1
    assert capsys.readouterr().err == (
        f"error: {runs_dir / 'run-1' / 'metrics.csv'} not found: train first"
        " (python pytorch_script.py), or name a run\n"
    )
    assert not runs_dir.exists()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "not found: train first (python pytorch_script.py)"),
        ("", "not a metrics CSV of pytorch_script.py"),
        ("time,train_loss\n1,2.0\n", "not a metrics CSV"),
        (HEADER, "no epoch finished yet"),
        (HEADER + "1,0.5,0.6,0.5\n", "line 2: expected 6 numbers"),
        (HEADER + "1,0.5,0.6,x,0.001,0.1\n", "line 2: expected 6 numbers"),
    ],
)
def test_plot_names_a_csv_it_cannot_draw(
    tmp_path: Path, capsys, content: str | None, message: str
) -> None:
    pytest.importorskip("matplotlib", reason="pip install -e '.[dev]' installs it")
    run_dir = tmp_path / "runs" / "run-1"
    run_dir.mkdir(parents=True)
    metrics_csv = run_dir / "metrics.csv"
    if content is not None:
        metrics_csv.write_text(content)
    for argv in [[str(metrics_csv)], ["--runs-dir", str(run_dir.parent)], [str(run_dir)]]:
        assert plot_metrics.main(argv) == 1, argv
        err = capsys.readouterr().err
        assert err.startswith(f"error: {metrics_csv}") and message in err
        assert err.count("\n") == 1
    assert sorted(p.name for p in run_dir.iterdir()) == ([] if content is None else ["metrics.csv"])


def test_plot_draws_a_run_that_diverged(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib", reason="pip install -e '.[dev]' installs it")
    metrics_csv = tmp_path / "metrics.csv"
    rows = "1,2.3,2.2,0.1,0.001,0.0\n2,nan,inf,0.1,0.001,0.0\n3,nan,nan,0.1,0.001,0.0\n"
    metrics_csv.write_text(HEADER + rows)
    assert plot_metrics.main([str(metrics_csv)]) == 0
    png = tmp_path / "metrics.png"
    assert png.read_bytes().startswith(b"\x89PNG")
    if os.name == "posix":  # readable by all, as any file the user makes
        assert png.stat().st_mode & 0o777 == 0o644
