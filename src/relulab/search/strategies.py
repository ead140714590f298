"""Search over activation slots: which slots can be switched off (made identity) without losing accuracy?

    exp = load_experiment("seed000")
    outcome = run_search(exp, SearchOptions("greedy", stat="ratio_num", order="highest", budget=2))
    outcome.result["final"]          # e.g. 'off-7'

A search starts from one configuration of an experiment (its baseline by default, e.g.
seed000's `all-relu`) and looks at *placements*: sets of that configuration's active
slots switched off. Every placement is trained over the experiment's seeds and
measured by its mean validation accuracy (best epoch by default, the seed's number)
with a 95% interval over seeds.

Strategies (`STRATEGIES`, keyed by name; each a small function of a `Search`):

- `greedy`: seed 000's procedure. Train the current model (at first every slot on),
  probe it, rank its active slots by a probe statistic (`stat`, `order` = highest or
  lowest first), switch off the first, retrain, and keep the change only if it beats
  the current model beyond seed noise (Welch's t-test, p < `alpha`, and a higher mean)
  or, with `plain_rule`, if the mean improves (the seed's rule). A rejected proposal is
  discarded and the next-ranked slot is tried, until `patience` proposals in a row are
  rejected; at most `budget` slots are switched off (default 20% of the slots: the
  seed's 2 of 10).
- `oracle`: at each step train every single-slot change of the current model (all of
  them at once), take the best by measured accuracy, accept it by the same rule; up to
  `budget` slots off. Each step also judges the heuristics (below).
- `exhaustive`: every placement with up to `k` slots off (k <= 2 for 10 slots: 56
  placements), each compared with the base.
- `budget`: keep exactly k slots on, for each k of `keep` (default every k); which k
  slots is decided by the statistic ranking on the base model (`choose: stat`, nested
  placements) or by trying every placement (`choose: exhaustive`). Reports plot the
  ReLU count (activations computed per image = the summed output sizes of the slots
  that are on) against accuracy.

Heuristic judgement (`judge`): for a model and its single-slot changes, every probe
statistic of that model is set against the measured change in accuracy of switching
each slot off: Spearman's rho and Kendall's tau (tau-b) with their p-values and n. A
positive correlation means "switch off the slot with the highest value first" was the
right order; also recorded: the change the highest-first and lowest-first picks got, and
the best change there was. Oracle steps and exhaustive's first level store it as they
go. When a search is shown (`load_search_views`: reports, the command's tables) it is
computed again from the stored runs for every model that had at least 3 single-slot
changes measured, whatever the strategy: oracle steps, exhaustive, greedy's proposals
from one current model (rejected and accepted), budget's one-slot-off placements (choose
exhaustive). There it also gets bootstrap 95% intervals over slots and seeds, and
Holm-adjusted p-values, since ~15 statistics are judged at once. Every candidate also
shows its mean test accuracy (95% interval over seeds) beside the validation accuracy
that chose it.

Efficiency and resumption: every run is keyed exactly as `relulab run` keys it
(`experiments.run_key` of the resolved config and seed), so a placement trained before
(by a sweep, by another strategy or another search) is never retrained, and all the
runs a step needs train together in one `train.train_many` call (packed and run
concurrently where the hardware allows). Runs are claimed in the store before they
train, as sweeps do, and committed as each finishes; a killed search, run again,
recomputes its path from the stored runs in seconds and goes on where it stopped.
The probe statistics of every model a search trains are computed on its final
weights (all statistics, on the probe set) and stored in `run_probes`. A search's
*current* models need them (greedy's heuristics, the judgement's base); one found in the
store without them (trained by `relulab run`) is probed from its kept weights
(relulab.weights), without training. Only where no weights were kept is it trained
again, and that copy is another model (packed and alone, floating point sums differ, and
training amplifies it): it is stored as its own record, marked retrained for probing,
and its statistics go under its own key (`store.retrained_key`), never the stored run's.
"""
from __future__ import annotations

import copy
import hashlib
import itertools
import json
import math
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterable, Optional

import numpy as np
import torch

from relulab.probes import statistics as probes_mod
from relulab.data import load_data
from relulab.core.env import resolve_device
from relulab.core.errors import UserError, unknown_choice
from relulab.data import data_key
from relulab.experiments.specs import Experiment, Part, Variant, canonical_spec, run_key
from relulab.zoo.models import build_model
from relulab.core.ranges import parse_ranges
from relulab.core.stats import (Summary, chance_of_a_false_positive, compare, holm, kendall_rows, percentile_interval,
                    spearman_rows, summarize)
from relulab.store import RETRAINED_FOR_PROBING, Finished, Store, retrained_key
from relulab.packing.pack import train_many
from relulab.training.callbacks import Callback
from relulab.training.specs import Job, RunSpec
from relulab.store.weights import Keeper, KeptWeights

METRICS = ("best_val_acc", "final_val_acc", "test_acc")
ORDERS = ("highest", "lowest")
CHOICES = ("stat", "exhaustive")
OFF = "identity"


