"""From a folder of images to the test split's metrics: the README's commands, each timed.

    python benchmarks/images_to_evaluation.py                 # 1,000 images, 3 classes
    python benchmarks/images_to_evaluation.py --images 3000 --epochs 20 --repeats 5
    python benchmarks/images_to_evaluation.py --format jpg --sides 300,640   # photos' sizes

A default project is baked without data, and --images images (PNG, or --format jpg) of random
sizes (--sides: 64 to 160 pixels a side) in 3 classes, each class its own colour plus noise,
are written to images/.
Then each step of the README's "Bring your own data" runs in a new Python, as a user runs it,
--repeats times, and the median is printed (the range in brackets): import_data.py with a
DataLoader worker per CPU and with one process (--num-workers 0), each into a new --out, with
images/s; the dry run; pack_data.py; training (--max-epochs --epochs, where the README trains
for the project's default of 100) and evaluate.py on the test split. And `import torch`
alone, which every step pays.
"""

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from scale import bake  # the template baked without data, beside this script


def write_images(root: Path, count: int, sides: tuple[int, int], suffix: str) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(count):
        c = i % 3
        (root / f"class-{c}").mkdir(parents=True, exist_ok=True)
        height, width = rng.integers(sides[0], sides[1] + 1, 2)
        pixels = rng.integers(0, 80, (height, width, 3)) + np.roll([150, 60, 20], c)
        image = Image.fromarray(pixels.clip(0, 255).astype(np.uint8))
        image.save(root / f"class-{c}/{i}{suffix}")


def timed(command: list[str], cwd: Path) -> tuple[float, str]:
    start = time.perf_counter()
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{result.stdout}\n{result.stderr}")
    return seconds, result.stdout


def line(name: str, seconds: list[float], note: str = "") -> str:
    median = statistics.median(seconds)
    return f"{name:<58} {median:7.2f} [{min(seconds):.2f}-{max(seconds):.2f}] s{note}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=1000, help="images to import (3 classes)")
    p.add_argument("--epochs", type=int, default=10, help="--max-epochs of the training step")
    p.add_argument("--repeats", type=int, default=3, help="runs of each step")
    p.add_argument("--batch-size", type=int, default=64, help="the project's default: 64")
    p.add_argument("--sides", default="64,160", help="the images' smallest and largest side")
    p.add_argument("--format", choices=["png", "jpg"], default="png", help="the images' format")
    args = p.parse_args()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    sides = args.sides.replace(",", " to ")
    print(f"{os.cpu_count()} CPUs, load {load:.1f}; {args.images} {args.format} images of"
          f" {sides} pixels a side, {args.repeats} runs each")  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="images-to-evaluation-") as tmp:
        work = Path(tmp)
        project = bake(work)
        sides = tuple(int(side) for side in args.sides.split(","))
        write_images(work / "images", args.images, sides, f".{args.format}")
        python = [sys.executable, "-B"]
        times: dict[str, list[float]] = {}
        for k in range(args.repeats):
            torch_alone, _ = timed([*python, "-c", "import torch"], project)
            times.setdefault("python -c 'import torch'", []).append(torch_alone)
            for name, flags in (("all CPUs", []), ("1 process", ["--num-workers", "0"])):
                out = work / f"mydata-{name[0]}-{k}"
                command = [*python, "import_data.py", str(work / "images"), "--out", str(out)]
                seconds, said = timed([*command, *flags], project)
                step = f"python import_data.py images --out mydata ({name})"
                times.setdefault(step, []).append(seconds)
                # after its start-up; from the rate it prints, as "in 0.0 s" rounds to nothing
                rate = float(re.search(r" s, ([\d,]+) samples/s", said)[1].replace(",", ""))
                own = args.images / rate
                times.setdefault(f"  of which importing, {name}", []).append(own)
                if k == 0 and name == "all CPUs":
                    print(said.strip())
            data = str(work / f"mydata-a-{k}")
            runs = ["--runs-dir", str(work / "runs")]
            batch = ["--batch-size", str(args.batch_size)]
            steps = {
                "python pytorch_script.py --data-dir mydata --dry-run": [
                    "pytorch_script.py", "--data-dir", data, "--dry-run", *batch
                ],
                "python pack_data.py --data-dir mydata": ["pack_data.py", "--data-dir", data],
                f"python pytorch_script.py --data-dir mydata --run-name mydata"
                f" --max-epochs {args.epochs}": [
                    "pytorch_script.py", "--data-dir", data, "--run-name", f"mydata-{k}",
                    "--max-epochs", str(args.epochs), *runs, *batch,
                ],
                "python evaluate.py mydata --split test": [
                    "evaluate.py", f"mydata-{k}", "--split", "test", *runs
                ],
            }  # fmt: skip
            for name, command in steps.items():
                seconds, said = timed([*python, *command], project)
                times.setdefault(name, []).append(seconds)
                if k == 0 and "evaluate" in name:
                    print(next(line for line in said.splitlines() if line.startswith("loss ")))
                if k == 0 and "--max-epochs" in name:
                    print(said.strip().splitlines()[-1])  # the last epoch
            shutil.rmtree(work / f"mydata-1-{k}")
        print()
        for name, seconds in times.items():
            note = ""
            if "import_data.py" in name or "importing" in name:
                note = f"  {args.images / statistics.median(seconds):,.0f} images/s"
            print(line(name, seconds, note))
        one, every = (statistics.median(times[f"  of which importing, {n}"])
                      for n in ("1 process", "all CPUs"))  # fmt: skip
        print(f"importing, all CPUs against 1 process: {one / every:.2f}x as fast")
        if hasattr(os, "getloadavg"):
            print(f"load at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
