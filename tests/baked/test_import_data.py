"""import_data.py: a folder of images in class subfolders, a pair of .npy files or a CSV, into
the article's layout, as training reads it; stratified, seeded, resumable, and each bad input
one line with nothing written."""

from collections import Counter
from pathlib import Path

import import_data
import numpy as np
import pytest
import torch
from my_classes import Dataset
from PIL import Image
from plumbing.data import class_names, load_partition

from baked.helpers import snapshot, train

CLASSES = ["cat", "dog", "owl"]


def make_images(root: Path, per_class: int = 10) -> Path:
    """per_class images of each class, of mixed sizes and modes, each class its own shade."""
    rng = np.random.default_rng(0)
    for c, name in enumerate(CLASSES):
        (root / name / "more").mkdir(parents=True)
        for i in range(per_class):
            size = (20 + i, 14 + 2 * i)
            pixels = (rng.integers(0, 40, (*size[::-1], 3)) + 100 * c).astype(np.uint8)
            mode = ["RGB", "L", "RGBA", "P"][i % 4]
            where = root / name / ("more" if i == 0 else "") / f"{i}.{['png', 'jpg'][i % 2]}"
            Image.fromarray(pixels).convert(mode if where.suffix == ".png" else "RGB").save(where)
    (root / "cat" / "notes.txt").write_text("not an image, left alone")
    return root


def run(*argv: str | Path) -> int:
    return import_data.main([str(arg) for arg in argv])


def test_a_folder_of_images_becomes_the_articles_layout(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    images = make_images(tmp_path / "images")
    out = tmp_path / "mydata"
    assert run(images, "--out", out, "--size", "12,16", "--num-workers", "0") == 0

    partition, labels = load_partition(out)
    assert class_names(out) == CLASSES
    assert {split: len(IDs) for split, IDs in partition.items()} == {
        "train": 21, "validation": 6, "test": 3  # of each class: 7, 2 and 1
    }  # fmt: skip
    for split, IDs in partition.items():  # stratified: each class in each split
        assert Counter(labels[ID] for ID in IDs) == {c: len(IDs) // 3 for c in range(3)}, split
    assert labels["owl-more-0"] == 2 and "cat-1" in labels  # owl/more/0.png, cat/1.jpg
    X = torch.load(out / "dog-3.pt", weights_only=True)
    assert (X.dtype, X.shape) == (torch.uint8, (3, 12, 16))  # 4 times smaller than float32
    read, label = Dataset(["dog-3"], labels, out)[0]
    assert read.dtype == torch.float32 and torch.equal(read, X.float() / 255) and label == 1
    assert "Imported 30 samples of 3x12x16 uint8 in 3 classes (cat, dog, owl) into" in (
        capsys.readouterr().out
    )
    # The same sources and seed, the same split; all CPUs, the same bytes
    again = tmp_path / "again"
    assert run(images, "--out", again, "--size", "12,16", "--num-workers", "2") == 0
    assert snapshot(again).keys() == snapshot(out).keys()
    assert all((again / name).read_bytes() == (out / name).read_bytes() for name in snapshot(out))
    # and training reads it
    assert train(out, tmp_path / "runs" / "r", "--dry-run", "--batch-size", "8") == 0


def test_grayscale_and_no_test_split(tmp_path: Path) -> None:
    images = make_images(tmp_path / "images", per_class=4)
    out = tmp_path / "gray"
    argv = ["--out", out, "--size", "8", "--channels", "1", "--test-fraction", "0"]
    assert run(images, *argv, "--validation-fraction", "0.25", "--num-workers", "0") == 0
    partition, _ = load_partition(out)
    assert list(partition) == ["train", "validation"]
    assert torch.load(out / "cat-1.pt", weights_only=True).shape == (1, 8, 8)


def test_an_unreadable_image_is_one_line_and_nothing_is_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    images = make_images(tmp_path / "images", per_class=4)
    (images / "dog" / "2.png").write_bytes(b"not a png")
    out = tmp_path / "mydata"
    assert run(images, "--out", out, "--num-workers", "2") == 1
    assert capsys.readouterr().err == (
        f"error: {images / 'dog' / '2.png'}: not an image that can be read (cannot identify"
        f" image file '{images / 'dog' / '2.png'}'): remove it, or pass --skip-unreadable to"
        " import the others\n"
    )
    assert not out.exists()

    assert run(images, "--out", out, "--num-workers", "0", "--skip-unreadable") == 0
    assert "; skipped 1 unreadable: " in capsys.readouterr().out
    _, labels = load_partition(out)
    assert len(labels) == 11 and "dog-2" not in labels and not (out / "dog-2.pt").exists()


@pytest.mark.parametrize("layout", ["empty", "flat", "empty class", "missing"])
def test_a_folder_without_classes_of_images_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], layout: str
) -> None:
    images = tmp_path / "images"
    if layout != "missing":
        images.mkdir()
    if layout == "flat":  # images, but no class subfolders
        Image.new("RGB", (4, 4)).save(images / "1.png")
    if layout == "empty class":
        make_images(images, per_class=2)
        (images / "yak").mkdir()
    before = snapshot(tmp_path)
    assert run(images, "--out", tmp_path / "mydata") == 1
    err = capsys.readouterr().err
    expected = {
        "empty": f"error: {images}: no class subfolders; expected {images}/<class>/<image>",
        "flat": f"error: {images}: no class subfolders; expected {images}/<class>/<image>",
        "empty class": f"error: {images / 'yak'} holds no images (.jpg, .jpeg, .png",
        "missing": f"error: {images}: no such folder or file",
    }[layout]
    assert err.startswith(expected) and err.count("\n") == 1, err
    assert snapshot(tmp_path) == before


