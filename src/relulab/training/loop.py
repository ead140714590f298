"""The training engine for one model: data on the device, per-epoch history, timing.

    result = run(RunSpec(data=DataSpec("digits"), model=ModelSpec("deep-mlp", widths=[64, 64])), seed=0)
    result.history.best_val_acc

The loop follows Keras' `fit`, because the sources' numbers come from it: reshuffle
every epoch, the last batch may be short, train loss and accuracy are the running
means over the epoch's batches (model in training mode), validation is evaluated
once per epoch in eval mode. Data is held on the device as tensors and batches are
cut by indexing, so no DataLoader or host copy sits inside an epoch; the loop reads
a number back from the device only once per epoch.

Callbacks (fastai-style, one job each) see the model and each epoch's record: a
progress bar, probes, the results store.
"""
from __future__ import annotations

import math
import sys
import time
from dataclasses import asdict, astuple, dataclass, field
from typing import Callable, Iterator, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from relulab.data import DataSpec, Splits, load_data
from relulab.core.env import matmul_precision, provenance, resolve_device, seed_everything
from relulab.core.errors import UserError, is_number
from relulab.zoo.models import ModelSpec, SlotNet, build_model, keras_param_count
from relulab.zoo.optim import OptimizerSpec, build_optimizer, kernel_weights, weight_penalty
from relulab.core.ranges import INT64_MAX, show_int
from relulab.training.resume import Resume, Saver


