"""Train many small models at once: `train_many` (the one entry point) and `train_together`.

The models here are too small to keep a GPU busy: at batch 32 a deep-mlp layer is a
32x100x100 matrix product, and the time goes to launching kernels. `train_together`
trains a group of jobs that share a schedule (batch size, epochs) at the same time, in
*units* (`relulab.packing.units`), each driven by its own CUDA stream:

- a *stack* unit holds K MLPs of the same shape (different seeds, initializers,
  learning rates) and runs every layer for all of them in one batched kernel
  (`relulab.packing.stacked_mlp`); on CUDA in bf16, K seed-cnns stack too
  (`relulab.packing.stacked_cnn`); which jobs stack is `relulab.packing.rules`, read
  from the models' registry entries;
- any other model is a unit of its own;
- on CUDA each unit's whole training step (gather the batch, forward, backward,
  update, accumulate metrics; `relulab.packing.steps`) is captured once in a CUDA graph
  and replayed, so a step costs one launch instead of hundreds, and the units' graphs
  run side by side.

Inside a stack:

- weights of all layers and models live in one flat leaf tensor `P` of shape
  (K, n_params); each layer's weight is a view of it (`P.split`), so autograd
  delivers the whole gradient as one (K, n_params) tensor and the optimizer update
  (`relulab.zoo.optim.StackedOptimizer`) is a handful of elementwise kernels however
  many layers there are;
- each model keeps its own batch order (its seed's generator), so a stack reproduces
  K separate runs of `relulab.training.loop.run` up to float rounding (a test checks this).

Models are built exactly as `run` builds them (same seed, same initializer
calls), then their weights are stacked; at the end they are unstacked back into
ordinary `SlotNet`s, so results look the same as single runs.
"""
from __future__ import annotations

import math
import sys
import time
from typing import Callable, Iterator, Optional, Sequence

import torch

from relulab.core import background
from relulab.core.env import provenance, resolve_device
from relulab.core.errors import UserError
from relulab.data import Splits
from relulab.kernels import launches
from relulab.packing.rules import data_packs, pack_key, schedule_key, stacks_cnns, stacks_functional
from relulab.packing.units import Unit, form_units
from relulab.training import loop, resume
from relulab.training.loop import epoch_batches
from relulab.training.resume import Resume
from relulab.training.specs import EpochRecord, History, Job, RunResult, RunSpec, arithmetic
from relulab.zoo.models import keras_param_count


def train_together(jobs: Sequence[Job], splits: Splits, device: torch.device, graphs: Optional[bool] = None,
                   max_stack: Optional[int] = None, stack_cnns: Optional[bool] = None,
                   saver: Optional[resume.Saver] = None, stack_functional: Optional[bool] = None) -> list[RunResult]:
    """Train jobs that share a schedule (batch size, epochs) at the same time; one RunResult per job, in order.

    MLPs are stacked (`max_stack` to a stack), and so are seed-cnns with `stack_cnns` (by default where
    `stacks_cnns` says) and "vmap" models with `stack_functional` (`stacks_functional`); other models run one per unit; on CUDA each
    unit's step is a CUDA graph and the units' graphs are replayed side by side on their
    own streams, so the GPU works on several small models at once. `saver` (relulab.training.resume): save the pack's
    state at epoch boundaries on its schedule, and go on from a saved state of these jobs if there is one."""
    assert len({schedule_key(j) for j in jobs}) == 1, "jobs must share batch size and epochs"
    if not data_packs(splits):
        raise UserError("data: a streamed training set cannot train packed; train_many trains its runs alone")
    spec = jobs[0].spec.train
    setup_started = _now(device)
    bounds = epoch_batches(len(splits.x_train), spec.batch_size)
    units, generators = ready_units(jobs, splits, device, bounds, graphs, max_stack, stack_cnns, stack_functional)
    histories = _run_epochs(units, splits, device, bounds, setup_started, generators, saver)
    by_job: dict[int, RunResult] = {}
    info = provenance(device)
    for unit in units:
        unit.finish()
        tests = unit.evaluate(splits.x_test, splits.y_test, spec.eval_batch_size)
        for k, (job, model, history, test) in enumerate(zip(unit.jobs, unit.models, histories[id(unit)], tests)):
            if history.diverged_at is None:
                history.test_loss, history.test_acc = test
            data = {**splits.summary(), "trained_with": len(jobs), "arithmetic": arithmetic(job.spec, device),
                    "compiled": unit.compiled, "stacked": unit.stack is not None, "relu_count": model.relu_count()}
            last = history.epochs[-1].epoch if history.epochs else None
            by_job[id(job)] = RunResult(job.spec, job.seed, history, keras_param_count(model), data, info, model,
                                        unit.best_state(k, last))
    if saver is not None:
        saver.discard()
    return [by_job[id(job)] for job in jobs]


