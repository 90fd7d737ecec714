"""The repository keeps its promises: CI runs the README's test command; the code passes ruff."""

import re
import sys

import pytest
import yaml

from conftest import ROOT, run


def readme_commands() -> list[str]:
    """The one-line commands in the README's "The two commands" section."""
    section = (ROOT / "README.md").read_text(encoding="utf-8").split("## The two commands")[1]
    section = section.split("\n## ")[0]
    return re.findall(r"```bash\n(python -m pip install -r [^\n]+)\n```", section)


def test_readme_has_the_generate_and_the_test_command() -> None:
    assert readme_commands() == [
        "python -m pip install -r requirements.txt && cookiecutter . --no-input",
        "python -m pip install -r requirements-dev.txt && python -m pytest --full",
    ]


def test_ci_runs_the_readmes_test_command() -> None:
    test_command = readme_commands()[1]
    ci_run = (ROOT / ".ci" / "run").read_text()
    assert test_command in ci_run.splitlines()

    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "ci.yml").read_text())
    steps = workflow["jobs"]["template"]["steps"]
    assert test_command in [step.get("run") for step in steps]
    matrix = workflow["jobs"]["template"]["strategy"]["matrix"]
    assert matrix["python-version"] == ["3.10", "3.11", "3.12", "3.13", "3.14"]
    assert matrix["os"] == ["ubuntu-latest", "macos-latest", "windows-latest"]


def test_torch_is_pinned_wherever_it_is_installed() -> None:
    """An unpinned torch can pull a multi-GB CUDA build."""
    requirements = (ROOT / "requirements.txt").read_text().splitlines()
    assert [line for line in requirements if line.startswith("torch")] == ["torch==2.13.0"]
    workflow = (ROOT / ".github" / "workflows" / "ci.yml").read_text()
    assert set(re.findall(r"pip install (torch\S*)", workflow)) == {"torch==2.13.0"}


# The benchmarks at tiny sizes: the numbers mean nothing here, the scripts must keep working.
# One test each, so that they run side by side.


@pytest.mark.slow
def test_the_loaders_benchmark_prints_its_table() -> None:
    loaders = [sys.executable, "benchmarks/loaders.py", "--repeats", "1", "--no-memory"]
    out = run([*loaders, "--small", "300", "--large", "0"], ROOT).stdout  # one shape: 22 s, not 50
    assert "3x32x32, 300 samples" in out and "3x224x224" not in out, out
    names = ["article, 6 workers", r"files, [1-9]\d* workers", "packed, 0 workers", "limit: NumPy"]
    names += ["stream, directory, 0 workers", r"stream, S3, cold, [1-9]\d* workers"]
    names += ["stream, S3, cached, 0 workers"]
    for name in names:  # workers: as many as CPUs
        assert len(re.findall(f"\n  {name}", out)) == 1, out


@pytest.mark.slow
def test_the_scale_benchmark_prints_its_table() -> None:
    scale = [sys.executable, "benchmarks/scale.py", "--sizes", "2000", "--repeats", "1"]
    out = run(scale, ROOT).stdout
    assert re.search(r"\n +2,000 +[\d.]+s .* [\d.]+x\n", out), out  # one row, speed-up last


@pytest.mark.slow
def test_the_bake_time_benchmark_prints_its_table() -> None:
    bake_time = [sys.executable, "benchmarks/bake_time.py", "--repeats", "1"]
    bake = run([*bake_time, "--against", "HEAD"], ROOT).stdout
    assert "cookiecutter --no-input (defaults)" in bake and "defaults / import torch:" in bake
    assert re.search(r"cookiecutter --no-input, at HEAD +[\d.]+", bake), bake
    assert re.search(r"defaults now / at HEAD: [\d.]+", bake), bake
    assert "train one epoch with 2 workers" in bake  # the post-gen hook's steps


@pytest.mark.slow
def test_the_trackers_benchmark_prints_its_table() -> None:
    trackers = [sys.executable, "benchmarks/trackers.py", "--repeats", "1", "--epochs", "1"]
    out = run(trackers, ROOT).stdout
    for row in ["mlflow, new store", "mlflow, existing store", "wandb, offline"]:
        assert re.search(rf"\n{row} +[\d.]+ \[[\d.]+-[\d.]+\]", out), out
    assert re.search(r"--tracker wandb +[\d.]+ \[[\d.]+-[\d.]+\] s +[\d.]+x", out), out


@pytest.mark.slow
def test_the_test_time_and_loop_benchmarks_print_their_tables() -> None:
    one_test = "test_dry_run_checks_the_whole_run_and_writes_nothing"
    tests = [sys.executable, "benchmarks/test_time.py", "--repeats", "1", "--only", "project"]
    out = run([*tests, "--keyword", one_test], ROOT).stdout
    assert re.search(
        r"a generated project's tests +[\d.]+ \([\d.]+ - [\d.]+\); [\d.]+x; 1 passed", out
    )
    assert re.search(r"import torch alone +[\d.]+", out), out
    loop = [sys.executable, "benchmarks/loop.py", "--repeats", "1", "--steps", "5"]
    out = run(loop, ROOT).stdout
    assert re.search(r"\narticle +[\d.]+ \[", out) and re.search(r"\nproject +[\d.]+ \[", out), out
    assert re.search(r"project / article, time per step: [\d.]+ \(overhead [-+][\d.]+%", out), out


@pytest.mark.slow
def test_the_images_to_evaluation_benchmark_prints_its_table() -> None:
    steps = [sys.executable, "benchmarks/images_to_evaluation.py", "--repeats", "1"]
    out = run([*steps, "--images", "30", "--epochs", "1", "--batch-size", "8"], ROOT).stdout
    for step in ["import_data.py images --out mydata (1 process)", "evaluate.py mydata --split"]:
        assert re.search(rf"\n{re.escape('python ' + step)}.* +[\d.]+ \[", out), out
    assert re.search(r"importing, all CPUs against 1 process: [\d.]+x as fast", out), out


def test_hooks_tests_and_benchmarks_pass_ruff() -> None:
    run([sys.executable, "-m", "ruff", "check", "--no-cache", "."], ROOT)
    run([sys.executable, "-m", "ruff", "format", "--check", "--no-cache", "."], ROOT)
