"""The sweep driver: the one loop that trains runs into a store, for sweeps, searches and probes alike.

    sweep = Sweep(store, executor, keeper, log, pack=exp.pack, threads=exp.threads, resume=exp.resume)
    for done in sweep.run(runs):           # SweepRun: a Job and the names it is stored under
        log(run_line(head, done.result, done.stored))

`Sweep.run` claims in the store the runs it does not hold yet (`Store.claim`: two processes on one store
share the work rather than repeat it, and a dead process's claims go stale and are taken over), trains the
claimed ones through an executor (relulab.experiments.executors: in this process or on a Ray cluster), records
each as its outcome arrives, with its weights where the keeper keeps them (relulab.store.weights), and
releases the claims of whatever did not finish (an error, Ctrl-C). Runs that another live process holds are
waited for. This process alone writes the store, whichever executor trained the runs.

`Sweep.retrain` trains runs whether or not the store holds them, without claiming them: the copies of stored
runs that a search or `relulab probe` retrains only to probe (their keys are the stored runs' retrained keys,
and a copy already stored is dropped as `Store.record` drops any run stored twice).
"""
from __future__ import annotations

import contextlib
import copy
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Iterator, Optional, Sequence

import torch

from relulab.experiments.executors import Executor, Outcome
from relulab.experiments.tracking import TrackedRun, Trackers
from relulab.probes.callbacks import EpochProbeRequest
from relulab.store.database import Finished, Store
from relulab.store.weights import Keeper
from relulab.training.resume import Resume
from relulab.training.specs import Job, RunResult

if TYPE_CHECKING:
    from relulab.experiments.plan import Experiment


@dataclass
class SweepRun:
    """One run to train, and where the store files it."""

    job: Job
    experiment: str
    part: str
    variant: str
    probes: Optional[tuple] = None  # (statistics, probe size): a SlotProbe after every epoch (slot_stats)
    epoch_probe: Optional[EpochProbeRequest] = None  # every statistic at chosen epochs (Outcome.probe_results)
    data: dict = field(default_factory=dict)  # added to the run's stored data (a copy's mark, say)

    @property
    def key(self) -> str:
        return self.job.key


@dataclass
class Recorded:
    """A run as the driver recorded it."""

    run: SweepRun
    outcome: Outcome  # the result; its model (trained here) or final weights (trained elsewhere)
    stored: bool  # False: another process stored this run first, and this result was dropped

    @property
    def result(self) -> RunResult:
        return self.outcome.result


