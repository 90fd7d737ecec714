"""What a run needs around the article's loop, kept out of it: its directory, --resume, the
signals that stop it, the NaN watch, progress bars, data-wait, metrics and checkpoints.

    with training.start(settings, facts, state, training_generator, validation_generator) as run:
        for epoch in run.epochs(max_epochs):
            train_loss = train(model, run.batches(training_generator), ...)
            val_loss, val_accuracy = validate(model, run.batches(validation_generator), ...)
            run.end_epoch(epoch, score, train_loss=train_loss, val_loss=val_loss, ...)

`state` is what last.pt saves after every epoch (and inside one, on a signal) and --resume
restores, entry by entry: plumbing/checkpoints.py.
"""

import dataclasses
import gc
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager
from itertools import islice
from types import TracebackType

import torch
from tqdm import tqdm

from plumbing import checkpoints, distributed, loader, metrics, packed, runs
from plumbing.cli import Settings
from plumbing.data import location
from plumbing.errors import (
    CheckpointError,
    DataError,
    NonFiniteLoss,
    SetupError,
    Stopped,
    on_every_rank,
)
from plumbing.facts import Facts
from plumbing.preemption import StopSignals
from plumbing.seeding import seed_epoch

CHECK_EVERY = 100  # batches: the NaN watch waits for the GPU once per hundred steps
# No tqdm monitor thread (every bar starts one, a disabled one too): DataLoader workers are
# forked from this process, and a fork while that thread holds tqdm's lock can hang the worker
# (seen under torchrun with a stream's workers).
tqdm.monitor_interval = 0


def start(
    settings: Settings,
    facts: Facts,
    state: checkpoints.State,
    training_generator: torch.utils.data.DataLoader,
    validation_generator: torch.utils.data.DataLoader,
) -> "Run":
    """The run: its directory chosen (or, with --resume, its last.pt loaded into state), its
    log opened, the signals held. A failure here leaves no directory behind."""
    checkpoints.check_state(state)
    run_dir, resuming = runs.open_dir(settings)
    facts = dataclasses.replace(facts, run_dir=run_dir)
    try:
        return Run(settings, facts, state, training_generator, validation_generator, resuming)
    except BaseException as err:
        forget_if_empty(facts)
        mark(err, facts)
        raise