@dataclass
class TrainSpec:
    """How to train. A plain record for configs and the CLI."""

    epochs: int = 10
    batch_size: int = 32
    optimizer: OptimizerSpec = field(default_factory=OptimizerSpec)
    l1: float = 0.0  # Keras-style kernel penalties, added to the loss
    l2: float = 0.0
    eval_batch_size: int = 2048
    # fp32 | tf32 (float32 values, TensorFloat-32 matrix products: what JAX and Keras 3 do on A100/H100 by
    # default) | bf16 (autocast) | auto: bf16 for conv models on CUDA, else tf32 (on the CPU both mean fp32)
    precision: str = "auto"
    # torch.compile the training step of unstacked models (the conv models): true | false | None (auto:
    # where enough model-epochs share one compiled graph to pay for compiling it; see pack.compiles)
    compile: Optional[bool] = None

    def validate(self, prefix: str = "train") -> "TrainSpec":
        for key in ("epochs", "batch_size", "eval_batch_size"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= INT64_MAX:
                raise UserError(f"{prefix}.{key}: expected a positive integer (at most {INT64_MAX}), got "
                                f"{show_int(value)}")
        for key in ("l1", "l2"):
            value = getattr(self, key)
            if not (is_number(value) and 0 <= value < math.inf):
                raise UserError(f"{prefix}.{key}: expected a number >= 0, got {value!r}")
        if self.precision not in PRECISIONS:
            raise UserError(f"{prefix}.precision: expected one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.compile is not None and not isinstance(self.compile, bool):
            raise UserError(f"{prefix}.compile: expected true, false or null (auto), got {self.compile!r}")
        self.optimizer.validate(f"{prefix}.optimizer")
        return self


PRECISIONS = ("auto", "fp32", "tf32", "bf16")
CONV_MODELS = ("seed-cnn",)


def autocast_dtype(spec: "RunSpec", device: torch.device) -> Optional[torch.dtype]:
    """bf16 where it was asked for, or by default for conv models on CUDA (where it keeps accuracy and
    doubles the convolutions' speed); None means full fp32."""
    precision = spec.train.precision
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" and spec.model.name in CONV_MODELS else "fp32"
    return torch.bfloat16 if precision == "bf16" else None


def float32_products(spec: "RunSpec") -> str:
    """How float32 matrix products are computed on CUDA: "tf32" (TensorFloat-32 tensor cores: inputs rounded
    to 10 mantissa bits, fp32 sums) for tf32 and auto, else "ieee" (full fp32). auto follows JAX, whose
    default this is on A100/H100, so the Keras peers train this way too; on seed 001 it kept accuracy within
    seed noise of fp32 (BENCHMARKS.md). CPU products are full fp32 whatever this says."""
    return "tf32" if spec.train.precision in ("tf32", "auto") else "ieee"


def arithmetic(spec: "RunSpec", device: torch.device) -> str:
    """What a run's arithmetic actually was on `device` (bf16, tf32 or fp32), recorded in its result's data."""
    if autocast_dtype(spec, device) is not None:
        return "bf16"
    return "tf32" if device.type == "cuda" and float32_products(spec) == "tf32" else "fp32"


@dataclass
class RunSpec:
    """Everything that defines one training run except the seed."""

    data: DataSpec = field(default_factory=DataSpec)
    model: ModelSpec = field(default_factory=ModelSpec)
    train: TrainSpec = field(default_factory=TrainSpec)

    def validate(self) -> "RunSpec":
        self.data.validate("data")
        self.model.validate("model")
        self.train.validate("train")
        return self

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class EpochRecord:
    epoch: int
    train_loss: float
    train_acc: float
    val_loss: float
    val_acc: float
    seconds: float


@dataclass
class History:
    epochs: list[EpochRecord] = field(default_factory=list)
    diverged_at: Optional[int] = None  # first epoch whose training loss was NaN or inf
    test_loss: Optional[float] = None  # after the last epoch
    test_acc: Optional[float] = None

    @property
    def best(self) -> Optional[EpochRecord]:
        finite = [e for e in self.epochs if math.isfinite(e.val_acc)]
        return max(finite, key=lambda e: e.val_acc) if finite else None

    @property
    def best_val_acc(self) -> float:
        return self.best.val_acc if self.best else float("nan")

    @property
    def best_epoch(self) -> Optional[int]:
        return self.best.epoch if self.best else None

    @property
    def final_val_acc(self) -> float:
        return self.epochs[-1].val_acc if self.epochs else float("nan")

    @property
    def seconds(self) -> float:
        return sum(e.seconds for e in self.epochs)

    def state(self) -> dict:
        """As plain data (relulab.resume saves it with a run in progress)."""
        return {"epochs": [list(astuple(e)) for e in self.epochs], "diverged_at": self.diverged_at}

    def restore(self, state: dict) -> None:
        self.epochs = [EpochRecord(int(e[0]), *map(float, e[1:])) for e in state["epochs"]]
        self.diverged_at = state["diverged_at"]

    def summary(self) -> dict:
        return {"best_val_acc": self.best_val_acc, "best_epoch": self.best_epoch, "final_val_acc": self.final_val_acc,
                "test_acc": self.test_acc, "seconds": round(self.seconds, 3), "diverged_at": self.diverged_at}


class Callback:
    """Hooks into training; override what you need. Each callback should have one job.

    A run saved mid-way (relulab.resume) saves its callbacks' `state()` with it and hands it to `restore` when it
    goes on; a callback whose state cannot be saved sets `resumable = False`, and a run with it starts again."""

    resumable = True

    def state(self) -> dict:
        return {}

    def restore(self, state: dict) -> None: ...

    def on_train_begin(self, model: nn.Module, spec: TrainSpec) -> None: ...

    def on_epoch_end(self, model: nn.Module, record: EpochRecord) -> None: ...

    def on_train_end(self, model: nn.Module, history: History) -> None: ...


class BestWeights(Callback):
    """Keeps a copy of the model's weights at its best epoch (the one `History.best` picks: the first with the
    highest validation accuracy), so that what a run's best accuracy describes can be kept, not only the
    final model. One copy on the model's device, refreshed only when an epoch beats the best so far."""

    def __init__(self):
        self.weights: Optional[dict[str, torch.Tensor]] = None
        self.epoch: Optional[int] = None
        self._best = -math.inf

    def on_epoch_end(self, model, record):
        if math.isfinite(record.val_acc) and record.val_acc > self._best:
            self._best, self.epoch = record.val_acc, record.epoch
            self.weights = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def state(self) -> dict:
        return {"best": self._best, "epoch": self.epoch, "weights": self._weights_cpu()}

    def restore(self, state: dict) -> None:
        self._best, self.epoch, self.weights = state["best"], state["epoch"], state["weights"]

    def best_state(self, history: "History") -> Optional[dict[str, torch.Tensor]]:
        """The weights at the best epoch, where that is not the last (then the final model is the best)."""
        last = history.epochs[-1].epoch if history.epochs else None
        return None if self.epoch == last else self._weights_cpu()

    def _weights_cpu(self) -> Optional[dict[str, torch.Tensor]]:
        return None if self.weights is None else {k: v.cpu() for k, v in self.weights.items()}


class ProgressBar(Callback):
    """A rich progress bar on a terminal; silent when output is piped."""

    def __init__(self, label: str = "training"):
        self.label, self.progress, self.task = label, None, None

    def on_train_begin(self, model, spec):
        if not sys.stderr.isatty():
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

        self.progress = Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                                 TimeRemainingColumn(), transient=True)
        self.progress.start()
        self.task = self.progress.add_task(self.label, total=spec.epochs)

    def on_epoch_end(self, model, record):
        if self.progress:
            self.progress.update(self.task, advance=1,
                                 description=f"{self.label} val_acc {record.val_acc:.4f}")

    def on_train_end(self, model, history):
        if self.progress:
            self.progress.stop()


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


def train_epoch(model, optimizer, x, y, batch_size, generator, kernels, l1, l2, amp=None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """One pass over (x, y) in a fresh random order; returns device tensors (loss sum, correct count)."""
    model.train()
    order = torch.randperm(len(x), device=x.device, generator=generator)
    loss_sum = torch.zeros((), device=x.device)
    correct = torch.zeros((), device=x.device, dtype=torch.long)
    for start, stop in epoch_batches(len(x), batch_size):
        train_step(model, optimizer, x, y, order[start:stop], kernels, l1, l2, amp, (loss_sum, correct))
    return loss_sum, correct


def train_step(model, optimizer, x, y, idx, kernels, l1, l2, amp, totals: tuple[torch.Tensor, torch.Tensor]) -> None:
    """One optimizer step on the examples `idx` of (x, y); adds its loss sum and correct count to `totals`
    (device tensors, so that nothing is read back from the device)."""
    xb, yb = x[idx], y[idx]
    with torch.autocast(x.device.type, dtype=amp or torch.bfloat16, enabled=amp is not None):
        logits = model(xb)
    loss = F.cross_entropy(logits.float(), yb)
    total = loss + weight_penalty(kernels, l1, l2) if (l1 or l2) else loss
    optimizer.zero_grad(set_to_none=True)
    total.backward()
    optimizer.step()
    totals[0].add_(loss.detach() * len(idx))
    totals[1].add_((logits.detach().argmax(1) == yb).sum())


def train_model(model: nn.Module, splits: Splits, spec: TrainSpec, seed: int = 0,
                callbacks: Sequence[Callback] = (), amp: Optional[torch.dtype] = None,
                saver: Optional["Saver"] = None) -> History:
    """Train `model` on `splits` (already on the model's device); stops early only if the loss diverges.
    `amp`: a dtype to autocast the forward pass to (see `autocast_dtype`). `saver` (relulab.resume): save the
    state at epoch boundaries on its schedule, and go on from a saved state of this run if there is one."""
    spec.validate()
    device = splits.x_train.device
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    optimizer = build_optimizer(model.parameters(), spec.optimizer)
    kernels = kernel_weights(model)
    history = History()
    for cb in callbacks:
        cb.on_train_begin(model, spec)
    saver = saver if saver is not None and all(cb.resumable for cb in callbacks) else None
    done = _resume_run(saver, model, optimizer, generator, history, callbacks)
    n = epoch_batches(len(splits.x_train), spec.batch_size)[-1][1]  # examples seen per epoch
    for epoch in range(done + 1, spec.epochs + 1):
        _sync(device)
        started = time.perf_counter()
        loss_sum, correct = train_epoch(model, optimizer, splits.x_train, splits.y_train, spec.batch_size,
                                        generator, kernels, spec.l1, spec.l2, amp)
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


def _resume_run(saver, model, optimizer, generator, history, callbacks) -> int:
    """Put a saved state of this run back (weights, optimizer, generator, history, callbacks); the epochs done."""
    state = saver.load() if saver is not None else None
    if state is None:
        return 0
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    generator.set_state(state["generator"])
    history.restore(state["history"])
    for cb, saved in zip(callbacks, state["callbacks"]):
        cb.restore(saved)
    return int(state["epoch"])


@dataclass
class RunResult:
    spec: RunSpec
    seed: int
    history: History
    params: int
    data: dict
    provenance: dict
    model: Optional[SlotNet] = None  # the final model
    # The weights at the best epoch (by validation accuracy), on the CPU, where that is not the last epoch.
    best_state: Optional[dict[str, torch.Tensor]] = None

    def to_dict(self) -> dict:
        return {"spec": self.spec.to_dict(), "seed": self.seed, "params": self.params, "data": self.data,
                "provenance": self.provenance, **self.history.summary(),
                "history": [asdict(e) for e in self.history.epochs]}


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
    if splits.x_train.device != device:
        splits = splits.to(device)
    model = build_for(spec, splits, seed, device)
    best = BestWeights()
    with matmul_precision(float32_products(spec)):
        history = train_model(model, splits, spec.train, seed, [*callbacks, best], autocast_dtype(spec, device),
                              saver)
    data = {**splits.summary(), "arithmetic": arithmetic(spec, device), "compiled": False}
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
    if splits.x_train.device != device:
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


@dataclass
class Job:
    """One run to do: a spec and a seed, plus the caller's key for it (the store's run key)."""

    spec: RunSpec
    seed: int
    key: str = ""


def train_many(jobs: Sequence[Job], splits: Splits, device: str | torch.device = "auto", callbacks=None,
               pack: bool = True, max_pack: int = 64, max_stack: Optional[int] = None,
               still_wanted: Optional[Callable[[list[Job]], list[Job]]] = None, resume: Optional[Resume] = None
               ) -> "Iterator[tuple[Job, RunResult]]":
    """Train every job on the same data; yield (job, result) as each one finishes.

    This is the one entry point experiments and searches use, so that scheduling is
    decided in one place: jobs with the same batch size and epochs train together
    (`relulab.pack.train_together`: MLPs stacked into batched kernels, on CUDA every
    model's step a CUDA graph, run side by side), up to `max_pack` at a time; the rest
    train one by one. `callbacks(job)` may return callbacks for a job; such a job trains
    alone, since callbacks see one model. A pack that runs out of GPU memory is halved
    and retried. `still_wanted(jobs)`, if given, is asked just before each pack (or lone
    run) starts and returns those of its jobs still to train: a sweep passes one that
    drops what another process stored, or took over, while earlier packs trained. `resume`
    (relulab.resume): save each pack and lone run at epoch boundaries, keyed by its jobs' keys, and go on
    from such a save where one is found.
    """
    from relulab.packing import pack as packing

    device = resolve_device(device) if isinstance(device, str) else device
    if splits.x_train.device != device:
        splits = splits.to(device)
    groups: dict = {}
    for job in jobs:
        extra = callbacks(job) if callbacks else ()
        key = packing.pack_key(job, device) if pack and not extra else None
        groups.setdefault(key if key is not None else ("alone", id(job)), []).append((job, extra))
    wanted = still_wanted or list
    for key, members in groups.items():
        if key[0] == "alone" or (len(members) == 1 and device.type != "cuda"):
            job, extra = members[0]
            if wanted([job]):
                saver = resume.saver([job.key]) if resume else None
                yield job, run(job.spec, job.seed, device, splits=splits, callbacks=extra, saver=saver)
            continue
        for start in range(0, len(members), max_pack):
            chunk = wanted([job for job, _ in members[start:start + max_pack]])
            if chunk:
                yield from _train_together_halving(chunk, splits, device, max_stack, resume)


def _train_together_halving(jobs: list[Job], splits: Splits, device: torch.device, max_stack: Optional[int] = None,
                            resume: Optional[Resume] = None):
    from relulab.packing import pack as packing

    try:
        saver = resume.saver([job.key for job in jobs]) if resume else None
        results = packing.train_together(jobs, splits, device, max_stack=max_stack, saver=saver)
    except torch.cuda.OutOfMemoryError:
        if len(jobs) == 1:
            raise
        torch.cuda.empty_cache()
        half = len(jobs) // 2
        yield from _train_together_halving(jobs[:half], splits, device, max_stack, resume)
        yield from _train_together_halving(jobs[half:], splits, device, max_stack, resume)
        return
    yield from zip(jobs, results)
