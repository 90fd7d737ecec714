"""Draw the loss and accuracy curves of a training run into a PNG.

    python plot_metrics.py                  # runs/metrics.csv -> runs/metrics.png
    python plot_metrics.py --metrics-csv runs/cpu.csv --out cpu.png

Needs matplotlib: pip install -e ".[plots]".
"""

import argparse
import csv
import math
import os
import sys
import tempfile
from pathlib import Path

COLUMNS = ["epoch", "train_loss", "val_loss", "val_accuracy"]  # as pytorch_script.py writes them


class MetricsError(Exception):
    """A metrics CSV that cannot be plotted; the message says which file and why."""


def read_metrics(path: Path) -> dict[str, list[float]]:
    """The columns of pytorch_script.py's metrics CSV, as lists of numbers."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
    except FileNotFoundError:
        raise MetricsError(
            f"{path} not found: train first (python pytorch_script.py), or pass --metrics-csv"
        ) from None
    if not rows or rows[0] != COLUMNS:
        raise MetricsError(f"{path}: not a metrics CSV of pytorch_script.py (header {COLUMNS})")
    metrics: dict[str, list[float]] = {column: [] for column in COLUMNS}
    for line, row in enumerate(rows[1:], start=2):
        try:
            values = [float(value) for value in row]
        except ValueError:
            values = []
        if len(values) != len(COLUMNS):
            raise MetricsError(f"{path}, line {line}: expected {len(COLUMNS)} numbers, got {row}")
        for column, value in zip(COLUMNS, values, strict=True):
            # A run that diverged logs nan or inf: drawn as a gap, the rest of the curve stays.
            metrics[column].append(value if math.isfinite(value) else math.nan)
    if not metrics["epoch"]:
        raise MetricsError(f"{path}: no epoch finished yet, nothing to plot")
    return metrics


def plot(metrics: dict[str, list[float]], title: str, out: Path) -> None:
    """Loss (training and validation) beside validation accuracy, per epoch, into out."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed, on a cluster node or in CI
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    epochs = metrics["epoch"]
    figure, (loss, accuracy) = plt.subplots(1, 2, figsize=(10, 4), layout="constrained")
    loss.plot(epochs, metrics["train_loss"], marker=".", label="training")
    loss.plot(epochs, metrics["val_loss"], marker=".", label="validation")
    loss.set(xlabel="epoch", ylabel="loss", title="Loss")
    loss.legend()
    accuracy.plot(epochs, metrics["val_accuracy"], marker=".", color="tab:green")
    accuracy.set(xlabel="epoch", ylabel="accuracy", ylim=(0, 1.02), title="Validation accuracy")
    for axes in (loss, accuracy):
        axes.grid(alpha=0.3)
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
    figure.suptitle(title)
    # Drawn beside out, then renamed over it: an image viewer never sees half a file.
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".png")
    try:
        os.chmod(tmp, 0o644)  # mkstemp makes it private; an image is shared like any file
        with os.fdopen(fd, "wb") as f:
            figure.savefig(f, format="png", dpi=100)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    finally:
        plt.close(figure)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--metrics-csv", type=Path, default=Path("runs/metrics.csv"), help="what to plot"
    )
    parser.add_argument("--out", type=Path, help="the PNG to write; default: the CSV's path, .png")
    args = parser.parse_args(argv)
    out = args.out or args.metrics_csv.with_suffix(".png")

    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print("error: plot_metrics.py needs matplotlib: pip install -e '.[plots]'", file=sys.stderr)
        return 1
    try:
        metrics = read_metrics(args.metrics_csv)
        out.parent.mkdir(parents=True, exist_ok=True)
        plot(metrics, str(args.metrics_csv), out)
    except (MetricsError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"Plotted {len(metrics['epoch'])} epochs of {args.metrics_csv} into {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
