"""Bake the template with pytest-cookies and run what it bakes: every answer ends in training."""

import ast
import json
import os
import re
import sys
from pathlib import Path

import pytest
import yaml

from conftest import NO_DATA, defaults, python_files, read_metrics, run

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ARTICLE_LAYOUT = {
    ".gitignore",
    ".cookiecutter.json",
    ".pre-commit-config.yaml",
    ".github/workflows/ci.yml",
    "README.md",
    "pyproject.toml",
    "my_classes.py",
    "pytorch_script.py",
    "make_sample_data.py",
    "import_data.py",
    "evaluate.py",
    "predict.py",
    "export_model.py",
    "pack_data.py",
    "bench_loader.py",
    "plot_metrics.py",
    "train.sbatch",
    "plumbing/__init__.py",
    "plumbing/checkpoints.py",
    "plumbing/cli.py",
    "plumbing/data.py",
    "plumbing/distributed.py",
    "plumbing/errors.py",
    "plumbing/evaluation.py",
    "plumbing/exits.py",
    "plumbing/exported.py",
    "plumbing/facts.py",
    "plumbing/files.py",
    "plumbing/images.py",
    "plumbing/index.py",
    "plumbing/loader.py",
    "plumbing/metrics.py",
    "plumbing/packed.py",
    "plumbing/preemption.py",
    "plumbing/runs.py",
    "plumbing/seeding.py",
    "plumbing/stream.py",
    "plumbing/trackers.py",
    "plumbing/training.py",
    "data/.gitkeep",
    "tests/conftest.py",
    "tests/test_dataset.py",
    "tests/test_model.py",
    "tests/test_training.py",
    "tests/test_after_training.py",
}


def source_files(project: Path) -> set[str]:
    """Every file but the data, the runs and the caches that running the project leaves."""
    files = {p.relative_to(project).as_posix() for p in project.rglob("*") if p.is_file()}
    made = ("data/", "runs/", ".pytest_cache/", ".ruff_cache/")
    return {f for f in files if f == "data/.gitkeep" or not f.startswith(made)} - {
        f for f in files if "__pycache__/" in f
    }


def assert_clean_render(project: Path) -> None:
    for path in project.rglob("*"):
        if path.is_file() and path.suffix != ".pt":
            # GitHub's own ${{ expressions }} are meant to be there.
            text = re.sub(r"\$\{\{.*?\}\}", "", path.read_text(encoding="utf-8"))
            assert "{{" not in text and "{%" not in text, f"Jinja left in {path}"
    for path in python_files(project):
        # feature_version: the syntax must also parse on Python 3.10, the oldest we support.
        ast.parse(path.read_text(encoding="utf-8"), str(path), feature_version=(3, 10))
    tomllib.loads((project / "pyproject.toml").read_text(encoding="utf-8"))
    for name in (".pre-commit-config.yaml", ".github/workflows/ci.yml"):
        assert isinstance(yaml.safe_load((project / name).read_text(encoding="utf-8")), dict)
    json.loads((project / ".cookiecutter.json").read_text(encoding="utf-8"))


@pytest.mark.slow
def test_defaults_make_data_pass_the_smoke_test_own_tests_and_ruff(cookies, capfd) -> None:
    result = cookies.bake()

    assert result.exit_code == 0, result.exception
    project = result.project_path
    assert project.name == "my_pytorch_project"
    out = capfd.readouterr().out
    assert "Wrote 1000 samples of shape 3x32x32 (10 classes, 700 train, 200 validation, 100" in out
    assert "Smoke test passed in" in out and "validation accuracy" in out
    assert source_files(project) == ARTICLE_LAYOUT
    assert_clean_render(project)

    partition = json.loads((project / "data" / "partition.json").read_text())
    labels = json.loads((project / "data" / "labels.json").read_text())
    assert [len(IDs) for IDs in partition.values()] == [700, 200, 100]  # train, validation, test
    assert len(list((project / "data").glob("*.pt"))) == len(labels) == 1000
    assert not (project / "runs").exists(), "the smoke test must not leave metrics behind"
    assert not (project / "runs").exists(), "nor a run directory"

    baked = {k: v for k, v in defaults(project).items() if k not in ("lr", "seed", "device")}
    assert baked == {
        "data_dir": "data",
        "batch_size": 64,
        "shuffle": True,
        "num_workers": 4,
        "prefetch_factor": 2,
        "loader_timeout": 0,
        "data_format": "auto",
        "max_epochs": 100,
        "cudnn_benchmark": True,
        "runs_dir": "runs",
        "run_name": None,
        "resume": None,
        "tensorboard": False,
        "tracker": "none",
        "log_model": False,
        "amp": False,
        "dry_run": False,
        "num_samples": 1000,
        "shape": [3, 32, 32],
        "num_classes": 10,
        "validation_fraction": 0.2,
        "test_fraction": 0.1,
        "force": False,
    }
    # The project's own tests, on its data, packed: the packed copy's test runs too.
    run([sys.executable, "pack_data.py"], project)
    result = run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"], project)
    assert "skipped" not in result.stdout.strip().splitlines()[-1], result.stdout
    run([sys.executable, "-m", "ruff", "check", "--no-cache", "."], project)
    run([sys.executable, "-m", "ruff", "format", "--check", "--no-cache", "."], project)


