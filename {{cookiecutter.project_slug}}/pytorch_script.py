"""Train a classifier on data/<ID>.pt while DataLoader workers prepare the next batches.

    python make_sample_data.py             # once, unless you bring your own data (see README.md)
    python pytorch_script.py               # train: one line per epoch; writes runs/run-1/
    python pytorch_script.py --resume      # go on with the latest run, as it was started
    torchrun --standalone --nproc_per_node=4 pytorch_script.py   # 4 GPUs (or processes) here
    sbatch train.sbatch                    # on SLURM, requeued through time limits and preemption
    python pack_data.py                    # optional: batched reads from one file per split
    python bench_loader.py                 # which loader settings are fastest on this machine
    python pytorch_script.py --dry-run     # one epoch of two batches per split: a quick check
    python pytorch_script.py --tracker mlflow  # also to MLflow, or wandb, or --tensorboard
    python plot_metrics.py                 # the loss and accuracy curves of the latest run
    python pytorch_script.py --help        # every flag, with its default

The Dataset and the model are in my_classes.py; the loss, the optimizer, what a checkpoint
saves (state) and the loops are below. plumbing/ holds the rest (run directories, checkpoints,
signals, metrics files, torchrun, loader safety, error wording).

On the default sample data, on a 2-core CPU, the last line reads like
    epoch 100/100  train_loss 0.0000  val_loss 0.0000  val_accuracy 1.0000  lr 0.001  data_wait 9%
"""

import torch
from torch import nn

from my_classes import Dataset, build_model
from plumbing import cli, distributed, exits, facts, loader, packed, seeding, training
from plumbing.data import load_partition


def fit(settings: cli.Settings) -> None:
    """The article's script, complete."""
    seeding.seed_everything(settings.seed)  # the same on every rank: the same initial weights

    # CUDA for PyTorch
    device = distributed.setup(settings.device)  # under torchrun: this process's own GPU
    torch.backends.cudnn.benchmark = settings.cudnn_benchmark

    # Parameters
    params = {
        "batch_size": settings.batch_size,
        "shuffle": settings.shuffle,
        "num_workers": settings.num_workers,
    }
    max_epochs = settings.max_epochs

    # Datasets
    if settings.data_format == "stream":  # pack_data.py --format stream's chunks: a dir or s3://
        labels, (training_set, validation_set) = loader.open_stream(settings, Dataset)
    else:
        partition, labels = load_partition(settings.data_dir)  # {'train': [IDs], ...}, {ID: class}
        with loader.deadline(settings.loader_timeout):  # each reads its first sample now
            training_set = Dataset(partition["train"], labels, settings.data_dir, augment=True)
            validation_set = Dataset(partition["validation"], labels, settings.data_dir)
        # pack_data.py's copy of what they read, while it is current: batched reads, same samples
        training_set, validation_set = packed.choose(
            settings, partition, training_set, validation_set
        )

    # Generators (plumbing/loader.py adds what makes them fast, safe and repeatable)
    training_generator = loader.make(training_set, params, settings, device)
    validation_params = params | {"shuffle": False}
    validation_generator = loader.make(validation_set, validation_params, settings, device)

    # Model, loss and optimizer, for the shape of a sample and the number of classes
    found = facts.find(settings, device, labels, training_generator)
    model = build_model(found.input_shape, found.num_classes).to(device)
    loss_fn = nn.CrossEntropyLoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.lr)
    scaler = torch.amp.GradScaler(device.type, enabled=settings.amp and device.type == "cuda")

    # What last.pt saves and --resume restores, entry by entry: add what you add (a scheduler)
    state = {"model": model, "optimizer": optimizer, "scaler": scaler}
    model = distributed.parallel(model)  # under torchrun: gradients averaged over the ranks

    # Loop over epochs (the run directory, --resume, signals, metrics: plumbing/training.py)
    with training.start(settings, found, state, training_generator, validation_generator) as run:
        for epoch in run.epochs(max_epochs):
            # Training
            train_loss = train(model, run.batches(training_generator), loss_fn, optimizer, scaler)

            # Validation
            val_loss, val_accuracy = validate(model, run.batches(validation_generator), loss_fn)

            # One line and a row of metrics.csv; last.pt saves the state as it is here (step a
            # scheduler above), best.pt too at the highest score (for the lowest loss: -val_loss)
            score = val_accuracy
            run.end_epoch(
                epoch, score, train_loss=train_loss, val_loss=val_loss, val_accuracy=val_accuracy
            )


def train(
    model: nn.Module,
    batches: training.Pass,
    loss_fn: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
) -> float:
    """One pass over the training set (what is left of it, in an epoch a stopped run resumes);
    returns the mean loss."""
    model.train()
    for local_batch, local_labels in batches:  # on the device already
        # Model computations
        with batches.autocast():  # --amp: float16 on CUDA, bfloat16 on the CPU; else nothing
            loss = loss_fn(model(local_batch), local_labels)
        # The scaler keeps small float16 gradients from vanishing; disabled, it passes through.
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)  # none left over for the next batch or last.pt
        batches.record(loss)  # the epoch's mean loss, the NaN watch, a resume inside the epoch
    return batches.mean_loss()


@torch.no_grad()
def validate(model: nn.Module, batches: training.Pass, loss_fn: nn.Module) -> tuple[float, float]:
    """One pass over the validation set; returns the mean loss and the accuracy, every sample
    of every rank counted once."""
    model.eval()
    loss_sum = num_correct = num_samples = 0
    for local_batch, local_labels in batches:  # on the device already
        # Model computations
        with batches.autocast():
            outputs = model(local_batch)
        # Summed on the device: .item() on every batch would wait for the GPU each time.
        loss_sum += loss_fn(outputs.float(), local_labels) * len(local_labels)
        num_correct += (outputs.argmax(dim=1) == local_labels).sum()
        num_samples += len(local_labels)
    loss_sum, num_correct, num_samples = distributed.all_sum(
        [loss_sum, num_correct, num_samples], batches.device
    )
    return loss_sum / num_samples, num_correct / num_samples


def main(argv: list[str] | None = None) -> int:
    settings = cli.training_settings(argv, description=__doc__.splitlines()[0])
    return exits.status(fit, settings)  # one line for a failure of known cause; 75 on a signal


if __name__ == "__main__":  # required: DataLoader workers re-import this file under spawn
    exits.exit_now(main())  # sys.exit(main()); after a signal, a second sooner (plumbing/exits.py)
