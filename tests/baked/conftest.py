"""The generated project's plumbing tests (checkpoints, preemption, broken data, packed data,
streams, trackers, torchrun...), run here against a project baked from this template with the
default answers: the template's own model and Dataset, on tiny data they make. A user's edits
never reach them; the project's own tests (its tests/) test the user's code.

The project is baked once per test process, before these modules are collected (they import
its scripts), and put first on sys.path."""

import contextlib
import io
import json
import multiprocessing
import shutil
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from cookiecutter.main import cookiecutter

ROOT = Path(__file__).resolve().parents[2]


def bake() -> Path:
    """The template at ROOT, baked with the default answers but no data and no smoke test."""
    out = Path(tempfile.mkdtemp(prefix="baked-"))
    config = out / "cookiecutter.yaml"  # replays in here, not in ~
    config.write_text(f"replay_dir: {json.dumps(str(out / 'replay'))}\n", encoding="utf-8")
    with contextlib.redirect_stdout(io.StringIO()):
        made = cookiecutter(
            str(ROOT), no_input=True, output_dir=str(out), config_file=str(config),
            extra_context={"_create_sample_data": False, "_run_smoke_test": False},
        )  # fmt: skip
    return Path(made)


PROJECT = bake()
sys.path.insert(0, str(PROJECT))


@pytest.fixture(scope="session", autouse=True)
def _remove_the_baked_project() -> None:
    yield
    shutil.rmtree(PROJECT.parent, ignore_errors=True)


torch.set_num_threads(1)  # as OMP_NUM_THREADS, set in ../conftest.py, says to the scripts

# Run as `python pytorch_script.py`, the script is the __main__ module that multiprocessing's
# fork server imports once (Python 3.14 starts DataLoader workers by forkserver), and each
# worker is a fork of that server. Under pytest, __main__ is pytest's: name the script, so
# that the tests' forkserver workers too are forks, not new Pythons that each import torch.
if "forkserver" in multiprocessing.get_all_start_methods():  # not on Windows
    multiprocessing.set_forkserver_preload(["pytorch_script"])


@pytest.fixture
def tiny_data(tmp_path: Path) -> Path:
    """256 samples of shape 1x8x8 in 4 classes, in the article's layout; returns their directory."""
    from make_sample_data import make_sample_data

    data_dir = tmp_path / "data"
    make_sample_data(
        data_dir, num_samples=256, shape=(1, 8, 8), num_classes=4, validation_fraction=0.25
    )
    return data_dir