@dataclass
class SearchOptions:
    """How to search. A plain record for the CLI; `validate` checks it against the model's slots."""

    strategy: str = "greedy"
    stat: str = "ratio_num"  # greedy's ranking; budget's when choose = stat
    order: str = "highest"  # switch off the slot with the highest (or lowest) value first
    budget: Optional[int] = None  # greedy, oracle: slots switched off at most (default 20% of the active ones)
    patience: int = 1  # greedy: stop after this many rejected proposals in a row
    k: int = 2  # exhaustive: placements with up to k slots off
    keep: Optional[list[int]] = None  # budget: numbers of slots kept on (default: every number)
    choose: str = "stat"  # budget: stat | exhaustive
    plain_rule: bool = False  # accept when the mean improves (the seed's rule) instead of Welch's test
    alpha: float = 0.05
    metric: str = "best_val_acc"
    probe_set: str = "first"
    max_placements: int = 100  # exhaustive / budget: refuse to plan more placements than this

    def validate(self, active: list[int]) -> "SearchOptions":
        """A copy with defaults resolved; UserErrors name the command's options."""
        o = copy.deepcopy(self)
        if o.strategy not in STRATEGIES:
            raise unknown_choice("--strategy", o.strategy, STRATEGIES)
        probes_mod.check_stats([o.stat], "--stat")
        if o.order not in ORDERS:
            raise unknown_choice("--order", o.order, ORDERS)
        if o.metric not in METRICS:
            raise unknown_choice("--metric", o.metric, METRICS)
        if o.choose not in CHOICES:
            raise unknown_choice("--choose", o.choose, CHOICES)
        o.probe_set = probes_mod.parse_probe_set(o.probe_set, "--probe-set").name
        if not (isinstance(o.alpha, (int, float)) and 0 < o.alpha < 1):
            raise UserError(f"--alpha: expected a number between 0 and 1, got {o.alpha!r}")
        n = len(active)
        if o.budget is None:
            o.budget = max(1, round(0.2 * n))
        if not 1 <= o.budget <= n:
            raise UserError(f"--budget: expected 1 to {n} (the slots that are on), got {o.budget}")
        if o.patience < 1:
            raise UserError(f"--patience: expected a positive integer, got {o.patience}")
        if o.max_placements < 1:
            raise UserError(f"--max-placements: expected a positive integer, got {o.max_placements}")
        if not 1 <= o.k <= n:
            raise UserError(f"--k: expected 1 to {n} (the slots that are on), got {o.k}")
        if o.keep is None:
            o.keep = list(range(n, -1, -1))
        bad = [k for k in o.keep if not 0 <= k <= n]
        if bad or not o.keep:
            raise UserError(f"--keep: expected numbers of slots kept on from 0 to {n}, got {o.keep}")
        o.keep = sorted(set(o.keep), reverse=True)
        count = {"exhaustive": sum(math.comb(n, j) for j in range(o.k + 1)),
                 "budget": (sum(math.comb(n, k) for k in o.keep) if o.choose == "exhaustive" else len(o.keep) + 1)
                 }.get(o.strategy, 0)
        if count > o.max_placements:
            what = "--k" if o.strategy == "exhaustive" else "--keep"
            raise UserError(f"{what}: that is {count} placements of {n} slots (each over every seed), more than "
                            f"--max-placements {o.max_placements}; ask for fewer or raise --max-placements")
        return o

    def identity(self) -> dict:
        """The options that shape the search's path (what its id hashes)."""
        keys = {"greedy": ("stat", "order", "budget", "patience", "plain_rule", "alpha"),
                "oracle": ("budget", "plain_rule", "alpha"),
                "exhaustive": ("k", "alpha"),
                "budget": ("keep", "choose", "stat", "order", "alpha")}[self.strategy]
        return {"strategy": self.strategy, "metric": self.metric, "probe_set": self.probe_set,
                **{k: getattr(self, k) for k in keys}}


@dataclass
class Measured:
    """One placement over the seeds."""

    off: frozenset
    label: str
    keys: list[str]
    accs: list[float]  # the metric of each finished (not diverged) run
    diverged: int
    relu_count: int
    heuristics: dict[str, dict[int, float]] = field(default_factory=dict)  # stat -> slot -> mean over seeds
    # The same per seed (in the order of `keys`; NaN where a run is missing, diverged or unprobed): what the
    # judgement's bootstrap resamples.
    seed_accs: list[float] = field(default_factory=list)
    seed_heuristics: dict[str, dict[int, list[float]]] = field(default_factory=dict)

    @property
    def summary(self):
        return summarize(self.accs)

    @property
    def mean(self) -> float:
        return self.summary.mean if self.accs else math.nan


@dataclass
class SearchOutcome:
    id: str
    strategy: str
    result: dict
    trained: int = 0  # runs trained by this call
    reused: int = 0  # runs found in the store
    probed_again: int = 0  # runs retrained only to probe their model


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def pick_variant(part: Part, config: Optional[str]) -> Variant:
    """The configuration a search or probe starts from: `config` (a configuration or variant name), else the
    part's baseline, else its first configuration."""
    if config is None:
        config = part.baseline or part.variants[0].name
    exact = [v for v in part.variants if v.name == config]
    if exact:
        return exact[0]
    by_config = [v for v in part.variants if v.config == config]
    if len(by_config) == 1:
        return by_config[0]
    if len(by_config) > 1:
        raise UserError(f"--config: {config} has several grid points ({', '.join(v.name for v in by_config)}); "
                        "name one")
    raise unknown_choice("--config", config, [v.name for v in part.variants])


def pick_part(exp: Experiment, name: Optional[str]) -> Part:
    if name is None:
        if len(exp.parts) > 1:
            raise UserError(f"--part: {exp.name} has several parts ({', '.join(p.name for p in exp.parts)}); "
                            "name one")
        return exp.parts[0]
    for part in exp.parts:
        if part.name == name:
            return part
    raise unknown_choice("--part", name, [p.name for p in exp.parts])


def ensure_plan(store: Store, exp: Experiment) -> None:
    """Save the experiment's plan if the store has none yet, so that `relulab report` can render the results
    of a search or probe run before any sweep; a sweep's plan, once there, is left alone."""
    if exp.name not in store.experiment_names():
        store.save_plan(exp.name, exp.origin, exp.raw, [p.meta() for p in exp.parts], exp.plan_rows(),
                        exp.run_overrides)


def probe_rows(result: probes_mod.ProbeResult) -> list[tuple]:
    """A ProbeResult as store rows: (stat, slot, class, class name, images, value)."""
    return [(stat, slot, cls, name, result.counts[cls] if cls >= 0 else result.images, value)
            for stat, slot, cls, name, value in result.rows()]


# ---------------------------------------------------------------- what the store holds about a placement


def _finite_mean(values: Iterable[float]) -> float:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(finite)) if finite else math.nan


