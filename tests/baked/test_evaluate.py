"""After training: evaluate.py gives the numbers the run's validation gave for the same
checkpoint, predict.py agrees with it sample by sample, from the checkpoint or the exported
program, and export_model.py's program matches the model within its tolerance; each bad input
is one line, with nothing written."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import evaluate
import export_model
import import_data
import numpy as np
import pack_data
import predict
import pytest
import torch
from make_sample_data import make_sample_data
from my_classes import Net
from PIL import Image
from plumbing import exported
from torch import nn

from baked.helpers import GLOO_ABORT_AT_EXIT, PROJECT, read_rows, snapshot, train

NAMES = ["ant", "bee", "cat", "dog"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run of 3 epochs on 256 samples of 1x8x8 in 4 named classes: 167 train, 51 validation
    (an odd count: uneven shares under torchrun), 38 test."""
    data_dir = tmp_path_factory.mktemp("evaluate") / "data"
    make_sample_data(data_dir, 256, (1, 8, 8), 4, validation_fraction=0.2, test_fraction=0.15)
    (data_dir / "classes.json").write_text(json.dumps(NAMES))
    run_dir = data_dir.parent / "runs" / "r"
    assert train(data_dir, run_dir, "--num-workers", "0", "--max-epochs", "3", "--lr", "3e-4") == 0
    return run_dir


def at(run_dir: Path, *argv: str) -> list[str]:
    return [run_dir.name, "--runs-dir", str(run_dir.parent), *argv]


