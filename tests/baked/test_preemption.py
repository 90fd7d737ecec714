"""SIGTERM and SIGUSR1, as a cluster sends them to preempt a job: the run stops after a batch,
saves where it is inside the epoch, exits 75, and --resume ends with the weights and metrics of
a run that was never stopped."""

import os
import random
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import pytorch_script
import torch
from my_classes import Dataset
from plumbing import loader, preemption
from plumbing.data import load_partition

from baked.helpers import (
    AUGMENTATION,
    GLOO_ABORT_AT_EXIT,
    edited_project,
    read_rows,
    snapshot,
    train,
    weights,
)

# A random flip, as a user adds one: what each batch draws must be drawn again, the same, after
# a resume. And a slower read of training samples, so that a signal at a random moment lands
# inside an epoch far more often than in the short validation after it.
SLOW_RANDOM_AUGMENTATION = (
    AUGMENTATION[0],
    AUGMENTATION[1],
    AUGMENTATION[2].replace("        return X", "        time.sleep(0.002)\n        return X"),
)
IMPORT_TIME = ("my_classes.py", "import math\n", "import math\nimport time\n")
STOPPED = re.compile(
    r"stopped by (.+?) after batch (\d+) of epoch (\d+): (\S+) holds it;"
    r" --resume halves goes on from there"
)