def stored_heuristics(store: Store, keys: list[str], probe_set: str) -> dict[str, dict[int, list[float]]]:
    """stat -> slot -> the all-images value at each run's last probed epoch, one value per key in the order of
    `keys` (NaN for a run without probes)."""
    column = {key: i for i, key in enumerate(keys)}
    # A run's own statistics, or those of its copy retrained for probing (row["of"]: the run it stands in for).
    rows = [r for r in store.probes_or_copies(keys, probe_set) if r["class"] == -1]
    last: dict[str, int] = {}
    for r in rows:
        last[r["run_key"]] = max(last.get(r["run_key"], 0), r["epoch"])
    out: dict[str, dict[int, list[float]]] = {}
    for r in rows:
        if r["epoch"] == last[r["run_key"]]:
            out.setdefault(r["stat"], {}).setdefault(r["slot"], [math.nan] * len(keys))[column[r["of"]]] = \
                r["value"]
    return out


def stored_measurement(store: Store, off: Iterable[int], label: str, keys: list[str], metric: str, probe_set: str,
                       relu_count: int) -> Measured:
    """A placement as the store has it: the metric of its runs (`keys`, one per seed) and their probe
    statistics, averaged over the seeds and kept per seed."""
    runs = store.runs(keys)
    accs, seed_accs, diverged = [], [], 0
    for key in keys:
        row = runs.get(key)
        value = math.nan
        if row is not None and row["status"] != "done":
            diverged += 1
        elif row is not None and row[metric] is not None and math.isfinite(row[metric]):
            value = row[metric]
            accs.append(value)
        seed_accs.append(value)
    per_seed = stored_heuristics(store, keys, probe_set)
    heuristics = {stat: {slot: _finite_mean(values) for slot, values in by_slot.items()}
                  for stat, by_slot in per_seed.items()}
    return Measured(frozenset(off), label, list(keys), accs, diverged, relu_count, heuristics, seed_accs, per_seed)


