"""The generated README's "What to change where", row by row, as a user makes each edit: in a
copy of a new project, each trains, is stopped by SIGTERM inside an epoch, resumes, and ends
bit for bit as a run never stopped, with 0 and 2 DataLoader workers (and under torchrun, for
the row that keeps the most state between steps)."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import make_edits, read_metrics, run

SAMPLES = ["--num-samples", "256", "--shape", "3,8,8", "--num-classes", "4"]
SAMPLES += ["--test-fraction", "0"]  # 192 to train on
# 192 training samples, 6 batches an epoch; SIGTERM after the 3rd batch of the 2nd epoch.
COMMON = ["--batch-size", "32", "--no-tensorboard", "--tracker", "none", "--device", "cpu"]
STOP_AT = (2, 3)
EPOCHS = "3"

STATE = '    state = {"model": model, "optimizer": optimizer, "scaler": scaler}'
TRAIN_SIGNATURE = "    scaler: torch.amp.GradScaler,\n) -> float:"
TRAIN_CALL = "loss_fn, optimizer, scaler)"
UPDATE = "        scaler.update()\n"
RESIDUAL_NET = """


class ResidualNet(nn.Module):
    \"\"\"A small ResNet: a 3x3 stem and one residual block with BatchNorm, then a linear head
    over every position (its constructor takes other arguments than Net's).\"\"\"

    def __init__(
        self, in_channels: int, image_size: tuple[int, int], num_classes: int, width: int = 16
    ) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width)
        )
        self.block = nn.Sequential(
            nn.Conv2d(width, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
        )
        self.head = nn.Linear(width * image_size[0] * image_size[1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        return self.head(torch.relu(x + self.block(x)).flatten(1))


def build_model("""
ONE_CYCLE = "max_lr=10 * settings.lr, total_steps=max_epochs * len(training_generator)"


def in_the_state(name: str, made: str) -> tuple[str, str, str]:
    """The edit that makes an entry beside the optimizer (made: its lines) and adds it to the
    state that last.pt saves."""
    return ("pytorch_script.py", STATE, f'{made}\n{STATE}\n    state["{name}"] = {name}')


EMA = "multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(0.99)"

# Each row of the README's table: what the user writes, as (file, text there now, new text),
# as ruff format leaves it.
ROWS = {
    "model": [
        ("my_classes.py", "\n\ndef build_model(", RESIDUAL_NET),
        (
            "my_classes.py",
            "    return Net(input_shape, num_classes)",
            "    return ResidualNet(input_shape[0], input_shape[1:], num_classes, width=8)",
        ),
    ],
    "loss": [
        ("pytorch_script.py", "nn.CrossEntropyLoss()", "nn.CrossEntropyLoss(label_smoothing=0.1)")
    ],
    "optimizer": [
        (
            "pytorch_script.py",
            "torch.optim.Adam(model.parameters(), lr=settings.lr)",
            "torch.optim.SGD(model.parameters(), lr=settings.lr, momentum=0.9)",
        )
    ],
    "weight decay": [
        (
            "pytorch_script.py",
            "torch.optim.Adam(model.parameters(), lr=settings.lr)",
            "torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=0.05)",
        )
    ],
    "schedule per epoch": [
        in_the_state(
            "scheduler",
            "    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR("
            "optimizer, T_max=max_epochs)",
        ),
        (
            "pytorch_script.py",
            "            score = val_accuracy\n",
            "            scheduler.step()\n            score = val_accuracy\n",
        ),
    ],
    "schedule per step": [
        in_the_state(
            "scheduler",
            "    scheduler = torch.optim.lr_scheduler.OneCycleLR(\n"
            f"        optimizer, {ONE_CYCLE}\n    )",
        ),
        ("pytorch_script.py", TRAIN_CALL, "loss_fn, optimizer, scaler, scheduler)"),
        (
            "pytorch_script.py",
            TRAIN_SIGNATURE,
            "    scaler: torch.amp.GradScaler,\n"
            "    scheduler: torch.optim.lr_scheduler.LRScheduler,\n"
            ") -> float:",
        ),
        ("pytorch_script.py", UPDATE, UPDATE + "        scheduler.step()\n"),
    ],
    "clipping": [
        (
            "pytorch_script.py",
            "        scaler.scale(loss).backward()\n",
            "        scaler.scale(loss).backward()\n"
            "        scaler.unscale_(optimizer)\n"
            "        nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0)\n",
        )
    ],
    "accumulation": [
        (
            "pytorch_script.py",
            "        scaler.scale(loss).backward()\n"
            "        scaler.step(optimizer)\n"
            "        scaler.update()\n"
            "        optimizer.zero_grad(set_to_none=True)",
            "        scaler.scale(loss / 4).backward()\n"
            "        if batches.number % 4 == 0 or batches.last:\n"
            "            scaler.step(optimizer)\n"
            "            scaler.update()\n"
            "            optimizer.zero_grad(set_to_none=True)",
        )
    ],
    "early stopping": [
        in_the_state("early_stopping", "    early_stopping = training.EarlyStopping(patience=5)"),
        (
            "pytorch_script.py",
            "        for epoch in run.epochs(max_epochs):\n",
            "        for epoch in run.epochs(max_epochs):\n"
            "            if early_stopping.stop:\n"
            "                break\n",
        ),
        (
            "pytorch_script.py",
            "            score = val_accuracy\n",
            "            score = val_accuracy\n            early_stopping.step(score)\n",
        ),
    ],
    "EMA": [
        in_the_state(
            "ema",
            "    ema = torch.optim.swa_utils.AveragedModel(\n"
            f"        model, {EMA}, use_buffers=True\n    )",
        ),
        ("pytorch_script.py", TRAIN_CALL, "loss_fn, optimizer, scaler, ema)"),
        (
            "pytorch_script.py",
            TRAIN_SIGNATURE,
            "    scaler: torch.amp.GradScaler,\n"
            "    ema: torch.optim.swa_utils.AveragedModel,\n"
            ") -> float:",
        ),
        ("pytorch_script.py", UPDATE, UPDATE + "        ema.update_parameters(model)\n"),
        (
            "pytorch_script.py",
            "validate(model, run.batches(validation_generator)",
            "validate(ema, run.batches(validation_generator)",
        ),
    ],
    "read": [
        (
            "my_classes.py",
            "            X = X.float() / 255\n        return X\n",
            "            X = X.float() / 255\n        return (X - X.mean()) / X.std()\n",
        )
    ],
    "augmentation": [
        (
            "my_classes.py",
            "        return X\n\n\nclass Net",
            "        if torch.rand(()) < 0.5:\n"
            "            X = X.flip(-1)\n"
            "        return X\n\n\nclass Net",
        )
    ],
    "best metric": [("pytorch_script.py", "score = val_accuracy", "score = -val_loss")],
    "a flag": [
        (
            "plumbing/cli.py",
            "    dry_run: bool\n",
            "    dry_run: bool\n    label_smoothing: float\n",
        ),
        (
            "plumbing/cli.py",
            "    return p\n",
            '    p.add_argument("--label-smoothing", type=float, default=0.1, help="of the loss")\n'
            "    return p\n",
        ),
        (
            "pytorch_script.py",
            "nn.CrossEntropyLoss()",
            "nn.CrossEntropyLoss(label_smoothing=settings.label_smoothing)",
        ),
    ],
    "another metric": [
        (
            "pytorch_script.py",
            "val_accuracy=val_accuracy\n",
            "val_accuracy=val_accuracy, val_error=1 - val_accuracy\n",
        )
    ],
    "evaluate": [
        ("evaluate.py", "nn.CrossEntropyLoss()", "nn.CrossEntropyLoss(label_smoothing=0.1)"),
        ("evaluate.py", "loss_sum = num_samples = 0\n", "loss_sum = num_samples = num_top2 = 0\n"),
        (
            "evaluate.py",
            "        num_samples += len(local_labels)\n",
            "        num_samples += len(local_labels)\n"
            "        num_top2 += (outputs.topk(2).indices == local_labels[:, None])"
            ".any(dim=1).sum()\n",
        ),
        (
            "evaluate.py",
            "    loss_sum, num_samples = distributed.all_sum("
            "[loss_sum, num_samples], batches.device)\n"
            '    return {"loss": loss_sum / num_samples}',
            "    loss_sum, num_samples, num_top2 = distributed.all_sum(\n"
            "        [loss_sum, num_samples, num_top2], batches.device\n"
            "    )\n"
            '    return {"loss": loss_sum / num_samples, "top2_accuracy": num_top2 / num_samples}',
        ),
    ],
}  # fmt: skip
# The row of the README's table each edit makes, by its first column.
README_ROW = {
    "model": "the model",
    "loss": "the loss",
    "optimizer": "the optimizer",
    "weight decay": "weight decay",
    "schedule per epoch": "a learning-rate schedule, per epoch",
    "schedule per step": "a learning-rate schedule, per step",
    "clipping": "gradient clipping",
    "accumulation": "gradient accumulation",
    "early stopping": "early stopping on the score",
    "EMA": "an EMA of the weights, for validation and `best.pt`",
    "read": "how one sample is read",
    "augmentation": "random augmentation",
    "best metric": "the metric that picks `best.pt`",
    "a flag": "a flag of yours",
    "another metric": "another metric",
    "evaluate": "what `evaluate.py` reports",
}
FLAGS = {"optimizer": ["--lr", "0.05"]}  # as the row says: SGD wants a larger learning rate

# In one Python, each run of the list [argv, stop] in turn: pytorch_script.main(argv), with a
# SIGTERM raised in the training process after batch stop[1] of epoch stop[0] (as a cluster
# preempts a job: the run's own handler takes it); their exit statuses go to statuses-RANK.json.
DRIVER = """
import json, os, signal, sys
import pytorch_script
from plumbing import training

stop_at = None
iterate = training.Pass.__iter__


def stopping(self):
    for batch in iterate(self):
        yield batch
        if self.training and [self.run.epoch, self.number] == stop_at:
            if os.environ.get("RANK", "0") == os.environ.get("SIGNALLED_RANK", "0"):
                signal.raise_signal(signal.SIGTERM)


training.Pass.__iter__ = stopping
statuses = []
for argv, stop_at in json.loads(sys.argv[1]):
    statuses.append(pytorch_script.main(argv))
with open(f"statuses-{os.environ.get('RANK', '0')}.json", "w") as f:  # a file a rank
    json.dump(statuses, f)
"""


def edited(project: Path, where: Path, edits: list[tuple[str, str, str]]) -> Path:
    """A copy of project with each edit made in its one place."""
    copy = where / "project"
    shutil.copytree(project, copy, ignore=shutil.ignore_patterns("data", "runs", "__pycache__"))
    make_edits(copy, edits)
    return copy


def drive(project: Path, runs: list) -> list[int]:
    """The exit status of each run of DRIVER's list, in one new Python in project."""
    (project / "driver.py").write_text(DRIVER, encoding="utf-8")
    run([sys.executable, "driver.py", json.dumps(runs)], project)
    return json.loads((project / "statuses-0.json").read_text())


def same(a: object, b: object) -> bool:
    """Equal, tensors bit for bit, in dicts and lists all the way down."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(map(same, a, b))
    return a == b


def assert_same_run(runs_dir: Path, whole: str, halves: str) -> None:
    """halves, stopped and resumed, ended as whole: every entry of the state, the random
    generators, the metrics (but data_wait, a measured time)."""
    a, b = (torch.load(runs_dir / name / "last.pt", weights_only=True) for name in (whole, halves))
    for key in a["state"] + ["grads", "rng", "epoch", "best_score"]:
        assert same(a[key], b[key]), f"{halves}: {key} differs from {whole}'s"
    rows = [read_metrics(runs_dir / name / "metrics.csv") for name in (whole, halves)]
    for row in (*rows[0], *rows[1]):
        del row["data_wait"]
    assert rows[0] == rows[1] and len(rows[0]) == int(EPOCHS)


@pytest.fixture(scope="module")
def tiny_data(default_project: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    data_dir = tmp_path_factory.mktemp("tiny") / "data"
    flags = ["--data-dir", str(data_dir), *SAMPLES, "--validation-fraction", "0.25"]
    run([sys.executable, "make_sample_data.py", *flags], default_project)
    return data_dir


def runs_of(data_dir: Path, runs_dir: Path, flags: list[str], workers: str) -> list:
    """Whole, then halves stopped inside an epoch, then halves resumed with --resume alone."""
    where = ["--data-dir", str(data_dir), "--runs-dir", str(runs_dir), *COMMON, *flags]
    first = [*where, "--max-epochs", EPOCHS, "--num-workers", workers]
    return [
        [[*first, "--run-name", f"whole-{workers}"], None],
        [[*first, "--run-name", f"halves-{workers}"], list(STOP_AT)],
        [["--runs-dir", str(runs_dir), "--resume", f"halves-{workers}"], None],
    ]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("row", "workers"), [(row, "02"[i % 2]) for i, row in enumerate(ROWS)], ids=list(ROWS)
)
def test_each_row_trains_stops_on_sigterm_and_resumes_bit_for_bit(
    default_project: Path, tiny_data: Path, tmp_path: Path, row: str, workers: str
) -> None:
    """Every other row with 2 DataLoader workers, the others with none: what a batch draws
    and where a resumed epoch goes on must not depend on which process reads it."""
    project = edited(default_project, tmp_path, ROWS[row])
    runs_dir = project / "runs"
    assert drive(project, runs_of(tiny_data, runs_dir, FLAGS.get(row, []), workers)) == [0, 75, 0]
    assert_same_run(runs_dir, f"whole-{workers}", f"halves-{workers}")
    last = torch.load(runs_dir / f"halves-{workers}" / "last.pt", weights_only=True)
    rows = read_metrics(runs_dir / f"halves-{workers}" / "metrics.csv")
    accuracy = rows[-1]["val_accuracy"]  # the row trains, as written (chance: 0.25)
    assert accuracy >= 0.8, f"{row}: val_accuracy {[r['val_accuracy'] for r in rows]}"
    assert last["state"][:3] == ["model", "optimizer", "scaler"]
    added = {"schedule per epoch": "scheduler", "schedule per step": "scheduler"}
    added |= {"early stopping": "early_stopping", "EMA": "ema"}
    assert last["state"][3:] == ([added[row]] if row in added else [])
    if row == "another metric":
        assert [r["val_error"] for r in rows] == pytest.approx(
            [1 - r["val_accuracy"] for r in rows], abs=2e-6
        )
    if row.startswith("schedule"):  # the learning rate of each epoch's start, in metrics.csv
        assert len({r["lr"] for r in rows}) == len(rows)
    if row in ("EMA", "evaluate"):  # evaluate.py: the EMA's weights, as validation; top-2
        flags = ["--runs-dir", str(runs_dir), "--split", "validation", "--checkpoint", "last"]
        run([sys.executable, "evaluate.py", f"halves-{workers}", *flags], project)
        report = runs_dir / f"halves-{workers}" / "eval" / "validation-last" / "metrics.json"
        metrics = json.loads(report.read_text(encoding="utf-8"))
        assert f"{metrics['accuracy']:.6f}" == f"{rows[-1]['val_accuracy']:.6f}"
        assert metrics["weights"] == ("ema" if row == "EMA" else "model")
        if row == "EMA":  # the same loss too: validation's, cross-entropy
            assert f"{metrics['loss']:.6f}" == f"{rows[-1]['val_loss']:.6f}"
        else:
            assert 1 >= metrics["top2_accuracy"] >= metrics["accuracy"]


def test_the_readme_rows_are_the_edits_tested(default_project: Path) -> None:
    """Each row's code, as the README shows it, is in the edit the test above makes (but the
    model's, a class of the user's, which the README describes)."""
    readme = (default_project / "README.md").read_text(encoding="utf-8")
    table = readme.split("## What to change where", 1)[1].split("\n\n**The state.**", 1)[0]
    rows = {line.split(" | ")[0][2:]: line for line in table.splitlines() if line.startswith("| ")}
    assert set(rows) - {"to change"} == set(README_ROW.values())
    for name, edits in ROWS.items():
        new = re.sub(r"\s", "", "".join(new for _, _, new in edits))
        example = rows[README_ROW[name]].split(" | ", 2)[2]
        code = [
            snippet
            for snippet in re.findall(r"`([^`]+)`", example)
            if ("(" in snippet or "=" in snippet or snippet.startswith("if "))
            and "..." not in snippet
            and not re.fullmatch(r"\w+\(\)", snippet)  # a function named: train()
            and not snippet.startswith(("torchvision.", "--"))
        ]
        assert code or name == "model", f"the README's row {README_ROW[name]!r} shows no code"
        for snippet in code:
            assert re.sub(r"\s", "", snippet) in new, (
                f"{name}: {snippet!r} is not what the test writes"
            )


@pytest.mark.slow
def test_early_stopping_stops_and_a_resume_after_it_trains_no_more(
    default_project: Path, tiny_data: Path, tmp_path: Path
) -> None:
    """A score that never beats epoch 1's: with patience 2 the run ends after epoch 3, and
    --resume, as a requeued job passes it, adds no epoch (its patience is in last.pt)."""
    edits = [
        (file, old, new.replace("patience=5", "patience=2"))
        for file, old, new in ROWS["early stopping"]
    ]
    edits.append(("pytorch_script.py", "score = val_accuracy", "score = -epoch"))
    project = edited(default_project, tmp_path, edits)
    runs_dir = project / "runs"
    where = ["--data-dir", str(tiny_data), "--runs-dir", str(runs_dir), *COMMON]
    first = [*where, "--max-epochs", "10", "--num-workers", "0", "--run-name", "patient"]
    again = ["--runs-dir", str(runs_dir), "--resume"]
    (project / "driver.py").write_text(DRIVER, encoding="utf-8")
    out = run([sys.executable, "driver.py", json.dumps([[first, None], [again, None]])], project)
    assert json.loads((project / "statuses-0.json").read_text()) == [0, 0]
    ends = "training ends after epoch 3 of 10: the loop over epochs in pytorch_script.py left early"
    assert out.stdout.count(ends) == 2, out.stdout  # the run, and its resume, which trains none
    rows = read_metrics(runs_dir / "patient" / "metrics.csv")
    assert [row["epoch"] for row in rows] == [1, 2, 3]
    last = torch.load(runs_dir / "patient" / "last.pt", weights_only=True)
    assert last["early_stopping"] == {"best": -1, "bad_epochs": 2} and last["epoch"] == 3


@pytest.mark.slow
def test_a_checkpoint_without_an_entry_added_since_is_one_line(
    default_project: Path, tiny_data: Path, tmp_path: Path
) -> None:
    """A scheduler added to a run's code after its last.pt was saved: --resume names it, and
    says what to do, before anything is written."""
    runs_dir = tmp_path / "runs"
    where = ["--data-dir", str(tiny_data), "--runs-dir", str(runs_dir), *COMMON]
    first = [*where, "--max-epochs", "1", "--num-workers", "0", "--run-name", "older"]
    assert drive(edited(default_project, tmp_path / "before", []), [[first, None]]) == [0]
    before = (runs_dir / "older" / "last.pt").read_bytes()
    project = edited(default_project, tmp_path / "after", ROWS["schedule per epoch"])
    result = subprocess.run(
        [sys.executable, "pytorch_script.py", "--runs-dir", str(runs_dir), "--resume", "older",
         "--max-epochs", "2"],
        cwd=project, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert result.stderr == (
        f"error: {runs_dir / 'older' / 'last.pt'} holds the entries model, optimizer, scaler,"
        " this run's state model, optimizer, scaler, scheduler (this run adds 'scheduler'):"
        " resume with the state it was saved with, or start a new run (--run-name)\n"
    )
    assert (runs_dir / "older" / "last.pt").read_bytes() == before


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="torchrun's gloo on Windows: not supported")
def test_accumulation_under_torchrun_resumes_bit_for_bit(
    default_project: Path, tiny_data: Path, tmp_path: Path
) -> None:
    """Two ranks, gradients accumulated over 4 batches: rank 1 alone gets SIGTERM, both stop
    after the same batch (gradients not stepped yet saved in last.pt), and a resumed torchrun
    ends as one never stopped."""
    project = edited(default_project, tmp_path, ROWS["accumulation"])
    runs_dir = project / "runs"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    # 96 samples a rank, 12 batches of 8 an epoch; the ranks vote after every 10th batch.
    where = ["--data-dir", str(tiny_data), "--runs-dir", str(runs_dir), *COMMON]
    first = [*where, "--batch-size", "8", "--max-epochs", EPOCHS, "--num-workers", "1"]
    env = {**os.environ, "SIGNALLED_RANK": "1"}
    statuses = []
    for argv, stop in [
        ([*first, "--run-name", "whole"], None),
        ([*first, "--run-name", "halves"], [2, 2]),
        (["--runs-dir", str(runs_dir), "--resume", "halves"], None),
    ]:
        (project / "driver.py").write_text(DRIVER, encoding="utf-8")
        result = subprocess.run(
            [*torchrun, "driver.py", json.dumps([[argv, stop]])],
            cwd=project, env=env, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        ended = [project / f"statuses-{rank}.json" for rank in (0, 1)]
        assert all(path.exists() for path in ended), result.stdout + result.stderr
        ended = [json.loads(path.read_text()) for path in ended]  # each rank's own
        assert ended[0] == ended[1], result.stderr
        statuses.append(ended[0][0])
        for path in project.glob("statuses-*.json"):
            path.unlink()
    assert statuses == [0, 75, 0]
    halves = torch.load(runs_dir / "halves" / "last.pt", weights_only=True)
    assert halves["grads"] is None  # the last epoch ends on a step: 12 batches, every 4th
    assert_same_run(runs_dir, "whole", "halves")


RESNET_18 = """


class BasicBlock(nn.Module):
    \"\"\"Two 3x3 convolutions with BatchNorm, and the input added back (ResNet's block).\"\"\"

    def __init__(self, inputs: int, outputs: int, stride: int) -> None:
        super().__init__()
        self.convolutions = nn.Sequential(
            nn.Conv2d(inputs, outputs, 3, stride, padding=1, bias=False),
            nn.BatchNorm2d(outputs),
            nn.ReLU(),
            nn.Conv2d(outputs, outputs, 3, padding=1, bias=False),
            nn.BatchNorm2d(outputs),
        )
        self.shortcut = nn.Identity()
        if stride != 1 or inputs != outputs:
            self.shortcut = nn.Sequential(
                nn.Conv2d(inputs, outputs, 1, stride, bias=False), nn.BatchNorm2d(outputs)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.convolutions(x) + self.shortcut(x))


class ResNet18(nn.Module):
    \"\"\"ResNet-18's shape (a 3-channel stem, four stages of two blocks, global pooling), narrow
    enough for a CPU: `width` channels in the first stage.\"\"\"

    def __init__(self, num_classes: int, width: int = 64) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU()
        )
        stages, inputs = [], width
        for i, outputs in enumerate([width, 2 * width, 4 * width, 8 * width]):
            stride = 1 if i == 0 else 2
            stages += [BasicBlock(inputs, outputs, stride), BasicBlock(outputs, outputs, 1)]
            inputs = outputs
        self.stages = nn.Sequential(*stages)
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(inputs, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stages(self.stem(x)))


def build_model("""

# Every row of the table at once, where two rows edit one place composed as a user would: the
# per-step schedule (not the per-epoch one), weight decay (not SGD), gradient accumulation and
# clipping in one step, a train() that takes the scheduler and the EMA model.
ALL_ROWS = [
    ("my_classes.py", "\n\ndef build_model(", RESNET_18),
    ("my_classes.py", ROWS["model"][1][1], "    return ResNet18(num_classes, width=8)"),
    *ROWS["read"],
    *ROWS["augmentation"],
    *ROWS["loss"],
    *ROWS["weight decay"],
    ROWS["schedule per step"][0],
    ROWS["early stopping"][0],
    ROWS["EMA"][0],
    ("pytorch_script.py", TRAIN_CALL, "loss_fn, optimizer, scaler, scheduler, ema)"),
    (
        "pytorch_script.py",
        TRAIN_SIGNATURE,
        "    scaler: torch.amp.GradScaler,\n"
        "    scheduler: torch.optim.lr_scheduler.LRScheduler,\n"
        "    ema: torch.optim.swa_utils.AveragedModel,\n"
        ") -> float:",
    ),
    (
        "pytorch_script.py",
        "        scaler.scale(loss).backward()\n"
        "        scaler.step(optimizer)\n"
        "        scaler.update()\n"
        "        optimizer.zero_grad(set_to_none=True)",
        "        scaler.scale(loss / 4).backward()\n"
        "        if batches.number % 4 == 0 or batches.last:\n"
        "            scaler.unscale_(optimizer)\n"
        "            nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0)\n"
        "            scaler.step(optimizer)\n"
        "            scaler.update()\n"
        "            optimizer.zero_grad(set_to_none=True)\n"
        "            scheduler.step()\n"
        "            ema.update_parameters(model)",
    ),
    ROWS["EMA"][-1],
    *ROWS["early stopping"][1:],
    *ROWS["best metric"],
    *ROWS["another metric"],
    *ROWS["evaluate"],
]  # fmt: skip


@pytest.mark.slow
def test_every_row_at_once_with_a_resnet_then_other_data_keeps_the_projects_tests_green(
    cookies, tmp_path: Path
) -> None:
    """As a user does: a new project with its sample data, every edit of the table at once and
    a ResNet-18-shaped model of their own; it trains, is stopped and resumed, and its own
    tests pass. Then their own data of another shape and number of classes replaces data/,
    and the tests pass again."""
    result = cookies.bake(extra_context={"_run_smoke_test": False})
    assert result.exit_code == 0, result.exception
    project = edited(result.project_path, tmp_path, ALL_ROWS)
    shutil.copytree(result.project_path / "data", project / "data")
    run([sys.executable, "pack_data.py"], project)
    runs_dir = project / "runs"
    first = ["--device", "cpu", "--max-epochs", "2", "--run-name", "edited"]
    assert drive(project, [[first, [2, 5]], [["--resume"], None]]) == [75, 0]
    rows = read_metrics(runs_dir / "edited" / "metrics.csv")
    assert [row["epoch"] for row in rows] == [1, 2] and "val_error" in rows[0]
    last = torch.load(runs_dir / "edited" / "last.pt", weights_only=True)
    assert last["state"][:3] == ["model", "optimizer", "scaler"]
    assert set(last["state"][3:]) == {"scheduler", "early_stopping", "ema"}
    assert last["classes"]["model"] == "ResNet18"

    suite = run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"], project).stdout
    summary = suite.strip().splitlines()[-1]
    assert "passed" in summary and "skipped" not in summary and "failed" not in summary, suite

    other = ["--shape", "3,24,20", "--num-classes", "7", "--num-samples", "140", "--force"]
    run([sys.executable, "make_sample_data.py", *other], project)
    suite = run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"], project).stdout
    assert "passed" in suite.strip().splitlines()[-1] and "failed" not in suite, suite
