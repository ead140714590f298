"""The training engine for one model: data on the device, per-epoch history, timing.

    result = run(RunSpec(data=DataSpec("digits"), model=ModelSpec("deep-mlp", widths=[64, 64])), seed=0)
    result.history.best_val_acc

The loop follows Keras' `fit`, because the sources' numbers come from it: reshuffle
every epoch, the last batch may be short, train loss and accuracy are the running
means over the epoch's batches (model in training mode), validation is evaluated
once per epoch in eval mode. Data is held on the device as tensors and batches are
cut by indexing, so no DataLoader or host copy sits inside an epoch; the loop reads
a number back from the device only once per epoch.

The recipes of `TrainSpec` act here: a learning-rate schedule stepped after every batch
(relulab.training.schedules), label smoothing in the training cross-entropy (validation and
test losses stay the plain cross-entropy), and crops and flips of each training batch on
the device from the run's generator (relulab.training.augment).

Callbacks (fastai-style, one job each) see the model and each epoch's record: a
progress bar, probes, the results store.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Iterator, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from relulab.core.env import matmul_precision, provenance, resolve_device, seed_everything
from relulab.core.errors import UserError
from relulab.data import Splits, load_data
from relulab.training.augment import AugmentSpec, augment_batch
from relulab.training.callbacks import BestWeights, Callback
from relulab.training.resume import Saver, fits, say_it_does_not_fit
from relulab.training.schedules import build_scheduler
from relulab.training.specs import (EpochRecord, History, RunResult, RunSpec, TrainSpec, arithmetic, autocast_dtype,
                                    float32_products)
from relulab.zoo.models import SlotNet, build_model, keras_param_count
from relulab.zoo.optim import build_optimizer, kernel_weights, weight_penalty


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 2048,
             amp: Optional[torch.dtype] = None) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) in eval mode; one read-back at the end."""
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), device=x.device)
    correct = torch.zeros((), device=x.device, dtype=torch.long)
    for start in range(0, len(x), batch_size):
        with torch.autocast(x.device.type, dtype=amp or torch.bfloat16, enabled=amp is not None):
            logits = model(x[start:start + batch_size]).float()
        target = y[start:start + batch_size]
        loss_sum += F.cross_entropy(logits, target, reduction="sum")
        correct += (logits.argmax(1) == target).sum()
    model.train(was_training)
    n = max(1, len(x))
    return loss_sum.item() / n, correct.item() / n


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def epoch_batches(n: int, batch_size: int) -> list[tuple[int, int]]:
    """(start, stop) of each batch. Like Keras the last batch may be short, but a last batch of
    one example is dropped: PyTorch's batch norm cannot train on a single example."""
    bounds = [(start, min(start + batch_size, n)) for start in range(0, n, batch_size)]
    return bounds[:-1] if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] == 1 else bounds


def train_step(model, optimizer, x, y, idx, kernels, l1, l2, amp, totals: tuple[torch.Tensor, torch.Tensor],
               label_smoothing: float = 0.0, augment: Optional[tuple[AugmentSpec, torch.Generator]] = None) -> None:
    """One optimizer step on the examples `idx` of (x, y); adds its loss sum and correct count to `totals`
    (device tensors, so that nothing is read back from the device). `augment`: (spec, generator) to crop and
    flip the batch with."""
    batch_step(model, optimizer, x[idx], y[idx], kernels, l1, l2, amp, totals, label_smoothing, augment)


def batch_step(model, optimizer, xb, yb, kernels, l1, l2, amp, totals: tuple[torch.Tensor, torch.Tensor],
               label_smoothing: float = 0.0, augment: Optional[tuple[AugmentSpec, torch.Generator]] = None) -> None:
    """train_step on the batch (xb, yb) itself, on the device: the step of resident and streamed data alike."""
    if augment is not None:
        xb = augment_batch(xb, *augment)
    with torch.autocast(xb.device.type, dtype=amp or torch.bfloat16, enabled=amp is not None):
        logits = model(xb)
    loss = F.cross_entropy(logits.float(), yb, label_smoothing=label_smoothing)
    total = loss + weight_penalty(kernels, l1, l2) if (l1 or l2) else loss
    optimizer.zero_grad(set_to_none=True)
    total.backward()
    optimizer.step()
    totals[0].add_(loss.detach() * len(yb))
    totals[1].add_((logits.detach().argmax(1) == yb).sum())


def epoch_data(splits: Splits, batch_size: int, generator: torch.Generator) -> Iterator[tuple[torch.Tensor, ...]]:
    """One epoch's (inputs, labels) batches on the device: a fresh order from `generator`, cut by epoch_batches,
    indexed from the resident training set, or for a streamed one (`splits.train_dataset`) fetched through a
    DataLoader (pinned memory on CUDA, `splits.loader_workers` workers) and moved without blocking."""
    device = splits.device
    n = len(splits.y_train)
    order = torch.randperm(n, device=device, generator=generator)
    bounds = epoch_batches(n, batch_size)
    if not splits.streamed:
        for start, stop in bounds:
            yield splits.x_train[order[start:stop]], splits.y_train[order[start:stop]]
        return
    order = order.tolist()
    loader = DataLoader(splits.train_dataset, batch_sampler=[order[start:stop] for start, stop in bounds],
                        num_workers=splits.loader_workers, pin_memory=device.type == "cuda")
    for xb, yb in loader:
        yield xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)


