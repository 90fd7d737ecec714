"""Wall time of `cookiecutter . --no-input` (with sample data and smoke test) against its parts.

    python benchmarks/bake_time.py               # 5 repeats of each
    python benchmarks/bake_time.py --repeats 9

Each line: median, min and max seconds over the repeats, each run a fresh process as a user's is.
"""

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def wall_time(command: list[str], cwd: Path) -> float:
    start = time.perf_counter()
    subprocess.run(command, cwd=cwd, check=True, capture_output=True)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="runs of each command")
    args = parser.parse_args(argv)

    config = Path(tempfile.mkdtemp()) / "cookiecutter.yaml"  # replays not in ~, as a user's
    config.write_text(f"replay_dir: {json.dumps(str(config.parent))}\n")
    bake = [sys.executable, "-m", "cookiecutter", str(ROOT), "--config-file", str(config)]
    bake += ["--no-input", "-o"]
    cases = {
        "python -c 'import torch'": lambda out: [sys.executable, "-c", "import torch"],
        "cookiecutter, no data, no smoke test": lambda out: [
            *bake, str(out), "create_sample_data=false", "run_smoke_test=false"
        ],
        "cookiecutter --no-input (defaults)": lambda out: [*bake, str(out)],
    }  # fmt: skip
    medians = {}
    print(f"{args.repeats} runs each; seconds: median (min - max)")
    for name, command in cases.items():
        times = []
        for _ in range(args.repeats):
            out = Path(tempfile.mkdtemp())
            times.append(wall_time(command(out), cwd=out))
            shutil.rmtree(out)
        medians[name] = statistics.median(times)
        print(f"  {name:40} {medians[name]:5.2f} ({min(times):.2f} - {max(times):.2f})")
    full, torch_import = (
        medians["cookiecutter --no-input (defaults)"],
        medians["python -c 'import torch'"],
    )
    print(f"defaults / import torch: {full / torch_import:.1f}x")
    shutil.rmtree(config.parent)
    return 0


if __name__ == "__main__":
    sys.exit(main())
