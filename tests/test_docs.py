"""The READMEs' "Bring your own data" commands, run as a reader would run them, on data made here:
import_data.py, then training and evaluate.py on the test split."""

import importlib.metadata
import json
import re
import shlex
import sys
from pathlib import Path

import pytest

from conftest import ROOT, read_metrics, run

PRELUDE = {
    # A folder of images, one subfolder per class, of mixed sizes and modes, as found in the wild.
    "images": """
from pathlib import Path
import numpy as np
from PIL import Image
rng = np.random.default_rng(0)
for c, name in enumerate(["cat", "dog", "owl"]):
    Path("images", name).mkdir(parents=True)
    for i in range(30):
        size = (40 + i, 50 + 2 * i)
        pixels = rng.integers(0, 40, (*size[::-1], 3)) + 100 * c
        image = Image.fromarray(pixels.astype(np.uint8))
        image.convert("L" if i % 3 == 0 else "RGB").save(f"images/{name}/{i}.png")
""",
    # A NumPy array with integer labels, of a learnable signal.
    "numpy": """
import numpy as np
rng = np.random.default_rng(0)
y = rng.integers(0, 4, 200)
X = (rng.normal(size=(200, 2, 12)) + y[:, None, None]).astype(np.float32)
np.save("X.npy", X)
np.save("y.npy", y)
""",
    # A table: a sample a row, its label a name.
    "csv": """
import numpy as np
rng = np.random.default_rng(0)
y = rng.integers(0, 3, 90)
rows = ["label," + ",".join(f"x{i}" for i in range(5))]
rows += [f"{'abc'[c]}," + ",".join(f"{v:.3f}" for v in rng.normal(size=5) + c) for c in y]
open("table.csv", "w").write("\\n".join(rows) + "\\n")
""",
}


def section(readme: Path) -> str:
    text = readme.read_text(encoding="utf-8")
    return text.split("## Bring your own data")[1].split("\n## ")[0]


def commands(readme: Path) -> dict[str, list[str]]:
    """The section's import_data.py commands, by source, and its evaluate.py command."""
    lines = [
        line.split("  #")[0].strip()
        for block in re.findall(r"```bash\n(.*?)```", section(readme), flags=re.DOTALL)
        for line in block.splitlines()
    ]
    found = {
        "images": [line for line in lines if line.startswith("python import_data.py images")],
        "numpy": [line for line in lines if line.startswith("python import_data.py X.npy")],
        "csv": [line for line in lines if line.startswith("python import_data.py table.csv")],
        "evaluate": [line for line in lines if line.startswith("python evaluate.py")],
    }
    assert all(len(lines) == 1 for lines in found.values()), found
    return {name: shlex.split(line)[1:] for name, [line] in found.items()}


@pytest.mark.slow
@pytest.mark.parametrize("source", ["images", "numpy", "csv"])
def test_bring_your_own_data_commands_make_data_the_project_trains_and_evaluates_on(
    default_project: Path, tmp_path: Path, source: str
) -> None:
    project = default_project
    readme = commands(ROOT / "README.md")
    assert commands(project / "README.md") == readme  # the two READMEs agree
    work = tmp_path / source
    work.mkdir()
    run([sys.executable, "-c", PRELUDE[source]], work)
    script, *arguments = readme[source]
    run([sys.executable, "-B", str(project / script), *arguments], work)  # -B: reads only

    data = work / "mydata"
    if source == "csv":  # names in the labels: kept in classes.json, as images' folders are
        assert json.loads((data / "classes.json").read_text()) == ["a", "b", "c"]
        return
    runs = ["--runs-dir", str(tmp_path / "runs")]
    script = [sys.executable, "-B", "pytorch_script.py", "--data-dir", str(data), *runs]
    script += ["--num-workers", "0", "--batch-size", "16", "--run-name", "mydata"]
    out = run([*script, "--max-epochs", "8"], project)
    shape = "(3, 64, 64), 3 classes" if source == "images" else "(2, 12), 4 classes"
    assert f"of shape {shape}" in out.stdout
    rows = read_metrics(tmp_path / "runs" / "mydata" / "metrics.csv")
    assert rows[-1]["val_accuracy"] > 0.6  # learned: chance is a third or a quarter
    script, *arguments = readme["evaluate"]
    out = run([sys.executable, "-B", script, *arguments, *runs, "--num-workers", "0"], project)
    assert "on the test split of" in out.stdout
    report = tmp_path / "runs" / "mydata" / "eval" / "test-best" / "metrics.json"
    metrics = json.loads(report.read_text())
    test_split = json.loads((data / "partition.json").read_text())["test"]
    assert metrics["accuracy"] > 0.5 and metrics["samples"] == len(test_split) > 0


@pytest.mark.slow
def test_the_readme_s_constraint_keeps_torch_when_adding_torchvision(
    default_project: Path, tmp_path: Path
) -> None:
    """The generated README's one command for a package that depends on torch: pip must plan to
    keep the installed torch (a dry run: it resolves against the package index)."""
    readme = (default_project / "README.md").read_text(encoding="utf-8")
    [command] = [line for line in readme.splitlines() if "install torchvision -c" in line]
    write_constraint, install = command.split(" && ")
    assert install == "python -m pip install torchvision -c constraints.txt"
    run(["sh", "-c", write_constraint.replace("python ", f"{sys.executable} ", 1)], tmp_path)
    report = tmp_path / "report.json"
    pip = [sys.executable, "-m", "pip", "install", "torchvision", "-c", "constraints.txt"]
    # --force-reinstall: plan it all even where torchvision is installed (the stream extra's
    # tests install it), then check that the torch planned is the one installed.
    run([*pip, "--dry-run", "--quiet", "--force-reinstall", "--report", str(report)], tmp_path)
    planned = {
        item["metadata"]["name"]: item["metadata"]["version"]
        for item in json.loads(report.read_text())["install"]
    }
    assert "torchvision" in planned
    installed = importlib.metadata.version("torch")
    assert planned["torch"] == installed, f"pip would replace torch {installed}: {planned}"