class Search:
    """Measures placements for a strategy: trains what the store lacks (one `train_many` call per batch),
    probes what it trains, records steps."""

    def __init__(self, exp: Experiment, part: Part, base: Variant, options: SearchOptions, store: Store,
                 splits, device: torch.device, log: Callable[[str], None] = _log, poll_s: float = 2.0):
        self.exp, self.part, self.base, self.store, self.device, self.log = exp, part, base, store, device, log
        self.poll_s = poll_s
        self.splits = splits
        self.seeds = list(part.seeds)
        model = build_model(base.spec.model, splits.input_shape, splits.num_classes)
        self.slots = [s.index for s in model.slots]
        self.active = [s.index for s in model.slots if not s.off]
        self.sizes = probes_mod.slot_output_sizes(model, splits.input_shape)
        self.options = options.validate(self.active)
        self.probe_set = probes_mod.parse_probe_set(self.options.probe_set)
        self.probe_x, self.probe_y = probes_mod.select_probe_set(splits, self.probe_set)
        self.id = self._id()
        self.trained = self.reused = self.probed_again = 0
        self.keeper = Keeper(exp.store, exp.keep_weights, {data_key(base.spec.data): splits.classes}, log)
        self.kept = KeptWeights(store, log)
        self._seen_keys: set[str] = set()
        self._cache: dict[frozenset, Measured] = {}

    # ---------------------------------------------------------------- placements

    def _id(self) -> str:
        payload = {"experiment": self.exp.name, "part": self.part.name, "base": self.base.name,
                   "spec": canonical_spec(self.base.spec), "seeds": self.seeds, "options": self.options.identity()}
        return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def spec(self, off: Iterable[int]) -> RunSpec:
        spec = copy.deepcopy(self.base.spec)
        spec.model.slots = {**spec.model.slots, **{i: OFF for i in sorted(off)}}
        return spec

    def label(self, off: Iterable[int]) -> str:
        off = sorted(off)
        return self.base.name if not off else "off-" + "-".join(map(str, off))

    def relu_count(self, off: Iterable[int]) -> int:
        """Activations computed per image: the output sizes of the slots that are on."""
        off = set(off)
        return sum(self.sizes[i] for i in self.active if i not in off)

    # ---------------------------------------------------------------- measuring

    def measure(self, placements: Iterable[Iterable[int]], probes_for: Iterable[Iterable[int]] = ()
                ) -> dict[frozenset, Measured]:
        """Every placement over every seed: runs in the store are reused, the others trained together. The
        placements in `probes_for` must also have their models' probe statistics: from the store, else from
        the runs' kept weights, else from copies retrained for probing (stored as records of their own)."""
        placements = list(dict.fromkeys(frozenset(p) for p in placements))
        want_probes = {frozenset(p) for p in probes_for}
        jobs: dict[str, tuple[frozenset, Job]] = {}
        for off in placements:
            spec = self.spec(off)
            for seed in self.seeds:
                key = run_key(spec, seed)
                jobs.setdefault(key, (off, Job(spec, seed, key)))
        done = self.store.done_keys(jobs)
        fresh = [k for k in done if k not in self._seen_keys]
        self.reused += len(fresh)
        self._seen_keys |= set(jobs)
        have = self._probed_keys([k for k in done if jobs[k][0] in want_probes])
        again = self._probe_kept([k for k in done if jobs[k][0] in want_probes and k not in have])
        if again:
            self.log(f"{len(again)} runs are in the store without their probe statistics or weights: training a "
                     "copy of each to probe it (stored as its own record, retrained for probing; the stored runs "
                     "are kept as they are)")
            self._train([jobs[k][1] for k in again], jobs, claimed=False)
            self.probed_again += len(again)
        pending = [k for k in jobs if k not in done]
        waiting_said = False
        while pending:
            claimed = self.store.claim(pending)
            if not claimed:
                busy = self.store.claimed_by_others(pending)
                if busy and not waiting_said:
                    self.log(f"waiting for {len(busy)} runs that another relulab process is running")
                    waiting_said = True
                time.sleep(self.poll_s if busy else 0)
            else:
                self._train([jobs[k][1] for k in claimed], jobs, claimed=True)
            finished = self.store.done_keys(pending)
            pending = [k for k in pending if k not in finished]
        for off in placements:
            self._cache.pop(off, None)
        return {off: self.measured(off) for off in placements}

    def _probe_kept(self, keys: list[str]) -> list[str]:
        """Probe the kept final weights of the stored runs `keys` (or, where a run kept none, of its copy
        retrained for probing), storing the statistics under the key of the model probed; the keys of the runs
        with no weights to probe."""
        rest, probed = [], 0
        for key in keys:
            for target in (key, retrained_key(key)):
                ckpt = self.kept.checkpoint(target)
                if ckpt is not None:
                    break
            else:
                rest.append(key)
                continue
            result = probes_mod.measure(ckpt.model.to(self.device), self.probe_x, self.probe_y,
                                        probes_mod.stat_names(), classes=self.splits.classes)
            epoch = ckpt.epoch or self.store.runs([target])[target]["epochs"]
            self.store.save_run_probes(target, self.probe_set.name, epoch, probe_rows(result))
            probed += 1
        if probed:
            self.log(f"{probed} runs are in the store without their probe statistics: probed their kept weights")
        return rest

    def _train(self, batch: list[Job], jobs: dict, claimed: bool) -> None:
        """Train `batch` and probe each final model. Claimed jobs are the runs themselves: stored under their keys
        with their statistics and weights. Unclaimed ones are copies of stored runs that have no weights to
        probe, trained again only to be probed: another model (packed and alone, training differs), so each is
        stored as a record of its own (`retrained_key`, marked retrained for probing, with its own accuracy) and
        its statistics go under that key, never under the stored run's."""
        of = {job.key if claimed else retrained_key(job.key): job.key for job in batch}
        todo = [job if claimed else Job(job.spec, job.seed, retrained_key(job.key)) for job in batch]
        try:
            for job, result in train_many(todo, self.splits, self.device, pack=self.exp.pack,
                                          resume=self.exp.resume):
                off = jobs[of[job.key]][0]
                probed = probes_mod.measure(result.model, self.probe_x, self.probe_y, probes_mod.stat_names(),
                                            classes=self.splits.classes)
                self.store.save_run_probes(job.key, self.probe_set.name, len(result.history.epochs),
                                           probe_rows(probed))
                staged = self.keeper.stage(job.key, result, result.model.state_dict())
                result.model = None
                if not claimed:
                    result.data = {**result.data, RETRAINED_FOR_PROBING: of[job.key]}
                stored = self.store.record(Finished(job.key, self.exp.name, self.part.name, self.label(off),
                                                    result, {}, staged))
                if claimed:
                    self.trained += stored
                self.log(self._run_line(off, job, result, stored, claimed))
        finally:
            if claimed:
                self.store.release([job.key for job in batch])

    def _run_line(self, off, job: Job, result, stored: bool, claimed: bool) -> str:
        h = result.history
        head = f"[{self.options.strategy}] {self.label(off)} seed {job.seed}"
        if not claimed:
            return f"{head}: probed a copy retrained for probing (run {job.key}, best val acc {h.best_val_acc:.4f}; " \
                   "the stored run is kept as it is)"
        if not stored:
            return f"{head}: another process stored this run first; result dropped"
        if h.diverged_at is not None:
            return f"{head}: DIVERGED at epoch {h.diverged_at}"
        return f"{head}: best val acc {h.best_val_acc:.4f} (epoch {h.best_epoch}), final {h.final_val_acc:.4f}, " \
               f"{h.seconds:.1f} s"

    def _probed_keys(self, keys: list[str]) -> set[str]:
        """The runs of `keys` whose statistics are stored: their own, or their copies' retrained for probing."""
        return {r["of"] for r in self.store.probes_or_copies(keys, self.probe_set.name)
                if r["stat"] == self.options.stat}

    def measured(self, off: Iterable[int]) -> Measured:
        off = frozenset(off)
        if off in self._cache:
            return self._cache[off]
        keys = [run_key(self.spec(off), seed) for seed in self.seeds]
        m = stored_measurement(self.store, off, self.label(off), keys, self.options.metric, self.probe_set.name,
                               self.relu_count(off))
        self._cache[off] = m
        return m

    # ---------------------------------------------------------------- deciding

    def accepts(self, candidate: Measured, current: Measured) -> tuple[bool, str]:
        """The acceptance rule: Welch's test at alpha with a higher mean, or (plain rule) a higher mean."""
        c = compare(candidate.accs, current.accs, self.options.alpha)
        if c is None:
            return False, "no finished runs to compare"
        points = f"{c.diff * 100:+.2f} points"
        if self.options.plain_rule:
            ok = c.diff > 0
            return ok, f"mean {'improves' if ok else 'does not improve'} ({points}; plain rule)"
        if c.distinguishable is None:
            return False, f"{points}: {c.verdict}; use more seeds or --plain-rule"
        ok = bool(c.distinguishable) and c.diff > 0
        return ok, f"{points}, {c.verdict}" + ("" if ok or not c.distinguishable else " (worse)")

    def welch_better(self, candidate: Measured, reference: Measured) -> bool:
        c = compare(candidate.accs, reference.accs, self.options.alpha)
        return bool(c is not None and c.distinguishable and c.diff > 0)

    def ranking(self, current: Measured, exclude: Iterable[int] = (), stat: Optional[str] = None
                ) -> list[tuple[int, float]]:
        """Active slots of `current` not excluded, by the statistic on `current`, in the search's order;
        slots where it is undefined (NaN) are left out."""
        stat = stat or self.options.stat
        values = current.heuristics.get(stat, {})
        skip = set(current.off) | set(exclude)
        items = [(s, values.get(s, math.nan)) for s in self.active if s not in skip]
        items = [(s, v) for s, v in items if math.isfinite(v)]
        sign = -1 if self.options.order == "highest" else 1
        return sorted(items, key=lambda sv: (sign * sv[1], sv[0]))

    def require_stat(self, current: Measured) -> None:
        values = current.heuristics.get(self.options.stat, {})
        if not any(math.isfinite(values.get(s, math.nan)) for s in self.active if s not in current.off):
            raise UserError(f"--stat: {self.options.stat} is undefined at every active slot of {current.label} "
                            "(saturation is measured for sigmoid and tanh slots only)")

    def judge(self, current: Measured, singles: dict[int, Measured]) -> list[dict]:
        return judge(current, singles)

    # ---------------------------------------------------------------- recording

    def row(self, m: Measured, position: int, reference: Optional[Measured] = None, slot: Optional[int] = None,
            heuristic: Optional[float] = None) -> dict:
        s = m.summary
        c = compare(m.accs, reference.accs, self.options.alpha) if reference is not None else None
        return {"position": position, "placement": m.label, "off_json": json.dumps(sorted(m.off)), "slot": slot,
                "relu_count": m.relu_count, "seeds": len(self.seeds), "runs": len(m.accs) + m.diverged,
                "diverged": m.diverged, "mean": s.mean, "std": s.std, "ci_low": s.low, "ci_high": s.high,
                "reference": reference.label if reference is not None else None,
                "diff": c.diff if c else None, "diff_low": c.low if c else None, "diff_high": c.high if c else None,
                "p": c.p if c else None, "verdict": c.verdict if c else None, "heuristic": heuristic,
                "accs_json": json.dumps(m.accs), "run_keys_json": json.dumps(m.keys)}

    def save_step(self, step: int, kind: str, current: Measured, decision: str, rows: list[dict],
                  chosen: Optional[Measured] = None, note: str = "", correlations: Iterable[dict] = ()) -> None:
        for r in rows:
            r["step"] = step
        correlations = [{**c, "step": step} for c in correlations]
        self.store.save_search_step(self.id, {"step": step, "kind": kind, "current": current.label,
                                              "decision": decision, "chosen": chosen.label if chosen else None,
                                              "note": note}, rows, correlations)
        self.log(f"[{self.options.strategy}] step {step}: {decision}" + (f" {chosen.label}" if chosen else "")
                 + (f" ({note})" if note else ""))

    def summary_of(self, m: Measured) -> dict:
        s = m.summary
        return {"final": m.label, "off": sorted(m.off), "mean": s.mean, "ci_low": s.low, "ci_high": s.high,
                "n": s.n, "relu_count": m.relu_count}


