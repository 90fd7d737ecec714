"""What the project's training loop costs per step over the article's bare loop.

    python benchmarks/loop.py                 # 9 rounds of 200 steps each, median and range
    python benchmarks/loop.py --repeats 21 --threads 2

A project is baked. In one process, on the CPU, with 0 DataLoader workers and batches of 64
samples of 3x32x32 held in memory (so that reading files does not hide the loop), the same
model (the template's Net) trains in turns:

- the article's loop: for each batch of training_generator, .to(device), zero_grad, forward,
  loss, backward, step;
- the project's: pytorch_script.train(model, run.batches(training_generator), ...) inside a
  real run (plumbing/training.py: the device transfer, the NaN watch, the stop signals, the
  progress bar and data_wait, the loss summed for the epoch).

Each round times one pass of each, in alternating order; the table shows steps/s (median of
the rounds, and their range) and the overhead of the project's loop over the article's.
"""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from scale import bake  # the template baked without data, beside this script

MEASURE = """
import json, sys, time, tempfile
from pathlib import Path
import torch
from torch import nn

import pytorch_script
from my_classes import build_model
from plumbing import cli, facts, loader, training

rounds, steps, threads = (int(a) for a in sys.argv[1:4])
torch.set_num_threads(threads)
runs_dir = tempfile.mkdtemp()
settings = cli.check(cli.training_settings(
    ["--device", "cpu", "--num-workers", "0", "--batch-size", "64", "--runs-dir", runs_dir,
     "--no-tensorboard", "--tracker", "none"], ""))
device = torch.device("cpu")
torch.manual_seed(0)
X, y = torch.randn(steps * 64, 3, 32, 32), torch.randint(0, 10, (steps * 64,))
dataset = torch.utils.data.TensorDataset(X, y)
params = {"batch_size": 64, "shuffle": True, "num_workers": 0}
training_generator = loader.make(dataset, params, settings, device)
validation_generator = loader.make(dataset, params | {"shuffle": False}, settings, device)
model = build_model((3, 32, 32), 10)
loss_fn = nn.CrossEntropyLoss()
optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
scaler = torch.amp.GradScaler("cpu", enabled=False)
state = {"model": model, "optimizer": optimizer, "scaler": scaler}
found = facts.Facts(device, (3, 32, 32), 10, "0" * 16)


def article():
    model.train()
    for local_batch, local_labels in training_generator:
        local_batch, local_labels = local_batch.to(device), local_labels.to(device)
        optimizer.zero_grad()
        loss = loss_fn(model(local_batch), local_labels)
        loss.backward()
        optimizer.step()


rates = {"article": [], "project": []}
with training.start(settings, found, state, training_generator, validation_generator) as run:
    epochs = run.epochs(2 * rounds + 1)
    next(epochs)
    pytorch_script.train(model, run.batches(training_generator), loss_fn, optimizer, scaler)
    article()  # both warm
    run.end_epoch(run.epoch, 0.0)
    for i in range(rounds):
        for name in (["article", "project"] if i % 2 else ["project", "article"]):
            next(epochs)
            start = time.perf_counter()
            if name == "article":
                article()
            else:
                batches = run.batches(training_generator)
                pytorch_script.train(model, batches, loss_fn, optimizer, scaler)
            rates[name].append(steps / (time.perf_counter() - start))
            run.end_epoch(run.epoch, 0.0)  # (each epoch ends so; it saves last.pt: not timed)
print(json.dumps(rates))
"""


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=9, help="rounds, each one pass of each loop")
    p.add_argument("--steps", type=int, default=200, help="steps (batches of 64) per pass")
    p.add_argument("--threads", type=int, default=1, help="torch's threads (1: least noise)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        project = bake(Path(tmp))
        argv = [str(args.repeats), str(args.steps), str(args.threads)]
        result = subprocess.run(
            [sys.executable, "-c", MEASURE, *argv],
            cwd=project, check=True, capture_output=True, text=True,
        )  # fmt: skip
    rates = json.loads(result.stdout.splitlines()[-1])
    print(f"{args.steps} steps of 64 samples of 3x32x32, Net, CPU, {args.threads} thread(s);")
    print(f"median of {args.repeats} rounds, range in brackets\n")
    print(f"{'loop':<12}{'steps/s':>22}")
    for name, values in rates.items():
        shown = f"{statistics.median(values):,.1f} [{min(values):,.1f}-{max(values):,.1f}]"
        print(f"{name:<12}{shown:>22}")
    article, project = (statistics.median(rates[name]) for name in ("article", "project"))
    per_round = [a / p for a, p in zip(rates["article"], rates["project"], strict=True)]
    overhead = f"overhead {article / project - 1:+.1%}"
    median = f"per round, median {statistics.median(per_round):.3f}"
    print(f"\nproject / article, time per step: {article / project:.3f} ({overhead}; {median})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
