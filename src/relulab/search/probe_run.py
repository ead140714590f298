"""Probing one configuration's model (`relulab probe`): its statistics from the store, from the run's kept
weights, or by training it with a probe attached (through the sweep driver and an executor).
"""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from relulab.core.errors import UserError
from relulab.core.ranges import parse_ranges
from relulab.data import data_key, load_data
from relulab.experiments.executors import Executor, InProcessExecutor
from relulab.experiments.plan import Experiment, Part, Variant, run_key
from relulab.experiments.sweep import Sweep, SweepRun, run_line, sweeping
from relulab.probes import statistics as probes_mod
from relulab.probes.callbacks import EpochProbeRequest
from relulab.search.subject import ensure_plan, pick_part, pick_variant, probe_rows
from relulab.store import RETRAINED_FOR_PROBING, Store, retrained_key
from relulab.store.weights import KeptWeights
from relulab.training.specs import Job
from relulab.zoo.models import build_model


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass
class ProbeRun:
    """The probe statistics of one run's model at some epochs, and which model they describe."""

    experiment: str
    part: str
    variant: str
    seed: int
    key: str  # the run's key (as relulab run keys it)
    probe_set: str
    results: dict[int, probes_mod.ProbeResult]  # epoch -> every statistic
    trained: bool  # False: nothing was trained
    run: Optional[dict] = None  # the stored run row
    # Where the statistics came from: store (found there), weights (the kept weights, probed now), trained (the
    # run itself, not in the store before, trained now with the probe attached) or retrained (a copy of the stored
    # run, trained now for probing and stored as its own record); and the key of the model they describe: `key`,
    # or that of the run's copy retrained for probing, whose row is `copy`.
    source: str = "store"
    probed_key: str = ""
    copy: Optional[dict] = None
    slot_names: dict[int, str] = field(default_factory=dict)  # {slot: name} where the model has them


def parse_epoch_list(text: Optional[str], total: int, field: str = "probe.epochs") -> Optional[list[int]]:
    """None or 'last': the final epoch (None); 'all': every epoch; '1,10,50' or '1-5': those epochs."""
    if text is None or str(text).strip() in ("", "last"):
        return None
    text = str(text).strip()
    if text == "all":
        return list(range(1, total + 1))
    epochs = parse_ranges(text, field, noun="epochs", expected="last, all, or epochs like 1,10,50 or 1-5",
                          minimum=1, maximum=total, bounds=" (train.epochs)")
    return sorted(set(epochs))


def result_from_rows(rows: list[dict]) -> probes_mod.ProbeResult:
    """A ProbeResult back from the store rows of one run, probe set and epoch."""
    classes: dict[int, tuple[str, int]] = {}
    overall: dict = {}
    by_class: dict = {}
    for r in rows:
        if r["class"] < 0:
            overall.setdefault(r["stat"], {})[r["slot"]] = r["value"]
        else:
            classes[r["class"]] = (r["class_name"], r["images"])
            by_class.setdefault(r["stat"], {}).setdefault(r["slot"], {})[r["class"]] = r["value"]
    order = sorted(classes)
    stats = [s for s in probes_mod.stat_names() if s in overall] + sorted(s for s in overall
                                                                          if s not in probes_mod.STATS)
    slots = sorted({slot for by in overall.values() for slot in by})
    result = probes_mod.ProbeResult(stats, slots, [classes[c][0] for c in order], [classes[c][1] for c in order])
    result.overall = overall
    result.by_class = {s: {slot: [by.get(slot, {}).get(c, math.nan) for c in order] for slot in slots}
                       for s, by in by_class.items()}
    return result


def probe_configuration(exp: Experiment, seed: int = 0, probe_set: str = "first", epochs: Optional[str] = None,
                        part: Optional[str] = None, config: Optional[str] = None,
                        log: Callable[[str], None] = _log, executor: Optional[Executor] = None) -> ProbeRun:
    """Probe statistics of one configuration's model (one seed) at the final epoch, or at `epochs`.

    Taken, first that serves: from the store; from the run's kept final weights (relulab.store.weights: no
    training); where the run is not in the store, by training it (alone, with a callback probing it, through the
    sweep driver and `executor`: in this process by default) and storing it like any run, with its statistics
    and weights. A run in the store with no weights to probe (or probed at earlier epochs, whose weights are not
    kept) is trained again, and that copy is another model: it is stored as its own record
    (`store.retrained_key`, marked retrained for probing, with its own accuracy), and the statistics are its,
    never stored under the run's key. Errors name the arguments as fields of `probe` (probe.seed)."""
    p = pick_part(exp, part, "probe.part")
    v = pick_variant(p, config, "probe.config")
    wanted = parse_epoch_list(epochs, v.spec.train.epochs)
    ps = probes_mod.parse_probe_set(probe_set, "probe.probe_set")
    if not isinstance(seed, int) or seed < 0:
        raise UserError(f"probe.seed: expected an integer >= 0, got {seed!r}")
    splits = load_data(v.spec.data)
    try:
        build_model(v.spec.model, splits.input_shape, splits.num_classes)
    except UserError as e:
        raise UserError(f"configs.{v.config}: {e}") from None
    executor = executor if executor is not None else InProcessExecutor()
    try:
        executor.open(exp.device, {data_key(v.spec.data): splits})  # may refuse: nothing written yet
        # Alone and never resumed: the probe's statistics of the epochs before a save would be lost.
        with sweeping(exp, executor, {data_key(v.spec.data): splits.classes}, log, pack=False) as (store, sweep):
            store.ensure_probe_search_tables()
            ensure_plan(store, exp)
            prober = _Prober(exp, p, v, seed, ps, wanted, splits, executor.driver_device, store, sweep, log)
            return prober.probe(run_key(v.spec, seed))
    finally:
        executor.close()