def ready_units(jobs: Sequence[Job], splits: Splits, device: torch.device, bounds: list[tuple[int, int]],
                graphs: Optional[bool] = None, max_stack: Optional[int] = None, stack_cnns: Optional[bool] = None,
                stack_functional: Optional[bool] = None) -> tuple[list[Unit], dict[int, torch.Generator]]:
    """The units `jobs` train in (`train_together`'s options), ready for their first step of each batch size in
    `bounds`: models built and stacked, each job's batch-order generator (by id of the job), augmentation and
    learning-rate tables in place, the Triton kernels compiled and, on CUDA, every step captured in a graph."""
    if device.type == "cuda":
        launches.hash_triton_ahead()  # while the models are built below
    if stack_cnns is None:
        stack_cnns = stacks_cnns(jobs, device)
    if stack_functional is None:
        stack_functional = stacks_functional(device)
    units = form_units(jobs, splits, device, sorted({b - a for a, b in bounds}), max_stack, stack_cnns,
                       stack_functional)
    generators = {}
    for unit in units:
        for job in unit.jobs:
            generators[id(job)] = torch.Generator(device=device).manual_seed(job.seed)  # same order as alone
        # Before capture: a graph captured without augmentation would replay unaugmented batches.
        unit.augment_with([generators[id(job)] for job in unit.jobs], splits.input_shape)
        unit.schedule(len(bounds))
    if device.type == "cuda":
        compile_kernels(units, splits)
    if graphs if graphs is not None else device.type == "cuda":
        for unit in units:
            unit.capture()
    return units, generators


COMPILE_NOTICE_S = 2.0  # a compile shorter than this (Triton's caches were warm) goes unsaid


def compile_kernels(units: list[Unit], splits: Splits) -> Optional[launches.Compiled]:
    """Compile every Triton kernel the units will launch, all at once on several threads, before their first step
    (relulab.kernels.launches): on a machine whose cache is cold that costs seconds rather than a minute, and
    says so once. None where no unit runs Triton kernels, or $RELULAB_COMPILE_THREADS is 0."""
    with_triton = [unit for unit in units if unit.launches_triton]
    if not with_triton or launches.compile_threads() == 0:
        return None
    few = slice(0, min(len(splits.x_test), 64))  # evaluation's kernels do not depend on its batch size
    try:
        noted = [one for unit in with_triton for one in unit.record_kernels(splits.x_test[few], splits.y_test[few])]
        done = launches.compile_all(noted, device=splits.x_train.device)
    except Exception as e:  # noqa: BLE001 - only a head start: the kernels still compile when first launched
        print(f"relulab: warning: compiling the GPU kernels ahead of the first step failed ({type(e).__name__}: "
              f"{e}); each compiles when first launched", file=sys.stderr)
        return None
    if done.seconds >= COMPILE_NOTICE_S:
        print(f"relulab: compiled {done.kernels} GPU kernels in {done.seconds:.0f} s on {done.threads} threads, "
              f"once per machine (Triton's cache: {launches.triton_cache_dir()})", file=sys.stderr)
    return done


def _run_epochs(units: list[Unit], splits: Splits, device: torch.device, bounds, setup_started: float,
                generators: dict, saver: Optional[resume.Saver] = None) -> dict[int, list[History]]:
    """Train every unit epoch by epoch, each model's batches drawn from its generator (`generators`, by id of its
    job). The first epoch's time starts at `setup_started`, so that building the models, compiling and capturing
    graphs count in the runs' seconds."""
    spec = units[0].jobs[0].spec.train
    histories = {id(unit): [History() for _ in unit.jobs] for unit in units}
    done = _resume_pack(saver, units, generators, histories)
    seen, n = bounds[-1][1], len(splits.x_train)
    for epoch in range(done + 1, spec.epochs + 1):
        started = setup_started if epoch == done + 1 else _now(device)
        live = [u for u in units if any(h.diverged_at is None for h in histories[id(u)])]
        orders = {id(u): torch.stack([torch.randperm(n, device=device, generator=generators[id(j)])
                                      for j in u.jobs]) for u in live}
        for unit in live:
            for t in unit.totals:
                t.zero_()
            if unit.stream is not None:
                unit.stream.wait_stream(torch.cuda.current_stream(device))
        for i, (a, b) in enumerate(bounds):
            for unit in live:  # one step of every unit; on CUDA they run concurrently
                unit.step(orders[id(unit)], a, b, (epoch - 1) * len(bounds) + i)
            if i == 0:  # the GPU has the epoch's steps to work through: CPU work waiting for that may start
                background.device_busy(device)
        for unit in live:
            if unit.stream is not None:
                torch.cuda.current_stream(device).wait_stream(unit.stream)
        _record_epoch(live, histories, splits, epoch, started, seen, device, spec.eval_batch_size)
        if not any(h.diverged_at is None for hs in histories.values() for h in hs):
            break
        if saver is not None and epoch < spec.epochs and saver.due():
            saver.save(epoch, _pack_state(units, generators, histories))
    return histories


