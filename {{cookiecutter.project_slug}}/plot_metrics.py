"""Draw the loss and accuracy curves of one training run, or of several side by side, into a PNG.

    python plot_metrics.py                  # the latest run: runs/<name>/metrics.png
    python plot_metrics.py run-1 run-2      # both runs in one figure: runs/compare.png
    python plot_metrics.py run-1 --out run-1.png

Needs matplotlib: pip install -e ".[plots]".
"""

import sys
from pathlib import Path

from plumbing import metrics, runs
from plumbing.cli import parser
from plumbing.files import atomic_write

NOT_DRAWN = ("epoch", "lr", "data_wait")  # metrics.csv's columns that are not metrics


def plot(curves: dict[str, dict[str, list[float]]], title: str, out: Path) -> None:
    """The losses (each *loss column: training solid, validation dashed) beside the other
    metrics (validation accuracy, or what you log), per epoch, for each run."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed, on a cluster node or in CI
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    figure, (loss, scores) = plt.subplots(1, 2, figsize=(10, 4), layout="constrained")
    for i, (name, run) in enumerate(curves.items()):
        label = f"{name}: " if len(curves) > 1 else ""
        others = [c for c in run if c not in NOT_DRAWN and not c.endswith("loss")]
        for column in run:
            if column in NOT_DRAWN:
                continue
            if column.endswith("loss"):  # training solid, validation dashed
                axes, style = loss, "--" if column.startswith("val_") else "-"
            else:
                axes, style = scores, ["-", ":", "-.", "--"][others.index(column) % 4]
            axes.plot(
                run["epoch"], run[column], marker=".", linestyle=style, color=f"C{i}",
                label=f"{label}{column}",
            )  # fmt: skip
    loss.set(xlabel="epoch", ylabel="loss", title="Loss")
    scores.set(xlabel="epoch", title="Validation")
    for axes in (loss, scores):
        if axes.lines:
            axes.legend()
        axes.grid(alpha=0.3)
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
    figure.suptitle(title)
    try:
        # Drawn beside out, then renamed over it: an image viewer never sees half a file.
        atomic_write(out, lambda f: figure.savefig(f, format="png", dpi=100))
    finally:
        plt.close(figure)


def metrics_csv(run: str, runs_dir: Path) -> Path:
    """A run's metrics.csv, from its name in runs_dir, its directory, or the CSV itself."""
    path = Path(run)
    if path.suffix == ".csv":
        return path
    # A run's name first: a folder of that name here may be data (--data-dir mydata).
    return (runs_dir / run if (runs_dir / run).is_dir() or not path.is_dir() else path) / (
        "metrics.csv"
    )


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("runs", nargs="*", metavar="RUN", help="run names, directories or CSVs;"
                   " default: the latest run")  # fmt: skip
    p.add_argument("--runs-dir", type=Path, default=Path("runs"), help="where runs are")
    p.add_argument("--out", type=Path, help="the PNG to write; default: in the run's directory")
    args = p.parse_args(argv)

    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print("error: plot_metrics.py needs matplotlib: pip install -e '.[plots]'", file=sys.stderr)
        return 1
    names = args.runs or [runs.latest(args.runs_dir) or "run-1"]
    paths = {name: metrics_csv(name, args.runs_dir) for name in names}
    if args.out:
        out = args.out
    elif len(paths) == 1:
        out = next(iter(paths.values())).with_suffix(".png")
    else:
        out = args.runs_dir / "compare.png"
    try:
        curves = {Path(name).stem if name.endswith(".csv") else Path(name).name: metrics.read(path)
                  for name, path in paths.items()}  # fmt: skip
        plot(curves, ", ".join(str(path) for path in paths.values()), out)
    except (metrics.MetricsError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    epochs = ", ".join(f"{len(run['epoch'])} epochs of {name}" for name, run in curves.items())
    print(f"Plotted {epochs} into {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
