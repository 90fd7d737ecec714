"""What evaluate.py and predict.py do around their loops: the batches of a split on the device,
each sample's outputs kept in the order of the split (every sample of every rank once, under
torchrun), and what they report: loss, accuracy, each class's precision, recall and F1, and
the confusion matrix, as a table, CSV and JSON files and (with matplotlib) a PNG."""

import csv
import io
import json
import math
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch

from plumbing import distributed, loader, packed
from plumbing.errors import DataError
from plumbing.files import atomic_write, atomic_write_text

TOP = 20  # classes shown in the printed confusion matrix; all are in confusion.csv


class Pass:
    """The batches of one pass over generator, on the device as float32 (as training moves
    them), under --amp's autocast if asked; record(outputs) after each batch keeps what the
    model gave each sample: its class, and its probability for each class (keep_probabilities),
    put back in the order of the split on every rank (`predicted`, `probabilities`). Samples
    of another shape than input_shape, the model's, stop it in one line naming `where`."""

    def __init__(
        self,
        generator: torch.utils.data.DataLoader,
        device: torch.device,
        amp: bool = False,
        loader_timeout: float = 0,
        keep_probabilities: bool = False,
        input_shape: tuple[int, ...] | None = None,
        where: str = "the data",
    ) -> None:
        self.generator, self.device, self.amp = generator, device, amp
        self.input_shape, self.where = input_shape, where
        self.loader_timeout, self.keep_probabilities = loader_timeout, keep_probabilities
        self.labels: list[torch.Tensor] = []
        self.outputs: list[torch.Tensor] = []
        self.predicted: torch.Tensor | None = None  # each sample's class, in the split's order
        self.true: torch.Tensor | None = None  # each sample's label, in that order
        self.probabilities: torch.Tensor | None = None

    def autocast(self) -> torch.autocast:
        """--amp, as training has it."""
        return distributed.autocast(self.device, self.amp)

    def record(self, outputs: torch.Tensor) -> None:
        """The model's outputs (one score per class) for the batch just given."""
        outputs = outputs.detach().float()
        self.outputs.append(outputs.softmax(1) if self.keep_probabilities else outputs.argmax(1))

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        generator = self.generator
        batches: object = generator
        if self.loader_timeout and generator.num_workers == 0:  # the workers time themselves
            batches = loader.within(generator, self.loader_timeout)
        packed.begin(generator.dataset)
        non_blocking = self.device.type == "cuda"
        for X, y in batches:
            if self.input_shape is not None and tuple(X.shape[1:]) != self.input_shape:
                raise DataError(
                    f"{self.where}: its samples are of shape {tuple(X.shape[1:])}, the model takes"
                    f" {self.input_shape}: pass the --data-dir it was trained on"
                )
            X = X.to(self.device, torch.float32, non_blocking=non_blocking)
            y = torch.as_tensor(y).to(self.device, non_blocking=non_blocking)
            self.labels.append(y)
            yield X, y
        packed.confirm(generator.dataset)
        self._gather()

    def _gather(self) -> None:
        """Every rank's outputs and labels, in the order of the split, on every rank: each
        rank's samples are at the positions its sampler gave it (plumbing/loader.py)."""
        labels = torch.cat(self.labels) if self.labels else torch.zeros(0, dtype=torch.long)
        kept = torch.cat(self.outputs) if self.outputs else torch.zeros(0)
        if len(kept) != len(labels):
            raise RuntimeError("call batches.record(outputs) once for each batch")
        order = getattr(self.generator.sampler, "order", None)
        count = len(self.generator.dataset)
        if order is None or distributed.world_size() == 1:  # one process: in its order already
            positions = torch.arange(len(labels))
            count = len(labels)
        else:
            positions = order()[: len(labels)]
        shape = (count, *kept.shape[1:])
        # Summed over the ranks: each position is filled by one rank, zeros elsewhere
        outputs = torch.zeros(shape, dtype=torch.float64, device=self.device)
        outputs[positions.to(self.device)] = kept.double()
        true = torch.zeros(count, dtype=torch.float64, device=self.device)
        true[positions.to(self.device)] = labels.double()
        distributed.sum_over_ranks(outputs)
        distributed.sum_over_ranks(true)
        self.true = true.round().long().cpu()
        if self.keep_probabilities:
            self.probabilities = outputs.float().cpu()
            self.predicted = self.probabilities.argmax(dim=1)
        else:
            self.predicted = outputs.round().long().cpu()


