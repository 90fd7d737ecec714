"""The tools users bring: pip extras, pre-commit, GitHub Actions, git, saved answers and cruft."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import NO_DATA, ROOT, git, git_env, run

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

TEMPLATE_VERSION = json.loads((ROOT / "cookiecutter.json").read_text())["_template_version"]


@pytest.fixture(scope="session")
def pre_commit_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache of pre-commit's hook environments for every test: ruff is installed once."""
    return tmp_path_factory.mktemp("pre-commit")


def bake(cookies, **answers: object) -> Path:
    result = cookies.bake(extra_context=NO_DATA | answers)
    assert result.exit_code == 0, result.exception
    return result.project_path


@pytest.mark.slow
def test_pyproject_extras_and_an_editable_install(default_project: Path, tmp_path: Path) -> None:
    project = shutil.copytree(default_project, tmp_path / "my_pytorch_project")
    meta = tomllib.loads((project / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert "torch>=2.13" in meta["dependencies"]  # tested with 2.13; CVE-2025-32434 before 2.6
    extras = meta["optional-dependencies"]
    assert extras["tensorboard"] == ["tensorboard>=2.14"]
    assert extras["plots"] == ["matplotlib>=3.7"]
    assert extras["mlflow"] == ["mlflow-skinny>=3.18", "sqlalchemy>=2.0", "alembic>=1.13"]
    assert extras["wandb"] == ["wandb>=0.31"]
    assert extras["images"] == ["pillow>=10"]
    assert extras["onnx"] == ["onnx>=1.18", "onnxscript>=0.5", "onnxruntime>=1.20"]
    assert extras["dev"][0] == "my_pytorch_project[tensorboard,plots,images,mlflow,wandb]"
    # The default install as light as ever: no tracker's package unless one was chosen.
    assert meta["dependencies"] == ["torch>=2.13", "tqdm>=4.66", "numpy>=1.26"]

    # pip install -e ".[dev]" on the flat layout, into a new venv that sees this one's packages
    # (torch and the rest are installed already; pip fetches setuptools to build).
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", str(venv)], tmp_path)
    python = venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    code = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    site_packages = Path(run([str(python), "-c", code], tmp_path).stdout.strip())
    ours = [path for path in sys.path if path.endswith("site-packages")]
    (site_packages / "this-venv.pth").write_text("\n".join(ours) + "\n")
    result = run([str(python), "-m", "pip", "install", "-e", ".[dev]"], project)
    assert "Successfully installed my_pytorch_project" in result.stdout.replace("-", "_")
    run([str(python), "-m", "pip", "check"], project)
    code = "import my_classes, pytorch_script, plot_metrics; print(pytorch_script.__file__)"
    out = run([str(python), "-c", code], tmp_path).stdout  # from elsewhere: installed
    assert Path(out.strip()).parent == project


@pytest.mark.slow
def test_pre_commit_passes_and_keeps_data_and_checkpoints_out(
    cookies, tmp_path: Path, pre_commit_home: Path
) -> None:
    project = bake(cookies, _git_init=True)
    env = git_env(tmp_path / "home") | {"PRE_COMMIT_HOME": str(pre_commit_home)}
    pre_commit = [sys.executable, "-m", "pre_commit", "run"]
    run([*pre_commit, "--all-files"], project, env)  # ruff check and format: clean

    data = ["data/id-1.pt", "checkpoints/last.pt", "features.npy", "runs/run-1/metrics.csv"]
    # What the README's bring-your-own-data recipe reads and writes
    data += ["images/cat/1.png", "mydata/partition.json"]
    for name in data:
        (project / name).parent.mkdir(parents=True, exist_ok=True)
        (project / name).write_bytes(b"data")
    run(["git", "add", "--all"], project, env)
    staged = run(["git", "diff", "--cached", "--name-only"], project, env).stdout
    assert staged == "", ".gitignore lets data through"
    run(["git", "add", "--force", *data], project, env)
    result = subprocess.run(pre_commit, cwd=project, env=env, capture_output=True, text=True)

    assert result.returncode == 1
    assert "keep data files and checkpoints out of git" in result.stdout
    for name in data:
        assert name in result.stdout, f"the guard does not name {name}"
    assert "data/.gitkeep" not in result.stdout


@pytest.mark.slow
def test_the_quick_start_s_git_init_then_pre_commit_install_works(
    default_project: Path, tmp_path: Path, pre_commit_home: Path
) -> None:
    project = shutil.copytree(default_project, tmp_path / "my_pytorch_project")  # no git_init
    env = git_env(tmp_path / "home") | {"PRE_COMMIT_HOME": str(pre_commit_home)}
    readme = (project / "README.md").read_text(encoding="utf-8")
    assert "git init && pre-commit install" in readme
    run(["git", "init", "--quiet"], project, env)
    result = run([sys.executable, "-m", "pre_commit", "install"], project, env)
    assert "pre-commit installed at .git/hooks/pre-commit" in result.stdout


@pytest.mark.slow
def test_the_root_pre_commit_lints_hooks_and_tests_not_the_jinja(
    template_repo: Path, tmp_path: Path, pre_commit_home: Path
) -> None:
    env = git_env(tmp_path / "home") | {"PRE_COMMIT_HOME": str(pre_commit_home)}
    repo = tmp_path / "repo"
    run(["git", "clone", "--quiet", str(template_repo), str(repo)], tmp_path, env)
    result = run([sys.executable, "-m", "pre_commit", "run", "--all-files", "--verbose"], repo, env)
    assert "ruff check" in result.stdout and "Passed" in result.stdout

    # A lint error in a hook is caught; Jinja in the template directory is left alone.
    with open(repo / "hooks" / "pre_gen_project.py", "a") as f:
        f.write("\nprint(undefined_name)\n")
    result = subprocess.run(
        [sys.executable, "-m", "pre_commit", "run", "--all-files"],
        cwd=repo, env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 1 and "hooks/pre_gen_project.py" in result.stdout
    assert "cookiecutter.project_slug" not in result.stdout


def test_the_projects_github_workflow_installs_cpu_torch_and_its_steps_run(cookies) -> None:
    project = bake(cookies, batch_size=32)
    text = (project / ".github" / "workflows" / "ci.yml").read_text()
    workflow = yaml.safe_load(text)
    assert "${{ matrix.python-version }}" in text  # GitHub's expressions, not Jinja's
    steps = [step["run"] for step in workflow["jobs"]["test"]["steps"] if "run" in step]
    assert steps[0] == (
        "python -m pip install torch --index-url https://download.pytorch.org/whl/cpu"
    )
    assert steps[1] == 'python -m pip install -e ".[dev]"'
    assert "python -m pytest" in steps
    # The steps after the installs, as GitHub runs them (the tests run in test_bake.py), with
    # this Python and its ruff first on the PATH.
    env = os.environ | {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    for step in steps[2:]:
        if step != "python -m pytest":
            result = subprocess.run(step, shell=True, cwd=project, env=env, capture_output=True)
            assert result.returncode == 0, (step, result.stdout, result.stderr)
    assert (project / "data" / "partition.json").exists()


def test_answers_are_saved_and_replay_bakes_the_project_again(
    cookies, tmp_path: Path, config_file: Path
) -> None:
    project = bake(cookies, project_name="Replay Me", batch_size=16, _use_tensorboard=True)
    saved = json.loads((project / ".cookiecutter.json").read_text())["cookiecutter"]
    assert saved["project_slug"] == "replay_me" and saved["batch_size"] == "16"
    assert saved["_use_tensorboard"] is True
    assert saved["_template_version"] == TEMPLATE_VERSION
    # No paths of this machine: the template came from a directory, not a URL.
    assert not {"_output_dir", "_repo_dir", "_checkout", "_template"} & set(saved)

    again = tmp_path / "again"
    command = [sys.executable, "-m", "cookiecutter", str(ROOT), "-o", str(again)]
    command += ["--config-file", str(config_file)]
    command += ["--replay-file", str(project / ".cookiecutter.json")]
    run(command, tmp_path)
    for path in project.rglob("*"):
        if path.is_file() and path.name != ".cookiecutter.json":
            twin = again / "replay_me" / path.relative_to(project)
            assert twin.read_bytes() == path.read_bytes(), path


@pytest.mark.slow
def test_tensorboard_answer_sets_the_flag_and_the_dependency(cookies) -> None:
    from conftest import defaults

    for chosen in (True, False):
        project = bake(cookies, _use_tensorboard=chosen)
        assert defaults(project)["tensorboard"] is chosen
        meta = tomllib.loads((project / "pyproject.toml").read_text(encoding="utf-8"))["project"]
        assert ("tensorboard>=2.14" in meta["dependencies"]) is chosen


@pytest.mark.slow
def test_tracker_answer_sets_the_flag_and_the_dependencies(cookies) -> None:
    from conftest import defaults

    for chosen, packages in [
        ("mlflow", ["mlflow-skinny>=3.18", "sqlalchemy>=2.0", "alembic>=1.13"]),
        ("wandb", ["wandb>=0.31"]),
    ]:
        project = bake(cookies, tracker=chosen)
        assert defaults(project)["tracker"] == chosen
        meta = tomllib.loads((project / "pyproject.toml").read_text(encoding="utf-8"))["project"]
        assert meta["dependencies"] == ["torch>=2.13", "tqdm>=4.66", "numpy>=1.26", *packages]
        assert meta["optional-dependencies"][chosen] == packages


@pytest.mark.slow
def test_cruft_creates_checks_and_updates_a_project(template_repo: Path, tmp_path: Path) -> None:
    env = git_env(tmp_path / "home")
    template = tmp_path / "template"
    run(["git", "clone", "--quiet", str(template_repo), str(template)], tmp_path, env)
    cruft = [sys.executable, "-m", "cruft"]
    context = ["--extra-context", json.dumps(NO_DATA)]
    run([*cruft, "create", template.as_uri(), "--no-input", *context], tmp_path, env)
    project = tmp_path / "my_pytorch_project"
    run([*cruft, "check"], project, env)
    git("init", "--quiet", cwd=project, env=env)
    git("add", "--all", cwd=project, env=env)
    git("commit", "--quiet", "-m", "generated", cwd=project, env=env)
    (project / "notes.md").write_text("my notes\n")  # the user's own work
    git("add", "notes.md", cwd=project, env=env)
    git("commit", "--quiet", "-m", "notes", cwd=project, env=env)

    # A newer template: a changed line in the generated README, and a new version.
    readme = template / "{{cookiecutter.project_slug}}" / "README.md"
    readme.write_text(readme.read_text() + "\nA line from a newer template.\n")
    config = json.loads((template / "cookiecutter.json").read_text())
    config["_template_version"] = "99.0.0"
    (template / "cookiecutter.json").write_text(json.dumps(config, indent=2) + "\n")
    git("commit", "--quiet", "--all", "-m", "newer", cwd=template, env=env)

    stale = subprocess.run([*cruft, "check"], cwd=project, env=env, capture_output=True, text=True)
    assert stale.returncode != 0
    # The README's way to keep underscored answers through an update (cruft renders them with
    # their defaults otherwise, which here would write sample data and run the smoke test twice).
    config = tmp_path / "cookiecutter.yaml"
    config.write_text(yaml.safe_dump({"default_context": NO_DATA}))
    update = [*cruft, "update", "--skip-apply-ask", "--allow-untracked-files"]
    updated = run(update, project, env | {"COOKIECUTTER_CONFIG": str(config)})
    assert "Smoke test" not in updated.stdout + updated.stderr, updated.stdout + updated.stderr
    assert "sample" not in updated.stdout + updated.stderr, updated.stdout + updated.stderr
    run([*cruft, "check"], project, env)
    assert (project / "README.md").read_text().endswith("\nA line from a newer template.\n")
    assert (project / "notes.md").read_text() == "my notes\n"
    saved = json.loads((project / ".cookiecutter.json").read_text())["cookiecutter"]
    assert saved["_template_version"] == "99.0.0"
    # The update's answers are the ones saved at create, not the config's.
    assert saved["_create_sample_data"] is False and saved["_run_smoke_test"] is False


def test_the_changelog_names_the_template_version() -> None:
    changelog = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    versions = re.findall(r"^## \[?(\d+\.\d+\.\d+)\]?", changelog, flags=re.MULTILINE)
    assert versions and versions[0] == TEMPLATE_VERSION
