"""A baked project's train.sbatch on a real one-node SLURM cluster: warned of its time limit,
then requeued as a preempted job is, it stops after a batch each time, runs again, goes on
from where it stopped, and ends with the weights of a run that was never stopped."""

import os
import random
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from one_node_slurm import FINAL_STATES, SlurmCluster

from conftest import NO_DATA, read_metrics, run

# 950 samples to train on, 50 to validate: nearly all of an epoch is training, where a signal
# stops a run inside the epoch. 1 worker, batches of 8: an epoch of 119 steps takes a second.
DATA = {"_validation_fraction": 0.05, "_run_smoke_test": False}
FLAGS = ["--device", "cpu", "--batch-size", "8", "--num-workers", "1", "--max-epochs", "5"]
FLAGS += ["--no-tensorboard", "--tracker", "none"]
STOPPED = re.compile(r"stopped by (SIGUSR1|SIGTERM) after (batch \d+ of epoch \d+|epoch \d+)")


def wait_for(path: Path, text: str, cluster: SlurmCluster, job: int, after: int = 0) -> None:
    """Until path holds text at least after + 1 times (a job's output file, say)."""
    deadline = time.monotonic() + 120
    while not (path.exists() and path.read_text().count(text) > after):
        if time.monotonic() > deadline or cluster.job_info(job).get("JobState") in FINAL_STATES:
            output = path.read_text() if path.exists() else "(no output file)"
            pytest.fail(f"{text!r} not in {path}; job {cluster.job_info(job)}:\n{output}")
        time.sleep(0.05)


@pytest.mark.slow
def test_train_sbatch_survives_its_time_limit_and_a_preemption_bit_for_bit(
    slurm_cluster: SlurmCluster, cookies
) -> None:
    result = cookies.bake(extra_context=NO_DATA | DATA | {"_create_sample_data": True})
    assert result.exit_code == 0, result.exception
    project = result.project_path
    env = slurm_cluster.env | {"PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    # What the job must end with: the same run, never stopped, started as the job starts it.
    torchrun = ["torchrun", "--standalone", "--nproc-per-node=1", "pytorch_script.py"]
    run([*torchrun, *FLAGS, "--run-name", "whole"], project, env)

    job = slurm_cluster.sbatch("--cpus-per-task", str(slurm_cluster.cpus), "--time", "10",
                               "train.sbatch", *FLAGS, cwd=project, env=env)  # fmt: skip
    output = project / f"slurm-{project.name}-{job}.out"
    try:
        # Its time limit near (what --signal=B:USR1@180 sends), once an epoch has ended
        wait_for(output, "epoch 1/5", slurm_cluster, job)
        time.sleep(random.uniform(0, 0.3))
        slurm_cluster.run("scancel", "--signal=USR1", "--batch", str(job))
        wait_for(output, "time limit near: requeued", slurm_cluster, job)
        # Run again, it is preempted (SIGTERM to every process) once it trains again
        wait_for(output, "resuming", slurm_cluster, job)
        ended = output.read_text().count("epoch ")
        wait_for(output, "epoch ", slurm_cluster, job, after=ended)
        time.sleep(random.uniform(0, 0.3))
        slurm_cluster.run("scontrol", "requeue", str(job))
        state = slurm_cluster.wait_state(job, FINAL_STATES, timeout=180, min_restarts=2)
    finally:
        subprocess.run(["scancel", str(job)], env=slurm_cluster.env, check=False)
    text = output.read_text()
    assert state == "COMPLETED", f"job {job} ended {state}:\n{text}"

    stops = STOPPED.findall(text)
    assert [signal for signal, _ in stops] == ["SIGUSR1", "SIGTERM"], text
    for _, where in stops:  # each run of the job goes on from where the one before stopped
        assert f"resuming runs/slurm-{job} after {where}\n" in text, text
    # Nearly every signal lands inside an epoch; both at an epoch's end: 1 in 2,000 or so.
    assert any(where.startswith("batch") for _, where in stops), text
    assert text.count(f"job {job} (run ") == 3 and "epoch 5/5" in text, text
    assert "]: Traceback" not in text, text  # a rank's; torchrun's own SignalException is expected

    whole, halves = (project / "runs" / name for name in ("whole", f"slurm-{job}"))
    weights = [torch.load(d / "last.pt", weights_only=True)["model"] for d in (whole, halves)]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0]), (
        "requeued twice, the job ends with other weights than a run never stopped"
    )
    columns = ("epoch", "train_loss", "val_loss", "val_accuracy")  # data_wait is a time
    rows = [
        [[row[c] for c in columns] for row in read_metrics(d / "metrics.csv")]
        for d in (whole, halves)
    ]
    assert rows[0] == rows[1]
