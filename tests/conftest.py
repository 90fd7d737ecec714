"""Helpers for baking the template and running what it bakes."""

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NO_DATA = {"create_sample_data": False, "run_smoke_test": False}


def run(
    args: list[str], cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """Run a command; on failure, show everything it printed."""
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, (
        f"{args} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    )
    return result


def defaults(project: Path) -> dict:
    """The command-line defaults of the baked scripts, read in a fresh Python."""
    code = (
        "import json, make_sample_data\n"
        "from plumbing.cli import training_args\n"
        "a = vars(training_args([], '')) | vars(make_sample_data.parse_args([]))\n"
        "a['shape'] = list(a['shape'])\n"
        "print(json.dumps(a, default=str))"
    )
    return json.loads(run([sys.executable, "-c", code], project).stdout)


def read_metrics(path: Path) -> list[dict[str, float]]:
    """The rows of a run's metrics.csv."""
    with open(path, newline="") as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def python_files(project: Path) -> list[Path]:
    return sorted(project.rglob("*.py"))


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    """A cookiecutter config that keeps clones and replays inside tmp_path, not in ~."""
    path = tmp_path / "cookiecutter-config.yaml"
    path.write_text(
        f"cookiecutters_dir: {json.dumps(str(tmp_path / 'cookiecutters'))}\n"
        f"replay_dir: {json.dumps(str(tmp_path / 'replay'))}\n"
    )
    return path


@pytest.fixture(scope="session")
def template_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """This working tree, committed to a fresh git repository: what GitHub would serve."""
    repo = tmp_path_factory.mktemp("template") / "repo"
    shutil.copytree(
        ROOT,
        repo,
        ignore=shutil.ignore_patterns(
            ".git", ".venv*", "__pycache__", ".*_cache", "my_pytorch_project"
        ),
    )
    git = ["git", "-c", "user.name=Test", "-c", "user.email=test@example.com"]
    run([*git, "init", "--quiet", "--initial-branch=main"], repo)
    run([*git, "add", "--all"], repo)
    run([*git, "commit", "--quiet", "--message=template"], repo)
    return repo