class Run(AbstractContextManager):
    """One run, as `with` holds it: its epochs, its passes over the data, what ends an epoch
    (the log, the checkpoints, a stop on a signal), and on the way out its log and signals
    closed and, if it wrote nothing, its directory removed."""

    def __init__(
        self,
        settings: Settings,
        facts: Facts,
        state: checkpoints.State,
        training_generator: torch.utils.data.DataLoader,
        validation_generator: torch.utils.data.DataLoader,
        resuming: bool,
    ) -> None:
        self.settings, self.facts, self.state = settings, facts, state
        self.training_generator = training_generator
        self.validation_generator = validation_generator
        say = distributed.say
        self.start_epoch, self.best_score, self.inside = 1, float("-inf"), None
        run_dir = facts.run_dir
        if run_dir is not None and not resuming:
            nothing = "nothing to resume yet: " if settings.resume is not None else ""
            say(f"{nothing}starting {run_dir}")
        elif run_dir is not None:
            data_dir = runs.latest_start(run_dir).get("data_dir")
            if data_dir is not None and location(data_dir) != settings.data_dir:
                say(f"warning: {run_dir} was started with --data-dir {data_dir}; this run"
                    f" reads {settings.data_dir}")  # fmt: skip
            last = run_dir / "last.pt"
            if not last.exists():  # a rank on another machine, whose --runs-dir is not rank 0's
                raise CheckpointError(
                    f"{last} not found here, where rank 0 resumes from it: give every machine"
                    " one --runs-dir, on a file system they share"
                )
            self.start_epoch, self.best_score, self.inside = checkpoints.restore(
                last, state, settings, facts
            )
            if self.inside:
                say(f"resuming {run_dir} after batch {self.inside.batches} of epoch"
                    f" {self.inside.epoch}")  # fmt: skip
            else:
                say(f"resuming {run_dir} after epoch {self.start_epoch - 1}")
        say(loader.describe(training_generator, validation_generator, settings, facts))
        sampler = getattr(validation_generator, "sampler", None)
        if isinstance(sampler, loader.EpochSampler):
            sampler.even = False  # every sample validated once, under torchrun too
        num_validation, ranks = len(validation_generator.dataset), distributed.world_size()
        if num_validation < ranks:
            # A rank with nothing to validate would miss DistributedDataParallel's broadcast
            # of the buffers (BatchNorm's) at the first forward pass of validation.
            raise on_every_rank(
                DataError(
                    f"{settings.data_dir}: the validation split holds {num_validation} samples,"
                    f" fewer than the {ranks} ranks: add samples to it, or start fewer processes"
                )
            )
        hint = loader.data_bound_hint(settings.data_dir, training_generator)
        self.log = metrics.Log(settings, facts, self.start_epoch, hint, say)
        self.epoch = self.max_epochs = 0
        self.ended = self.start_epoch - 1  # the last epoch end_epoch logged and saved
        self.started = time.perf_counter()
        self.lr: float | None = None
        self.data_wait = 0.0  # of the epoch's training pass (Pass sets it: no cycle back to it)
        self.watch: Watch | None = None  # the NaN watch of the epoch's training pass
        # Objects made so far live as long as the run: keep the garbage collector of each forked
        # worker from writing to them, which would copy their pages into it (tens of MB each).
        gc.freeze()
        # SIGTERM, SIGUSR1 (a cluster's preemption or time limit): stop after a batch, resumable
        self.stop = StopSignals()

    def epochs(self, max_epochs: int) -> Iterator[int]:
        """The epochs to train, from 1 or from where a resumed run stopped, to max_epochs (1
        with --dry-run)."""
        self.max_epochs = max_epochs = 1 if self.settings.dry_run else max_epochs
        for epoch in range(self.start_epoch, max_epochs + 1):
            self.epoch, self.started = epoch, time.perf_counter()
            self.lr = learning_rate(self.state)  # what the epoch's first step uses
            if self.inside is not None and self.inside.lr is not None:  # resumed inside it
                self.lr = self.inside.lr
            loader.set_epoch(self.training_generator, epoch)  # its order, the same on each rank
            seed_epoch(self.settings.seed, epoch)  # what it draws, resumed or not
            yield epoch
            if self.ended != epoch:
                raise SetupError(
                    f"epoch {epoch} ended without run.end_epoch({epoch}, ...), which logs and"
                    " saves it: pytorch_script.py calls it last in the loop over epochs"
                )
        if self.start_epoch > max_epochs:
            distributed.say(
                f"nothing to do: {self.facts.run_dir} is at epoch {self.start_epoch - 1} of"
                f" {max_epochs}"
            )

    def batches(self, generator: torch.utils.data.DataLoader) -> "Pass":
        """One pass over generator's batches in this epoch, on the device; for the training
        generator, what a stopped run left of it, stopping after a batch on a signal."""
        training = generator is self.training_generator
        inside, self.inside = (self.inside, None) if training else (None, self.inside)
        return Pass(self, generator, training, inside)

    def end_epoch(self, epoch: int, score: float, **logged: float) -> None:
        """Log the epoch's metrics (with the learning rate and data_wait), save last.pt, and
        best.pt when score is the best so far (rank 0); stop here if a signal came."""
        if epoch != self.epoch or self.ended == epoch:
            raise SetupError(
                f"run.end_epoch({epoch}, ...) in epoch {self.epoch}"
                f"{', again' if self.ended == epoch else ''}: pytorch_script.py calls it once,"
                " last in the loop over epochs, with the epoch run.epochs() gave"
            )
        taken = {"epoch", "lr", "data_wait"} & logged.keys()
        if taken:
            raise SetupError(
                f"run.end_epoch(..., {', '.join(f'{name}=' for name in sorted(taken))}):"
                " metrics.csv has that column of its own; give the metric another name"
            )
        for name, value in {"score": score, **logged}.items():
            if not isinstance(value, (int, float)) and not (
                isinstance(value, torch.Tensor) and value.numel() == 1
            ):
                raise SetupError(
                    f"run.end_epoch(...): {name} is {value!r}, not a number (a metric is logged"
                    " and compared as one)"
                )
        if self.watch is not None:  # (train() may have left its loop early)
            self.watch.check()  # a NaN is not saved
        packed.confirm(self.training_generator.dataset)
        row = {name: float(value) for name, value in logged.items()}
        if self.lr is not None:
            row["lr"] = self.lr
        row["data_wait"] = self.data_wait
        self.log.epoch(self.epoch, self.max_epochs, row, self.started)
        score = float(score)  # a NumPy number would make the checkpoint refuse to load
        self.ended = epoch
        best = score > self.best_score
        self.best_score = max(score, self.best_score)
        if self.log.run_dir is not None:  # rank 0, not --dry-run
            checkpoint = checkpoints.contents(
                self.state, self.settings, self.facts, self.epoch, self.best_score
            )
            checkpoints.save(checkpoint, self.log.run_dir / "last.pt")
            if best:
                checkpoints.save(checkpoint, self.log.run_dir / "best.pt")
        if self.epoch < self.max_epochs and self.stop.agreed():  # during validation or saving
            raise Stopped(self.stop.name, self.epoch)

    def stop_inside(self, one_pass: "Pass") -> None:
        """A signal came during training: save where it is, and stop."""
        one_pass.watch.check()  # (a NaN is not saved)
        packed.confirm(self.training_generator.dataset)
        where = checkpoints.Position(
            self.epoch, one_pass.number, one_pass.loss_sum, one_pass.num_samples, lr=self.lr
        )
        self.log.save_settings()  # what a bare --resume goes on with, even in the first epoch
        checkpoints.save_inside_epoch(
            self.state, self.settings, self.facts, where, self.best_score, self.training_generator
        )
        raise Stopped(self.stop.name, self.epoch, one_pass.number)

    def __exit__(
        self, kind: type | None, err: BaseException | None, tb: TracebackType | None
    ) -> None:
        gc.unfreeze()
        self.log.close()
        self.stop.close()
        if err is not None:
            forget_if_empty(self.facts)
            mark(err, self.facts)
        elif 0 < self.ended < self.max_epochs:  # the loop over epochs left it early
            distributed.say(
                f"training ends after epoch {self.ended} of {self.max_epochs}: the loop over"
                " epochs in pytorch_script.py left early (early stopping, say)"
            )


