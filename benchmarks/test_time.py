"""Wall time of the template's tests (the inner loop, and --full: the README's test command) and
of a generated project's own test suite, against a bare `import torch`.

    python benchmarks/test_time.py                  # 3 runs of each
    python benchmarks/test_time.py --serial         # and each also in one process (-n 0)
    python benchmarks/test_time.py --only project --repeats 5

Each line: median, min and max seconds over the repeats, each run a fresh `python -m pytest` as
the README and the project's README run it, and the median over that of `python -c "import
torch"`, measured in the same run. (.ci/run adds a fresh virtual environment and its install.)
"""

import argparse
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def timed_pytest(args: list[str], cwd: Path) -> tuple[float, str]:
    """Seconds of one `python -m pytest` run, and its summary line; a failed run stops here."""
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args],
        cwd=cwd, capture_output=True, text=True,
    )  # fmt: skip
    seconds = time.perf_counter() - start
    lines = result.stdout.strip().splitlines() or ["no output"]
    if result.returncode != 0:
        raise SystemExit(f"pytest failed in {cwd}:\n{result.stdout[-3000:]}{result.stderr[-3000:]}")
    return seconds, lines[-1]


def timed(command: list[str], cwd: Path) -> float:
    start = time.perf_counter()
    subprocess.run(command, cwd=cwd, check=True, capture_output=True)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="runs of each suite")
    parser.add_argument("--only", choices=["template", "project"], help="time one suite only")
    parser.add_argument("--serial", action="store_true", help="also time each with -n 0")
    parser.add_argument("--keyword", help="pytest -k KEYWORD (to check this script)")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp())
    suites = {}
    if args.only != "project":
        suites["the template's tests, inner loop (pytest)"] = (ROOT, [])
        suites["the template's tests, all (pytest --full)"] = (ROOT, ["--full"])
    if args.only != "template":
        bake = [sys.executable, "-m", "cookiecutter", str(ROOT), "--no-input", "-o", str(work)]
        subprocess.run([*bake, "_run_smoke_test=false"], check=True, capture_output=True)
        suites["a generated project's tests"] = (work / "my_pytorch_project", [])
    extra = ["-k", args.keyword] if args.keyword else []
    ways = {"": []} | ({", one process (-n 0)": ["-n", "0"]} if args.serial else {})
    import_torch = [sys.executable, "-c", "import torch"]
    bare = statistics.median(timed(import_torch, ROOT) for _ in range(max(args.repeats, 3)))

    print(f"{args.repeats} runs each; seconds: median (min - max); / import torch; tests")
    for name, (cwd, given) in suites.items():
        for way, flags in ways.items():
            runs = [timed_pytest([*given, *flags, *extra], cwd) for _ in range(args.repeats)]
            times = [seconds for seconds, _ in runs]
            summary = re.sub(r" in [\d.]+s.*", "", runs[-1][1])
            label = f"{name}{way}"
            print(
                f"  {label:50} {statistics.median(times):6.1f} ({min(times):.1f} -"
                f" {max(times):.1f}); {statistics.median(times) / bare:.1f}x; {summary}"
            )
    print(f"  {'import torch alone':50} {bare:6.2f}")
    shutil.rmtree(work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
