"""The generated project's layout, as a reader of the article meets it: the article's script on
the first screens, what a user edits in two files, and each fact in one place."""

import ast
import json
import re
from pathlib import Path

import pytest

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

from conftest import ROOT

TEMPLATE = json.loads((ROOT / "cookiecutter.json").read_text(encoding="utf-8"))
# The article's script, in its order, as pytorch_script.py must read.
ARTICLE_ORDER = [
    "# CUDA for PyTorch",
    "torch.backends.cudnn.benchmark = ",
    "# Parameters",
    "params = {",
    "max_epochs = ",
    "# Datasets",
    "training_set = Dataset(",
    "validation_set = Dataset(",
    "# Generators",
    "training_generator = ",
    "validation_generator = ",
    "model = build_model(",
    "loss_fn = ",
    "optimizer = ",
    "state = {",
    "# Loop over epochs",
    "# Training",
    "# Validation",
    "run.end_epoch(",
]


@pytest.fixture
def project(default_project: Path) -> Path:
    return default_project


def functions(path: Path) -> dict[str, int]:
    """Each function's name and length in lines."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {
        node.name: node.end_lineno - node.lineno + 1
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef)
    }


def test_pytorch_script_reads_as_the_article_on_its_first_screens(project: Path) -> None:
    lines = (project / "pytorch_script.py").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 250, f"pytorch_script.py has {len(lines)} lines"
    where = []
    for marker in ARTICLE_ORDER:
        found = [n for n, line in enumerate(lines, 1) if line.strip().startswith(marker)]
        assert found, f"pytorch_script.py lacks {marker!r}"
        where.append(found[0])
    assert where == sorted(where), dict(zip(ARTICLE_ORDER, where, strict=True))
    assert where[ARTICLE_ORDER.index("params = {")] <= 60, "params is not on the first screen"
    assert where[-1] <= 120, "the loop over epochs is not on the first two screens"
    long = {name: n for name, n in functions(project / "pytorch_script.py").items() if n > 60}
    assert not long, f"functions longer than a screen: {long}"


def test_the_training_loop_is_the_articles_inner_loop(project: Path) -> None:
    """train() is fetch, forward, loss, backward and step: few parameters, about 25 lines."""
    tree = ast.parse((project / "pytorch_script.py").read_text(encoding="utf-8"))
    defined = {node.name: node for node in tree.body if isinstance(node, ast.FunctionDef)}
    train, validate = defined["train"], defined["validate"]
    assert len(train.args.args) <= 5, [a.arg for a in train.args.args]
    assert train.end_lineno - train.lineno + 1 <= 25
    assert validate.end_lineno - validate.lineno + 1 <= 25
    source = ast.unparse(train)
    for step in ("model(local_batch)", "loss_fn(", ".backward()", ".step(optimizer)"):
        assert step in source, step


def imports_of(path: Path) -> set[str]:
    """The plumbing modules path imports, at the top or inside a function (deferred)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module == "plumbing":
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("plumbing."):
            found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("plumbing.")}
    return found - {path.stem}


def test_the_plumbing_is_in_layers_without_an_import_cycle(project: Path) -> None:
    graph = {path.stem: imports_of(path) for path in (project / "plumbing").glob("*.py")}
    graph.pop("__init__")
    assert graph["errors"] == set(), "errors.py is the bottom: types and wording only"
    assert not any("exits" in imported for imported in graph.values()), "exits is the top"
    # Kahn: remove modules that import nothing left; a cycle is what never empties.
    left = {name: set(imported) for name, imported in graph.items()}
    while True:
        free = [name for name, imported in left.items() if not imported & left.keys()]
        if not free:
            break
        for name in free:
            del left[name]
    assert not left, f"an import cycle among {sorted(left)}: {left}"
    # The order the package's docstring gives, each module importing only those above it.
    listed = re.findall(
        r"^- (\w+):", (project / "plumbing" / "__init__.py").read_text(encoding="utf-8"), re.M
    )
    assert sorted(listed) == sorted(graph)
    for name in listed:
        above = set(listed[: listed.index(name)])
        assert graph[name] <= above, f"plumbing/{name}.py imports {graph[name] - above}"