def _pack_state(units: list[Unit], generators: dict, histories: dict) -> dict:
    """Everything `_run_epochs` needs to go on after the epoch just finished: per unit in order, its tensors,
    best-epoch snapshots, its models' generators and histories."""
    return {"units": [{**unit.saved(), "keys": [job.key for job in unit.jobs],
                       "generators": [generators[id(job)].get_state() for job in unit.jobs],
                       "histories": [h.state() for h in histories[id(unit)]]} for unit in units]}


def _resume_pack(saver: Optional[resume.Saver], units: list[Unit], generators: dict, histories: dict) -> int:
    """Put a saved state of this pack back; the epochs it had done (0: none saved, start from the beginning)."""
    state = saver.load() if saver is not None else None
    # The same jobs may form their stacks otherwise (in another order): then the saved state fits nothing here.
    if state is None or [s["keys"] for s in state["units"]] != [[job.key for job in u.jobs] for u in units]:
        return 0
    # Checked for every unit before any is changed: a state of the same runs laid out otherwise (another relulab's
    # stack) is ignored as a whole, and the pack starts from its beginning, which is always right.
    if not all(resume.fits(u.state_tensors(), s["tensors"]) for u, s in zip(units, state["units"])):
        resume.say_it_does_not_fit(several=True)
        return 0
    for unit, saved in zip(units, state["units"]):
        unit.restore(saved)
        for job, generator_state in zip(unit.jobs, saved["generators"]):
            generators[id(job)].set_state(generator_state)
        for history, history_state in zip(histories[id(unit)], saved["histories"]):
            history.restore(history_state)
    return int(state["epoch"])


def _record_epoch(units, histories, splits, epoch, started, seen, device, eval_batch) -> None:
    evaluations = {id(u): u.evaluate(splits.x_val, splits.y_val, eval_batch) for u in units}
    train = {id(u): tuple([v / seen for v in t.tolist()] for t in u.totals) for u in units}
    # The epoch's wall time is shared by every model trained in it.
    seconds = (_now(device) - started) / sum(len(u.jobs) for u in units)
    for unit in units:
        losses, accs = train[id(unit)]
        for k, history in enumerate(histories[id(unit)]):
            if history.diverged_at is None:
                history.epochs.append(EpochRecord(epoch, losses[k], accs[k], *evaluations[id(unit)][k], seconds))
                if history.best is not None and history.best.epoch == epoch:  # as train.BestWeights decides
                    unit.keep_best(k, epoch)
                if not math.isfinite(losses[k]):
                    history.diverged_at = epoch