# ---------------------------------------------------------------- the heuristic judgement
#
# For a model and some of its single-slot changes (switch one more slot off), does a probe statistic of the model
# rank the slots the way the measured changes in accuracy do? Spearman's rho and Kendall's tau-b over the slots,
# with scipy's p-values. Over few slots and seeds a correlation is noisy, so each gets a bootstrap interval:
# resample the slots (with replacement) and, within each resample, the seeds (the same seeds for the model and
# its changes, so their pairing is kept), and recompute the correlation from the resampled means. And since the
# ~15 statistics are judged at once, some will look significant by luck alone: Holm-adjusted p-values go beside
# the raw ones.

BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_SEED = 0  # fixed: a report shows the same intervals every time it is built
MIN_JUDGED = 3  # single-slot changes a model needs before a rank correlation says anything


def judge(current: Measured, singles: dict[int, Measured], resamples: int = 0,
          seed: int = BOOTSTRAP_SEED) -> list[dict]:
    """For every statistic of `current`, its rank correlation (over the slots of `singles`) with the measured
    change in accuracy of switching that slot off, the changes the highest-first and lowest-first picks got and
    the best change there was; with `resamples`, bootstrap 95% intervals of both correlations. Holm-adjusted
    p-values over the statistics judged (`compared` of them) are always given."""
    from scipy import stats as sps

    diffs = {slot: m.mean - current.mean for slot, m in singles.items()}
    out = []
    for stat in probes_mod.stat_names():
        values = current.heuristics.get(stat)
        if not values:
            continue
        slots = [s for s, d in diffs.items() if math.isfinite(values.get(s, math.nan)) and math.isfinite(d)]
        pairs = [(values[s], diffs[s]) for s in slots]
        row = {"stat": stat, "n": len(pairs), "spearman": None, "spearman_p": None, "kendall": None,
               "kendall_p": None, "highest_pick_diff": None, "lowest_pick_diff": None,
               "best_diff": max((d for _, d in pairs), default=None), "spearman_low": None, "spearman_high": None,
               "kendall_low": None, "kendall_high": None, "resamples": 0}
        if pairs:
            row["highest_pick_diff"] = max(pairs, key=lambda p: p[0])[1]
            row["lowest_pick_diff"] = min(pairs, key=lambda p: p[0])[1]
        xs, ys = [p[0] for p in pairs], [p[1] for p in pairs]
        if len(pairs) >= 3 and len(set(xs)) > 1 and len(set(ys)) > 1:
            rho, rho_p = sps.spearmanr(xs, ys)
            tau, tau_p = sps.kendalltau(xs, ys)
            row.update(spearman=float(rho), spearman_p=float(rho_p), kendall=float(tau), kendall_p=float(tau_p))
            if resamples:
                row.update(_bootstrap(current, singles, stat, slots, resamples, seed))
        out.append(row)
    return _with_holm(out)


def _with_holm(rows: list[dict]) -> list[dict]:
    for name in ("spearman_p", "kendall_p"):
        for row, adjusted in zip(rows, holm([r[name] for r in rows])):
            row[f"{name}_holm"] = adjusted
    compared = sum(r["spearman_p"] is not None for r in rows)
    for row in rows:
        row["compared"] = compared
    return rows


def _bootstrap(current: Measured, singles: dict[int, Measured], stat: str, slots: list[int], resamples: int,
               seed: int) -> dict:
    """Percentile intervals of rho and tau over `resamples` resamples of (slots, then seeds)."""
    by_slot = current.seed_heuristics.get(stat, {})
    seeds = len(current.seed_accs)
    if not seeds or any(len(by_slot.get(s, ())) != seeds or len(singles[s].seed_accs) != seeds for s in slots):
        return {}  # no per-seed numbers (a Measured built by hand): no interval
    h = np.array([by_slot[s] for s in slots], dtype=float)  # (slots, seeds): the statistic on the current model
    a = np.array([singles[s].seed_accs for s in slots], dtype=float)  # the accuracy with that slot off
    c = np.array(current.seed_accs, dtype=float)  # the current model's accuracy
    rng = np.random.default_rng(seed)
    pick_slots = rng.integers(0, len(slots), (resamples, len(slots)))[:, :, None]
    pick_seeds = rng.integers(0, seeds, (resamples, seeds))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a resample of only missing seeds: NaN, dropped below
        x = np.nanmean(h[pick_slots, pick_seeds[:, None, :]], axis=2)
        y = np.nanmean(a[pick_slots, pick_seeds[:, None, :]], axis=2) - np.nanmean(c[pick_seeds], axis=1)[:, None]
    valid = np.isfinite(x).all(1) & np.isfinite(y).all(1)
    x, y = np.where(valid[:, None], x, 0.0), np.where(valid[:, None], y, 0.0)
    rho = np.where(valid, spearman_rows(x, y), np.nan)
    tau = np.where(valid, kendall_rows(x, y), np.nan)
    (rho_low, rho_high), (tau_low, tau_high) = percentile_interval(rho), percentile_interval(tau)
    return {"spearman_low": rho_low, "spearman_high": rho_high, "kendall_low": tau_low, "kendall_high": tau_high,
            "resamples": resamples}


