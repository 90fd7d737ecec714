"""uv beside pip: the README's two commands in their uv form, and a baked project through uv sync,
uv run, ruff and pre-commit, with torch always the local wheel of the torch installed here.

uv picks the newest torch it can see, and from PyPI that is, on Linux, a CUDA build of several
GB: these tests give uv only a directory of wheels that holds the installed torch (pip's
PIP_FIND_LINKS, or UV_FIND_LINKS), pin torch to it, and skip where there is none."""

import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

from conftest import NO_DATA, ROOT, git, git_env, run

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

UV = [sys.executable, "-m", "uv"]  # uv==... of requirements-dev.txt, beside this Python
TORCH = version("torch")  # e.g. 2.13.0+cpu


def torch_wheels() -> Path | None:
    """The directory of wheels, as pip or uv is told of it here, that holds this torch."""
    for variable in ("UV_FIND_LINKS", "PIP_FIND_LINKS"):
        for entry in re.split(r"[\s,]+", os.environ.get(variable, "")):
            if entry and any(Path(entry).glob(f"torch-{TORCH}-*.whl")):
                return Path(entry)
    return None


@pytest.fixture(scope="module")
def uv_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The environment for uv: the local torch wheel, torch pinned to it, this Python."""
    wheels = torch_wheels()
    if wheels is None:
        pytest.skip(
            f"no wheel of torch {TORCH} in PIP_FIND_LINKS or UV_FIND_LINKS: uv would download "
            "torch (on Linux, from PyPI, a CUDA build of several GB)"
        )
    constraints = tmp_path_factory.mktemp("uv") / "constraints.txt"
    constraints.write_text(f"torch=={TORCH}\n")
    env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
    cache = run([*UV, "cache", "dir"], ROOT, env).stdout.strip()  # also where HOME is changed
    return env | {
        "UV_CACHE_DIR": cache,
        "UV_FIND_LINKS": str(wheels),
        "UV_CONSTRAINT": str(constraints),  # uvx and uv pip; uv sync reads pyproject.toml's
        "UV_PYTHON": sys.executable,
        "UV_PYTHON_DOWNLOADS": "never",
        "UV_NO_PROGRESS": "1",
    }


def uv_blocks(readme: Path) -> list[str]:
    """The one-line uv commands of the README's "The two commands"."""
    section = readme.read_text(encoding="utf-8").split("## The two commands")[1]
    return re.findall(r"```bash\n(uvx [^\n]+)\n```", section.split("\n## ")[0])


def choose_the_local_torch(project: Path) -> None:
    """Uncomment pyproject.toml's [tool.uv.sources] block, as its README says, with the local wheel
    directory for PyTorch's CPU index; lock for this machine only, whose torch alone is there."""
    text = (project / "pyproject.toml").read_text(encoding="utf-8")
    block = re.search(r"^# \[tool\.uv\.sources\]\n(?:#.*\n)+", text, flags=re.MULTILINE)
    assert block, "pyproject.toml has no commented-out [tool.uv.sources]"
    toml = re.sub(r"^# ?", "", block.group(), flags=re.MULTILINE)
    assert 'url = "https://download.pytorch.org/whl/cpu"\n' in toml
    local = f'url = {json.dumps(str(torch_wheels()))}\nformat = "flat"\n'
    toml = toml.replace('url = "https://download.pytorch.org/whl/cpu"\n', local)
    here = f"sys_platform == '{sys.platform}' and platform_machine == '{platform.machine()}'"
    here += f" and python_version == '{sys.version_info[0]}.{sys.version_info[1]}'"
    toml += f'\n[tool.uv]\nenvironments = ["{here}"]\n'
    toml += f'constraint-dependencies = ["torch=={TORCH}"]\n'  # if the directory holds others
    (project / "pyproject.toml").write_text(text.replace(block.group(), toml), encoding="utf-8")


@pytest.mark.slow
def test_the_readme_s_two_commands_in_their_uv_form(uv_env: dict[str, str], tmp_path: Path) -> None:
    generate, test = uv_blocks(ROOT / "README.md")
    assert generate == "uvx --with-requirements requirements.txt cookiecutter . --no-input"
    assert test == "uvx --with pip --with-requirements requirements-dev.txt pytest --full"

    out = run([*UV, "tool", "run", *generate.split()[1:], "-o", str(tmp_path)], ROOT, uv_env)
    assert "Smoke test passed" in out.stdout, out.stdout + out.stderr
    assert (tmp_path / "my_pytorch_project" / "data" / "partition.json").exists()

    # The whole suite under uvx passes (by hand: see README.md); here, in the same environment,
    # the one test that needs --with pip, nested, with its own temporary directory.
    one = ["tests/test_docs.py", "-k", "constraint_keeps_torch", "-n", "0"]
    one += ["--basetemp", str(tmp_path / "inner")]
    out = run([*UV, "tool", "run", *test.split()[1:], *one], ROOT, uv_env)
    assert re.search(r"\b1 passed\b", out.stdout), out.stdout