class Pass:
    """The batches of one pass over a generator, on the device, with the run's books kept:
    the batches a resumed epoch already trained skipped, the stop votes, the NaN watch, a
    progress bar in a terminal, data_wait. In train(): record(loss) after each step."""

    def __init__(
        self,
        run: Run,
        generator: torch.utils.data.DataLoader,
        training: bool,
        inside: checkpoints.Position | None,
    ) -> None:
        self.run, self.generator, self.training, self.inside = run, generator, training, inside
        self.epoch, self.device = run.epoch, run.facts.device
        self.number = 0  # of the batch last given, in the epoch (from 1, skipped ones counted)
        self.total = 0  # the batches of the epoch, skipped ones counted
        self.size = 0  # its samples
        self.loss_sum = torch.zeros((), device=self.device)
        self.num_samples = 0
        self.data_wait = 0.0
        self.watch = Watch(generator, run.epoch, run.settings, self.device)
        if training:
            run.watch = self.watch

    @property
    def last(self) -> bool:
        """Whether the batch just given is the epoch's last (a step that accumulates gradients
        over batches takes it there too)."""
        return self.number == self.total

    def autocast(self) -> torch.autocast:
        """--amp: float16 on CUDA, bfloat16 elsewhere (the CPU has no fast float16); without
        it, nothing."""
        return distributed.autocast(self.device, self.run.settings.amp)

    def record(self, loss: torch.Tensor) -> None:
        """The loss of the batch just given (its mean over the batch): summed on the device, as
        calling .item() every step would wait for the GPU each time; watched for NaN."""
        self.loss_sum += loss.detach().float() * self.size
        self.num_samples += self.size
        self.watch.note(self.loss_sum, self.number)

    def mean_loss(self) -> float:
        """The mean of the losses recorded in the pass so far, every rank's samples counted;
        a NaN or infinite one stops the run (NonFiniteLoss)."""
        totals = [self.loss_sum, self.num_samples]
        loss_sum, num_samples = distributed.all_sum(totals, self.device)
        self.watch.check()
        if not num_samples:
            raise SetupError(
                "train() in pytorch_script.py must call batches.record(loss) after each step,"
                " and batches.mean_loss() once its loop is done"
            )
        return loss_sum / num_samples

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        run, generator = self.run, self.generator
        if self.inside:  # the batches trained before the stop: skipped, not read again
            self.inside.go_on(generator)
            self.number = self.inside.batches
            self.loss_sum = self.inside.loss_sum.to(self.device)
            self.num_samples = self.inside.num_samples
        max_batches = 2 if run.settings.dry_run else None
        batches = islice(generator, max_batches)
        timeout = run.settings.loader_timeout if generator.num_workers == 0 else 0
        if timeout:  # DataLoader times its workers; with none, a timer times this process
            batches = loader.within(batches, timeout)
        shown = min(len(generator), max_batches or len(generator))  # for the progress bar
        # LitData's loader counts the whole epoch; a resumed DataLoader, the batches left.
        self.total = len(generator) + (0 if loader.streamed(generator.dataset) else self.number)
        self.total = min(self.total, max_batches or self.total)
        desc = None
        if self.training and distributed.rank() == 0:
            desc = f"epoch {run.epoch}/{run.max_epochs}"
        packed.begin(generator.dataset)
        non_blocking = self.device.type == "cuda"  # copies from pinned memory overlap compute
        start = ready = None
        waited = 0.0
        # The bar appears only in a terminal, when an epoch takes more than two seconds.
        for X, y in tqdm(
            batches, desc, shown, leave=False, delay=2, unit="batch", disable=None if desc else True
        ):
            if start is None:  # from the first batch: starting workers is not waiting for data
                start = time.perf_counter()
            else:
                waited += time.perf_counter() - ready
            # Transfer to GPU, as float32 (the model's dtype: uint8 or float64 samples work)
            X = X.to(self.device, torch.float32, non_blocking=non_blocking)
            y = y.to(self.device, non_blocking=non_blocking)
            self.number, self.size = self.number + 1, len(y)
            yield X, y
            ready = time.perf_counter()
            if self.training:
                if self.number % CHECK_EVERY == 0:
                    self.watch.check()
                if run.stop.requested():  # a signal: stop here, on every rank
                    run.stop_inside(self)
        elapsed = time.perf_counter() - start if start else 0.0
        self.data_wait = waited / elapsed if elapsed else 0.0
        if self.training:
            run.data_wait = self.data_wait
        packed.confirm(generator.dataset)


