"""Every way the data can go wrong, through pytorch_script.py with 0 and 2 DataLoader workers:
one line naming the file or ID and what to do, exit status 1, and the data left as it was."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pack_data
import pytest
import pytorch_script
import torch
from make_sample_data import make_sample_data
from plumbing.data import load_partition
from plumbing.loader import CAN_TIME_READS

from baked.helpers import in_one_python, snapshot, train

# A case breaks the data in data_dir and returns what the error must say.
Case = Callable[[Path, dict[str, list[str]], dict[str, int]], str]


def as_written(data_dir: Path) -> tuple[dict[str, list[str]], dict[str, int]]:
    """partition.json and labels.json as plain dicts, to change and write back."""
    return tuple(  # type: ignore[return-value]
        json.loads((data_dir / name).read_text(encoding="utf-8"))
        for name in ("partition.json", "labels.json")
    )


def write_json(data_dir: Path, name: str, obj: object) -> None:
    (data_dir / name).write_text(json.dumps(obj), encoding="utf-8")


def missing_sample(data_dir: Path, partition: dict, labels: dict) -> str:
    ID = partition["train"][10]  # not the first: the script opens that one itself
    (data_dir / f"{ID}.pt").unlink()
    return f"error: sample '{ID}': {data_dir / ID}.pt not found; restore it or remove '{ID}'"


def sample_bytes(content: Callable[[bytes], bytes]) -> Case:
    def case(data_dir: Path, partition: dict, labels: dict) -> str:
        ID = partition["train"][20]
        path = data_dir / f"{ID}.pt"
        path.write_bytes(content(path.read_bytes()))
        return f"error: sample '{ID}': cannot load {path} ("

    return case


def not_a_tensor(data_dir: Path, partition: dict, labels: dict) -> str:
    ID = partition["validation"][3]
    torch.save({"x": torch.zeros(1, 8, 8)}, data_dir / f"{ID}.pt")
    return f"error: sample '{ID}': {data_dir / ID}.pt holds a dict, not a tensor"


class RunsCode:
    """A pickle that would create a file if loaded with weights_only=False."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (open, (str(self.marker), "w"))


def runs_code(data_dir: Path, partition: dict, labels: dict) -> str:
    ID = partition["train"][5]
    torch.save(RunsCode(data_dir.parent / "code-ran"), data_dir / f"{ID}.pt")
    return f"error: sample '{ID}': cannot load {data_dir / ID}.pt (Unsupported global"


def other_sample(sample: torch.Tensor, dtype: str) -> Case:
    def case(data_dir: Path, partition: dict, labels: dict) -> str:
        ID, first = partition["train"][40], partition["train"][0]
        torch.save(sample, data_dir / f"{ID}.pt")
        return (
            f"error: sample '{ID}' is {dtype} of shape {tuple(sample.shape)}, but sample"
            f" '{first}' is torch.float32 of shape (1, 8, 8): all samples must have one shape"
        )

    return case


def bad_partition(change: Callable[[dict], object], message: str) -> Case:
    def case(data_dir: Path, partition: dict, labels: dict) -> str:
        write_json(data_dir, "partition.json", change(partition))
        return f"error: {data_dir / 'partition.json'}: {message.format(**partition)}"

    return case


def bad_labels(change: Callable[[dict, dict], object], message: str) -> Case:
    def case(data_dir: Path, partition: dict, labels: dict) -> str:
        write_json(data_dir, "labels.json", change(partition, labels))
        return f"error: {data_dir / 'labels.json'}: {message.format(**partition)}"

    return case


def malformed(name: str) -> Case:
    def case(data_dir: Path, partition: dict, labels: dict) -> str:
        (data_dir / name).write_text('{"train": ["id-1",', encoding="utf-8")
        return f"error: {data_dir / name}: not valid JSON (Expecting value"

    return case


def unlabelled_test_ID(data_dir: Path, partition: dict, labels: dict) -> str:
    """A test split (never trained on) whose ID has no label: refused all the same."""
    (data_dir / "id-999.pt").write_bytes((data_dir / f"{partition['train'][0]}.pt").read_bytes())
    write_json(data_dir, "partition.json", partition | {"test": ["id-999"]})
    return f"error: {data_dir / 'labels.json'}: no label for the ID 'id-999' listed in"


def relabel(ID_of: Callable[[dict], str], label: object) -> Callable[[dict, dict], dict]:
    return lambda partition, labels: labels | {ID_of(partition): label}


def first_train(partition: dict) -> str:
    return partition["train"][0]


