"""Write the sample data and run a one-epoch smoke test, both in this process (torch loads once);
then, if asked, git init and commit the new project."""

import contextlib
import importlib
import importlib.util
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# tojson, then json.loads: an answer is data here, never Python source.
ANSWERS = json.loads(r"""{{ cookiecutter | tojson }}""")
PROJECT = Path.cwd()  # cookiecutter runs hooks inside the new project
LATER = f"""  cd {shlex.quote(str(PROJECT))}
  python -m pip install -e .
  python make_sample_data.py
  python pytorch_script.py --dry-run"""


def shown(path: Path) -> str:
    """The path from where the user ran cookiecutter (the shell's PWD), if it is below it."""
    try:
        relative = os.path.relpath(path, os.environ.get("PWD", "/"))
    except ValueError:  # pragma: no cover (on Windows only: another drive)
        relative = ".."
    return shlex.quote(str(path) if relative.startswith("..") else relative)


def git_init() -> str:
    """git init, add and commit the new project; returns what happened, in a line. Only commands
    every git release has; without git, or without a name and email set, no repository."""
    later = "git init && git add --all && git commit -m 'Initial commit'"
    git = shutil.which("git")
    if git is None:
        return f"No git repository: git is not installed. Later: {later}"
    if (PROJECT / ".git").exists():  # regenerated with -f over a repository: it stays as it is
        return f"Kept the git repository in {shown(PROJECT)} as it was."
    inside = subprocess.run(
        [git, "rev-parse", "--show-toplevel"], cwd=PROJECT, capture_output=True, text=True
    )
    if inside.returncode == 0:  # generated into a repository: no repository inside it
        return f"No git repository made: the project is in the one at {inside.stdout.strip()}."
    version = ANSWERS["_template_version"]
    message = f"Generate the project from the PyTorch data-loading template {version}"
    # user.useConfigOnly: no commit under a name and email guessed from the host name
    commit = ["-c", "user.useConfigOnly=true", "commit", "--quiet", "--message", message]
    for name, args in [
        ("init", ["init", "--quiet"]),
        ("add", ["add", "--all"]),
        ("commit", commit),
    ]:
        result = subprocess.run([git, *args], cwd=PROJECT, capture_output=True, text=True)
        if result.returncode != 0:
            shutil.rmtree(PROJECT / ".git", ignore_errors=True)  # no repository half made
            reason = (result.stderr.strip().splitlines() or ["no output"])[-1]
            return (
                f"No git repository: git {name} failed ({reason}). If git lacks your name and"
                " email: git config --global user.name 'Your Name', git config --global"
                f" user.email you@example.com; then: cd {shown(PROJECT)} && {later}"
            )
    return f"Made a git repository in {shown(PROJECT)} with a first commit."


def smoke_test(pytorch_script, run: list[str]) -> float:
    """Train with DataLoader workers; returns the validation accuracy, raises on failure."""
    with tempfile.TemporaryDirectory() as tmp:
        # No tracker: a smoke test's run does not belong in yours (nor its package, yet).
        argv = [*run, "--num-workers", "2", "--tracker", "none"]
        argv += ["--runs-dir", tmp, "--run-name", "smoke-test"]
        output = io.StringIO()
        # main() says what failed: one line for a known cause, else the error's traceback.
        with contextlib.redirect_stdout(output), contextlib.redirect_stderr(output):
            code = pytorch_script.main(argv)
        if code != 0:
            print(output.getvalue(), file=sys.stderr)
            raise RuntimeError(
                f"`python pytorch_script.py {' '.join(argv[:-4])}` failed (output above)"
            )
        # The epoch line it printed (a --dry-run writes no metrics file)
        return float(re.findall(r"val_accuracy (\d+\.\d+)", output.getvalue())[-1])


def data_and_smoke_test() -> int:
    if not (ANSWERS["_create_sample_data"] or ANSWERS["_run_smoke_test"]):
        return 0
    sys.path.insert(0, str(PROJECT))
    sys.dont_write_bytecode = True  # leave no __pycache__ in the new project
    try:  # torch loads once, here, for both steps
        make_sample_data = importlib.import_module("make_sample_data")
        pytorch_script = importlib.import_module("pytorch_script")
    except ImportError as err:  # e.g. cookiecutter installed with pipx, torch elsewhere
        print(
            f"No sample data or smoke test yet: {sys.executable} cannot import what the project"
            f" needs ({err}). The project is ready; to finish:\n{LATER}"
        )
        return 0

    kept = (PROJECT / "data" / "partition.json").exists()  # regenerated over a project (-f)
    if ANSWERS["_create_sample_data"]:
        if kept:
            print(f"Kept the data already in {PROJECT / 'data'}; no sample data written.")
        elif make_sample_data.main([]) != 0:
            print("error: writing the sample data failed (reason above)", file=sys.stderr)
            return 1

    if ANSWERS["_run_smoke_test"]:
        if not (PROJECT / "data" / "partition.json").exists():
            print(f"No data in {PROJECT / 'data'}, so no smoke test. Once it has data:\n{LATER}")
            return 0
        start = time.perf_counter()
        # One epoch of sample data takes seconds; one of the user's own data could take hours.
        run, what = (
            (["--dry-run"], "two batches per split")
            if kept
            else (["--max-epochs", "1"], "one epoch")
        )
        note = ""
        if ANSWERS["_use_tensorboard"] and importlib.util.find_spec("tensorboard") is None:
            run.append("--no-tensorboard")
            note = " TensorBoard is not installed here: pip install -e . installs it."
        tracker = ANSWERS["tracker"]
        if tracker != "none" and importlib.util.find_spec(tracker) is None:
            name = {"mlflow": "MLflow", "wandb": "W&B"}[tracker]
            note += f" {name}, your tracker, is not installed here: pip install -e . installs it."
        try:
            val_accuracy = smoke_test(pytorch_script, run)
        except Exception as err:
            print(
                f"error: smoke test: {err}. (cookiecutter keeps the project only when given"
                " --keep-project-on-failure)",
                file=sys.stderr,
            )
            return 1
        _, labels = importlib.import_module("plumbing.data").load_partition(PROJECT / "data")
        chance = 1 / (max(labels.values()) + 1)
        print(
            f"Smoke test passed in {time.perf_counter() - start:.1f} s: {what} with DataLoader"
            f" workers, validation accuracy {val_accuracy:.2f} (chance {chance:.2f})."
            f" Next: cd {shown(PROJECT)} && python pytorch_script.py{note}"
        )
    return 0


def main() -> int:
    code = data_and_smoke_test()
    if code == 0 and ANSWERS["_git_init"]:
        print(git_init())
    return code


if __name__ == "__main__":
    code = main()
    # Everything is written and closed: skip the interpreter's teardown of torch and
    # torch._dynamo (about half a second of a bake, for nothing).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