def judgement_groups(s: dict) -> list[tuple[int, dict, dict[int, dict]]]:
    """(step, the current model's candidate row, {slot: the row with that slot switched off too}) for every
    model of a stored search that had at least MIN_JUDGED of its single-slot changes measured: an oracle step,
    exhaustive's first level, greedy's proposals from one current model (rejected and accepted, over the
    consecutive steps that started from it; `step` is the last of them), budget's placements with one slot off
    (choose exhaustive, n - 1 kept)."""
    groups = []
    for label, steps in itertools.groupby(s["steps"], key=lambda st: st["current"]):
        numbers = {st["step"] for st in steps}
        rows = [c for c in s["candidates"] if c["step"] in numbers]
        current = next((c for c in rows if c["placement"] == label), None)
        if current is None:
            continue
        off = set(current["off"])
        singles: dict[int, dict] = {}
        for c in rows:
            extra = set(c["off"]) - off
            if len(extra) == 1 and len(c["off"]) == len(off) + 1:
                singles.setdefault(extra.pop(), c)
        if len(singles) >= MIN_JUDGED:
            groups.append((max(numbers), current, singles))
    return groups


def judge_stored(store: Store, s: dict, resamples: int = BOOTSTRAP_RESAMPLES) -> list[dict]:
    """The judgement of every model of a stored search that allows one (`judgement_groups`), from its stored runs
    and probes, by the same `judge` as the oracle's steps; rows carry their `step` and `current`."""
    def measured(c: dict) -> Measured:
        return stored_measurement(store, c["off"], c["placement"], c["run_keys"], s["metric"], s["probe_set"],
                                  c["relu_count"])

    out = []
    for step, current, singles in judgement_groups(s):
        rows = judge(measured(current), {slot: measured(c) for slot, c in singles.items()}, resamples)
        out += [{**r, "step": step, "current": current["placement"]} for r in rows]
    return out


def held_out_accuracy(runs: dict[str, dict], keys: list[str]) -> Summary:
    """Mean test accuracy of the finished runs `keys` with its 95% interval over seeds: the held-out number
    beside the validation accuracy that chose a placement."""
    return summarize([runs[k]["test_acc"] for k in keys if k in runs and runs[k]["status"] == "done"
                      and runs[k]["test_acc"] is not None])


def load_search_views(store: Store, experiment: Optional[str] = None) -> list[dict]:
    """`Store.searches`, with what is computed from the stored runs when a search is shown: every
    candidate's test accuracy (`test_mean`, `test_ci_low`, `test_ci_high`, `test_n`) and the heuristic
    judgements of every step that allows one (`judgements`, rows as `judge_stored` gives them)."""
    searches = [s.as_dict() for s in store.searches(experiment)]
    runs = store.runs(sorted({k for s in searches for c in s["candidates"] for k in c["run_keys"]}))
    for s in searches:
        for c in s["candidates"]:
            t = held_out_accuracy(runs, c["run_keys"])
            c.update(test_mean=t.mean, test_ci_low=t.low, test_ci_high=t.high, test_n=t.n)
        s["judgements"] = judge_stored(store, s)
    return searches


def false_positive_note(compared: int, alpha: float = 0.05) -> str:
    """What comparing many statistics at once means for their p-values (the judgement tables' note)."""
    if compared < 2:
        return ""
    return (f"{compared} statistics are compared at once: even if none is related to the change in accuracy, the "
            f"chance that at least one looks significant at p < {alpha:g} by luck alone is 1 - {1 - alpha:g}^"
            f"{compared} = {chance_of_a_false_positive(compared, alpha) * 100:.0f}%; the Holm columns adjust the "
            "p-values for that.")


# ---------------------------------------------------------------- strategies


def greedy(s: Search) -> dict:
    o = s.options
    current = s.measure([()], probes_for=[()])[frozenset()]
    s.require_stat(current)
    step, rejected_in_a_row, tried = 0, 0, set()
    while len(current.off) < o.budget:
        ranking = s.ranking(current, exclude=tried)
        if not ranking:
            break
        slot, value = ranking[0]
        off = current.off | {slot}
        candidate = s.measure([off])[off]
        ok, why = s.accepts(candidate, current)
        step += 1
        note = f"{o.stat} {value:.4g} at slot {slot}, the {o.order} of {len(ranking)} untried active slots; {why}"
        s.save_step(step, "greedy", current, "accepted" if ok else "rejected",
                    [s.row(current, 0), s.row(candidate, 1, current, slot, value)], candidate if ok else None, note)
        if ok:
            current, tried, rejected_in_a_row = candidate, set(), 0
            if len(current.off) < o.budget:  # its statistics rank the next step (probed again if need be)
                current = s.measure([off], probes_for=[off])[off]
        else:
            tried.add(slot)
            rejected_in_a_row += 1
            if rejected_in_a_row >= o.patience:
                break
    return s.summary_of(current)