CASES = {
    "missing sample": missing_sample,
    "empty sample file": sample_bytes(lambda content: b""),
    "truncated sample file": sample_bytes(lambda content: content[: len(content) // 2]),
    "garbage sample file": sample_bytes(lambda content: b"not a tensor file at all"),
    "sample not a tensor": not_a_tensor,
    "sample that runs code": runs_code,
    "sample of another shape": other_sample(torch.zeros(1, 8, 9), "torch.float32"),
    "sample of another dtype": other_sample(torch.zeros(1, 8, 8).double(), "torch.float64"),
    "partition malformed": malformed("partition.json"),
    "labels malformed": malformed("labels.json"),
    "partition not an object": bad_partition(
        lambda p: p["train"], "expected an object with the keys 'train' and 'validation', and"
    ),
    "partition without validation": bad_partition(
        lambda p: {"train": p["train"]}, "expected an object with the keys 'train' and"
    ),
    "a split not train, validation or test": bad_partition(
        lambda p: p | {"tests": p["validation"][:2]},
        "expected an object with the keys 'train' and 'validation', and 'test' if it holds a"
        " test split (nothing else), got ['tests', 'train', 'validation']",
    ),
    "empty test split": bad_partition(
        lambda p: p | {"test": []}, "'test' must be a non-empty list of sample IDs"
    ),
    "ID in train and test": bad_partition(
        lambda p: p | {"test": [p["train"][7]]}, "the ID '{train[7]}' appears in 'train' and 'test'"
    ),
    "test ID without a label": unlabelled_test_ID,
    "empty training split": bad_partition(
        lambda p: p | {"train": []}, "'train' must be a non-empty list of sample IDs"
    ),
    "empty validation split": bad_partition(
        lambda p: p | {"validation": []}, "'validation' must be a non-empty list of sample IDs"
    ),
    "fewer samples than one batch": bad_partition(
        lambda p: p | {"train": p["train"][:10]},
        "'train' lists 10 samples, fewer than one batch (--batch-size 32): lower --batch-size",
    ),
    "duplicate ID": bad_partition(
        lambda p: p | {"train": [*p["train"], p["train"][7]]},
        "the ID '{train[7]}' appears twice in 'train'",
    ),
    "ID in both splits": bad_partition(
        lambda p: p | {"validation": [*p["validation"], p["train"][7]]},
        "the ID '{train[7]}' appears in 'train' and 'validation'",
    ),
    "ID with ../": bad_partition(
        lambda p: p | {"train": ["../labels", *p["train"]]},
        "'train' holds the ID '../labels'; an ID must be a string, a file name without",
    ),
    "absolute ID": bad_partition(
        lambda p: p | {"train": [*p["train"], "/etc/passwd"]}, "'train' holds the ID '/etc/passwd'"
    ),
    "ID not a string": bad_partition(
        lambda p: p | {"train": [*p["train"], 12]}, "'train' holds the ID 12"
    ),
    "labels not an object": bad_labels(
        lambda p, labels: list(labels.values()), "expected an object mapping ID to class, got list"
    ),
    "ID without a label": bad_labels(
        lambda p, labels: {ID: c for ID, c in labels.items() if ID != p["validation"][2]},
        "no label for the ID '{validation[2]}' listed in partition.json",
    ),
    "negative label": bad_labels(
        relabel(first_train, -1), "the label of '{train[0]}' is -1; labels are integers 0, 1"
    ),
    "label a string": bad_labels(relabel(first_train, "3"), "the label of '{train[0]}' is '3'"),
    "label a float": bad_labels(relabel(first_train, 1.5), "the label of '{train[0]}' is 1.5"),
    "label a boolean": bad_labels(relabel(first_train, True), "the label of '{train[0]}' is True"),
    "label 2**64": bad_labels(
        relabel(first_train, 2**64), "the label of '{train[0]}' is 18446744073709551616; labels"
    ),
    # A label typed wrong: a model of a million (or 10^12) classes would train, or fail to
    # allocate, saying nothing of the label.
    "label 2**20": bad_labels(
        relabel(first_train, 2**20),
        "the label of '{train[0]}' is 1048576, but only 5 different labels are in use: correct"
        " it, or pass --num-classes 1048577 to train with that many classes anyway",
    ),
    "label 10**12": bad_labels(
        relabel(first_train, 10**12),
        "the label of '{train[0]}' is 1000000000000, but only 5 different labels are in use",
    ),
}


@pytest.mark.parametrize("num_workers", ["0", "2"])
@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_broken_data_is_named_and_left_as_it_was(
    tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], case: Case, num_workers
) -> None:
    earlier = tmp_path / "runs" / "run-1"  # an earlier run's directory
    earlier.mkdir(parents=True)
    (earlier / "metrics.csv").write_text("epoch,train_loss,val_loss,val_accuracy\n1,2,2,0.5\n")
    torch.save({"model": {}}, earlier / "last.pt")  # stays byte for byte, as the metrics
    message = case(tiny_data, *as_written(tiny_data))
    before = snapshot(tiny_data), snapshot(tmp_path)

    assert train(tiny_data, tmp_path / "runs" / "run-2", "--num-workers", num_workers) == 1

    err = capsys.readouterr().err
    assert err.startswith(message), err
    assert len(err.splitlines()) == 1, err
    assert "weights_only=False" not in err  # torch's own advice would run a hostile file's code
    # The data, an earlier run's metrics: as they were; no run directory, no code run.
    assert (snapshot(tiny_data), snapshot(tmp_path)) == before
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["run-1"]


def test_num_classes_trains_with_classes_absent_from_the_data_and_refuses_a_label_above_it(
    tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Labels 0 to 3 in the data, a model of 6 classes; then a label of 9 with --num-classes 6."""
    flags = ["--num-workers", "0", "--max-epochs", "1", "--num-classes", "6"]
    assert train(tiny_data, tmp_path / "runs" / "r", *flags) == 0
    checkpoint = torch.load(tmp_path / "runs" / "r" / "last.pt", weights_only=True)
    assert checkpoint["num_classes"] == 6
    capsys.readouterr()

    partition, labels = as_written(tiny_data)
    write_json(tiny_data, "labels.json", labels | {partition["validation"][1]: 9})
    assert train(tiny_data, tmp_path / "runs" / "r2", *flags) == 1
    err = capsys.readouterr().err
    expected = (
        f"error: {tiny_data / 'labels.json'}: the label of '{partition['validation'][1]}' is 9,"
        " but --num-classes 6 allows labels 0 to 5: correct it, or pass --num-classes 10\n"
    )
    assert err == expected


@pytest.mark.parametrize("data_format", ["auto", "files"])
def test_data_broken_after_packing_is_named_not_read_from_the_pack(
    tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], data_format: str
) -> None:
    """The pack no longer holds what the files do: training reads the files, and names the
    broken one."""
    assert pack_data.main(["--data-dir", str(tiny_data)]) == 0
    capsys.readouterr()
    message = missing_sample(tiny_data, *as_written(tiny_data))
    flags = ["--num-workers", "0", "--data-format", data_format]
    assert train(tiny_data, tmp_path / "runs" / "r", *flags) == 1
    err = capsys.readouterr().err
    assert err.startswith(message) and len(err.splitlines()) == 1, err
    assert not (tmp_path / "runs").exists()


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="a named pipe stands in for a hung read")
@pytest.mark.parametrize("num_workers", ["0", "2"])
def test_a_read_that_hangs_fails_within_the_loader_timeout(
    tiny_data: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    num_workers: str,
) -> None:
    """A named pipe that nobody writes blocks whoever opens it, as a stalled network file system
    does."""
    partition, _ = load_partition(tiny_data)
    hung = tiny_data / f"{partition['train'][30]}.pt"
    hung.unlink()
    os.mkfifo(hung)
    flags = ["--num-workers", num_workers, "--loader-timeout", "0.5"]
    # Stopping, DataLoader gives each worker 5 s to finish before it kills it, and the hung
    # worker never finishes: half a second is enough for the others, here.
    monkeypatch.setattr(torch.utils.data._utils, "MP_STATUS_CHECK_INTERVAL", 0.5)

    start = time.perf_counter()
    assert train(tiny_data, tmp_path / "runs" / "r", *flags) == 1
    took = time.perf_counter() - start

    starting = " (starting the workers included)" if num_workers != "0" else ""
    assert capsys.readouterr().err == (
        f"error: no batch within --loader-timeout 0.5 s{starting}: reading a sample from"
        f" {tiny_data} hangs (a stalled network file system?); check that its files read, or"
        " raise --loader-timeout\n"
    )
    assert took < 30  # 0.5 s, worker start and shut-down: not for ever


@pytest.mark.skipif(not CAN_TIME_READS, reason="no timer signal on Windows")
def test_the_read_timer_leaves_other_timers_and_threads_alone(
    tiny_data: Path, tmp_path: Path
) -> None:
    signal.setitimer(signal.ITIMER_REAL, 60)  # someone else's: a test runner's, a job's
    try:
        flags = ["--num-workers", "0", "--loader-timeout", "5", "--max-epochs", "1"]
        assert train(tiny_data, tmp_path / "runs" / "main-thread", *flags) == 0
        assert signal.getitimer(signal.ITIMER_REAL)[0] > 30  # still armed, not reset
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    # Only the main thread gets signals: elsewhere, reads in the process go untimed.
    codes = []
    thread = threading.Thread(
        target=lambda: codes.append(train(tiny_data, tmp_path / "runs" / "thread", *flags))
    )
    thread.start()
    thread.join()
    assert codes == [0]


def can_shrink_dev_shm() -> bool:
    """Whether this machine lets a process mount its own /dev/shm (Linux user namespaces)."""
    if not sys.platform.startswith("linux") or shutil.which("unshare") is None:
        return False
    probe = ["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=256k tmpfs /dev/shm"]
    return subprocess.run(probe, capture_output=True).returncode == 0


@pytest.mark.skipif(not can_shrink_dev_shm(), reason="needs unshare and user namespaces")
@pytest.mark.slow
def test_too_little_shared_memory_says_what_to_do(tmp_path: Path) -> None:
    """As in a Docker container started without --shm-size: 256 KiB of /dev/shm, batches of
    768 KiB."""
    data_dir = tmp_path / "data"
    make_sample_data(data_dir, 160, (3, 32, 32), num_classes=2, validation_fraction=0.2)

    mount = 'mount -t tmpfs -o size=256k tmpfs /dev/shm && exec "$0" "$@"'
    argv = ["--device", "cpu", "--data-dir", str(data_dir), "--batch-size", "64", "--dry-run"]
    # Both runs in one new Python, started in a mount namespace of its own with a small /dev/shm.
    with_workers, without = in_one_python(
        Path(pytorch_script.__file__).parent,
        ("pytorch_script.py", [*argv, "--num-workers", "2"]),
        ("pytorch_script.py", [*argv, "--num-workers", "0"]),
        through=("unshare", "-rm", "sh", "-c", mount),
    )
    assert with_workers.returncode == 1, with_workers.stderr
    assert with_workers.stderr == (
        "error: the DataLoader workers ran out of shared memory (/dev/shm holds 0.2 MiB),"
        " where they hand batches over: in Docker, give the container more with --shm-size=8g"
        " (or --ipc=host); or run with --num-workers 0, which needs none\n"
    )
    # As it says: without workers, the same run needs no shared memory.
    assert without.returncode == 0, without.stderr


def with_nan(data_dir: Path, IDs: list[str]) -> None:
    """One NaN in each of these samples, as a sensor or a preprocessing bug leaves them."""
    for ID in IDs:
        X = torch.load(data_dir / f"{ID}.pt", weights_only=True)
        X[0, 0, 0] = float("nan")
        torch.save(X, data_dir / f"{ID}.pt")


@pytest.mark.parametrize("num_workers", ["0", "2"])
def test_nan_samples_stop_the_run_naming_them_and_keep_the_last_good_checkpoint(
    tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], num_workers: str
) -> None:
    run_dir = tmp_path / "runs" / "r"
    flags = ["--num-workers", num_workers]
    assert train(tiny_data, run_dir, *flags, "--max-epochs", "1") == 0
    before = snapshot(run_dir)  # last.pt, best.pt, metrics.csv of epoch 1
    capsys.readouterr()
    partition, _ = as_written(tiny_data)
    nan = partition["train"][5:10]
    with_nan(tiny_data, nan)

    assert train(tiny_data, run_dir, *flags, "--max-epochs", "2", "--resume") == 1

    err = capsys.readouterr().err
    assert err.startswith("error: the training loss became NaN or infinite in epoch 2, batch ")
    assert " of its samples hold NaN or infinite values ('id-" in err and err.count("\n") == 1
    named = re.findall(r"'(id-\d+)'", err)
    assert named and set(named) <= set(nan), err  # the batch's samples with NaN, and no other
    assert snapshot(run_dir) == before


def test_a_diverging_learning_rate_stops_the_run_and_saves_nothing(
    tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    earlier = tmp_path / "runs" / "earlier"
    assert train(tiny_data, earlier, "--num-workers", "0", "--max-epochs", "1") == 0
    before = snapshot(tmp_path / "runs")
    capsys.readouterr()
    assert train(tiny_data, tmp_path / "runs" / "r", "--num-workers", "0", "--lr", "1e30") == 1
    err = capsys.readouterr().err
    assert re.fullmatch(
        r"error: the training loss became NaN or infinite in epoch 1, batch \d+, whose samples"
        r" are all finite: the model diverged; lower --lr \(now 1e\+30\)\n",
        err,
    ), err
    assert snapshot(tmp_path / "runs") == before  # the earlier run as it was, and no other


def test_pack_data_names_samples_with_nan_and_packs_them_only_if_asked(
    tiny_data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert pack_data.main(["--data-dir", str(tiny_data)]) == 0
    old = snapshot(tiny_data / "packed")
    partition, _ = as_written(tiny_data)
    nan = partition["validation"][:2] + partition["train"][:5]
    with_nan(tiny_data, nan)

    assert pack_data.main(["--data-dir", str(tiny_data)]) == 1
    named = ", ".join(repr(ID) for ID in partition["train"][:5])
    assert capsys.readouterr().err == (
        f"error: 7 samples hold NaN or infinite values ({named} and 2 more): fix or remove them,"
        " or pack them anyway with --allow-nonfinite\n"
    )
    assert snapshot(tiny_data / "packed") == old
    assert pack_data.main(["--data-dir", str(tiny_data), "--allow-nonfinite"]) == 0