def rows_of(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def evaluated(run_dir: Path, split: str, checkpoint: str, *flags: str) -> tuple[dict, list]:
    argv = at(run_dir, "--split", split, "--checkpoint", checkpoint, *flags)
    assert evaluate.main(argv) == 0
    out = run_dir / "eval" / f"{split}-{checkpoint}"
    predictions = out / "predictions.csv"  # none for a stream
    return json.loads((out / "metrics.json").read_text()), (
        rows_of(predictions) if predictions.exists() else None
    )


def test_evaluate_gives_the_validation_of_the_runs_epoch_and_writes_its_report(
    run_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = read_rows(run_dir / "metrics.csv")
    for checkpoint in ("last", "best"):
        metrics, predictions = evaluated(run_dir, "validation", checkpoint)
        epoch = torch.load(run_dir / f"{checkpoint}.pt", weights_only=True)["epoch"]
        row = rows[epoch - 1]
        # metrics.csv's six decimals: the same sums, in the same order, as validation's
        assert f"{metrics['loss']:.6f}" == f"{row['val_loss']:.6f}", checkpoint
        assert f"{metrics['accuracy']:.6f}" == f"{row['val_accuracy']:.6f}", checkpoint
        assert metrics["epoch"] == epoch and metrics["weights"] == "model"

    out = sorted(p.name for p in (run_dir / "eval" / "validation-best").iterdir())
    assert out == [
        "confusion.csv", "confusion.png", "metrics.json", "per_class.csv", "predictions.csv"
    ]  # fmt: skip
    assert len(predictions) == 51 and {row["label"] for row in predictions} == set(NAMES)
    confusion = np.zeros((4, 4), dtype=int)
    for row in predictions:
        confusion[NAMES.index(row["label"]), NAMES.index(row["predicted"])] += 1
    assert metrics["confusion"] == confusion.tolist()
    for c, row in enumerate(rows_of(run_dir / "eval" / "validation-best" / "per_class.csv")):
        assert row["class"] == NAMES[c] and int(row["support"]) == confusion[c].sum()
        precision = confusion[c, c] / max(confusion[:, c].sum(), 1)
        assert float(row["precision"]) == pytest.approx(precision, abs=1e-6)
        assert float(row["recall"]) == pytest.approx(confusion[c, c] / confusion[c].sum())
    out = capsys.readouterr().out
    assert "on the validation split of" in out and "class      precision  recall  f1" in out
    assert "confusion matrix (rows: label, columns: predicted)" in out


def test_from_the_pack_and_with_workers_the_same_numbers(run_dir: Path) -> None:
    data_dir = run_dir.parents[1] / "data"
    metrics, predictions = evaluated(run_dir, "test", "best")
    assert pack_data.main(["--data-dir", str(data_dir)]) == 0  # the test split packed too
    assert (data_dir / "packed" / "test" / "X.npy").exists()
    flags = ["--data-format", "packed", "--num-workers", "2", "--batch-size", "7"]
    packed, packed_predictions = evaluated(run_dir, "test", "best", *flags)
    assert packed_predictions == predictions and packed["confusion"] == metrics["confusion"]
    assert packed["loss"] == pytest.approx(metrics["loss"], rel=1e-6)  # batches of 7: other sums


@pytest.mark.slow
def test_from_a_stream_the_same_classes(run_dir: Path, tmp_path: Path) -> None:
    """A stream of the data (its test split and classes.json too), read in the stream's order:
    the same confusion matrix, the names from the stream's index."""
    pytest.importorskip("litdata", reason="the stream extra is not installed")
    data_dir = run_dir.parents[1] / "data"
    metrics, _ = evaluated(run_dir, "test", "best", "--data-format", "files")
    stream = tmp_path / "stream"
    assert pack_data.main(["--data-dir", str(data_dir), "--format", "stream", "--output",
                           str(stream)]) == 0  # fmt: skip
    flags = ["--data-format", "stream", "--data-dir", str(stream), "--num-workers", "1"]
    streamed, _ = evaluated(run_dir, "test", "best", *flags)
    assert streamed["confusion"] == metrics["confusion"] and streamed["samples"] == 38
    assert streamed["class_names"] == NAMES and streamed["loss"] == pytest.approx(metrics["loss"])
    out = run_dir / "eval" / "test-best"
    assert not (out / "predictions.csv").exists()  # a stream's samples have no IDs here


def test_predict_agrees_with_evaluate_sample_by_sample(run_dir: Path) -> None:
    _, expected = evaluated(run_dir, "validation", "last")
    out = run_dir.parent / "validation.csv"
    argv = at(run_dir, "--split", "validation", "--checkpoint", "last", "--top-k", "3")
    assert predict.main([*argv, "--out", str(out)]) == 0
    rows = rows_of(out)
    assert [(r["ID"], r["label"], r["class"]) for r in rows] == [
        (r["ID"], r["label"], r["predicted"]) for r in expected
    ]
    for row in rows:  # the 3 likeliest, in order, of probabilities that sum to 1 at most
        p = [float(row[k]) for k in ("probability", "probability_2", "probability_3")]
        assert p == sorted(p, reverse=True) and sum(p) <= 1 + 1e-6
        assert len({row["class"], row["class_2"], row["class_3"]}) == 3


def test_predict_reads_sample_files_and_images_as_import_data_makes_them(
    run_dir: Path, tmp_path: Path
) -> None:
    """Sample files, and images through import_data.py's transform: an image and the sample
    import_data.py made of it get the same probabilities."""
    data_dir = run_dir.parents[1] / "data"
    files = [str(data_dir / f"id-{n}.pt") for n in (3, 1, 2)]
    assert predict.main([*at(run_dir), *files, "--out", str(tmp_path / "files.csv")]) == 0
    assert [row["ID"] for row in rows_of(tmp_path / "files.csv")] == files

    rng = np.random.default_rng(0)
    for name in NAMES:
        (tmp_path / "images" / name).mkdir(parents=True)
        for i in range(3):
            pixels = rng.integers(0, 255, (10 + i, 12, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / "images" / name / f"{i}.png")
    imported = tmp_path / "imported"
    argv = ["--out", str(imported), "--size", "8", "--channels", "1", "--num-workers", "0"]
    assert import_data.main([str(tmp_path / "images"), *argv]) == 0
    samples = sorted(imported.glob("*.pt"))
    images = [tmp_path / "images" / p.stem.split("-")[0] / f"{p.stem.split('-')[1]}.png"
              for p in samples]  # fmt: skip
    assert predict.main([*at(run_dir), *map(str, samples), "--out", str(tmp_path / "a.csv")]) == 0
    assert predict.main([*at(run_dir), *map(str, images), "--out", str(tmp_path / "b.csv")]) == 0
    a, b = rows_of(tmp_path / "a.csv"), rows_of(tmp_path / "b.csv")
    assert [row["ID"] for row in b] == [str(path) for path in images]
    assert [(r["class"], r["probability"]) for r in a] == [
        (r["class"], r["probability"]) for r in b
    ]


def test_the_exported_program_matches_the_model_and_predict_runs_from_it(
    run_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert export_model.main(at(run_dir)) == 0
    assert "differs from the model by" in capsys.readouterr().out
    program, meta = exported.load(run_dir / "model.pt2")
    assert meta["input_shape"] == [1, 8, 8] and meta["class_names"] == NAMES
    assert meta["check"]["max_abs_diff"] <= meta["check"]["atol"]
    checkpoint = torch.load(run_dir / "best.pt", weights_only=True)
    model = Net((1, 8, 8), 4).eval()
    model.load_state_dict(checkpoint["model"])
    batch = torch.rand(5, 1, 8, 8, generator=torch.Generator().manual_seed(1))  # another size
    with torch.no_grad():
        expected = model(batch)
    torch.testing.assert_close(program(batch), expected, **exported.TOLERANCE["pt2"])

    data_dir = str(run_dir.parents[1] / "data")
    flags = ["--split", "test", "--data-dir", data_dir, "--top-k", "2"]
    assert predict.main([str(run_dir / "model.pt2"), *flags]) == 0
    from_program = rows_of(run_dir / "predictions.csv")
    assert predict.main([*at(run_dir), *flags]) == 0
    from_checkpoint = rows_of(run_dir / "predictions.csv")
    assert [r["class"] for r in from_program] == [r["class"] for r in from_checkpoint]
    for a, b in zip(from_program, from_checkpoint, strict=True):
        assert float(a["probability"]) == pytest.approx(float(b["probability"]), abs=1e-5)


@pytest.mark.slow
def test_onnx_matches_the_model_within_its_tolerance(run_dir: Path, tmp_path: Path) -> None:
    onnxruntime = pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")
    import onnx

    out = tmp_path / "model.pt2"
    assert export_model.main([*at(run_dir), "--onnx", "--out", str(out)]) == 0
    proto = onnx.load(tmp_path / "model.onnx")
    meta = {p.key: json.loads(p.value) for p in proto.metadata_props}
    assert meta["input_shape"] == [1, 8, 8] and meta["class_names"] == NAMES
    session = onnxruntime.InferenceSession(str(tmp_path / "model.onnx"))
    program, _ = exported.load(out)
    batch = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    (outputs,) = session.run(None, {session.get_inputs()[0].name: batch.numpy()})
    tolerance = exported.TOLERANCE["onnx"]
    torch.testing.assert_close(torch.from_numpy(outputs), program(batch), **tolerance)


class Other(nn.Module):
    def __init__(self, input_shape: tuple, num_classes: int) -> None:
        super().__init__()
        self.layer = nn.Linear(64, num_classes)


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("no test split", "partition.json has no 'test' split, only train, validation: pass"),
        ("data of another shape", "(test): its samples are of shape (1, 8, 9), the model takes"),
        ("another model", "best.pt holds a Net, and build_model builds a Other: use the"),
        ("another shape", "best.pt does not fit the Net that build_model builds for (1, 8, 8)"),
        ("no such run", "runs/nope/best.pt not found: name a run that finished an epoch; runs"),
        ("no such weights", "best.pt has no entry 'ema' (its state: model, optimizer, scaler):"),
        ("a missing test sample", "error: sample '{ID}': {data}/{ID}.pt not found; restore it"),
    ],
)
def test_evaluate_refuses_in_one_line_and_writes_nothing(
    run_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    case: str,
    message: str,
) -> None:
    data_dir = run_dir.parents[1] / "data"
    argv = at(run_dir, "--data-dir", str(data_dir))
    if case == "no test split":
        other = tmp_path / "data"
        make_sample_data(other, 40, (1, 8, 8), 4, validation_fraction=0.25)
        argv = at(run_dir, "--data-dir", str(other))
    if case == "data of another shape":
        other = tmp_path / "data"
        make_sample_data(other, 40, (1, 8, 9), 4, validation_fraction=0.25, test_fraction=0.25)
        argv = at(run_dir, "--data-dir", str(other))
    if case == "another model":
        monkeypatch.setattr(evaluate, "build_model", Other)
    if case == "another shape":
        monkeypatch.setattr(evaluate, "build_model", lambda shape, n: Net(shape, n + 1))
    if case == "no such run":
        argv[0] = "nope"
    if case == "no such weights":
        argv += ["--weights", "ema"]
    if case == "a missing test sample":
        ID = json.loads((data_dir / "partition.json").read_text())["test"][5]
        (data_dir / f"{ID}.pt").rename(tmp_path / "kept.pt")
        monkeypatch.setattr(evaluate, "__name__", "evaluate")  # (nothing else to change)
        message = message.format(ID=ID, data=data_dir)
        argv += ["--data-format", "files"]
    before = snapshot(run_dir.parent)
    try:
        assert evaluate.main([*argv, "--split", "test"]) == 1
    finally:
        if case == "a missing test sample":
            (tmp_path / "kept.pt").rename(data_dir / f"{ID}.pt")
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and err.startswith("error: "), err
    assert snapshot(run_dir.parent) == before


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("an unreadable image", "x.png: not an image that can be read (cannot identify image"),
        ("an empty folder", "empty: no sample files (.pt) or images there"),
        ("another model", "best.pt holds a Net, and build_model builds a Other: use the"),
        ("a sample of another shape", "is of shape (2, 8, 8), the model takes (1, 8, 8)"),
        ("not an input", "notes.txt: not a sample file (.pt), an image, or a folder of them"),
    ],
)
def test_predict_refuses_in_one_line_and_writes_nothing(
    run_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    case: str,
    message: str,
) -> None:
    inputs = [str(run_dir.parents[1] / "data" / "id-1.pt")]
    if case == "an unreadable image":
        (tmp_path / "x.png").write_bytes(b"garbage")
        inputs.append(str(tmp_path / "x.png"))
    if case == "an empty folder":
        (tmp_path / "empty").mkdir()
        inputs = [str(tmp_path / "empty")]
    if case == "another model":
        monkeypatch.setattr(predict, "build_model", Other)
    if case == "a sample of another shape":
        torch.save(torch.zeros(2, 8, 8), tmp_path / "wide.pt")
        inputs.append(str(tmp_path / "wide.pt"))
    if case == "not an input":
        (tmp_path / "notes.txt").write_text("hello")
        inputs.append(str(tmp_path / "notes.txt"))
    before = snapshot(run_dir.parent)
    assert predict.main([*at(run_dir), *inputs, "--num-workers", "0"]) == 1
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and err.startswith("error: "), err
    assert snapshot(run_dir.parent) == before


