"""Write the sample data and run a one-epoch smoke test, both in this process: torch loads once."""

import contextlib
import csv
import importlib
import io
import json
import os
import shlex
import sys
import tempfile
import time
import traceback
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
    except ValueError:  # on Windows, another drive
        relative = ".."
    return shlex.quote(str(path) if relative.startswith("..") else relative)


def smoke_test(pytorch_script, run: list[str]) -> float:
    """Train with DataLoader workers; returns the validation accuracy, raises on failure."""
    with tempfile.TemporaryDirectory() as tmp:
        metrics_csv = Path(tmp) / "metrics.csv"
        argv = [*run, "--num-workers", "2", "--metrics-csv", str(metrics_csv)]
        argv += ["--checkpoint-dir", str(Path(tmp) / "checkpoints")]
        output = io.StringIO()
        try:
            with contextlib.redirect_stdout(output), contextlib.redirect_stderr(output):
                code = pytorch_script.main(argv)
        except Exception:
            code = traceback.format_exc()
        if code != 0:
            print(output.getvalue() + (code if isinstance(code, str) else ""), file=sys.stderr)
            raise RuntimeError(
                f"`python pytorch_script.py {' '.join(argv[:-4])}` failed (output above)"
            )
        with open(metrics_csv, newline="", encoding="utf-8") as f:
            return float(list(csv.DictReader(f))[-1]["val_accuracy"])


def main() -> int:
    if not (ANSWERS["create_sample_data"] or ANSWERS["run_smoke_test"]):
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
    if ANSWERS["create_sample_data"]:
        if kept:
            print(f"Kept the data already in {PROJECT / 'data'}; no sample data written.")
        elif make_sample_data.main([]) != 0:
            print("error: writing the sample data failed (reason above)", file=sys.stderr)
            return 1

    if ANSWERS["run_smoke_test"]:
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
        try:
            val_accuracy = smoke_test(pytorch_script, run)
        except Exception as err:
            print(
                f"error: smoke test: {err}. (cookiecutter keeps the project only when given"
                " --keep-project-on-failure)",
                file=sys.stderr,
            )
            return 1
        _, labels = importlib.import_module("my_classes").load_partition(PROJECT / "data")
        chance = 1 / (max(labels.values()) + 1)
        print(
            f"Smoke test passed in {time.perf_counter() - start:.1f} s: {what} with DataLoader"
            f" workers, validation accuracy {val_accuracy:.2f} (chance {chance:.2f})."
            f" Next: cd {shown(PROJECT)} && python pytorch_script.py"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
