import json
from pathlib import Path

import bench_loader
import pack_data
import pytest
import torch
from plumbing import loader
from plumbing.cli import training_settings
from plumbing.packed import PackedDataset

SMALL = ["--max-samples", "64", "--repeats", "1", "--epochs", "1"]


@pytest.mark.parametrize("data_format", ["files", "packed"])
def test_one_setting_as_json(
    tiny_data: Path, capsys: pytest.CaptureFixture[str], data_format: str
) -> None:
    assert pack_data.main(["--data-dir", str(tiny_data)]) == 0
    capsys.readouterr()
    argv = ["--data-dir", str(tiny_data), "--format", data_format, "--num-workers", "1"]
    assert bench_loader.main([*argv, "--batch-size", "16", "--json", *SMALL]) == 0

    result = json.loads(capsys.readouterr().out)
    assert result["format"] == data_format and result["samples"] == 64
    assert (result["num_workers"], result["batch_size"], result["epochs"]) == (1, 16, 1)
    assert result["samples_per_s"] > 0


def test_sweep_prints_a_table_and_flags_that_pytorch_script_takes(
    tiny_data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert pack_data.main(["--data-dir", str(tiny_data)]) == 0
    capsys.readouterr()
    assert bench_loader.main(["--data-dir", str(tiny_data), "--batch-size", "16", *SMALL]) == 0

    lines = capsys.readouterr().out.splitlines()
    rows = [line.split() for line in lines if line.split()[:1] in (["files"], ["packed"])]
    assert {row[0] for row in rows} == {"files", "packed"}
    rates = [float(row[6].replace(",", "")) for row in rows]
    assert rates == sorted(rates, reverse=True) and rates[-1] > 0
    assert {row[2] for row in rows} == {"16", "64"}  # the batch size, and four times it
    assert lines[-2].startswith("fastest at --batch-size 16: ")
    command = lines[-1].split()
    assert command[:2] == ["python", "pytorch_script.py"]
    settings = training_settings(command[2:], "")
    assert settings.data_format in ("files", "packed") and settings.batch_size == 16


def test_one_setting_options_need_a_format(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        bench_loader.main(["--num-workers", "2"])
    assert "give --format" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench_loader.main(["--format", "stream"])
    assert "--format stream measures the stream at --stream URL: give it" in capsys.readouterr().err


def test_without_packed_data_the_sweep_says_how_to_add_it(
    tiny_data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert bench_loader.main(["--data-dir", str(tiny_data), *SMALL]) == 0
    assert "packed: not measured (no packed data in" in capsys.readouterr().out
    argv = ["--data-dir", str(tiny_data), "--format", "packed", "--json", *SMALL]
    assert bench_loader.main(argv) == 1
    assert "run `python pack_data.py` first" in capsys.readouterr().err


@pytest.mark.parametrize("data_format", ["files", "packed"])
def test_each_measurement_uses_the_loader_it_names(
    tiny_data: Path, monkeypatch: pytest.MonkeyPatch, data_format: str
) -> None:
    """Training's own DataLoader (plumbing.loader.make), with what the sweep varies on top."""
    assert pack_data.main(["--data-dir", str(tiny_data)]) == 0
    made, make = [], loader.make

    def recorded(*args: object, **overrides: object) -> torch.utils.data.DataLoader:
        made.append(make(*args, **overrides))
        return made[-1]

    monkeypatch.setattr(loader, "make", recorded)
    datasets, stale = bench_loader.training_sets(tiny_data, [data_format], max_samples=64)
    assert stale is None and list(datasets) == [data_format]
    dataset = datasets[data_format]
    assert isinstance(dataset, torch.utils.data.Subset) and len(dataset) == 64
    files = dataset.dataset.dataset if data_format == "packed" else dataset.dataset
    assert isinstance(dataset.dataset, PackedDataset) == (data_format == "packed")
    assert files.augment  # read as training reads its training set
    setting = {"batch_size": 16, "num_workers": 1, "persistent_workers": False}
    setting |= {"prefetch_factor": 4, "pin_memory": False}
    cpu = torch.device("cpu")
    assert bench_loader.samples_per_s(dataset, data_format, setting, cpu, epochs=2) > 0

    (generator,) = made
    assert (generator.batch_size, generator.num_workers, generator.prefetch_factor) == (16, 1, 4)
    assert generator.persistent_workers is False and generator.pin_memory is False
    assert isinstance(generator.sampler, loader.EpochSampler) and generator.sampler.shuffle
    assert generator.worker_init_fn.func is loader.init_worker  # seeded as training seeds
    packed = data_format == "packed"
    assert (generator.collate_fn is PackedDataset.collate_fn) == packed
