"""After training, with your code: evaluate.py finds the accuracy your validation found, for the
same checkpoint and split; predict.py agrees with it sample by sample; and your model exports
with torch.export to a program whose outputs match it within export_model.py's tolerance."""

import csv
import json
from pathlib import Path

import torch

import evaluate
import predict
from conftest import few, some, train
from my_classes import Dataset, build_model
from plumbing import exported


def rows_of(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_evaluate_and_predict_give_what_validation_gave(
    data_dir: Path, index: tuple, tmp_path: Path
) -> None:
    """The accuracy, not the loss: evaluate.py reports cross-entropy unless you give it your
    loss_fn too (README.md, "What to change where")."""
    _, _, num_classes = index
    data = few(data_dir, tmp_path / "data", 32, 16)
    runs_dir = tmp_path / "runs"
    assert train(data, runs_dir, num_classes, "--batch-size", "8", "--max-epochs", "2") == 0
    run = ["run-1", "--runs-dir", str(runs_dir), "--split", "validation", "--checkpoint", "last"]
    assert evaluate.main([*run, "--num-workers", "0"]) == 0
    out = runs_dir / "run-1" / "eval" / "validation-last"
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    last = rows_of(runs_dir / "run-1" / "metrics.csv")[-1]
    assert f"{metrics['accuracy']:.6f}" == last["val_accuracy"]

    assert predict.main([*run, "--num-workers", "0", "--out", str(tmp_path / "p.csv")]) == 0
    predicted = [(row["ID"], row["class"]) for row in rows_of(tmp_path / "p.csv")]
    assert predicted == [(row["ID"], row["predicted"]) for row in rows_of(out / "predictions.csv")]


def test_the_model_exports_and_matches_eager(data_dir: Path, index: tuple, tmp_path: Path) -> None:
    partition, labels, num_classes = index
    dataset = Dataset(partition["validation"], labels, data_dir)
    batch = torch.stack([dataset[i][0] for i in some(range(len(dataset)), 4)]).float()
    torch.manual_seed(0)
    model = build_model(tuple(batch.shape[1:]), num_classes).eval()
    meta = {"input_shape": list(batch.shape[1:]), "num_classes": num_classes}
    exported.export(model, batch, tmp_path / "model.pt2", meta)  # fails beyond the tolerance

    program, _ = exported.load(tmp_path / "model.pt2")
    with torch.no_grad():
        expected = model(batch[:3])  # another batch size than the export's
    torch.testing.assert_close(program(batch[:3]), expected, **exported.TOLERANCE["pt2"])