class Watch:
    """Where this rank's training loss first stopped being finite in an epoch, noted on the
    device at every step without waiting for it, looked at every CHECK_EVERY batches and at
    the end of the pass, and reported in one line with the batch and the samples to blame,
    before anything is saved: last.pt and best.pt stay the last good ones. (Under --amp on
    CUDA, the steps GradScaler skips are those whose scaled gradients overflow; the loss itself
    stays finite there, so they are not reported.)"""

    def __init__(
        self,
        generator: torch.utils.data.DataLoader,
        epoch: int,
        settings: Settings,
        device: torch.device,
    ) -> None:
        self.generator, self.epoch, self.settings, self.device = generator, epoch, settings, device
        self.first_bad: torch.Tensor | None = None  # the number of the batch, from 1

    def note(self, loss_sum: torch.Tensor, batch: int) -> None:
        """After batch (its number in the epoch, from 1) added its loss to loss_sum."""
        if self.first_bad is None:
            self.first_bad = torch.zeros((), dtype=torch.long, device=loss_sum.device)
        bad = (self.first_bad == 0) & ~torch.isfinite(loss_sum)
        self.first_bad = torch.where(bad, batch, self.first_bad)

    def check(self) -> None:
        """Raise NonFiniteLoss, on every rank, if the loss of any rank stopped being finite."""
        mine = int(self.first_bad) if self.first_bad is not None else 0
        ranks = distributed.world_size()
        firsts = [float(mine) if r == distributed.rank() else 0.0 for r in range(ranks)]
        firsts = distributed.all_sum(firsts, self.device)  # each rank's, on every rank
        bad = [(int(batch), rank) for rank, batch in enumerate(firsts) if batch]
        if bad:
            batch, rank = min(bad)
            raise on_every_rank(NonFiniteLoss(self.blame(batch, rank)))

    def blame(self, batch: int, rank: int) -> str:
        """The one line: where, and which samples of that batch hold NaN or infinite values."""
        where = f"the training loss became NaN or infinite in epoch {self.epoch}, batch {batch}"
        where += f" (rank {rank})" if distributed.world_size() > 1 else ""
        dataset, sampler = self.generator.dataset, self.generator.sampler
        order = getattr(sampler, "order", None)
        IDs = getattr(getattr(dataset, "dataset", dataset), "list_IDs", None)
        if order is None or IDs is None:  # a stream: its samples have no IDs to name
            return f"{where}: check the data for NaN or infinite values, or lower --lr"
        size = self.generator.batch_size
        rows = order(rank)[(batch - 1) * size : batch * size].tolist()
        broken = [IDs[i] for i in rows if not torch.isfinite(dataset[i][0]).all()]
        if broken:
            names = ", ".join(repr(ID) for ID in broken[:5])
            more = f" and {len(broken) - 5} more" if len(broken) > 5 else ""
            return (
                f"{where}: {len(broken)} of its samples hold NaN or infinite values"
                f" ({names}{more}); fix or remove them (`python pack_data.py` counts them all)"
            )
        return (
            f"{where}, whose samples are all finite: the model diverged; lower --lr"
            f" (now {self.settings.lr:g})"
        )


