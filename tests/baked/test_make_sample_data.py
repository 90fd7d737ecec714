import json
import sys
from collections import Counter
from pathlib import Path

import make_sample_data
import pytest

from baked.helpers import kill_half_way, train

ARGS = ["--num-samples", "40", "--shape", "2,3", "--num-classes", "4"]
ARGS += ["--validation-fraction", "0.25"]


def read_all(data_dir: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(data_dir.iterdir())}


def test_writes_the_article_layout(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert make_sample_data.main(["--data-dir", str(tmp_path), *ARGS]) == 0

    partition = json.loads((tmp_path / "partition.json").read_text())
    labels = json.loads((tmp_path / "labels.json").read_text())
    assert {split: len(IDs) for split, IDs in partition.items()} == {
        "train": 26, "validation": 10, "test": 4  # the test split: the answers' 0.1
    }  # fmt: skip
    IDs = [ID for split in partition.values() for ID in split]
    assert len(IDs) == len(set(IDs)) and set(IDs) == set(labels)
    assert Counter(labels.values()) == {0: 10, 1: 10, 2: 10, 3: 10}
    assert {path.stem for path in tmp_path.glob("*.pt")} == set(labels)
    assert "Wrote 40 samples of shape 2x3 (4 classes, 26 train, 10 validation, 4 test, " in (
        capsys.readouterr().out
    )


def test_no_test_split_at_test_fraction_0(tmp_path: Path) -> None:
    """--test-fraction 0: train and validation as before the test split, sample for sample."""
    assert make_sample_data.main(["--data-dir", str(tmp_path), *ARGS, "--test-fraction", "0"]) == 0
    partition = json.loads((tmp_path / "partition.json").read_text())
    assert {split: len(IDs) for split, IDs in partition.items()} == {"train": 30, "validation": 10}


def test_same_seed_same_data_other_seed_other_data(tmp_path: Path) -> None:
    for name, seed in [("a", "0"), ("b", "0"), ("c", "1")]:
        argv = ["--data-dir", str(tmp_path / name), "--seed", seed, *ARGS]
        assert make_sample_data.main(argv) == 0
    assert read_all(tmp_path / "a") == read_all(tmp_path / "b")
    assert read_all(tmp_path / "a") != read_all(tmp_path / "c")


def test_refuses_to_overwrite_without_force(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert make_sample_data.main(["--data-dir", str(tmp_path), *ARGS]) == 0
    before = read_all(tmp_path)

    assert make_sample_data.main(["--data-dir", str(tmp_path), "--seed", "1", *ARGS]) == 1
    assert "already holds data" in capsys.readouterr().err
    assert read_all(tmp_path) == before

    argv = ["--data-dir", str(tmp_path), "--seed", "1", *ARGS]
    assert make_sample_data.main([*argv, "--force"]) == 0
    assert read_all(tmp_path) != before


@pytest.mark.parametrize(
    "bad",
    [
        ["--shape", "3,x"],
        ["--shape", "3,0"],
        ["--num-samples", "0"],
        ["--validation-fraction", "1"],
        ["--num-classes", "1"],
        ["--num-samples", "3", "--validation-fraction", "0.1"],
        ["--test-fraction", "1"],
        ["--test-fraction", "-0.1"],
        ["--test-fraction", "0.75"],  # with validation's 0.25: none left to train on
    ],
)
def test_bad_arguments_exit_with_usage(
    tmp_path: Path, bad: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        make_sample_data.main(["--data-dir", str(tmp_path), *ARGS, *bad])
    assert exit_info.value.code == 2
    assert "error:" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_killed_half_way_the_data_stays_incomplete_until_rerun_with_force(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data_dir = tmp_path / "data"
    command = [sys.executable, "make_sample_data.py", "--data-dir", str(data_dir), *ARGS]
    command[command.index("40")] = "100000"  # far more than it writes before it is killed
    kill_half_way(command, lambda: len(list(data_dir.glob("*.pt"))) >= 100)

    # partition.json comes last: without it, nothing takes the samples for a data set.
    assert not (data_dir / "partition.json").exists()
    assert train(data_dir, tmp_path / "runs" / "run-1") == 1
    assert "partition.json not found" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()
    assert make_sample_data.main(["--data-dir", str(data_dir), *ARGS]) == 1
    assert "already holds data" in capsys.readouterr().err
    assert make_sample_data.main(["--data-dir", str(data_dir), *ARGS, "--force"]) == 0
    assert len(json.loads((data_dir / "labels.json").read_text())) == 40


def test_a_full_disk_is_named_and_leaves_no_data_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    save = make_sample_data.torch.save

    def save_until_the_disk_is_full(obj: object, path: Path) -> None:
        if path.name == "id-7.pt":
            Path(path).write_bytes(b"half a samp")  # what a full disk leaves
            raise OSError(28, "No space left on device")
        save(obj, path)

    monkeypatch.setattr(make_sample_data.torch, "save", save_until_the_disk_is_full)
    data_dir = tmp_path / "data"
    assert make_sample_data.main(["--data-dir", str(data_dir), *ARGS]) == 1

    err = capsys.readouterr().err
    assert err.startswith(f"error: cannot write {data_dir / 'id-7.pt'} (No space left on device; ")
    assert err.endswith(
        "free some space or choose another --data-dir, then run again with --force\n"
    )
    assert not (data_dir / "id-7.pt").exists()  # no half-written sample
    assert not (data_dir / "partition.json").exists()  # no data set that looks complete