def test_a_stopped_import_goes_on_where_it_stopped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    images = make_images(tmp_path / "images", per_class=6)
    out = tmp_path / "mydata"
    argv = ["--out", out, "--size", "8", "--num-workers", "0"]
    reads = []
    read = import_data.Images.read

    def stopped_after_8(self: object, i: int) -> torch.Tensor:
        if len(reads) == 8:
            raise KeyboardInterrupt  # Ctrl-C (kill -9 leaves the same: whole files, or none)
        reads.append(i)
        return read(self, i)

    monkeypatch.setattr(import_data.Images, "read", stopped_after_8)
    assert run(images, *argv) == 130
    assert "interrupted: run it again to go on where it stopped" in capsys.readouterr().err
    assert len(list(out.glob("*.pt"))) == 8 and not (out / "partition.json").exists()

    counted = lambda self, i: reads.append(i) or read(self, i)  # noqa: E731
    monkeypatch.setattr(import_data.Images, "read", counted)
    assert run(images, *argv) == 0
    assert "going on with the import a stopped run left in" in capsys.readouterr().out
    assert sorted(reads) == list(range(18))  # each image read once over both runs
    whole = tmp_path / "whole"
    assert run(images, "--out", whole, "--size", "8", "--num-workers", "0") == 0
    assert {n: p[2] for n, p in snapshot(out).items()} == {
        n: p[2].replace(str(whole).encode(), str(out).encode()) if n == "import.json" else p[2]
        for n, p in snapshot(whole).items()
    }
    # Data already there stays, unless --force
    assert run(images, *argv) == 1
    assert "already holds data (partition.json, labels.json, import.json" in (
        capsys.readouterr().err
    )


def test_arrays_and_a_csv(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 6)).astype(np.float32)
    np.save(tmp_path / "X.npy", X)
    np.save(tmp_path / "y.npy", np.array(["b", "a", "c", "a"] * 10))
    assert run(tmp_path / "X.npy", tmp_path / "y.npy", "--out", tmp_path / "a", "--shape",
               "2,3", "--num-workers", "0") == 0  # fmt: skip
    _, labels = load_partition(tmp_path / "a")
    assert class_names(tmp_path / "a") == ["a", "b", "c"] and labels["id-1"] == 1
    assert torch.equal(torch.load(tmp_path / "a" / "id-2.pt"), torch.from_numpy(X[1]).reshape(2, 3))

    lines = ["species,f1,f2,name"] + [f"{i % 2},{i},{i / 2},s{i}" for i in range(20)]
    (tmp_path / "t.csv").write_text("\n".join(lines) + "\n")
    assert run(tmp_path / "t.csv", "--label-column", "species", "--id-column", "name", "--out",
               tmp_path / "c", "--num-workers", "0") == 0  # fmt: skip
    _, labels = load_partition(tmp_path / "c")
    assert class_names(tmp_path / "c") is None and labels["s3"] == 1  # numbers: no names
    assert torch.load(tmp_path / "c" / "s3.pt").tolist() == [3.0, 1.5]
    capsys.readouterr()

    (tmp_path / "t.csv").write_text("\n".join([*lines, "1,x,2,s99"]) + "\n")
    argv = ["--label-column", "species", "--id-column", "name", "--out", tmp_path / "d"]
    assert run(tmp_path / "t.csv", *argv) == 1
    assert capsys.readouterr().err == (
        f"error: {tmp_path / 't.csv'}, line 22: not a number in each of its columns\n"
    )
    assert run(tmp_path / "t.csv", "--out", tmp_path / "d") == 1
    assert "no column 'label' in its header ['species', 'f1', 'f2', 'name']" in (
        capsys.readouterr().err
    )
    (tmp_path / "t.csv").write_text("\n".join([*lines, "1,2,s99"]) + "\n")
    assert run(tmp_path / "t.csv", *argv) == 1
    assert (
        capsys.readouterr().err == f"error: {tmp_path / 't.csv'}, line 22: 3 fields, its header 4\n"
    )
    assert not (tmp_path / "d").exists()