@pytest.mark.slow
def test_a_baked_project_with_uv_sync_and_uv_run(
    cookies, uv_env: dict[str, str], tmp_path: Path
) -> None:
    result = cookies.bake(extra_context=NO_DATA)
    assert result.exit_code == 0, result.exception
    project = result.project_path
    choose_the_local_torch(project)

    synced = run([*UV, "sync", "--extra", "dev"], project, uv_env)
    assert f"+ torch=={TORCH}" in synced.stderr, synced.stderr
    assert "nvidia" not in synced.stderr, synced.stderr
    lock = (project / "uv.lock").read_text(encoding="utf-8")
    locked = re.search(r'name = "torch"\nversion = "(.*)"\nsource = \{ registry = "(.*)" \}', lock)
    assert locked and locked.groups() == (TORCH, str(torch_wheels())), locked

    uv_run = [*UV, "run"]
    run([*uv_run, "make_sample_data.py"], project, uv_env)
    out = run([*uv_run, "pytorch_script.py", "--dry-run"], project, uv_env)
    assert "epoch 1/" in out.stdout, out.stdout
    out = run([*uv_run, "pytest", "-x", "-q"], project, uv_env)  # the project's own, all
    assert re.search(r"\d+ passed", out.stdout) and "failed" not in out.stdout, out.stdout
    run([*uv_run, "ruff", "check", "."], project, uv_env)  # .venv is not linted
    run([*uv_run, "ruff", "format", "--check", "."], project, uv_env)

    # pre-commit and the data guard, as under pip: uv.lock is committed, .venv is ignored.
    env = git_env(tmp_path / "home") | {key: uv_env[key] for key in uv_env if key.startswith("UV_")}
    env |= {"PRE_COMMIT_HOME": str(tmp_path / "pre-commit")}
    git("init", "--quiet", cwd=project, env=env)
    git("add", "--all", cwd=project, env=env)
    staged = git("diff", "--cached", "--name-only", cwd=project, env=env).splitlines()
    assert "uv.lock" in staged and not any(name.startswith(".venv") for name in staged)
    run([*uv_run, "pre-commit", "install"], project, env)
    run([*uv_run, "pre-commit", "run", "--all-files"], project, env)
    git("add", "--force", "data/id-1.pt", cwd=project, env=env)
    guard = subprocess.run(
        [*uv_run, "pre-commit", "run"], cwd=project, env=env, capture_output=True, text=True
    )
    assert guard.returncode == 1 and "data/id-1.pt" in guard.stdout, guard.stdout


def test_uv_pip_keeps_the_torch_installed(default_project: Path, tmp_path: Path) -> None:
    """The project README's way to keep a torch already installed, planned into this Python's
    environment, which has torch: a dry run, which only reads package metadata."""
    project = shutil.copytree(default_project, tmp_path / "my_pytorch_project")
    readme = (project / "README.md").read_text(encoding="utf-8")
    [line] = [line for line in readme.splitlines() if line.startswith("uv pip install -e ")]
    command = shlex.split(line, comments=True)
    assert command == ["uv", "pip", "install", "-e", ".[dev]"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("UV_", "VIRTUAL_ENV"))}
    plan = run([*UV, *command[1:], "--dry-run", "--python", sys.executable], project, env)
    assert "Would install" in plan.stderr and "+ my-pytorch-project" in plan.stderr, plan.stderr
    assert not re.search(r"^ [+-] torch\b", plan.stderr, flags=re.MULTILINE), plan.stderr


def test_the_readme_s_cuda_block_names_torch_s_index_for_linux_and_windows(
    default_project: Path,
) -> None:
    """Its index cannot be reached here: the TOML is checked, not synced."""
    readme = (default_project / "README.md").read_text(encoding="utf-8")
    section = readme.split("## With uv")[1].split("\n## ")[0]
    [block] = re.findall(r"```toml\n(.*?)```", section, flags=re.DOTALL)
    uv = tomllib.loads(block)["tool"]["uv"]
    [index] = uv["index"]
    assert index["url"] == f"https://download.pytorch.org/whl/{index['name'].split('-')[1]}"
    assert index["explicit"] is True  # only torch and torchvision from it, the rest from PyPI
    for package in ("torch", "torchvision"):
        [source] = uv["sources"][package]
        assert source["index"] == index["name"]
        assert source["marker"] == "sys_platform == 'linux' or sys_platform == 'win32'"
