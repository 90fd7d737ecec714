"""The hooks run by cookiecutter, end to end, for what only cookiecutter shows: what it leaves
on disk after a bad answer or a failing smoke test, an existing directory with and without -f,
and the Python it runs the hooks with. Each case of the hooks' own logic is a unit test in
test_pre_gen_hook.py and test_post_gen_hook.py."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from cookiecutter.exceptions import FailedHookException
from cookiecutter.main import cookiecutter

from conftest import NO_DATA, ROOT

NO_DATA_ARGS = [f"{k}={v}" for k, v in NO_DATA.items()]


def test_a_bad_answer_stops_cookiecutter_before_it_writes_anything(
    tmp_path: Path, config_file: Path, capfd
) -> None:
    """Each bad answer is a test of its own in test_pre_gen_hook.py; this is the whole way, with
    the answer most likely to write where it should not."""
    out = tmp_path / "out"
    with pytest.raises(FailedHookException):
        cookiecutter(
            str(ROOT),
            no_input=True,
            extra_context={"project_slug": "../escaped"},
            output_dir=str(out),
            config_file=str(config_file),
        )
    err = capfd.readouterr().err
    assert "error: project_slug='../escaped': use ASCII letters, digits and underscores" in err
    assert len(err.strip().splitlines()) == 1, err
    assert not out.exists() or list(out.iterdir()) == []
    # Nothing beside the output directory either.
    assert {p.name for p in tmp_path.iterdir()} <= {"cookiecutter-config.yaml", "out", "replay"}


def test_a_slug_too_long_for_the_file_system_fails_and_leaves_nothing(
    tmp_path: Path, config_file: Path
) -> None:
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-m", "cookiecutter", str(ROOT), "--no-input", "-o", str(out)]
        + ["--config-file", str(config_file), "project_slug=" + "x" * 300, *NO_DATA_ARGS],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode != 0
    assert "File name too long" in result.stderr + result.stdout
    assert not out.exists() or list(out.iterdir()) == []


def cookiecutter_cli(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "cookiecutter", str(ROOT), "--no-input", *args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_a_tracker_not_among_the_choices_is_refused_by_cookiecutter(
    tmp_path: Path, config_file: Path
) -> None:
    """A choice given on the command line is checked by cookiecutter itself, before the hooks:
    its message names the choices, and nothing is written."""
    out = tmp_path / "out"
    result = cookiecutter_cli(
        "-o", str(out), "--config-file", str(config_file), "tracker=MLflow", *NO_DATA_ARGS,
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1] == (
        "ValueError: MLflow provided for choice variable tracker, but the choices are"
        " ['none', 'mlflow', 'wandb']."
    )
    assert not out.exists() or list(out.iterdir()) == []


def test_without_torch_the_project_is_kept_with_the_commands_to_finish(
    tmp_path: Path, config_file: Path
) -> None:
    """As with pipx: the Python that runs cookiecutter has no torch."""
    result = cookiecutter_cli(
        "--config-file", str(config_file), cwd=tmp_path, env=without_torch(tmp_path)
    )

    assert result.returncode == 0, result.stderr
    project = tmp_path / "my_pytorch_project"
    assert f"{sys.executable} cannot import what the project needs (No module named torch)" in (
        result.stdout
    )
    finish = f"cd {project}\n  python -m pip install -e .\n  python make_sample_data.py"
    assert finish in result.stdout
    assert sorted(p.name for p in (project / "data").iterdir()) == [".gitkeep"]
    assert (project / "pytorch_script.py").exists()


def test_an_existing_directory_is_refused_without_f_and_left_untouched(
    tmp_path: Path, config_file: Path
) -> None:
    project = tmp_path / "my_pytorch_project"
    (project / "data").mkdir(parents=True)
    (project / "data" / "labels.json").write_text('{"mine": 0}')
    (project / "pytorch_script.py").write_text("# my own script\n")
    before = {p: p.read_bytes() for p in project.rglob("*") if p.is_file()}

    result = cookiecutter_cli("--config-file", str(config_file), cwd=tmp_path)

    assert result.returncode != 0
    assert "already exists" in result.stdout + result.stderr
    assert {p: p.read_bytes() for p in project.rglob("*") if p.is_file()} == before


@pytest.mark.slow
def test_a_failing_smoke_test_fails_the_run_and_keeps_the_users_files(
    tmp_path: Path, config_file: Path
) -> None:
    """Regenerating over a project (-f) whose data is broken: the smoke test names the problem."""
    project = tmp_path / "my_pytorch_project"
    (project / "data").mkdir(parents=True)
    (project / "data" / "partition.json").write_text('{"train": ["id-1"],')
    (project / "notes.txt").write_text("my notes")

    result = cookiecutter_cli("-f", "--config-file", str(config_file), cwd=tmp_path)

    assert result.returncode != 0
    assert "Kept the data already in" in result.stdout
    assert "partition.json: not valid JSON" in result.stderr
    assert (
        "error: smoke test: `python pytorch_script.py --dry-run --num-workers 2 --tracker none`"
        in result.stderr
    )
    assert (project / "notes.txt").read_text() == "my notes"
    assert (project / "data" / "partition.json").read_text() == '{"train": ["id-1"],'


def files_up_to_1_mb() -> None:
    """As on a nearly full disk: sample files (12 KB) and worker batches (786 KB) fit, the
    smoke test's checkpoint (1.8 MB) does not."""
    import resource  # POSIX only
    import signal

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails, not the whole process
    resource.setrlimit(resource.RLIMIT_FSIZE, (1_000_000, 1_000_000))


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="RLIMIT_FSIZE is POSIX")
@pytest.mark.parametrize("keep", [False, True])
def test_a_failing_smoke_test_names_the_step_and_keeps_the_project_if_asked(
    tmp_path: Path, config_file: Path, keep: bool
) -> None:
    out = tmp_path / "out"
    command = [sys.executable, "-m", "cookiecutter", str(ROOT), "--no-input", "-o", str(out)]
    command += ["--config-file", str(config_file), "_num_samples=200"]
    command += ["--keep-project-on-failure"] if keep else []
    result = subprocess.run(
        command, preexec_fn=files_up_to_1_mb, capture_output=True, text=True, timeout=300
    )

    assert result.returncode != 0
    assert re.search(r"cannot write \S+/smoke-test/last.pt \(.* MiB free in ", result.stderr)
    assert ": free some space or pass another --runs-dir, then --resume" in result.stderr
    assert (
        "error: smoke test: `python pytorch_script.py --max-epochs 1 --num-workers 2"
        " --tracker none` failed" in result.stderr
    )
    project = out / "my_pytorch_project"
    if keep:
        assert (project / "pytorch_script.py").exists()
        assert (project / "data" / "partition.json").exists()
    else:
        assert not project.exists() and list(out.iterdir()) == []


def without_torch(tmp_path: Path) -> dict[str, str]:
    """An environment in which `import torch` fails, as in a pipx-installed cookiecutter."""
    fake = tmp_path / "fake"
    (fake / "torch").mkdir(parents=True)
    (fake / "torch" / "__init__.py").write_text("raise ImportError('No module named torch')\n")
    return os.environ | {"PYTHONPATH": str(fake)}


@pytest.mark.slow
def test_the_hooks_own_tests_run_every_line_and_branch_of_them(tmp_path: Path) -> None:
    """test_pre_gen_hook.py and test_post_gen_hook.py under coverage, in a pytest of their own:
    below 100% of the hooks' lines and branches (pyproject.toml's fail_under), it fails."""
    tests = ["tests/test_pre_gen_hook.py", "tests/test_post_gen_hook.py", "-n", "0"]
    coverage = ["--cov=hooks", "--cov-report=term-missing:skip-covered"]
    command = [sys.executable, "-m", "pytest", *tests, *coverage, "--basetemp", str(tmp_path)]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Required test coverage of 100.0% reached" in result.stdout, result.stdout