def train_epoch(model, optimizer, splits: Splits, spec: TrainSpec, generator, kernels, amp=None,
                scheduler=None) -> tuple[torch.Tensor, torch.Tensor]:
    """One pass over the training set in a fresh order from `generator` (epoch_data: resident or streamed);
    returns device tensors (loss sum, correct count). `scheduler` is stepped after every batch; the spec's
    augmentation transforms every batch with draws from `generator`."""
    model.train()
    loss_sum = torch.zeros((), device=splits.device)
    correct = torch.zeros((), device=splits.device, dtype=torch.long)
    augment = (spec.augment, generator) if spec.augment is not None else None
    for xb, yb in epoch_data(splits, spec.batch_size, generator):
        batch_step(model, optimizer, xb, yb, kernels, spec.l1, spec.l2, amp, (loss_sum, correct),
                   spec.label_smoothing, augment)
        if scheduler is not None:
            scheduler.step()
    return loss_sum, correct


def train_model(model: nn.Module, splits: Splits, spec: TrainSpec, seed: int = 0,
                callbacks: Sequence[Callback] = (), amp: Optional[torch.dtype] = None,
                saver: Optional["Saver"] = None) -> History:
    """Train `model` on `splits` (already on the model's device); stops early only if the loss diverges.
    `amp`: a dtype to autocast the forward pass to (see `autocast_dtype`). `saver` (relulab.resume): save the
    state at epoch boundaries on its schedule, and go on from a saved state of this run if there is one."""
    spec.validate()
    device = splits.device
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    if spec.augment is not None:
        spec.augment.check_data((len(splits.y_train), *splits.input_shape))
    optimizer = build_optimizer(model.parameters(), spec.optimizer)
    batches = epoch_batches(len(splits.y_train), spec.batch_size)
    scheduler = build_scheduler(optimizer, spec.schedule, len(batches), spec.epochs) \
        if spec.schedule is not None else None
    kernels = kernel_weights(model)
    history = History()
    for cb in callbacks:
        cb.on_train_begin(model, spec)
    saver = saver if saver is not None and all(cb.resumable for cb in callbacks) else None
    done = _resume_run(saver, model, optimizer, scheduler, generator, history, callbacks)
    n = batches[-1][1]  # examples seen per epoch
    for epoch in range(done + 1, spec.epochs + 1):
        _sync(device)
        started = time.perf_counter()
        loss_sum, correct = train_epoch(model, optimizer, splits, spec, generator, kernels, amp, scheduler)
        train_loss, train_acc = loss_sum.item() / n, correct.item() / n
        val_loss, val_acc = evaluate(model, splits.x_val, splits.y_val, spec.eval_batch_size, amp)
        _sync(device)
        record = EpochRecord(epoch, train_loss, train_acc, val_loss, val_acc, time.perf_counter() - started)
        history.epochs.append(record)
        for cb in callbacks:
            cb.on_epoch_end(model, record)
        if not math.isfinite(train_loss):
            history.diverged_at = epoch
            break
        if saver is not None and epoch < spec.epochs and saver.due():
            saver.save(epoch, {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                               "scheduler": scheduler.state_dict() if scheduler is not None else None,
                               "generator": generator.get_state(), "history": history.state(),
                               "callbacks": [cb.state() for cb in callbacks]})
    if history.diverged_at is None:
        history.test_loss, history.test_acc = evaluate(model, splits.x_test, splits.y_test, spec.eval_batch_size,
                                                       amp)
    for cb in callbacks:
        cb.on_train_end(model, history)
    if saver is not None:
        saver.discard()
    return history


def _resume_run(saver, model, optimizer, scheduler, generator, history, callbacks) -> int:
    """Put a saved state of this run back (weights, optimizer, learning-rate schedule, generator, history,
    callbacks); the epochs done."""
    state = saver.load() if saver is not None else None
    if state is None:
        return 0
    here, saved = model.state_dict(), state["model"]
    if set(saved) != set(here) or not fits(here.values(), (saved[name] for name in here)):
        say_it_does_not_fit(several=False)
        return 0
    model.load_state_dict(saved)
    optimizer.load_state_dict(state["optimizer"])  # its learning rates too: the schedule's of the saved step
    if scheduler is not None:
        scheduler.load_state_dict(state["scheduler"])
    generator.set_state(state["generator"])
    history.restore(state["history"])
    for cb, saved in zip(callbacks, state["callbacks"]):
        cb.restore(saved)
    return int(state["epoch"])


def build_for(spec: RunSpec, splits: Splits, seed: int, device: torch.device) -> SlotNet:
    """The run's model, initialized from `seed`, on `device`."""
    seed_everything(seed)
    return build_model(spec.model, splits.input_shape, splits.num_classes).to(device)