def oracle(s: Search) -> dict:
    o = s.options
    current: Optional[Measured] = None
    off: frozenset = frozenset()
    step = 0
    while len(off) < o.budget:
        active = [i for i in s.active if i not in off]
        if not active:
            break
        singles = {i: off | {i} for i in active}
        measured = s.measure(list(singles.values()) + [off], probes_for=[off])
        current = measured[off]
        cands = {i: measured[p] for i, p in singles.items()}
        best_slot = max(cands, key=lambda i: (cands[i].mean if math.isfinite(cands[i].mean) else -math.inf, -i))
        best = cands[best_slot]
        ok, why = s.accepts(best, current)
        step += 1
        rows = [s.row(current, 0)] + [s.row(m, n + 1, current, i, current.heuristics.get(o.stat, {}).get(i))
                                      for n, (i, m) in enumerate(cands.items())]
        s.save_step(step, "oracle", current, "accepted" if ok else "rejected", rows, best if ok else None,
                    f"best single change: slot {best_slot} ({best.label}); {why}", s.judge(current, cands))
        if not ok:
            break
        off, current = best.off, best
    return s.summary_of(current)


def exhaustive(s: Search) -> dict:
    o = s.options
    placements = [frozenset(c) for j in range(o.k + 1) for c in itertools.combinations(s.active, j)]
    measured = s.measure(placements, probes_for=[()])
    base = measured[frozenset()]
    ranked = sorted(placements, key=lambda p: (-(measured[p].mean if math.isfinite(measured[p].mean) else -math.inf),
                                               len(p), sorted(p)))
    rows = [s.row(measured[p], n, base if p else None, next(iter(p)) if len(p) == 1 else None,
                  base.heuristics.get(o.stat, {}).get(next(iter(p))) if len(p) == 1 else None)
            for n, p in enumerate(ranked)]
    singles = {i: measured[frozenset([i])] for i in s.active}
    best = measured[ranked[0]]
    better = [p for p in ranked if p and s.welch_better(measured[p], base)]
    note = f"{len(placements)} placements with up to {o.k} slots off; best by mean: {best.label}"
    note += f"; better than {base.label} beyond seed noise: {', '.join(measured[p].label for p in better)}" \
        if better else f"; none beats {base.label} beyond seed noise"
    s.save_step(1, "exhaustive", base, "measured", rows, best, note, s.judge(base, singles))
    return {**s.summary_of(best), "distinguishably_better": [measured[p].label for p in better]}


def budget(s: Search) -> dict:
    o = s.options
    n = len(s.active)
    base_off = frozenset()
    plan: list[tuple[int, frozenset]] = []
    if o.choose == "exhaustive":
        for k in o.keep:
            plan += [(k, frozenset(c)) for c in itertools.combinations(s.active, n - k)]
        measured = s.measure([p for _, p in plan] + [base_off])
    else:
        base = s.measure([base_off], probes_for=[base_off])[base_off]
        s.require_stat(base)
        order = [slot for slot, _ in s.ranking(base)]
        order += [i for i in s.active if i not in order]  # undefined values last
        plan = [(k, frozenset(order[:n - k])) for k in o.keep]
        measured = s.measure([p for _, p in plan] + [base_off])
    base = measured[base_off]
    seen, rows = set(), []
    for k, p in plan:
        if p in seen:
            continue
        seen.add(p)
        rows.append(s.row(measured[p], len(rows), base if p else None))
    best_by_k = {}
    for k, p in plan:
        m = measured[p]
        if k not in best_by_k or (math.isfinite(m.mean) and m.mean > best_by_k[k].mean):
            best_by_k[k] = m
    how = "every placement" if o.choose == "exhaustive" else f"{o.stat}, {o.order} switched off first"
    note = f"slots kept on: {', '.join(map(str, o.keep))}; chosen by {how}; best per count: " + \
        "; ".join(f"{k} on: {m.label} {m.mean * 100:.2f}%" for k, m in best_by_k.items())
    top = max(best_by_k.values(), key=lambda m: m.mean if math.isfinite(m.mean) else -math.inf)
    s.save_step(1, "budget", base, "measured", rows, top, note)
    return {**s.summary_of(top), "best_by_kept": {str(k): s.summary_of(m) for k, m in best_by_k.items()}}


STRATEGIES: dict[str, Callable[[Search], dict]] = {
    "greedy": greedy,
    "oracle": oracle,
    "exhaustive": exhaustive,
    "budget": budget,
}


# ---------------------------------------------------------------- running one


def prepare_search(exp: Experiment, options: SearchOptions, part: Optional[str] = None,
                   config: Optional[str] = None):
    """Everything checked before the store is touched: (part, base variant, splits, resolved options)."""
    p = pick_part(exp, part)
    base = pick_variant(p, config)
    splits = load_data(base.spec.data)
    try:
        model = build_model(base.spec.model, splits.input_shape, splits.num_classes)
    except UserError as e:
        raise UserError(f"configs.{base.config}: {e}") from None
    active = [s.index for s in model.slots if not s.off]
    if not active:
        raise UserError(f"--config: {base.name} has no slot switched on; start from a configuration with "
                        "activations")
    return p, base, splits, options.validate(active)


def run_search(exp: Experiment, options: SearchOptions, part: Optional[str] = None, config: Optional[str] = None,
               log: Callable[[str], None] = _log, poll_s: float = 2.0) -> SearchOutcome:
    """Run (or resume) one search on `exp`; every step is stored as it completes."""
    p, base, splits, options = prepare_search(exp, options, part, config)
    device = resolve_device(exp.device)
    if exp.threads:
        torch.set_num_threads(exp.threads)
    splits = splits.to(device)
    with Store(exp.store) as store:
        store.ensure_probe_search_tables()
        ensure_plan(store, exp)
        s = Search(exp, p, base, options, store, splits, device, log, poll_s)
        store.begin_search({"id": s.id, "experiment": exp.name, "part": p.name, "base": base.name,
                            "strategy": options.strategy, "options_json": json.dumps(asdict(options)),
                            "seeds_json": json.dumps(s.seeds), "epochs": base.spec.train.epochs,
                            "metric": options.metric, "probe_set": s.probe_set.name,
                            "val_is_test": int(base.spec.data.split == "test"),
                            "spec_json": json.dumps(base.spec.to_dict(), sort_keys=True, default=str),
                            "slot_sizes_json": json.dumps({str(k): v for k, v in s.sizes.items()
                                                           if k in s.active})})
        log(f"search {s.id} ({options.strategy}) on {exp.name}/{p.name}, from {base.name}: {len(s.active)} active "
            f"slots, seeds {s.seeds}, {base.spec.train.epochs} epochs, device {device}; store {exp.store}")
        store.start_heartbeat()
        result = STRATEGIES[options.strategy](s)
        store.finish_search(s.id, result)
    return SearchOutcome(s.id, options.strategy, result, s.trained, s.reused, s.probed_again)