def test_pack_data_names_a_missing_test_sample(run_dir: Path, tmp_path: Path, capsys) -> None:
    """Training never reads the test split; packing does, and says which file is gone."""
    data_dir = tmp_path / "data"
    make_sample_data(data_dir, 40, (1, 8, 8), 4, validation_fraction=0.25, test_fraction=0.25)
    ID = json.loads((data_dir / "partition.json").read_text())["test"][2]
    (data_dir / f"{ID}.pt").unlink()
    assert train(data_dir, tmp_path / "runs" / "r", "--dry-run", "--batch-size", "8") == 0
    capsys.readouterr()
    assert pack_data.main(["--data-dir", str(data_dir), "--num-workers", "0"]) == 1
    assert capsys.readouterr().err.startswith(f"error: sample '{ID}': {data_dir / ID}.pt not")


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="torchrun's gloo on Windows: not supported")
def test_under_torchrun_each_sample_counts_once(run_dir: Path) -> None:
    """2 processes, 51 validation samples (26 and 25): the numbers and predictions of one."""
    one, predictions = evaluated(run_dir, "validation", "best")
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    argv = at(run_dir, "--split", "validation", "--num-workers", "1", "--device", "cpu")
    result = subprocess.run(
        [*torchrun, "evaluate.py", *argv], cwd=PROJECT, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert result.returncode == 0 or GLOO_ABORT_AT_EXIT in result.stderr, result.stderr
    assert result.stdout.count("on the validation split of") == 1  # rank 0 alone reports
    out = run_dir / "eval" / "validation-best"
    two = json.loads((out / "metrics.json").read_text())
    assert rows_of(out / "predictions.csv") == predictions
    assert two["samples"] == 51 and two["confusion"] == one["confusion"]
    assert two["loss"] == pytest.approx(one["loss"], rel=1e-6)