def confusion_matrix(true: torch.Tensor, predicted: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Rows: the labels; columns: the classes predicted."""
    pairs = true.long() * num_classes + predicted.long()
    return torch.bincount(pairs, minlength=num_classes**2).reshape(num_classes, num_classes)


def per_class(confusion: torch.Tensor) -> list[dict[str, float]]:
    """Each class's precision, recall and F1 (0 where there is nothing to divide), and support."""
    rows = []
    for c in range(len(confusion)):
        hits, predicted, support = (int(n) for n in (confusion[c, c], confusion[:, c].sum(),
                                                     confusion[c].sum()))  # fmt: skip
        precision = hits / predicted if predicted else 0.0
        recall = hits / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        rows.append({"precision": precision, "recall": recall, "f1": f1, "support": support})
    return rows


def names_of(num_classes: int, names: Sequence[str] | None) -> list[str]:
    """The classes' names, or their numbers where they have none."""
    if names and len(names) == num_classes:
        return list(names)
    return [str(c) for c in range(num_classes)]


def report(
    metrics: dict[str, float], true: torch.Tensor, predicted: torch.Tensor, names: list[str]
) -> dict:
    """What evaluate.py writes in metrics.json: the metrics it measured, accuracy, each class's
    precision, recall, F1 and support, their macro averages (over the classes the split
    holds), and the confusion matrix."""
    confusion = confusion_matrix(true, predicted, len(names))
    classes = per_class(confusion)
    present = [row for row in classes if row["support"]] or classes
    macro = {
        f"macro_{key}": sum(row[key] for row in present) / len(present)
        for key in ("precision", "recall", "f1")
    }
    accuracy = float(confusion.diagonal().sum()) / max(len(true), 1)
    return {
        **metrics,
        "accuracy": accuracy,
        **macro,
        "samples": len(true),
        "classes": [{"class": name, **row} for name, row in zip(names, classes, strict=True)],
        "confusion": confusion.tolist(),
        "class_names": names,
    }


def table(results: dict) -> str:
    """The report, for the screen: the metrics, a row per class, the confusion matrix."""
    names = results["class_names"]
    width = max(9, *(len(name) for name in names))
    scalars = {
        k: v for k, v in results.items() if isinstance(v, float) and not k.startswith("macro")
    }
    lines = ["  ".join(f"{k} {v:.4f}" for k, v in scalars.items())]
    lines.append(f"{'class':<{width}}  precision  recall  f1      support")
    for row in results["classes"]:
        lines.append(
            f"{row['class']:<{width}}  {row['precision']:<9.4f}  {row['recall']:<6.4f}  "
            f"{row['f1']:<6.4f}  {row['support']}"
        )
    lines.append(
        f"{'macro avg':<{width}}  {results['macro_precision']:<9.4f}  "
        f"{results['macro_recall']:<6.4f}  {results['macro_f1']:<6.4f}  {results['samples']}"
    )
    if len(names) <= TOP:
        cells = max(4, *(len(str(n)) for row in results["confusion"] for n in row))
        cells = max(cells, *(len(name) for name in names))
        lines.append("confusion matrix (rows: label, columns: predicted)")
        lines.append(" " * width + "".join(f"  {name:>{cells}}" for name in names))
        for name, row in zip(names, results["confusion"], strict=True):
            lines.append(f"{name:<{width}}" + "".join(f"  {n:>{cells}}" for n in row))
    return "\n".join(lines)


def csv_text(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    f = io.StringIO()
    writer = csv.writer(f, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return f.getvalue()


def number(value: float) -> str:
    return f"{value:.6f}" if math.isfinite(value) else str(value)


def write(
    out_dir: Path,
    results: dict,
    IDs: Sequence[str] | None,
    true: torch.Tensor,
    predicted: torch.Tensor,
) -> list[str]:
    """metrics.json, per_class.csv, confusion.csv, predictions.csv (each sample's ID, label and
    class predicted, where the IDs are known) and confusion.png (with matplotlib) in out_dir;
    returns the names written."""
    names = results["class_names"]
    written = ["metrics.json", "per_class.csv", "confusion.csv"]
    atomic_write_text(out_dir / "metrics.json", json.dumps(results, indent=1) + "\n")
    rows = [[r["class"], *(number(r[k]) for k in ("precision", "recall", "f1")), r["support"]]
            for r in results["classes"]]  # fmt: skip
    atomic_write_text(
        out_dir / "per_class.csv", csv_text(["class", "precision", "recall", "f1", "support"], rows)
    )
    confusion = [[name, *row] for name, row in zip(names, results["confusion"], strict=True)]
    atomic_write_text(out_dir / "confusion.csv", csv_text(["label", *names], confusion))
    if IDs is not None:
        pairs = zip(IDs, true.tolist(), predicted.tolist(), strict=True)
        rows = [[ID, names[t], names[p]] for ID, t, p in pairs]
        atomic_write_text(out_dir / "predictions.csv", csv_text(["ID", "label", "predicted"], rows))
        written.append("predictions.csv")
    if plot_confusion(out_dir / "confusion.png", results["confusion"], names):
        written.append("confusion.png")
    for name in ("predictions.csv", "confusion.png"):  # an earlier evaluation's: not this one's
        if name not in written:
            (out_dir / name).unlink(missing_ok=True)
    return written


def plot_confusion(path: Path, confusion: list[list[int]], names: list[str]) -> bool:
    """The confusion matrix as an image, each row as shares of its label's samples; False
    without matplotlib (the plots extra)."""
    try:
        import matplotlib
    except ImportError:
        return False
    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    matrix = torch.tensor(confusion, dtype=torch.float64)
    shares = matrix / matrix.sum(dim=1, keepdim=True).clamp(min=1)
    side = min(4 + 0.4 * len(names), 30)
    figure, axes = plt.subplots(figsize=(side, side), layout="constrained")
    axes.imshow(shares.numpy(), cmap="Blues", vmin=0, vmax=1)
    if len(names) <= 50:
        axes.set_xticks(range(len(names)), names, rotation=90)
        axes.set_yticks(range(len(names)), names)
    if len(names) <= TOP:
        for row in range(len(names)):
            for column in range(len(names)):
                color = "white" if shares[row, column] > 0.5 else "black"
                count = int(matrix[row, column])
                axes.text(column, row, count, ha="center", va="center", color=color)
    axes.set(xlabel="predicted", ylabel="label", title="confusion matrix (rows: shares of a label)")
    try:
        atomic_write(path, lambda f: figure.savefig(f, format="png", dpi=100))
    finally:
        plt.close(figure)
    return True
