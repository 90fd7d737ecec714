"""The READMEs' "Bring your own data" code, run as a reader would run it, on data made here."""

import importlib.metadata
import json
import re
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
""",
}


def snippets(readme: Path) -> dict[str, str]:
    """The two Python blocks of the README's "Bring your own data" section."""
    text = readme.read_text(encoding="utf-8")
    section = text.split("## Bring your own data")[1].split("\n## ")[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)
    assert len(blocks) == 2, section
    return {"images": blocks[0], "numpy": blocks[1]}


@pytest.mark.slow
@pytest.mark.parametrize("source", ["images", "numpy"])
def test_bring_your_own_data_snippets_make_data_the_project_trains_on(
    default_project: Path, tmp_path: Path, source: str
) -> None:
    project = default_project
    for readme in (ROOT / "README.md", project / "README.md"):
        code = snippets(readme)[source]
        assert code == snippets(ROOT / "README.md")[source]  # the two READMEs agree
    work = tmp_path / source
    work.mkdir()
    run([sys.executable, "-c", PRELUDE[source] + code], work)

    data = work / "mydata"
    script = [sys.executable, "-B", "pytorch_script.py", "--data-dir", str(data)]  # -B: reads only
    script += ["--num-workers", "0", "--batch-size", "16", "--runs-dir", str(tmp_path / "runs")]
    out = run([*script, "--max-epochs", "8"], project)
    shape = "(3, 64, 64), 3 classes" if source == "images" else "(2, 12), 4 classes"
    assert f"of shape {shape}" in out.stdout
    rows = read_metrics(tmp_path / "runs" / "run-1" / "metrics.csv")
    assert rows[-1]["val_accuracy"] > 0.6  # learned: chance is a third or a quarter


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