# ---------------------------------------------------------------- probing one configuration (relulab probe)


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


def parse_epoch_list(text: Optional[str], total: int, field: str = "--epoch") -> Optional[list[int]]:
    """None or 'last': the final epoch (None); 'all': every epoch; '1,10,50' or '1-5': those epochs."""
    if text is None or str(text).strip() in ("", "last"):
        return None
    text = str(text).strip()
    if text == "all":
        return list(range(1, total + 1))
    epochs = parse_ranges(text, field, noun="epochs", expected="last, all, or epochs like 1,10,50 or 1-5",
                          minimum=1, maximum=total, bounds=" (train.epochs)")
    return sorted(set(epochs))


class EpochProbe(Callback):
    """A training callback: every statistic on the probe set after the chosen epochs (and the last one)."""

    def __init__(self, x, y, classes, epochs: Optional[Iterable[int]]):
        self.x, self.y, self.classes = x, y, classes
        self.epochs = set(epochs or ())
        self.final = epochs is None
        self.results: dict[int, probes_mod.ProbeResult] = {}

    def _measure(self, model) -> probes_mod.ProbeResult:
        return probes_mod.measure(model, self.x, self.y, probes_mod.stat_names(), classes=self.classes)

    def on_epoch_end(self, model, record) -> None:
        if record.epoch in self.epochs:
            self.results[record.epoch] = self._measure(model)

    def on_train_end(self, model, history) -> None:
        last = len(history.epochs)
        if self.final and last not in self.results:
            self.results[last] = self._measure(model)


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
                        log: Callable[[str], None] = _log) -> ProbeRun:
    """Probe statistics of one configuration's model (one seed) at the final epoch, or at `epochs`.

    Taken, first that serves: from the store; from the run's kept final weights (relulab.weights: no training);
    where the run is not in the store, by training it (alone, with a callback probing it) and storing it like
    any run, with its statistics and weights. A run in the store with no weights to probe (or probed at earlier
    epochs, whose weights are not kept) is trained again, and that copy is another model: it is stored as its
    own record (`store.retrained_key`, marked retrained for probing, with its own accuracy), and the
    statistics are its, never stored under the run's key."""
    p = pick_part(exp, part)
    v = pick_variant(p, config)
    wanted = parse_epoch_list(epochs, v.spec.train.epochs)
    ps = probes_mod.parse_probe_set(probe_set, "--probe-set")
    if not isinstance(seed, int) or seed < 0:
        raise UserError(f"--seed: expected an integer >= 0, got {seed!r}")
    splits = load_data(v.spec.data)
    try:
        build_model(v.spec.model, splits.input_shape, splits.num_classes)
    except UserError as e:
        raise UserError(f"configs.{v.config}: {e}") from None
    device = resolve_device(exp.device)
    if exp.threads:
        torch.set_num_threads(exp.threads)
    key = run_key(v.spec, seed)
    with Store(exp.store) as store:
        store.ensure_probe_search_tables()
        ensure_plan(store, exp)
        prober = _Prober(exp, p, v, seed, ps, wanted, splits, device, store, log)
        row = store.runs([key]).get(key)
        if row is None:
            log(f"{v.name} seed {seed}: not in the store yet: training it, with the probe attached")
            return prober.result(key, "trained", prober.train(key))
        need = wanted if wanted is not None else [row["epochs"]]
        copy_key = retrained_key(key)
        for target in (key, copy_key):  # the run's own model first; then its copy, if one was retrained before
            target_row = row if target == key else store.runs([copy_key]).get(copy_key)
            if target_row is None:
                continue
            if prober.stored(target, need):
                return prober.result(key, "store", target_row, target)
            if set(need) <= {target_row["epochs"]} and prober.probe_kept(target):
                return prober.result(key, "weights", target_row, target)
        log(f"{v.name} seed {seed}: in the store, but "
            + ("probed at epochs whose weights are not kept" if set(need) - {row["epochs"]} else "without weights to "
               "probe") + ": training a copy to probe it (stored as its own record, retrained for probing)")
        return prober.result(key, "retrained", prober.train(copy_key, copy_of=key), copy_key)


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
    device: torch.device
    store: Store
    log: Callable[[str], None]

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

    def train(self, key: str, copy_of: Optional[str] = None) -> dict:
        """Train the run alone with the probe attached and store it under `key` with its statistics and weights
        (`copy_of`: the run it is a copy of, retrained for probing); its stored row."""
        splits = self.splits.to(self.device)
        x, y = probes_mod.select_probe_set(splits, self.probe_set)
        callback = EpochProbe(x, y, splits.classes, self.wanted)
        keeper = Keeper(self.exp.store, self.exp.keep_weights, {data_key(self.variant.spec.data): splits.classes},
                        self.log)
        job = Job(copy.deepcopy(self.variant.spec), self.seed, key)
        for _, result in train_many([job], splits, self.device, callbacks=lambda j: [callback]):
            for epoch, res in callback.results.items():
                self.store.save_run_probes(key, self.probe_set.name, epoch, probe_rows(res))
            staged = keeper.stage(key, result, result.model.state_dict())
            result.model = None
            if copy_of is not None:
                result.data = {**result.data, RETRAINED_FOR_PROBING: copy_of}
            self.store.record(Finished(key, self.exp.name, self.part.name, self.variant.name, result, {}, staged))
            h = result.history
            self.log(f"{self.variant.name} seed {self.seed}{' (the copy retrained for probing)' if copy_of else ''}: "
                     f"best val acc {h.best_val_acc:.4f} (epoch {h.best_epoch}), {h.seconds:.1f} s")
        return self.store.runs([key])[key]

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
        return ProbeRun(self.exp.name, self.part.name, self.variant.name, self.seed, key, self.probe_set.name,
                        results, source in ("trained", "retrained"), run, source, probed_key, copy_row)