def run(spec: RunSpec, seed: int = 0, device: str | torch.device = "auto", splits: Optional[Splits] = None,
        callbacks: Sequence[Callback] = (), saver: Optional["Saver"] = None) -> RunResult:
    """Load the data (unless given), build the model from `seed`, train it, and return the result. `saver`
    (relulab.resume): save the training at epoch boundaries, and go on from where a killed attempt stopped."""
    spec.validate()
    device = resolve_device(device) if isinstance(device, str) else device
    if splits is None:
        splits = load_data(spec.data)
    if splits.device != device:
        splits = splits.to(device)
    return run_model(spec, build_for(spec, splits, seed, device), seed, splits, callbacks, saver)


def run_model(spec: RunSpec, model: SlotNet, seed: int, splits: Splits, callbacks: Sequence[Callback] = (),
              saver: Optional["Saver"] = None) -> RunResult:
    """Train `model` (built for `spec`, on the device of `splits`) by `spec`'s recipe from the weights it has, with
    batches from `seed`, and return the result: `run`'s second half, and the fine-tuning of a model a search
    has already trained (relulab.search: the learned strategy's gate-trained weights)."""
    device = splits.device
    best = BestWeights()
    with matmul_precision(float32_products(spec)):
        history = train_model(model, splits, spec.train, seed, [*callbacks, best], autocast_dtype(spec, device),
                              saver)
    data = {**splits.summary(), "arithmetic": arithmetic(spec, device), "compiled": False,
            "relu_count": model.relu_count()}
    return RunResult(spec, seed, history, keras_param_count(model), data, provenance(device), model,
                     best.best_state(history))


# A configuration's own speed, where a sweep trained it packed (its runs' seconds are shares of a joint time):
# a short timed pass of it alone. Seed 001's 50-layer MLP takes about 7 ms a step at batch 32 on one CPU core,
# so the pass, building the model included, costs about half a second a configuration; the warm-up steps keep
# first-call costs (allocations, kernel selection, lazy initialisation) out of the timed ones.
TIME_ALONE_STEPS = 50
TIME_ALONE_WARMUP = 5


@dataclass(frozen=True)
class AloneTiming:
    """How long one model of a configuration takes per epoch by itself: `steps` training steps timed after
    `warmup` untimed ones, scaled to the epoch's `steps_per_epoch`, plus one pass over the validation set."""

    steps: int
    warmup: int
    steps_per_epoch: int
    step_seconds: float  # mean wall time of a timed training step
    eval_seconds: float  # one evaluation of the validation set, as every epoch ends with

    @property
    def epoch_seconds(self) -> float:
        return self.step_seconds * self.steps_per_epoch + self.eval_seconds


def _full_batches(n: int, batch_size: int, generator: torch.Generator, device: torch.device
                  ) -> Iterator[torch.Tensor]:
    """Index batches of one size (the epoch's full batch) from fresh random orders of the n examples, endlessly."""
    size = min(batch_size, n)
    while True:
        order = torch.randperm(n, device=device, generator=generator)
        for start in range(0, n - size + 1, size):
            yield order[start:start + size]


def time_alone(spec: RunSpec, splits: Splits, device: torch.device, seed: int = 0, steps: int = TIME_ALONE_STEPS,
               warmup: int = TIME_ALONE_WARMUP) -> AloneTiming:
    """Time one model of `spec` training by itself on `device`: the model, optimizer, precision and step of
    `run` (what a run that is not packed does), for `steps` steps after `warmup` (at most an epoch's worth each),
    then one validation pass. On CUDA the device is synchronised around each timed region."""
    spec.validate()
    if splits.streamed:
        raise UserError("data: time_alone times steps on a device-resident training set; this one is streamed "
                        "(Splits.from_datasets stream), and its runs train alone, timed by their own epochs")
    if splits.device != device:
        splits = splits.to(device)
    model = build_for(spec, splits, seed, device)
    optimizer = build_optimizer(model.parameters(), spec.train.optimizer)
    kernels, amp, t = kernel_weights(model), autocast_dtype(spec, device), spec.train
    per_epoch = len(epoch_batches(len(splits.x_train), t.batch_size))
    steps, warmup = min(steps, per_epoch), min(warmup, per_epoch)
    batches = _full_batches(len(splits.x_train), t.batch_size, torch.Generator(device=device).manual_seed(seed),
                            device)
    totals = (torch.zeros((), device=device), torch.zeros((), device=device, dtype=torch.long))
    model.train()
    with matmul_precision(float32_products(spec)):
        for _ in range(warmup):
            train_step(model, optimizer, splits.x_train, splits.y_train, next(batches), kernels, t.l1, t.l2, amp,
                       totals)
        _sync(device)
        started = time.perf_counter()
        for _ in range(steps):
            train_step(model, optimizer, splits.x_train, splits.y_train, next(batches), kernels, t.l1, t.l2, amp,
                       totals)
        _sync(device)
        step_seconds = (time.perf_counter() - started) / steps
        started = time.perf_counter()
        evaluate(model, splits.x_val, splits.y_val, t.eval_batch_size, amp)  # reads its numbers back: synchronised
        eval_seconds = time.perf_counter() - started
    return AloneTiming(steps, warmup, per_epoch, step_seconds, eval_seconds)


