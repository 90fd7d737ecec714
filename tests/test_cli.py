"""How users run the template: a path, a git URL (as gh:<org>/<repo> is), a clone, --replay."""

import filecmp
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import NO_DATA, ROOT, defaults, run

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

NO_DATA_ARGS = [f"{k}={v}" for k, v in NO_DATA.items()]


def cookiecutter_cli(template: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return run([sys.executable, "-m", "cookiecutter", template, *args], cwd)


def same_tree(a: Path, b: Path) -> bool:
    compare = filecmp.dircmp(a, b)
    if compare.left_only or compare.right_only or compare.funny_files:
        return False
    _, mismatch, errors = filecmp.cmpfiles(a, b, compare.common_files, shallow=False)
    return not mismatch and not errors and all(same_tree(a / d, b / d) for d in compare.common_dirs)


def test_extra_context_on_the_command_line(tmp_path: Path, config_file: Path) -> None:
    cookiecutter_cli(
        str(ROOT), "--no-input", "--config-file", str(config_file), "-o", str(tmp_path),
        "project_name=Fast Loader", "num_workers=2", "batch_size=128", "shuffle=no", *NO_DATA_ARGS,
        cwd=tmp_path,
    )  # fmt: skip
    baked = defaults(tmp_path / "fast_loader")
    assert (baked["num_workers"], baked["batch_size"], baked["shuffle"]) == (2, 128, False)


def test_replay_bakes_the_same_project_again(tmp_path: Path, config_file: Path) -> None:
    common = ["--config-file", str(config_file)]
    cookiecutter_cli(
        str(ROOT), "--no-input", *common, "-o", str(tmp_path / "first"),
        "project_name=Replayed", "max_epochs=7", "sample_shape=1,64", *NO_DATA_ARGS,
        cwd=tmp_path,
    )  # fmt: skip
    cookiecutter_cli(str(ROOT), "--replay", *common, "-o", str(tmp_path / "again"), cwd=tmp_path)

    assert same_tree(tmp_path / "first" / "replayed", tmp_path / "again" / "replayed")
    assert defaults(tmp_path / "again" / "replayed")["max_epochs"] == 7


def test_from_a_git_url_like_gh_org_repo(
    template_repo: Path, tmp_path: Path, config_file: Path
) -> None:
    # gh:<org>/<repo> expands to a git URL that cookiecutter clones; file:// does the same offline.
    cookiecutter_cli(
        f"git+{template_repo.as_uri()}", "--no-input", "--config-file", str(config_file),
        "-o", str(tmp_path / "out"), *NO_DATA_ARGS, cwd=tmp_path,
    )  # fmt: skip
    assert (tmp_path / "cookiecutters" / "repo" / "cookiecutter.json").exists()
    baked = tmp_path / "out" / "my_pytorch_project"
    assert (baked / "pytorch_script.py").exists() and defaults(baked)["batch_size"] == 64
    saved = json.loads((baked / ".cookiecutter.json").read_text())["cookiecutter"]
    assert saved["_template"] == f"git+{template_repo.as_uri()}"  # a URL is worth keeping


@pytest.mark.slow
def test_from_a_clone_with_sample_data_and_smoke_test(
    template_repo: Path, tmp_path: Path, config_file: Path
) -> None:
    run(["git", "clone", "--quiet", str(template_repo), str(tmp_path / "clone")], tmp_path)
    result = cookiecutter_cli(
        ".", "--no-input", "--config-file", str(config_file), "-o", str(tmp_path / "out"),
        "_num_samples=300", cwd=tmp_path / "clone",
    )  # fmt: skip
    assert "Wrote 300 samples" in result.stdout and "Smoke test passed" in result.stdout
    assert len(list((tmp_path / "out" / "my_pytorch_project" / "data").glob("*.pt"))) == 300


QUESTIONS = [
    "Project name", "Directory name (a Python identifier)", "One-line description", "Author",
    "DataLoader batch_size", "Shuffle the training set every epoch?",
    "DataLoader num_workers (capped at the CPUs available when it runs)", "max_epochs",
    "Shape of one sample, comma-separated", "Number of classes",
]  # fmt: skip
TRACKER_QUESTION = "Experiment tracker besides metrics.csv (--tracker; an optional extra)"


@pytest.mark.slow
def test_an_interactive_run_asks_eleven_questions_and_checks_them_after_the_last(
    tmp_path: Path, config_file: Path
) -> None:
    """cookiecutter lets a template check a typed answer only once every question is answered
    (the pre-gen hook), but for a yes/no question, which it asks again at once (README)."""
    # batch_size abc, shuffle maybe (asked again: y), the defaults, and the second tracker
    typed = ["", "", "", "", "abc", "maybe", "y", "", "", "", "", "2"]
    command = [sys.executable, "-m", "cookiecutter", str(ROOT), "--config-file", str(config_file)]
    asked = subprocess.run(
        [*command, *NO_DATA_ARGS], input="\n".join(typed) + "\n", cwd=tmp_path,
        env=os.environ | {"COLUMNS": "1000"},  # no prompt wrapped
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip

    assert asked.returncode != 0
    prompts = re.findall(r"\[(\d+)/(\d+)\] (.+?)(?: \[y/n\])? \([^()]*\): ", asked.stdout)
    assert list(dict.fromkeys(prompts)) == [(str(n), "11", q) for n, q in enumerate(QUESTIONS, 1)]
    # shuffle=maybe: asked again there and then, before the next question
    assert prompts[5:8] == [("6", "11", QUESTIONS[5])] * 2 + [("7", "11", QUESTIONS[6])]
    # The tracker, last: a choice from a list
    choices = "\n    1 - none\n    2 - mlflow\n    3 - wandb\n"
    assert f"[11/11] {TRACKER_QUESTION}{choices}" in asked.stdout
    assert "Please enter Y or N" in asked.stdout
    assert asked.stderr.startswith("error: batch_size='abc': must be a whole number >= 1\n")
    assert not (tmp_path / "my_pytorch_project").exists()

    # The README's way out: correct the one bad answer in the saved replay, bake from it.
    replay = tmp_path / "replay" / f"{ROOT.name}.json"
    replay.write_text(replay.read_text().replace('"batch_size": "abc"', '"batch_size": "32"'))
    run([*command, "--replay"], tmp_path)
    baked = defaults(tmp_path / "my_pytorch_project")
    assert (baked["batch_size"], baked["tracker"]) == (32, "mlflow")


JINJA = "{{ 7*7 }} {% if x %}"


def test_jinja_in_an_answer_comes_out_literally(tmp_path: Path, config_file: Path) -> None:
    """Typed at a prompt, an answer is text. On the command line, cookiecutter renders it with
    Jinja first ({{ 7*7 }} becomes 49): {% raw %} keeps it text there (README, FAQ)."""
    prompted = subprocess.run(
        [sys.executable, "-m", "cookiecutter", str(ROOT), "--config-file", str(config_file)]
        + NO_DATA_ARGS,
        input=f"{JINJA}\nseven\n{JINJA}\n" + "\n" * 8,  # then the defaults
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert prompted.returncode == 0, prompted.stderr
    raw = f"{{% raw %}}{JINJA}{{% endraw %}}"
    cookiecutter_cli(
        str(ROOT), "--no-input", "--config-file", str(config_file), "-o", str(tmp_path / "raw"),
        f"project_name={raw}", "project_slug=seven", f"description={raw}", *NO_DATA_ARGS,
        cwd=tmp_path,
    )  # fmt: skip
    rendered = cookiecutter_cli(
        str(ROOT), "--no-input", "--config-file", str(config_file), "-o", str(tmp_path / "cli"),
        "project_name={{ 7*7 }}", "project_slug=seven", *NO_DATA_ARGS, cwd=tmp_path,
    )  # fmt: skip

    for project in (tmp_path / "seven", tmp_path / "raw" / "seven"):
        meta = tomllib.loads((project / "pyproject.toml").read_text(encoding="utf-8"))["project"]
        assert meta["description"] == JINJA
        assert (project / "README.md").read_text(encoding="utf-8").startswith(f"# {JINJA}\n")
    assert rendered.returncode == 0
    assert (tmp_path / "cli" / "seven" / "README.md").read_text().startswith("# 49\n")


def test_booleans_as_text_are_normalised_or_refused_before_anything_is_written(
    tmp_path: Path, config_file: Path
) -> None:
    common = [str(ROOT), "--config-file", str(config_file), *NO_DATA_ARGS]
    ok = ["--no-input", "-o", str(tmp_path / "ok"), "shuffle=0", "_git_init=off"]
    cookiecutter_cli(*common, *ok, cwd=tmp_path)
    saved = json.loads((tmp_path / "ok" / "my_pytorch_project" / ".cookiecutter.json").read_text())
    assert (saved["cookiecutter"]["shuffle"], saved["cookiecutter"]["_git_init"]) == (False, False)

    # cookiecutter itself refuses what it cannot read as a boolean...
    command = [sys.executable, "-m", "cookiecutter", *common, "--no-input"]
    refused = subprocess.run(
        [*command, "-o", str(tmp_path / "no"), "shuffle=maybe"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert refused.returncode != 0
    assert "maybe provided for variable shuffle could not be converted to a boolean" in (
        refused.stderr
    )
    assert not (tmp_path / "no").exists()
    # ...and the pre-gen hook what arrives as text another way, such as a hand-edited replay file.
    saved["cookiecutter"]["shuffle"] = "maybe"
    replay = tmp_path / "answers.json"
    replay.write_text(json.dumps(saved))
    refused = subprocess.run(
        [sys.executable, "-m", "cookiecutter", str(ROOT), "--config-file", str(config_file)]
        + ["--replay-file", str(replay), "-o", str(tmp_path / "replayed")],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert refused.returncode != 0
    assert "error: shuffle='maybe': must be true or false" in refused.stderr
    assert not (tmp_path / "replayed").exists() or list((tmp_path / "replayed").iterdir()) == []