@dataclass
class _Prober:
    """What probe_configuration probes, and with which store: trains or loads one model and stores its
    statistics under the key of that model."""

    exp: Experiment
    part: Part
    variant: Variant
    seed: int
    probe_set: probes_mod.ProbeSet
    wanted: Optional[list[int]]  # epochs (None: the final one)
    splits: object
    device: torch.device  # where kept weights are probed
    store: Store
    sweep: Sweep  # trains, through the executor, what must be trained
    log: Callable[[str], None]

    def probe(self, key: str) -> ProbeRun:
        """The statistics of run `key`'s model, first that serves: stored, from kept weights, trained."""
        name = f"{self.variant.name} seed {self.seed}"
        if not self.store.done_keys([key]):
            self.log(f"{name}: not in the store yet: training it, with the probe attached")
            if self.train(key):
                return self.result(key, "trained", self.store.runs([key])[key])
        row = self.store.runs([key])[key]  # stored, perhaps by another process meanwhile
        need = self.wanted if self.wanted is not None else [row["epochs"]]
        copy_key = retrained_key(key)
        for target in (key, copy_key):  # the run's own model first; then its copy, if one was retrained before
            target_row = row if target == key else self.store.runs([copy_key]).get(copy_key)
            if target_row is None:
                continue
            if self.stored(target, need):
                return self.result(key, "store", target_row, target)
            if set(need) <= {target_row["epochs"]} and self.probe_kept(target):
                return self.result(key, "weights", target_row, target)
        self.log(f"{name}: in the store, but "
                 + ("probed at epochs whose weights are not kept" if set(need) - {row["epochs"]} else "without "
                    "weights to probe") + ": training a copy to probe it (stored as its own record, retrained for "
                 "probing)")
        self.train(copy_key, copy_of=key)
        return self.result(key, "retrained", self.store.runs([copy_key])[copy_key], copy_key)

    def stored(self, key: str, need: list[int]) -> bool:
        """Whether every statistic of run `key` at the epochs `need` is in the store."""
        rows = self.store.run_probes([key], self.probe_set.name)
        have = {e for e in {r["epoch"] for r in rows}
                if {r["stat"] for r in rows if r["epoch"] == e} >= set(probes_mod.stat_names())}
        return set(need) <= have

    def probe_kept(self, key: str) -> bool:
        """Probe run `key`'s kept final weights and store the statistics; False where it kept none."""
        ckpt = KeptWeights(self.store, self.log).checkpoint(key)
        if ckpt is None:
            return False
        x, y = probes_mod.select_probe_set(self.splits, self.probe_set)
        measured = probes_mod.measure(ckpt.model.to(self.device), x.to(self.device), y.to(self.device),
                                      probes_mod.stat_names(), classes=self.splits.classes)
        epoch = ckpt.epoch or self.store.runs([key])[key]["epochs"]
        self.store.save_run_probes(key, self.probe_set.name, epoch, probe_rows(measured))
        return True

    def train(self, key: str, copy_of: Optional[str] = None) -> bool:
        """Train the run alone with the probe attached and store it under `key` with its statistics and weights
        (`copy_of`: the run it is a copy of, retrained for probing, unclaimed); whether it was trained here (the
        run itself is claimed first: another process may be training it, or have stored it meanwhile)."""
        request = EpochProbeRequest(self.probe_set, tuple(self.wanted) if self.wanted is not None else None)
        run = SweepRun(Job(self.variant.spec, self.seed, key), self.exp.name, self.part.name, self.variant.name,
                       epoch_probe=request, data={RETRAINED_FOR_PROBING: copy_of} if copy_of else {})
        trained = False
        for done in (self.sweep.retrain([run]) if copy_of else self.sweep.run([run])):
            for epoch, res in done.outcome.probe_results.items():
                self.store.save_run_probes(key, self.probe_set.name, epoch, probe_rows(res))
            head = f"{self.variant.name} seed {self.seed}{' (the copy retrained for probing)' if copy_of else ''}"
            self.log(run_line(head, done.result, done.stored))
            trained = True
        return trained

    def result(self, key: str, source: str, row: dict, probed_key: Optional[str] = None) -> ProbeRun:
        """The ProbeRun of run `key` whose statistics are those of `probed_key` (default `key`), at the epochs
        asked for (the final one by default), from the store."""
        probed_key = probed_key or key
        need = self.wanted if self.wanted is not None else [row["epochs"]]
        stored = self.store.run_probes([probed_key], self.probe_set.name)
        results = {}
        for epoch in need:
            rows = [r for r in stored if r["epoch"] == epoch]
            if rows:
                results[epoch] = result_from_rows(rows)
            else:
                self.log(f"{self.variant.name} seed {self.seed}: no model at epoch {epoch} (the run diverged at "
                         f"epoch {row['diverged_at']})")
        run = self.store.runs([key]).get(key)
        copy_row = row if probed_key != key else None
        names = probes_mod.stored_slot_names(row.get("data")) or probes_mod.stored_slot_names((run or {}).get("data"))
        return ProbeRun(self.exp.name, self.part.name, self.variant.name, self.seed, key, self.probe_set.name,
                        results, source in ("trained", "retrained"), run, source, probed_key, copy_row, names)
