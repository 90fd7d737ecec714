"""Helpers for baking the template and running what it bakes."""

import csv
import json
import os
import shutil
import subprocess
import sys
import types
from collections.abc import Iterable
from pathlib import Path

import pytest
from cookiecutter.generate import generate_context
from cookiecutter.prompt import prompt_for_config
from cookiecutter.utils import create_env_with_context

pytest_plugins = ["one_node_slurm"]  # the fixture slurm_cluster


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--full",
        action="store_true",
        help="every test, the slow ones too (baking and training every answer, the project's"
        " own suite, SLURM, S3, trackers, torchrun): the README's test command, and CI's",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Without --full, the tests marked slow are left out: the inner loop of a change."""
    if config.getoption("--full") or config.getoption("-m"):
        return
    slow = [item for item in items if item.get_closest_marker("slow")]
    if slow:
        config.hook.pytest_deselected(items=slow)
        items[:] = [item for item in items if not item.get_closest_marker("slow")]


# One thread for torch's operations in the scripts the tests start (and in tests/baked/'s own
# process): the tests' tiny models gain nothing from more, and pytest-xdist's workers, the
# scripts they start and their DataLoader workers would otherwise contend for the same cores
# (test_change_where.py: 113 s with torch's default of a thread per core, 78 s with one, 2 CPUs).
os.environ["OMP_NUM_THREADS"] = "1"

ROOT = Path(__file__).resolve().parents[1]
NO_DATA = {"_create_sample_data": False, "_run_smoke_test": False}


def run(
    args: list[str], cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """Run a command; on failure, show everything it printed. The longest (uv sync, the
    benchmarks) take about a minute on 2 cores, and several times that on a busy machine."""
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, (
        f"{args} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    )
    return result


def git_env(home: Path, identity: bool = True) -> dict[str, str]:
    """This environment, with a git that reads no configuration of this machine; with or without
    a name and email."""
    home.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_") and k != "EMAIL"}
    env |= {"HOME": str(home), "XDG_CONFIG_HOME": str(home), "GIT_CONFIG_NOSYSTEM": "1"}
    if identity:
        for who in ("AUTHOR", "COMMITTER"):
            env |= {f"GIT_{who}_NAME": "Ada", f"GIT_{who}_EMAIL": "ada@example.com"}
    return env


def git(*args: str, cwd: Path, env: dict[str, str]) -> str:
    return run(["git", *args], cwd, env).stdout


def defaults(project: Path) -> dict:
    """The command-line defaults of the baked scripts, read in a fresh Python."""
    code = (
        "import json, make_sample_data\n"
        "from plumbing.cli import training_settings\n"
        "a = training_settings([], '').flags() | vars(make_sample_data.parse_args([]))\n"
        "a['shape'] = list(a['shape'])\n"
        "print(json.dumps(a, default=str))"
    )
    return json.loads(run([sys.executable, "-c", code], project).stdout)


def read_metrics(path: Path) -> list[dict[str, float]]:
    """The rows of a run's metrics.csv."""
    with open(path, newline="") as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def make_edits(project: Path, edits: Iterable[tuple[str, str, str]]) -> None:
    """Each edit (file, old, new) made in project, where old stands once, as a README row says."""
    for file, old, new in edits:
        path = project / file
        text = path.read_text(encoding="utf-8")
        assert text.count(old) == 1, f"{file} no longer holds {old!r} once"
        path.write_text(text.replace(old, new), encoding="utf-8")


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
            ".git", ".venv*", "__pycache__", ".*_cache", ".coverage*", "my_pytorch_project"
        ),
    )
    git = ["git", "-c", "user.name=Test", "-c", "user.email=test@example.com"]
    run([*git, "init", "--quiet", "--initial-branch=main"], repo)
    run([*git, "add", "--all"], repo)
    run([*git, "commit", "--quiet", "--message=template"], repo)
    return repo


def answers(**given: object) -> dict:
    """The answers `cookiecutter --no-input` hands the hooks, given these on its command line."""
    context = generate_context(str(ROOT / "cookiecutter.json"), extra_context=given)
    chosen = dict(prompt_for_config(context, no_input=True))
    # What cookiecutter adds after the questions
    chosen["_template"] = chosen["_repo_dir"] = str(ROOT)
    chosen |= {"_output_dir": str(Path.cwd().parent), "_checkout": None}
    return chosen


def render_hook(name: str, **given: object) -> types.ModuleType:
    """hooks/<name>.py rendered as cookiecutter renders it, imported but not run: a test calls its
    functions. It is compiled under the hook's own path, line for line, so coverage counts it."""
    path = ROOT / "hooks" / f"{name}.py"
    source = path.read_text(encoding="utf-8")
    context = {"cookiecutter": answers(**given)}
    rendered = create_env_with_context(context).from_string(source).render(**context)
    assert rendered.count("\n") == source.count("\n"), "the rendered hook lost its line numbers"
    module = types.ModuleType(name)
    module.__file__ = str(path)
    exec(compile(rendered, str(path), "exec"), module.__dict__)
    return module


@pytest.fixture(scope="session")
def default_project(cookies_session) -> Path:
    """One project baked with the default answers but no data: for the tests that only read it.
    A test that changes a project copies it first."""
    result = cookies_session.bake(extra_context=NO_DATA)
    assert result.exit_code == 0, result.exception
    return result.project_path
