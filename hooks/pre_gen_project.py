"""Check every answer before cookiecutter writes the project; print one line per bad answer."""

import json
import keyword
import re
import sys

# tojson, then json.loads: an answer is data here, never Python source.
ANSWERS = json.loads(r"""{{ cookiecutter | tojson }}""")

# Names a generated project imports or is made of: a project named like one would shadow it.
# (pip install -e . would also put the project in place of a package of that name.)
TAKEN = {
    "torch", "tqdm", "numpy", "pytest", "ruff", "setuptools", "pip",
    "sympy", "networkx", "filelock", "jinja2", "fsspec", "typing_extensions", "mpmath",
    "data", "runs", "tests",
} | set(ANSWERS["_project_modules"]) | set(ANSWERS["_project_packages"])  # fmt: skip
# Names Windows reserves for devices: no file or directory may have them there.
WINDOWS = {"con", "prn", "aux", "nul"} | {f"{d}{n}" for d in ("com", "lpt") for n in range(1, 10)}
WHOLE = re.compile(r"[0-9]+")


def check_text(text: object) -> str | None:
    if any(ord(c) < 32 and c not in "\n\t" or ord(c) == 127 for c in str(text)):
        return "holds a control character; use plain text"
    return None


def check_slug(slug: str) -> str | None:
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", slug):
        return (
            "use ASCII letters, digits and underscores, not a digit first (e.g. my_project);"
            " it is made from project_name unless you give project_slug"
        )
    if keyword.iskeyword(slug) or keyword.issoftkeyword(slug):
        return "it is a Python keyword"
    if slug.lower() in sys.stdlib_module_names or slug.lower() in TAKEN:
        return "a module of that name exists and the project would shadow it"
    if slug.lower() in WINDOWS:
        return "Windows reserves that name for a device"
    return None


def check_int(value: object, least: int) -> str | None:
    if isinstance(value, bool) or not WHOLE.fullmatch(str(value)) or int(str(value)) < least:
        return f"must be a whole number >= {least}"
    return None


def check_shape(value: object) -> str | None:
    parts = str(value).replace(" ", "").split(",")
    if not all(WHOLE.fullmatch(part) and int(part) >= 1 for part in parts):
        return "must be positive whole numbers separated by commas, e.g. 3,32,32 or 128"
    return None


def check_fraction(value: object) -> str | None:
    try:
        fraction = float(str(value))
    except ValueError:
        fraction = float("nan")
    if not 0 < fraction < 1:
        return "must be a number strictly between 0 and 1, e.g. 0.2"
    if check_int(ANSWERS["_num_samples"], 2) is None:
        num_samples = int(ANSWERS["_num_samples"])
        if not 0 < round(num_samples * fraction) < num_samples:
            return f"leaves a split of {num_samples} samples empty"
    return None


def check_test_fraction(value: object) -> str | None:
    try:
        fraction = float(str(value))
    except ValueError:
        fraction = float("nan")
    if not 0 <= fraction < 1:
        return "must be a number from 0 (no test split) up to 1 (excluded), e.g. 0.1"
    if check_int(ANSWERS["_num_samples"], 2) or check_fraction(ANSWERS["_validation_fraction"]):
        return None
    if num_training() < 1:
        return f"leaves no training sample of {ANSWERS['_num_samples']} with the validation split"
    return None


def num_training() -> int:
    """The training samples of the sample data: what the validation and test splits leave."""
    num_samples = int(ANSWERS["_num_samples"])
    held_out = (float(ANSWERS[name]) for name in ("_validation_fraction", "_test_fraction"))
    return num_samples - sum(round(num_samples * fraction) for fraction in held_out)


def check_batch_size(value: object) -> str | None:
    problem = check_int(value, 1)
    split = check_int(ANSWERS["_num_samples"], 2) or check_fraction(ANSWERS["_validation_fraction"])
    split = split or check_test_fraction(ANSWERS["_test_fraction"])
    if problem is None and split is None and ANSWERS["_create_sample_data"] is True:
        num_train = num_training()
        if int(str(value)) > num_train:
            return f"more than the {num_train} training samples: lower it or raise _num_samples"
    return problem


def check_num_classes(value: object) -> str | None:
    problem = check_int(value, 2)
    if problem is None and check_int(ANSWERS["_num_samples"], 2) is None:
        if int(str(value)) > int(str(ANSWERS["_num_samples"])):
            return f"more classes than the {ANSWERS['_num_samples']} samples"
    return problem


def check_bool(value: object) -> str | None:
    return None if isinstance(value, bool) else "must be true or false"


TRACKERS = ("none", "mlflow", "wandb")


def check_tracker(value: object) -> str | None:
    return None if value in TRACKERS else f"must be one of {', '.join(TRACKERS)}"


CHECKS = {
    "project_name": check_text,
    "project_slug": check_slug,
    "description": check_text,
    "author": check_text,
    "batch_size": check_batch_size,
    "shuffle": check_bool,
    "num_workers": lambda v: check_int(v, 0),
    "max_epochs": lambda v: check_int(v, 1),
    "sample_shape": check_shape,
    "num_classes": check_num_classes,
    "tracker": check_tracker,
    "_cudnn_benchmark": check_bool,
    "_num_samples": lambda v: check_int(v, 2),
    "_validation_fraction": check_fraction,
    "_test_fraction": check_test_fraction,
    "_create_sample_data": check_bool,
    "_run_smoke_test": check_bool,
    "_use_tensorboard": check_bool,
    "_git_init": check_bool,
}


def main() -> int:
    missing = [name for name in CHECKS if name not in ANSWERS]
    if missing:  # e.g. a replay file saved by a version of this template that asked other things
        renamed = [f"{name[1:]} to {name}" for name in missing if name[1:] in ANSWERS]
        hint = f" (saved by template 0.2 or older? rename {', '.join(renamed)})" if renamed else ""
        print(f"error: no answer for {', '.join(missing)}{hint}", file=sys.stderr)
        return 1
    errors = []
    for name, check in CHECKS.items():
        problem = check(ANSWERS[name])
        if problem:
            errors.append(f"error: {name}={ANSWERS[name]!r}: {problem}")
    for line in errors:
        print(line, file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