def test_my_classes_holds_the_dataset_and_the_model_and_little_else(project: Path) -> None:
    path = project / "my_classes.py"
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 120, f"my_classes.py has {len(lines)} lines"
    tree = ast.parse("\n".join(lines))
    top = [node.name for node in tree.body if isinstance(node, ast.ClassDef | ast.FunctionDef)]
    assert top == ["Dataset", "Net", "build_model"]
    dataset = next(node for node in tree.body if getattr(node, "name", "") == "Dataset")
    methods = [node.name for node in dataset.body if isinstance(node, ast.FunctionDef)]
    assert methods == ["__init__", "__len__", "__getitem__", "read", "random_augmentation"]
    assert "self.list_IDs = " in lines[dataset.lineno : dataset.end_lineno].__str__()


def test_scripts_import_from_the_package_never_from_each_other(project: Path) -> None:
    scripts = set(TEMPLATE["_project_modules"])
    for name in scripts:
        tree = ast.parse((project / f"{name}.py").read_text(encoding="utf-8"))
        imported = {
            alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
            for alias in node.names
        } | {
            node.module.split(".")[0] for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and node.module
        }  # fmt: skip
        assert not imported & (scripts - {"my_classes"}), f"{name}.py imports another script"
    for path in (project / "plumbing").glob("*.py"):
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"^\s*(from|import) (my_classes|pytorch_script)\b", text, re.M), (
            f"plumbing/{path.name} imports what the user edits"
        )


def test_each_fact_is_in_one_place(project: Path) -> None:
    sources = {
        path.relative_to(project).as_posix(): path.read_text(encoding="utf-8")
        for path in project.glob("**/*.py")
        if "tests/" not in path.relative_to(project).as_posix()
    }

    def where(pattern: str) -> list[str]:
        return sorted(name for name, text in sources.items() if re.search(pattern, text, re.M))

    assert where(r"^def positive_int\(") == ["plumbing/cli.py"]
    assert where(r"os\.replace\(|mkstemp\(") == ["plumbing/files.py"]  # one atomic write
    assert where(r"\"best_score\"") == ["plumbing/checkpoints.py"]
    assert where(r"DataLoader\(") == ["plumbing/loader.py"]
    assert where(r'"://"') == ["plumbing/data.py"]  # a URL or a directory
    assert where(r'"(LOCAL_)?RANK"|"(LOCAL_)?WORLD_SIZE"|get_rank\(|get_world_size\(') == [
        "plumbing/distributed.py"
    ]  # the ranks
    assert where(r"broadcast_object_list\(") == ["plumbing/distributed.py"]  # rank 0 decides
    assert where(r"random\.seed\(|get_rng_state\(") == ["plumbing/seeding.py"]
    assert where(r'"settings\.json"') == ["plumbing/runs.py"]
    pyproject = tomllib.loads((project / "pyproject.toml").read_text(encoding="utf-8"))
    setuptools = pyproject["tool"]["setuptools"]
    assert setuptools["py-modules"] == TEMPLATE["_project_modules"]
    assert setuptools["packages"] == TEMPLATE["_project_packages"] == ["plumbing"]
    top_level = sorted(path.stem for path in project.glob("*.py"))
    assert top_level == sorted(TEMPLATE["_project_modules"])


def test_errors_are_named_for_what_failed(project: Path) -> None:
    text = (project / "plumbing" / "errors.py").read_text(encoding="utf-8")
    assert re.findall(r"^class (\w+)\((?:Base)?Exception\)", text, re.M) == [
        "DataError", "CheckpointError", "SetupError", "LoaderTimeout", "NonFiniteLoss", "Stopped",
    ]  # fmt: skip
    assert not re.search(r"^\s*(import|from) (plumbing|sys|os)\b", text, re.M), (
        "errors.py holds types and wording; exits.py decides how the script ends"
    )
    raised = {
        path.name: set(re.findall(r"raise (\w+Error)\(", path.read_text(encoding="utf-8")))
        for path in (project / "plumbing").glob("*.py")
    }
    assert raised["checkpoints.py"] == {"CheckpointError", "SetupError"}  # SetupError: state
    assert "DataError" not in raised["metrics.py"] | raised["checkpoints.py"] | raised["runs.py"]