COMBINATIONS = [
    pytest.param(
        {"shuffle": False, "_cudnn_benchmark": False, "num_workers": 0, "batch_size": 16,
         "max_epochs": 3, "sample_shape": "20", "num_classes": 3, "_num_samples": 120,
         "_validation_fraction": 0.25},
        id="1d-no-shuffle-no-cudnn-benchmark-0-workers",
    ),
    pytest.param(
        {"num_workers": 1, "batch_size": 7, "max_epochs": 4, "sample_shape": "4, 16",
         "num_classes": 2, "_num_samples": 50, "_validation_fraction": 0.5, "tracker": "mlflow"},
        id="2d-odd-batch-1-worker-mlflow",
    ),
    pytest.param(
        {"num_workers": 2, "batch_size": 32, "max_epochs": 3, "sample_shape": "1,28,28",
         "num_classes": 10, "_num_samples": 400, "_validation_fraction": 0.1, "tracker": "wandb"},
        id="image-2-workers-wandb",
    ),
]  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("answers", COMBINATIONS)
def test_answers_reach_the_code_and_the_project_trains(cookies, answers: dict) -> None:
    result = cookies.bake(extra_context=answers)

    assert result.exit_code == 0, result.exception
    project = result.project_path
    assert_clean_render(project)
    shape = [int(n) for n in answers["sample_shape"].split(",")]
    expected = {
        "shuffle": answers.get("shuffle", True),
        "cudnn_benchmark": answers.get("_cudnn_benchmark", True),
        "num_workers": answers["num_workers"],
        "batch_size": answers["batch_size"],
        "max_epochs": answers["max_epochs"],
        "shape": shape,
        "num_classes": answers["num_classes"],
        "num_samples": answers["_num_samples"],
        "validation_fraction": answers["_validation_fraction"],
        "tracker": answers.get("tracker", "none"),
    }
    baked = defaults(project)
    assert {k: baked[k] for k in expected} == expected

    num_validation = round(answers["_num_samples"] * answers["_validation_fraction"])
    num_test = round(answers["_num_samples"] * 0.1)  # the default test fraction
    partition = json.loads((project / "data" / "partition.json").read_text())
    assert len(partition["validation"]) == num_validation and len(partition["test"]) == num_test
    assert len(partition["train"]) == answers["_num_samples"] - num_validation - num_test

    # The article's script with the answers as its defaults, as a user runs it; W&B offline, as
    # for a user not logged in, its own files kept in the project.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "WANDB_"))}
    env |= {f"WANDB_{d}_DIR": str(project / "wandb-home") for d in ("CONFIG", "CACHE", "DATA")}
    env["NETRC"] = str(project / "no-netrc")
    out = run([sys.executable, "pytorch_script.py"], project, env).stdout
    assert f"of shape {tuple(shape)}, {answers['num_classes']} classes" in out
    run_dir = project / "runs" / "run-1"
    rows = read_metrics(run_dir / "metrics.csv")
    assert len(rows) == answers["max_epochs"]
    assert rows[-1]["val_accuracy"] > 1.5 / answers["num_classes"]  # well above chance
    tracker = answers.get("tracker", "none")
    assert (run_dir / "tracker.json").exists() is (tracker != "none")
    if tracker == "mlflow":
        assert "mlflow: logging to run" in out and (project / "runs" / "mlflow.db").exists()
    if tracker == "wandb":
        assert "wandb: offline, in" in out
        assert len(list((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))) == 1


AWKWARD = {
    "project_name": "Ünïcödé «Projekt» \"quoted\" 'single' back\\slash",
    "description": 'Says """hi""" \\ and \'bye\'\nover\ttwo lines 🚀; """; open("PWNED", "w"); """',
    "author": 'O\'Brien "Bob" Ñandú 🦙 \\',
}


def test_awkward_text_comes_out_literally_and_nothing_runs(cookies, tmp_path: Path) -> None:
    result = cookies.bake(extra_context=AWKWARD | NO_DATA)

    assert result.exit_code == 0, result.exception
    project = result.project_path
    assert project.name == "unicode_projekt_quoted_single_back_slash"
    assert_clean_render(project)
    meta = tomllib.loads((project / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert meta["description"] == AWKWARD["description"]
    assert meta["authors"] == [{"name": AWKWARD["author"]}]
    assert meta["name"] == project.name
    readme = (project / "README.md").read_text(encoding="utf-8")
    assert AWKWARD["project_name"] in readme and AWKWARD["description"] in readme
    saved = json.loads((project / ".cookiecutter.json").read_text(encoding="utf-8"))
    assert {k: saved["cookiecutter"][k] for k in AWKWARD} == AWKWARD
    assert not list(project.parent.rglob("PWNED")) and not Path("PWNED").exists()
