"""Export a trained run's model for serving: torch.export's program, runs/<run>/model.pt2 (and
ONNX, model.onnx, with --onnx), checked against the model on a batch of the run's samples.

    python export_model.py                       # the latest run's best.pt -> model.pt2
    python export_model.py run-1 --onnx          # and model.onnx (pip install -e ".[onnx]")
    python predict.py runs/run-1/model.pt2 photos/   # predictions from the program

The program takes float32 batches (N, *input shape) of samples as my_classes.Dataset.read
returns them (uint8 images scaled to [0, 1]) and returns a score per class; its metadata
(meta.json in the .pt2, metadata_props in ONNX) has the input shape, the number of classes and
their names. Load a .pt2 only if you trust it: it is a program (plumbing/exported.py).
"""

import argparse
import sys
import time
from pathlib import Path

import torch

from my_classes import Dataset, build_model
from plumbing import checkpoints, exits, exported, runs
from plumbing.cli import TEMPLATE_VERSION, location, parser, run_name
from plumbing.data import load_partition
from plumbing.errors import DataError


def export_run(args: argparse.Namespace) -> None:
    start = time.perf_counter()
    run_dir, path = runs.finished(args.runs_dir, args.run, args.checkpoint)
    model, checkpoint, weights = checkpoints.for_inference(path, build_model, args.weights)
    input_shape = tuple(checkpoint["input_shape"])
    batch, source = check_batch(args.data_dir or data_dir_of(run_dir), input_shape)
    meta = {
        "input_shape": list(input_shape),
        "num_classes": checkpoint["num_classes"],
        "class_names": checkpoint.get("class_names"),
        "checkpoint": str(path),
        "epoch": checkpoint["epoch"],
        "weights": weights,
        "model_class": type(model).__qualname__,
        "input": "float32 (N, *input_shape), as my_classes.Dataset.read returns samples",
        "template_version": TEMPLATE_VERSION,
    }
    out = args.out or run_dir / "model.pt2"
    difference = exported.export(model, batch, out, meta)
    tolerance = exported.TOLERANCE["pt2"]
    print(
        f"Exported {path} (epoch {checkpoint['epoch']}, weights {weights!r}) to {out}: on"
        f" {len(batch)} samples of {source}, it differs from the model by {difference:.2g} at"
        f" most (allowed: {tolerance['atol']:g} + {tolerance['rtol']:g} x |output|)"
    )
    if args.onnx:
        onnx_path = out.with_suffix(".onnx")
        difference = exported.to_onnx(model, batch, onnx_path, meta)
        checked = "not checked: onnxruntime is not installed"
        if difference is not None:
            tolerance = exported.TOLERANCE["onnx"]
            checked = (
                f"ONNX Runtime's outputs differ by {difference:.2g} at most (allowed:"
                f" {tolerance['atol']:g} + {tolerance['rtol']:g} x |output|)"
            )
        print(f"Exported it to {onnx_path}: {checked}")
    print(f"in {time.perf_counter() - start:.1f} s")


def data_dir_of(run_dir: Path) -> Path | str:
    return runs.started_as(run_dir).data_dir


def check_batch(data_dir: Path | str, input_shape: tuple[int, ...]) -> tuple[torch.Tensor, str]:
    """Up to 16 samples of the validation split, as validation reads them; where there are
    none of the model's shape (another machine, a stream), a seeded random batch in [0, 1)."""
    try:
        partition, labels = load_partition(data_dir)
        IDs = list(partition["validation"])[:16]
        dataset = Dataset(IDs, labels, data_dir)
        batch = torch.stack([dataset[i][0] for i in range(len(IDs))]).float()
        if tuple(batch.shape[1:]) == input_shape and len(batch) >= 2:
            return batch, f"{data_dir}'s validation split"
    except (DataError, OSError):  # a stream's URL, or no data here
        pass
    random = torch.rand(8, *input_shape, generator=torch.Generator().manual_seed(0))
    return random, "random inputs (no samples of the model's shape in the run's --data-dir)"


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("run", nargs="?", type=run_name, metavar="RUN", help="default: the latest")
    p.add_argument("--checkpoint", choices=["best", "last"], default="best", help="which one")
    p.add_argument("--weights", default="auto", help="model, ema, ...; auto: ema if there is one")
    p.add_argument("--runs-dir", type=Path, default=Path("runs"), help="where runs are")
    p.add_argument("--data-dir", type=location, help="samples for the check; default: the run's")
    p.add_argument("--out", type=Path, help="the .pt2 file; default: runs/<run>/model.pt2")
    p.add_argument("--onnx", action="store_true", help="also ONNX beside it: the onnx extra")
    args = p.parse_args(argv)
    return exits.reported(lambda: export_run(args))


if __name__ == "__main__":
    sys.exit(main())
