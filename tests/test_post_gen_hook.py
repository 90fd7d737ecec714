"""The post-gen hook, rendered with given answers and called in this process (torch is imported
already) inside a copy of a baked project: sample data, the smoke test and git init, each way
they can go. (test_hooks.py runs it through cookiecutter, end to end.)"""

import json
import os
import re
import shutil
import sys
from pathlib import Path

import pytest

from conftest import NO_DATA, ROOT, git, git_env, render_hook

TEMPLATE_VERSION = render_hook("post_gen_project").ANSWERS["_template_version"]


@pytest.fixture
def project(default_project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of a baked project without data, as cookiecutter leaves it for the hook: the
    current directory. What the hook imports from it is forgotten afterwards."""
    copy = tmp_path / "my_pytorch_project"
    shutil.copytree(default_project, copy)
    monkeypatch.chdir(copy)
    monkeypatch.setenv("PWD", str(tmp_path))  # where the user ran cookiecutter
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setattr(sys, "dont_write_bytecode", sys.dont_write_bytecode)
    # A project's modules another test imported (tests/baked/'s, in this process): set aside,
    # so that the hook imports this copy's, and put back afterwards.
    ours = set(json.loads((ROOT / "cookiecutter.json").read_text())["_project_modules"])
    for name in [name for name in sys.modules if name.split(".")[0] in ours | {"plumbing"}]:
        monkeypatch.delitem(sys.modules, name)
    yield copy
    for name, module in list(sys.modules.items()):
        if Path(getattr(module, "__file__", None) or "/").is_relative_to(copy):
            del sys.modules[name]


def imported_from(project: Path) -> list[str]:
    return [
        name
        for name, module in sys.modules.items()
        if Path(getattr(module, "__file__", None) or "/").is_relative_to(project)
    ]


def test_sample_data_then_a_smoke_test_of_one_epoch(project: Path, capsys) -> None:
    hook = render_hook("post_gen_project")

    assert hook.main() == 0
    out = capsys.readouterr().out
    assert "Wrote 1000 samples of shape 3x32x32 (10 classes, 700 train, 200 validation, 100" in out
    smoke = re.search(r"Smoke test passed in \d+\.\d s: one epoch with DataLoader workers,"
                      r" validation accuracy (\d\.\d\d) \(chance 0\.10\)\.", out)  # fmt: skip
    assert smoke, out
    assert out.rstrip().endswith("Next: cd my_pytorch_project && python pytorch_script.py")
    assert len(list((project / "data").glob("*.pt"))) == 1000
    assert not (project / "runs").exists(), "the smoke test leaves no run behind"
    assert not list(project.rglob("__pycache__")), "nor bytecode"


@pytest.mark.parametrize(
    ("create_sample_data", "run_smoke_test"), [(True, False), (False, True), (False, False)]
)
def test_sample_data_and_smoke_test_switches(
    project: Path, capsys, create_sample_data: bool, run_smoke_test: bool
) -> None:
    hook = render_hook(
        "post_gen_project",
        _create_sample_data=create_sample_data,
        _run_smoke_test=run_smoke_test,
    )

    assert hook.main() == 0
    out = capsys.readouterr().out
    assert ("Wrote 1000 samples" in out) == create_sample_data
    assert "Smoke test passed" not in out
    if run_smoke_test:
        assert f"No data in {project / 'data'}, so no smoke test. Once it has data:\n" in out
        assert f"  cd {project}\n  python -m pip install -e .\n  python make_sample_data.py" in out
    data = sorted(p.name for p in (project / "data").iterdir())
    assert len(data) == (1003 if create_sample_data else 1)  # 1000 samples, 2 JSON files, .gitkeep
    if not (create_sample_data or run_smoke_test):
        assert out == "" and imported_from(project) == [], "neither: torch is not even imported"


def test_data_already_there_is_kept_and_checked_with_a_dry_run(project: Path, capsys) -> None:
    """cookiecutter -f over a project: the user's data stays, and two batches per split check it
    (an epoch of their data could take hours)."""
    render_hook("post_gen_project", _run_smoke_test=False).main()
    before = (project / "data" / "labels.json").read_bytes()
    capsys.readouterr()

    assert render_hook("post_gen_project").main() == 0
    out = capsys.readouterr().out
    assert f"Kept the data already in {project / 'data'}; no sample data written." in out
    assert "Smoke test passed in" in out and "two batches per split with DataLoader" in out
    assert (project / "data" / "labels.json").read_bytes() == before


def test_a_failing_smoke_test_prints_the_command_and_its_error(project: Path, capsys) -> None:
    (project / "data" / "partition.json").write_text('{"train": ["id-1"],')

    assert render_hook("post_gen_project").main() == 1
    err = capsys.readouterr().err
    assert "partition.json: not valid JSON" in err
    assert err.rstrip().endswith(
        "error: smoke test: `python pytorch_script.py --dry-run --num-workers 2 --tracker none`"
        " failed (output above). (cookiecutter keeps the project only when given"
        " --keep-project-on-failure)"
    )


def test_a_bug_in_the_project_fails_the_smoke_test_with_its_traceback(
    project: Path, capsys
) -> None:
    my_classes = project / "my_classes.py"
    text = my_classes.read_text(encoding="utf-8")
    text = text.replace("    return Net(input_shape, num_classes)", "    raise ValueError('a bug')")
    my_classes.write_text(text, encoding="utf-8")

    assert render_hook("post_gen_project").main() == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "ValueError: a bug" in err
    assert (
        "error: smoke test: `python pytorch_script.py --max-epochs 1 --num-workers 2"
        " --tracker none`" in err
    )


def test_sample_data_that_cannot_be_written_fails_the_hook(project: Path, capsys) -> None:
    (project / "data" / "mine.pt").write_bytes(b"the user's")

    assert render_hook("post_gen_project").main() == 1
    err = capsys.readouterr().err
    assert "already holds data (mine.pt, ...): pass --force" in err
    assert err.rstrip().endswith("error: writing the sample data failed (reason above)")
    assert (project / "data" / "mine.pt").read_bytes() == b"the user's"


def test_without_torch_the_project_is_kept_with_the_commands_to_finish(
    project: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As with cookiecutter installed by pipx: its Python cannot import torch."""
    monkeypatch.setitem(sys.modules, "torch", None)

    assert render_hook("post_gen_project").main() == 0
    out = capsys.readouterr().out
    assert out == (
        f"No sample data or smoke test yet: {sys.executable} cannot import what the project"
        " needs (import of torch halted; None in sys.modules). The project is ready; to"
        f" finish:\n  cd {project}\n  python -m pip install -e .\n  python make_sample_data.py\n"
        "  python pytorch_script.py --dry-run\n"
    )
    assert sorted(p.name for p in (project / "data").iterdir()) == [".gitkeep"]


def test_without_tensorboard_the_smoke_test_runs_without_it(
    project: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # not installed, as far as imports go
    hook = render_hook("post_gen_project", _use_tensorboard=True)

    assert hook.main() == 0
    out = capsys.readouterr().out
    assert "Smoke test passed in" in out
    assert out.rstrip().endswith("TensorBoard is not installed here: pip install -e . installs it.")


def test_without_the_tracker_s_package_the_next_step_says_how_to_install_it(
    project: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "wandb", None)  # not installed, as far as imports go
    hook = render_hook("post_gen_project", tracker="wandb")

    assert hook.main() == 0
    out = capsys.readouterr().out
    assert "Smoke test passed in" in out
    assert out.rstrip().endswith(
        "W&B, your tracker, is not installed here: pip install -e . installs it."
    )


def test_the_smoke_test_logs_to_no_tracker(
    project: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A project generated with MLflow as its tracker: the smoke test's run does not go to the
    user's server, here one that is not there."""
    cli = project / "plumbing" / "cli.py"
    cli.write_text(cli.read_text().replace('default="none"', 'default="mlflow"', 1))
    assert 'default="mlflow"' in cli.read_text()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # nothing listens on 9
    hook = render_hook("post_gen_project", tracker="mlflow")

    assert hook.main() == 0
    assert "Smoke test passed in" in capsys.readouterr().out
    assert not list(project.rglob("mlflow.db"))


@pytest.mark.parametrize(
    ("pwd", "shown"),
    [
        ("{tmp}", "my_pytorch_project"),
        ("{tmp}/elsewhere", "{tmp}/my_pytorch_project"),  # not below: the whole path
    ],
)
def test_paths_are_shown_from_where_cookiecutter_ran(
    project: Path, monkeypatch: pytest.MonkeyPatch, pwd: str, shown: str
) -> None:
    monkeypatch.setenv("PWD", pwd.format(tmp=project.parent))
    hook = render_hook("post_gen_project")
    assert hook.shown(project) == shown.format(tmp=project.parent)
    spaced = shown.format(tmp=project.parent).replace("my_pytorch_project", "with space")
    assert hook.shown(project.parent / "with space") == f"'{spaced}'"  # quoted for the shell


@pytest.mark.parametrize(
    "how",
    [
        "configured",
        "no identity",
        "no git",
        "inside a repository",
        "a repository already",
        pytest.param(
            "git fails",
            marks=pytest.mark.skipif(os.name == "nt", reason="a shell script stands in for git"),
        ),
    ],
)
def test_git_init_commits_or_skips_with_a_message(
    project: Path, monkeypatch: pytest.MonkeyPatch, capsys, how: str
) -> None:
    tmp_path = project.parent
    env = git_env(tmp_path / "home", identity=how != "no identity")
    if how == "no git":
        env["PATH"] = str(tmp_path / "empty")
    if how == "inside a repository":
        git("init", "--quiet", cwd=tmp_path, env=env)
    if how == "a repository already":  # cookiecutter -f over a project of the user's
        git("init", "--quiet", cwd=project, env=env)
    if how == "git fails":  # as an old or broken git might: init works, commit does not
        fake = tmp_path / "bin"
        fake.mkdir()
        (fake / "git").write_text(
            f'#!/bin/sh\nfor a; do [ "$a" = commit ] && echo "fatal: too old" >&2 && exit 1; done\n'
            f'exec {shutil.which("git")} "$@"\n'
        )
        (fake / "git").chmod(0o755)
        env["PATH"] = f"{fake}{os.pathsep}{env['PATH']}"
    for key in set(os.environ) - set(env):
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)

    assert render_hook("post_gen_project", **{"_git_init": True} | NO_DATA).main() == 0

    out = capsys.readouterr().out
    if how == "configured":
        assert out == "Made a git repository in my_pytorch_project with a first commit.\n"
        assert git("status", "--porcelain", cwd=project, env=env) == ""
        log = git("log", "--format=%an %s", cwd=project, env=env)
        message = f"Generate the project from the PyTorch data-loading template {TEMPLATE_VERSION}"
        assert log == f"Ada {message}\n"
        tracked = git("ls-files", cwd=project, env=env).split()
        assert {"pytorch_script.py", ".pre-commit-config.yaml", "data/.gitkeep"} <= set(tracked)
        return
    if how == "a repository already":
        assert out == "Kept the git repository in my_pytorch_project as it was.\n"
        assert git("log", "--oneline", "--all", cwd=project, env=env) == ""  # no commit added
        return
    assert not (project / ".git").exists()
    expected = {
        "no identity": "No git repository: git commit failed (fatal: no email was given and",
        "no git": "No git repository: git is not installed. Later: git init && git add --all",
        "inside a repository": f"No git repository made: the project is in the one at {tmp_path}.",
        "git fails": "No git repository: git commit failed (fatal: too old). If git lacks",
    }[how]
    assert out.startswith(expected), out