@dataclass
class Sweep:
    """Trains runs into `store` through `executor` (opened by the caller), keeping weights with `keeper`."""

    store: Store
    executor: Executor
    keeper: Keeper
    log: Callable[[str], None]
    pack: bool = True  # let train_many train same-shape runs together
    threads: Optional[int] = None
    resume: Optional[Resume] = None  # where training in progress is saved (None: not saved)
    claim_size: Optional[int] = None  # run keys claimed at a time (None: all)
    poll_s: float = 2.0  # how often to look again while another process holds the runs left
    trackers: Optional[Trackers] = None  # where each recorded run is logged at once (relulab.experiments.tracking)

    def run(self, runs: Sequence[SweepRun]) -> Iterator[Recorded]:
        """Every run of `runs` the store does not hold yet, claimed, trained and recorded; each as it is
        recorded. Returns once the store holds them all (some perhaps stored by other processes)."""
        by_key = {r.key: r for r in runs}
        pending = [r for r in runs if r.key not in self.store.done_keys(by_key)]
        waiting_said = False
        self.store.start_heartbeat()  # claims stay fresh while training holds this thread
        while pending:
            keys = self.store.claim([r.key for r in pending], self.claim_size)
            if not keys:
                busy = self.store.claimed_by_others(r.key for r in pending)
                if busy and not waiting_said:
                    self.log(f"waiting for {len(busy)} runs that another relulab process is running")
                    waiting_said = True
                time.sleep(self.poll_s if busy else 0)
            else:
                yield from self._train([by_key[k] for k in keys], self._still_claimed)
            done = self.store.done_keys(r.key for r in pending)
            pending = [r for r in pending if r.key not in done]

    def retrain(self, runs: Sequence[SweepRun]) -> Iterator[Recorded]:
        """Every run of `runs` trained and recorded, unclaimed, whatever the store holds; each as it is recorded.
        Not logged to the trackers: these are copies of runs logged when they were trained."""
        yield from self._train(list(runs), None, tracked=False)

    def _still_claimed(self, pack: list[Job]) -> list[Job]:
        # Asked again as each pack starts: this process may have been paused past STALE_S since it claimed
        # them, and another one stored them or took them over. `claim` renews our claims, re-takes stale ones.
        keep = set(self.store.claim([job.key for job in pack]))
        if len(keep) < len(pack):
            self.log(f"{len(pack) - len(keep)} of this process's claimed runs were stored or taken over by another "
                     f"process meanwhile: not training them here")
        return [job for job in pack if job.key in keep]

    def _train(self, batch: list[SweepRun], still_wanted, tracked: bool = True) -> Iterator[Recorded]:
        """Train `batch` through the executor; record each run as its outcome arrives, with its weights where
        the keeper keeps them (here, and only here, runs are written: whatever executor trained them)."""
        by_key = {r.key: r for r in batch}
        jobs = [Job(copy.deepcopy(r.job.spec), r.job.seed, r.key) for r in batch]
        try:
            tasks = self.executor.tasks(jobs, pack=self.pack, threads=self.threads, resume=self.resume,
                                        probes={r.key: r.probes for r in batch if r.probes},
                                        epoch_probes={r.key: r.epoch_probe for r in batch if r.epoch_probe})
            for outcome in self.executor.submit(tasks, still_wanted=still_wanted):
                r, result = by_key[outcome.job.key], outcome.result
                if r.data:
                    result.data = {**result.data, **r.data}
                staged = self.keeper.stage(r.key, result, outcome.final_weights())
                stored = self.store.record(Finished(r.key, r.experiment, r.part, r.variant, result,
                                                    outcome.slot_stats, staged))
                if stored and tracked and self.trackers:
                    self.trackers.log_result(TrackedRun(r.key, r.experiment, r.part, r.variant, r.job.seed,
                                                        result.spec.to_dict(), result.data),
                                             result, outcome.slot_stats, outcome.final_weights())
                yield Recorded(r, outcome, stored)
        finally:
            self.store.release(by_key)  # claims of runs not finished (an error, Ctrl-C) go back at once


    def record_trained(self, run: SweepRun, result: RunResult) -> bool:
        """Record a run this process trained itself, outside the executor (the learned strategy's fine-tuned
        models: trained from weights no spec reproduces), with its weights where the keeper keeps them; False
        if the store had it already."""
        if run.data:
            result.data = {**result.data, **run.data}
        final = {k: v.detach().cpu().clone() for k, v in result.model.state_dict().items()}
        return self.store.record(Finished(run.key, run.experiment, run.part, run.variant, result, {},
                                          self.keeper.stage(run.key, result, final)))


def run_line(head: str, result: RunResult, stored: bool) -> str:
    """The log line of a recorded run: `head` (which run), then what became of it."""
    h = result.history
    if not stored:
        return f"{head}: another process stored this run first; result dropped"
    if h.diverged_at is not None:
        return f"{head}: DIVERGED at epoch {h.diverged_at} (loss not finite), {h.seconds:.1f} s"
    return f"{head}: best val acc {h.best_val_acc:.4f} (epoch {h.best_epoch}), final {h.final_val_acc:.4f}, " \
           f"{h.seconds:.1f} s"



@contextlib.contextmanager
def sweeping(exp: "Experiment", executor: Executor, classes: dict[str, list[str]], log: Callable[[str], None], *,
             pack: bool, resume: Optional[Resume] = None, claim_size: Optional[int] = None, poll_s: float = 2.0,
             trackers: Optional[Trackers] = None) -> Iterator[tuple[Store, Sweep]]:
    """The experiment's store opened for writing and a Sweep over it, for a sweep, a search or a probe: torch's
    threads as the spec asks, and weights kept where `exp.keep_weights` says (`classes`: each dataset's class
    names by data key, which the kept checkpoints hold); each recorded run is logged to `trackers`. The executor
    is opened and closed by the caller, the trackers too."""
    if exp.threads:
        torch.set_num_threads(exp.threads)
    keeper = Keeper(exp.store, exp.keep_weights, classes, log)
    with Store(exp.store) as store:
        yield store, Sweep(store, executor, keeper, log, pack=pack, threads=exp.threads, resume=resume,
                           claim_size=claim_size, poll_s=poll_s, trackers=trackers)
