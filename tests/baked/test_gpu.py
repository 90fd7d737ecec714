"""The CUDA paths, on a machine with a GPU: --amp (float16 with the gradient scaler), pinned
memory and non_blocking copies, cudnn.benchmark, packed data read by workers, a one-GPU torchrun
over NCCL, and data_wait in metrics.csv. Skipped where torch finds no CUDA device: the first
machine with one says whether they work."""

import subprocess
import sys
from pathlib import Path

import pack_data
import pytest
import torch

from baked.helpers import PROJECT, read_rows, train

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here"),
]


def test_amp_on_cuda_from_packed_data_trains_resumes_and_reports_data_wait(
    tiny_data: Path, tmp_path: Path, capsys
) -> None:
    assert pack_data.main(["--data-dir", str(tiny_data)]) == 0
    run_dir = tmp_path / "runs" / "run-1"
    flags = ["--device", "cuda", "--amp", "--data-format", "packed", "--num-workers", "2"]
    flags += ["--cudnn-benchmark", "--batch-size", "16"]
    assert train(tiny_data, run_dir, *flags, "--max-epochs", "3") == 0
    out = capsys.readouterr().out
    assert "device cuda" in out and f"data: {tiny_data / 'packed'}" in out
    assert torch.backends.cudnn.benchmark
    rows = read_rows(run_dir / "metrics.csv")
    assert all(0 <= row["data_wait"] <= 1 for row in rows)
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    last = torch.load(run_dir / "last.pt", weights_only=True, map_location="cpu")
    assert last["scaler"]["scale"] > 0  # float16's scaler, enabled and saved
    assert train(tiny_data, run_dir, *flags, "--max-epochs", "4", "--resume") == 0
    assert len(read_rows(run_dir / "metrics.csv")) == 4


def test_batches_come_pinned_and_land_on_the_gpu(tiny_data: Path) -> None:
    from my_classes import Dataset
    from plumbing import cli, loader
    from plumbing.data import load_partition

    partition, labels = load_partition(tiny_data)
    settings = cli.training_settings(["--device", "cuda"], "")
    params = {"batch_size": 16, "shuffle": True, "num_workers": 2}
    generator = loader.make(Dataset(partition["train"], labels, tiny_data), params, settings,
                            torch.device("cuda"))  # fmt: skip
    assert generator.pin_memory
    X, _ = next(iter(generator))
    assert X.is_pinned()


def test_a_one_gpu_torchrun_over_nccl(tiny_data: Path, tmp_path: Path) -> None:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1"]
    command += ["pytorch_script.py", "--device", "cuda", "--data-dir", str(tiny_data)]
    command += ["--runs-dir", str(tmp_path / "runs"), "--max-epochs", "2", "--batch-size", "16"]
    command += ["--no-tensorboard", "--tracker", "none", "--num-workers", "1"]
    result = subprocess.run(command, cwd=PROJECT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "device cuda:0" in result.stdout and "epoch 2/2" in result.stdout
    assert len(read_rows(tmp_path / "runs" / "run-1" / "metrics.csv")) == 2