class EarlyStopping:
    """Whether the score has gone `patience` epochs without beating its best: an entry of the
    state, so that a resumed run counts on where it stopped (README.md, "What to change
    where"). step(score) before run.end_epoch, which saves it; `if early_stopping.stop:
    break` first in the loop over epochs, so that a run resumed after it stops at once."""

    def __init__(self, patience: int) -> None:
        self.patience, self.best, self.bad_epochs = patience, float("-inf"), 0

    def step(self, score: float) -> None:
        if score > self.best:
            self.best, self.bad_epochs = float(score), 0
        else:
            self.bad_epochs += 1

    @property
    def stop(self) -> bool:
        return self.bad_epochs >= self.patience

    def state_dict(self) -> dict:
        return {"best": self.best, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.bad_epochs = state["best"], state["bad_epochs"]


def learning_rate(state: checkpoints.State) -> float | None:
    """The learning rate of the state's first optimizer (its first group), if it has one."""
    for entry in state.values():
        if isinstance(entry, torch.optim.Optimizer):
            return float(entry.param_groups[0]["lr"])
    return None


def forget_if_empty(facts: Facts) -> None:
    """A run that stopped before it wrote anything leaves no directory (nor an empty --runs-dir)."""
    if facts.run_dir is not None and distributed.rank() == 0:  # rank 0 made it
        for directory in (facts.run_dir, facts.run_dir.parent):
            try:
                directory.rmdir()
            except OSError:  # not empty: it stays
                break


def mark(err: BaseException, facts: Facts) -> BaseException:
    """err, with the run's directory, for plumbing/exits.py to say where the run stands."""
    err.run_dir = facts.run_dir
    return err