def _now(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def train_many(jobs: Sequence[Job], splits: Splits, device: str | torch.device = "auto", callbacks=None,
               pack: bool = True, max_pack: int = 64, max_stack: Optional[int] = None,
               still_wanted: Optional[Callable[[list[Job]], list[Job]]] = None, resume: Optional[Resume] = None
               ) -> "Iterator[tuple[Job, RunResult]]":
    """Train every job on the same data; yield (job, result) as each one finishes.

    This is the one entry point experiments and searches use, so that scheduling is
    decided in one place: jobs with the same batch size and epochs train together
    (`train_together`: MLPs stacked into batched kernels, on CUDA every
    model's step a CUDA graph, run side by side), up to `max_pack` at a time; the rest
    train one by one. `callbacks(job)` may return callbacks for a job; such a job trains
    alone, since callbacks see one model. A pack that runs out of GPU memory is halved
    and retried. `still_wanted(jobs)`, if given, is asked just before each pack (or lone
    run) starts and returns those of its jobs still to train: a sweep passes one that
    drops what another process stored, or took over, while earlier packs trained. `resume`
    (relulab.training.resume): save each pack and lone run at epoch boundaries, keyed by its jobs' keys, and go on
    from such a save where one is found.
    """
    device = resolve_device(device) if isinstance(device, str) else device
    if splits.device != device:
        splits = splits.to(device)
    groups: dict = {}
    for job in jobs:
        extra = callbacks(job) if callbacks else ()
        key = _packs_under(job, splits, device, pack, extra)
        groups.setdefault(("alone", id(job)) if key is None else key, []).append((job, extra))
    wanted = still_wanted or list
    for key, members in groups.items():
        if _trains_in_the_loop(None if key[0] == "alone" else key, len(members), device):
            job, extra = members[0]
            if wanted([job]):
                saver = resume.saver([job.key]) if resume else None
                # through the module, so that one model's loop stays the one place a lone run goes (tests replace it there)
                yield job, loop.run(job.spec, job.seed, device, splits=splits, callbacks=extra, saver=saver)
            continue
        for start in range(0, len(members), max_pack):
            chunk = wanted([job for job, _ in members[start:start + max_pack]])
            if chunk:
                yield from _train_together_halving(chunk, splits, device, max_stack, resume)


def _packs_under(job: Job, splits: Splits, device: torch.device, pack: bool = True, callbacks=()) -> Optional[tuple]:
    """The key `job` packs under in train_many; None where it trains through one model's loop (packing off,
    callbacks, which see one model, data that does not pack, or a model without a pack key)."""
    return pack_key(job, device) if pack and not callbacks and data_packs(splits) else None


def _trains_in_the_loop(key: Optional[tuple], group_size: int, device: torch.device) -> bool:
    """Whether the jobs of one pack key (None: none) train through train.run's loop rather than train_together's
    units: off CUDA a lone run gains nothing from a unit of one (no graphs), so it takes the loop too. The one
    place this is decided, for training (train_many) and for timing a run alone (time_alone)."""
    return key is None or (group_size == 1 and device.type != "cuda")


def _train_together_halving(jobs: list[Job], splits: Splits, device: torch.device, max_stack: Optional[int] = None,
                            resume: Optional[Resume] = None):
    try:
        saver = resume.saver([job.key for job in jobs]) if resume else None
        results = train_together(jobs, splits, device, max_stack=max_stack, saver=saver)
    except torch.cuda.OutOfMemoryError:
        if len(jobs) == 1:
            raise
        torch.cuda.empty_cache()
        half = len(jobs) // 2
        yield from _train_together_halving(jobs[:half], splits, device, max_stack, resume)
        yield from _train_together_halving(jobs[half:], splits, device, max_stack, resume)
        return
    yield from zip(jobs, results)


def time_alone(spec: RunSpec, splits: Splits, device: torch.device, seed: int = 0,
               steps: int = loop.TIME_ALONE_STEPS, warmup: int = loop.TIME_ALONE_WARMUP) -> loop.AloneTiming:
    """Time one model of `spec` by itself, as `train_many` trains a lone run: on CUDA in a unit of its own (its
    step a CUDA graph), elsewhere, and where it does not pack, through train.run's loop (`loop.time_alone`).
    `steps` timed steps after `warmup` untimed ones (at most an epoch's each), then one validation pass."""
    job = Job(spec, seed)
    if _trains_in_the_loop(_packs_under(job, splits, device), 1, device):
        return loop.time_alone(spec, splits, device, seed, steps, warmup)
    return time_unit(job, splits.to(device) if splits.device != device else splits, device, steps, warmup)


def time_unit(job: Job, splits: Splits, device: torch.device, steps: int, warmup: int,
              graphs: Optional[bool] = None) -> loop.AloneTiming:
    """`time_alone` of a lone run's unit: its full-batch step, replayed over one batch order of its seed."""
    job.spec.validate()
    bounds = epoch_batches(len(splits.x_train), job.spec.train.batch_size)
    (unit,), generators = ready_units([job], splits, device, bounds, graphs)
    batch = bounds[0][1] - bounds[0][0]
    full = [start for start, stop in bounds if stop - start == batch]
    steps, warmup = min(steps, len(bounds)), min(warmup, len(bounds))
    order = torch.randperm(len(splits.x_train), device=device, generator=generators[id(job)]).unsqueeze(0)

    def take(first: int, count: int) -> None:
        for i in range(first, first + count):
            start = full[i % len(full)]
            unit.step(order, start, start + batch, i % len(bounds))

    take(0, warmup)
    started = _now(device)
    take(warmup, steps)
    step_seconds = (_now(device) - started) / steps
    started = time.perf_counter()
    unit.evaluate(splits.x_val, splits.y_val, job.spec.train.eval_batch_size)  # reads its numbers back: synchronised
    return loop.AloneTiming(steps, warmup, len(bounds), step_seconds, time.perf_counter() - started)