def launch(project: Path, data_dir: Path, *flags: str, ranks: int = 1) -> subprocess.Popen:
    """pytorch_script.py of project on the CPU, in a process group of its own (a job's)."""
    command = [sys.executable, "pytorch_script.py"]
    if ranks > 1:
        command[1:1] = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}"]
    command += ["--device", "cpu", "--data-dir", str(data_dir), "--runs-dir", str(project / "runs")]
    command += [
        "--no-tensorboard",
        "--tracker",
        "none",
        "--batch-size",
        "8",
        "--max-epochs",
        "4",
        *flags,
    ]
    return subprocess.Popen(
        command, cwd=project, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip


def finished(process: subprocess.Popen) -> subprocess.CompletedProcess:
    try:
        out, err = process.communicate(timeout=300)
    except subprocess.TimeoutExpired:  # none of its processes left behind (torchrun's ranks)
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


def rows_in(metrics_csv: Path) -> int:
    return len(metrics_csv.read_text().splitlines()) - 1 if metrics_csv.exists() else 0


def stop_inside_an_epoch(
    project: Path, data_dir: Path, flags: list[str], send: Callable[[subprocess.Popen], None],
    ranks: int = 1, delay: float = 0.3,
) -> tuple[int, subprocess.CompletedProcess, re.Match]:  # fmt: skip
    """Start the run `halves` as a requeued job does (--resume, with nothing to resume yet), and
    once an epoch has ended, send it a signal at a random moment of the next delay seconds;
    again from its checkpoint in the rare case that the run stopped at the end of an epoch.
    Returns the stopped run's process id, what it did, and its line."""
    metrics_csv = project / "runs" / "halves" / "metrics.csv"
    for _ in range(3):
        before = rows_in(metrics_csv)
        process = launch(project, data_dir, *flags, "--resume", "halves", ranks=ranks)
        deadline = time.monotonic() + 120
        while rows_in(metrics_csv) == before:
            assert process.poll() is None, finished(process).stderr
            assert time.monotonic() < deadline, "no epoch ended within 120 s"
            time.sleep(0.01)
        time.sleep(random.uniform(0, delay))
        send(process)
        result = finished(process)
        stopped = STOPPED.search(result.stderr)
        if stopped:
            return process.pid, result, stopped
        assert "after epoch" in result.stderr, result.stderr  # validation's end: go on, again
    pytest.fail("three signals in a row came outside the training of an epoch")


def no_process_left(pid: int) -> bool:
    """Whether every process of the group of the run `pid` (DataLoader workers too) has exited."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


def same_run(project: Path) -> None:
    """The runs whole and halves end with the same weights and the same metrics."""
    whole, halves = (weights(project / "runs" / name) for name in ("whole", "halves"))
    assert all(torch.equal(whole[k], halves[k]) for k in whole), (
        "stopped and resumed, the run ends with other weights than never stopped"
    )
    columns = ("epoch", "train_loss", "val_loss", "val_accuracy")  # data_wait is a time
    whole, halves = (
        read_rows(project / "runs" / name / "metrics.csv") for name in ("whole", "halves")
    )
    assert [[r[c] for c in columns] for r in whole] == [[r[c] for c in columns] for r in halves]


@pytest.mark.slow
@pytest.mark.parametrize(
    "num_workers, signum, to_group, twice",
    [
        ("0", signal.SIGTERM, False, False),
        # SLURM signals every process of a job step: the DataLoader workers get it too.
        ("2", signal.SIGUSR1, True, True),
    ],
    ids=["0 workers, SIGTERM", "2 workers, SIGUSR1 twice to every process"],
)
def test_a_signal_stops_after_a_batch_and_resume_ends_bit_for_bit(
    tmp_path: Path, tiny_data: Path, num_workers: str, signum: int, to_group: bool, twice: bool
) -> None:
    project = edited_project(tmp_path, IMPORT_TIME, SLOW_RANDOM_AUGMENTATION)
    flags = ["--num-workers", num_workers]
    whole = finished(launch(project, tiny_data, *flags, "--run-name", "whole"))
    assert whole.returncode == 0, whole.stderr

    def send(process: subprocess.Popen) -> None:
        for _ in range(2 if twice else 1):  # the second while the first is being handled
            if to_group:
                os.killpg(process.pid, signum)
            else:
                process.send_signal(signum)
            time.sleep(0.001)

    run_dir = project / "runs" / "halves"
    pid, result, stopped = stop_inside_an_epoch(project, tiny_data, flags, send)
    assert result.returncode == preemption.RESUMABLE == 75, result.stderr
    assert stopped[1] == signal.Signals(signum).name and stopped[4] == str(run_dir / "last.pt")
    assert result.stderr.endswith(stopped[0] + "\n") and "Traceback" not in result.stderr
    assert no_process_left(pid), "a DataLoader worker outlived the run"
    # Whole, and no temporary file left
    assert sorted(p.name for p in run_dir.iterdir()) == [
        "best.pt", "last.pt", "metrics.csv", "settings.json",
    ]  # fmt: skip
    last = torch.load(run_dir / "last.pt", weights_only=True)
    batch, epoch = int(stopped[2]), int(stopped[3])
    assert (last["epoch"], last["inside"]["epoch"], last["inside"]["batches"]) == (
        epoch - 1, epoch, batch,
    )  # fmt: skip
    assert 1 <= batch <= 24  # 192 training samples, 8 a batch

    resumed = finished(launch(project, tiny_data, *flags, "--resume", "halves"))
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming {run_dir} after batch {batch} of epoch {epoch}\n" in resumed.stdout
    same_run(project)


def rank_1(torchrun: subprocess.Popen) -> int:
    """The process id of rank 1, a child of torchrun (Linux's /proc)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for child in Path("/proc").glob("[0-9]*"):
            try:
                parent = int((child / "stat").read_text().rsplit(")", 1)[1].split()[1])
                environ = (child / "environ").read_bytes().split(b"\0")
            except (OSError, ValueError, IndexError):
                continue  # gone, or not ours
            if parent == torchrun.pid and b"RANK=1" in environ:
                return int(child.name)
        time.sleep(0.05)
    pytest.fail("torchrun started no rank 1 within 60 s")


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="finds rank 1's process in Linux's /proc")
def test_a_signal_to_one_rank_stops_every_rank_after_the_same_batch(
    tmp_path: Path, tiny_data: Path, capsys
) -> None:
    """Under torchrun, rank 1 alone gets SIGUSR1: both ranks stop after the same batch, rank 0
    saves what each has, and a resumed torchrun ends as one never stopped."""
    project = edited_project(tmp_path, IMPORT_TIME, SLOW_RANDOM_AUGMENTATION)
    # 24 batches an epoch on each rank; the ranks vote after every 10th (the 10th, 20th, ...
    # of the run), so a signal early in an epoch stops the run inside it.
    flags = ["--num-workers", "1", "--batch-size", "4"]
    assert preemption.VOTE_EVERY == 10
    whole = finished(launch(project, tiny_data, *flags, "--run-name", "whole", ranks=2))
    assert whole.returncode == 0 or GLOO_ABORT_AT_EXIT in whole.stderr, whole.stderr

    def send(torchrun: subprocess.Popen) -> None:
        os.kill(rank_1(torchrun), signal.SIGUSR1)

    run_dir = project / "runs" / "halves"
    _, result, stopped = stop_inside_an_epoch(project, tiny_data, flags, send, 2, delay=0.05)
    assert stopped[1] == "a signal of another rank", "rank 0 got none: it stops on rank 1's"
    assert result.stderr.count("exitcode  : 75") == 2, result.stderr  # both ranks, resumable
    last = torch.load(run_dir / "last.pt", weights_only=True)
    assert last["inside"]["batches"] == int(stopped[2]) and len(last["inside"]["ranks"]) == 2

    # Where 2 processes stopped inside an epoch, 1 cannot go on: one line, nothing changed.
    before = snapshot(run_dir)
    alone = train(tiny_data, run_dir, "--resume", "halves", *flags)
    assert alone == 1 and snapshot(run_dir) == before
    assert capsys.readouterr().err == (
        f"error: {run_dir / 'last.pt'} was saved inside epoch {stopped[3]} by 2 processes, this"
        " run has 1: resume with as many (torchrun --nproc_per_node), or start a new run"
        " (--run-name)\n"
    )

    resumed = finished(launch(project, tiny_data, *flags, "--resume", "halves", ranks=2))
    assert resumed.returncode == 0 or GLOO_ABORT_AT_EXIT in resumed.stderr, resumed.stderr
    same_run(project)


def test_a_signal_during_validation_stops_at_the_end_of_the_epoch(
    tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    run_dir = tmp_path / "runs" / "run-1"
    validate, handler = pytorch_script.validate, signal.getsignal(signal.SIGTERM)

    def validate_and_get_a_signal(*args: object) -> tuple[float, float]:
        signal.raise_signal(signal.SIGTERM)
        return validate(*args)

    monkeypatch.setattr(pytorch_script, "validate", validate_and_get_a_signal)
    assert train(tiny_data, run_dir, "--num-workers", "0", "--max-epochs", "3") == 75
    assert capsys.readouterr().err == (
        f"stopped by SIGTERM after epoch 1: {run_dir / 'last.pt'} holds it; --resume run-1 goes"
        " on from there\n"
    )
    last = torch.load(run_dir / "last.pt", weights_only=True)
    assert (last["epoch"], last["inside"]) == (1, None)
    assert signal.getsignal(signal.SIGTERM) == handler, "the run's handler stayed"
    assert int(preemption.holding()) == 0, "DataLoader workers would never end"

    # In the last epoch, there is nothing left to stop: the run ends as usual.
    assert train(tiny_data, run_dir, "--num-workers", "0", "--max-epochs", "2", "--resume") == 0
    assert torch.load(run_dir / "last.pt", weights_only=True)["epoch"] == 2


def test_a_resume_with_another_batch_size_or_other_data_is_refused(
    tiny_data: Path, tmp_path: Path, capsys
) -> None:
    """A requeued job passes --resume every time: a last.pt written with other settings is
    refused in one line, and nothing of the run changes."""
    run_dir = tmp_path / "runs" / "run-1"
    assert train(tiny_data, run_dir, "--num-workers", "0", "--max-epochs", "1") == 0
    before = snapshot(run_dir)
    capsys.readouterr()

    flags = ["--num-workers", "0", "--max-epochs", "2", "--resume"]
    assert train(tiny_data, run_dir, *flags, "--batch-size", "16") == 1
    assert capsys.readouterr().err == (
        f"error: {run_dir / 'last.pt'} was saved with --batch-size 32, this run has 16: resume"
        " with --batch-size 32, or start a new run (--run-name)\n"
    )
    labels = tiny_data / "labels.json"
    labels.write_text(labels.read_text().replace(": 0", ": 1", 1))  # one label changed
    assert train(tiny_data, run_dir, *flags) == 1
    assert capsys.readouterr().err == (
        f"error: {run_dir / 'last.pt'} was saved on other data: {tiny_data / 'partition.json'}"
        " or labels.json changed since; put them back, or start a new run (--run-name)\n"
    )
    assert snapshot(run_dir) == before


def test_an_epoch_resumed_inside_reads_the_rest_of_the_same_order(tiny_data: Path) -> None:
    """The batches trained before the stop are skipped, never read; the next epoch is whole."""
    partition, labels = load_partition(tiny_data)
    sampler = loader.EpochSampler(Dataset(partition["train"], labels, tiny_data), True, seed=3)
    sampler.set_epoch(2)
    order = list(sampler)
    sampler.set_epoch(2, start=40)
    assert list(sampler) == order[40:] and len(sampler) == len(order) - 40
    sampler.set_epoch(3)
    assert len(list(sampler)) == len(order) and list(sampler) != order


def test_a_stop_after_the_last_batch_of_an_epoch_resumes(
    tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    """192 samples in batches of 10: the 20th, the last, holds 2. Stopped after it, the run
    goes on with the epoch's validation, and ends as one never stopped; with another --seed,
    whose order the stop does not know, it is refused."""
    flags = ["--num-workers", "0", "--max-epochs", "2", "--batch-size", "10"]
    assert train(tiny_data, tmp_path / "runs" / "whole", *flags) == 0
    requested, batches = preemption.StopSignals.requested, []

    def signalled_at_the_last_batch(self: preemption.StopSignals) -> bool:
        batches.append(1)
        if len(batches) == 20:
            signal.raise_signal(signal.SIGTERM)
        return requested(self)

    monkeypatch.setattr(preemption.StopSignals, "requested", signalled_at_the_last_batch)
    run_dir = tmp_path / "runs" / "halves"
    assert train(tiny_data, run_dir, *flags) == 75
    assert capsys.readouterr().err == (
        f"stopped by SIGTERM after batch 20 of epoch 1: {run_dir / 'last.pt'} holds it;"
        " --resume halves goes on from there\n"
    )
    monkeypatch.undo()

    before = snapshot(run_dir)
    assert train(tiny_data, run_dir, *flags, "--resume", "--seed", "1") == 1
    assert capsys.readouterr().err == (
        f"error: {run_dir / 'last.pt'} was saved inside epoch 1 of a run with --seed 0"
        " --shuffle, whose order of samples it goes on in: resume with --seed 0 --shuffle, or"
        " start a new run (--run-name)\n"
    )
    assert snapshot(run_dir) == before
    assert train(tiny_data, run_dir, *flags, "--resume") == 0
    assert "resuming" in capsys.readouterr().out
    same_run(tmp_path)
