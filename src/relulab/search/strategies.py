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
- `learned`: SNL's and AutoReP's idea, at a `granularity` (layer: whole slots; channel;
  unit: each channel x position). For each seed, the base model that seed trained (its
  kept weights: the model that was measured) gets a trainable gate a in [0, 1] on every
  element, computing a * act(x) + (1 - a) * x, and trains on with an L1 push of the gates
  toward 0 that grows until the soft ReLU count reaches the budget
  (relulab.search.gates); the gates are then binarised to meet each of `budgets` (the
  highest gates stay nonlinear; at unit granularity exactly, else as close below as
  whole channels or slots allow). Each seed's placement is then trained by the
  experiment's recipe at that seed, like every placement of every strategy, so that
  strategies are compared on equal training (SNL fine-tunes the gate-trained weights
  instead; relulab measures the placement). Beside it, chance: `random` at the same
  budgets and granularity.
- `random`: the baseline every strategy is judged against. For each budget and seed, a
  placement of that many nonlinear elements chosen at random (reproducible by seed),
  trained at that seed.

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
(`relulab.experiments.plan.run_key` of the resolved config and seed), so a placement trained
before (by a sweep, by another strategy or another search) is never retrained, and all the
runs a step needs train together through the sweep driver (relulab.experiments.sweep) and
its executor: in this process, packed and run concurrently where the hardware allows, or on
a Ray cluster (`run_search(..., executor=RayExecutor())`, `relulab search --executor ray`);
the probes are measured in this process, on the final weights. Runs are claimed in the store before they
train, as sweeps do, and committed as each finishes; a killed search, run again,
recomputes its path from the stored runs in seconds and goes on where it stopped.
The probe statistics of every model a search trains are computed on its final
weights (all statistics, on the probe set) and stored in `run_probes`. A search's
*current* models need them (greedy's heuristics, the judgement's base); one found in the
store without them (trained by `relulab run`) is probed from its kept weights
(relulab.store.weights), without training. Only where no weights were kept is it trained
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
from dataclasses import asdict, dataclass
from typing import Callable, Iterable, Optional

import torch

from relulab.core.errors import UserError
from relulab.core.stats import compare
from relulab.data import data_key, load_data
from relulab.experiments.executors import Executor, InProcessExecutor
from relulab.experiments.plan import Experiment, Part, Variant, canonical_spec, run_key
from relulab.experiments.sweep import Recorded, Sweep, SweepRun, run_line, sweeping
from relulab.experiments.tracking import Trackers
from relulab.probes import statistics as probes_mod
from relulab.search.judgement import judge
from relulab.search.measured import Measured, stored_measurement
import relulab.search.gates as gates
from relulab.search.options import SearchOptions
from relulab.search.subject import ensure_plan, pick_part, pick_variant, probe_rows
from relulab.store import RETRAINED_FOR_PROBING, Store, retrained_key
from relulab.training.loop import run_model
from relulab.training.specs import Job, RunSpec
from relulab.store.weights import KeptWeights
from relulab.zoo.models import build_model

OFF = "identity"  # what a slot switched off becomes


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


class Search:
    """Measures placements for a strategy: trains what the store lacks through the sweep driver (and its
    executor), probes what it trains, records steps."""

    def __init__(self, exp: Experiment, part: Part, base: Variant, options: SearchOptions, store: Store,
                 splits, device: torch.device, sweep: Sweep, log: Callable[[str], None] = _log):
        self.exp, self.part, self.base, self.store, self.device, self.log = exp, part, base, store, device, log
        self.sweep = sweep
        self.splits = splits  # on the host: its probe set goes to `device`, where the probes are measured
        self._device_splits = None  # all of it on `device`, for the learned strategy's gates (device_splits)
        self.seeds = list(part.seeds)
        model = build_model(base.spec.model, splits.input_shape, splits.num_classes)
        self.slots = [s.index for s in model.slots]
        self.active = [s.index for s in model.slots if not s.off]
        self.sizes = probes_mod.slot_output_sizes(model, splits.input_shape)
        self.names = probes_mod.slot_names(model)  # {} for relulab's seed models: their slots have numbers only
        self.options = options.validate(self.active)
        self.probe_set = probes_mod.parse_probe_set(self.options.probe_set)
        self.probe_x, self.probe_y = (t.to(device) for t in probes_mod.select_probe_set(splits, self.probe_set))
        self.id = self._id()
        self.trained = self.reused = self.probed_again = 0
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

    def spec_with(self, model: dict) -> RunSpec:
        """The base's spec with a found placement: {"slots": overrides, "masks": masks} (relulab.search.gates)."""
        spec = copy.deepcopy(self.base.spec)
        spec.model.slots = {**spec.model.slots, **{int(k): v for k, v in model.get("slots", {}).items()}}
        spec.model.masks = {**spec.model.masks, **{int(k): v for k, v in model.get("masks", {}).items()}}
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
        runs: dict[str, tuple[frozenset, SweepRun]] = {}
        for off in placements:
            spec = self.spec(off)
            for seed in self.seeds:
                key = run_key(spec, seed)
                runs.setdefault(key, (off, SweepRun(Job(spec, seed, key), self.exp.name, self.part.name,
                                                    self.label(off))))
        done = self._stored(runs)
        have = self._probed_keys([k for k in done if runs[k][0] in want_probes])
        again = self._probe_kept([k for k in done if runs[k][0] in want_probes and k not in have])
        if again:
            self.log(f"{len(again)} runs are in the store without their probe statistics or weights: training a "
                     "copy of each to probe it (stored as its own record, retrained for probing; the stored runs "
                     "are kept as they are)")
            self._probe_trained(self.sweep.retrain([self._copy(runs[k][1]) for k in again]))
            self.probed_again += len(again)
        self._probe_trained(self.sweep.run([run for key, (_, run) in runs.items() if key not in done]))
        for off in placements:
            self._cache.pop(off, None)
        return {off: self.measured(off) for off in placements}

    def measure_found(self, found: dict[str, dict[int, dict]]) -> dict[str, Measured]:
        """Placements found from each seed's runs (learned, random): {label: {seed: {"model": {"slots",
        "masks"}, "relu_count"}}}; each seed's placement trains at that seed (runs in the store are reused, the
        rest trained together), and is measured as one placement over the seeds, its ReLU count their mean."""
        runs: dict[str, SweepRun] = {}
        keys: dict[str, list[str]] = {}
        for label, by_seed in found.items():
            for seed in self.seeds:
                spec = self.spec_with(by_seed[seed]["model"])
                key = run_key(spec, seed)
                runs.setdefault(key, SweepRun(Job(spec, seed, key), self.exp.name, self.part.name, label))
                keys.setdefault(label, []).append(key)
        done = self._stored(runs)
        self._probe_trained(self.sweep.run([run for key, run in runs.items() if key not in done]))
        measured = {}
        for label, by_seed in found.items():
            count = round(sum(by_seed[seed]["relu_count"] for seed in self.seeds) / len(self.seeds))
            off = self._slots_off(by_seed[self.seeds[0]]["model"])
            measured[label] = stored_measurement(self.store, off, label, keys[label], self.options.metric,
                                                 self.probe_set.name, count)
        return measured

    def _stored(self, keys: Iterable[str]) -> set[str]:
        """The runs of `keys` already in the store, counted as reused the first time this search meets them."""
        keys = list(keys)
        done = self.store.done_keys(keys)
        self.reused += len([k for k in done if k not in self._seen_keys])
        self._seen_keys |= set(keys)
        return done

    @staticmethod
    def _slots_off(model: dict) -> frozenset:
        return frozenset(int(k) for k, v in model.get("slots", {}).items() if v == OFF)

    def budgets(self) -> list[int]:
        """learned / random: the budgets as ReLU counts, largest first (fractions of the base's count resolved)."""
        full = self.relu_count(())
        counts = sorted({round(b * full) if b < 1 else int(b) for b in self.options.budgets}, reverse=True)
        too_big = [c for c in counts if not 1 <= c <= full]
        if too_big:
            raise UserError(f"search.budgets: {too_big[0]:,} ReLUs; the base {self.base.name} has {full:,} (a budget "
                            "is at most that, and at least 1)")
        return counts

    def device_splits(self):
        """The data on the search's device (for the learned strategy's gate training), moved there once."""
        if self._device_splits is None:
            self._device_splits = self.splits.to(self.device)
        return self._device_splits

    def base_models(self, seeds: Iterable[int]) -> dict[int, torch.nn.Module]:
        """The base model each of `seeds` measured, on the search's device: from its run's kept final weights,
        else from those of its copy retrained for probing; where neither is kept (a store copied without its
        weights folder), such a copy is trained now and stored as its own record, as `measure` does to probe."""
        keys = {seed: run_key(self.spec(()), seed) for seed in seeds}
        models = {seed: self._kept_model(key) for seed, key in keys.items()}
        missing = [seed for seed, model in models.items() if model is None]
        if missing:
            self.log(f"{len(missing)} base runs kept no weights to start gates from: training a copy of each "
                     "(stored as its own record, retrained for probing; the stored runs are kept as they are)")
            runs = [SweepRun(Job(self.spec(()), seed, keys[seed]), self.exp.name, self.part.name, self.label(()))
                    for seed in missing]
            recorded = list(self.sweep.retrain([self._copy(run) for run in runs]))
            self._probe_trained(recorded)
            self.probed_again += len(missing)
            # The models as they trained here: the store may keep no weights of them (keep_weights false), or
            # hold an earlier record of the same copy whose weights did not travel with it (then it drops this one).
            for done in recorded:
                models[done.run.job.seed] = self._final_model(done).to(self.device)
        lacking = [seed for seed, model in models.items() if model is None]
        if lacking:
            raise UserError(f"search.strategy: learned trains its gates from the base's weights, and its runs at seeds "
                            f"{lacking} keep none (keep_weights false); run it with keep_weights (--keep-weights)")
        return models

    def _kept_model(self, key: str) -> Optional[torch.nn.Module]:
        """Run `key`'s model from its kept final weights, or from its copy's retrained for probing; None."""
        _, ckpt = self._kept_checkpoint(key)
        return None if ckpt is None else ckpt.model.to(self.device)

    def _kept_checkpoint(self, key: str):
        """(the key whose weights were found, their checkpoint): run `key`'s kept final weights, else those of its
        copy retrained for probing; (None, None) where neither kept any."""
        for target in (key, retrained_key(key)):
            ckpt = self.kept.checkpoint(target)
            if ckpt is not None:
                return target, ckpt
        return None, None

    @staticmethod
    def _copy(run: SweepRun) -> SweepRun:
        """The copy of a stored run retrained only to be probed: another model (packed and alone, training
        differs), so a record of its own (`retrained_key`, marked retrained for probing, with its own accuracy)
        whose statistics go under its key, never under the stored run's."""
        job = Job(run.job.spec, run.job.seed, retrained_key(run.key))
        return SweepRun(job, run.experiment, run.part, run.variant, data={RETRAINED_FOR_PROBING: run.key})

    def _probe_kept(self, keys: list[str]) -> list[str]:
        """Probe the kept final weights of the stored runs `keys` (or, where a run kept none, of its copy
        retrained for probing), storing the statistics under the key of the model probed; the keys of the runs
        with no weights to probe."""
        rest, probed = [], 0
        for key in keys:
            target, ckpt = self._kept_checkpoint(key)
            if ckpt is None:
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

    def _probe_trained(self, recorded: Iterable[Recorded]) -> None:
        """Probe each model the driver trained and recorded, storing its statistics under its key."""
        for done in recorded:
            job, result, copy_of = done.run.job, done.result, done.run.data.get(RETRAINED_FOR_PROBING)
            probed = probes_mod.measure(self._final_model(done), self.probe_x, self.probe_y, probes_mod.stat_names(),
                                        classes=self.splits.classes)
            self.store.save_run_probes(job.key, self.probe_set.name, len(result.history.epochs),
                           probe_rows(probed))
            if copy_of is None:
                self.trained += done.stored
            head = f"[{self.options.strategy}] {done.run.variant} seed {job.seed}" + (
                "" if copy_of is None else f" (a copy retrained for probing, run {job.key}; the stored run is kept "
                                           "as it is)")
            self.log(run_line(head, result, done.stored))

    def _final_model(self, done: Recorded) -> torch.nn.Module:
        """The trained model: as it trained here, or rebuilt from the final weights a Ray worker sent back."""
        if done.result.model is not None:
            return done.result.model
        model = build_model(done.run.job.spec.model, self.splits.input_shape, self.splits.num_classes)
        model.load_state_dict(done.outcome.final_state)
        return model.to(self.device)

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
        if self.options.accept_all:
            return True, f"{points}, {c.verdict}; accepted whatever it measured (accept_all)"
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
            raise UserError(f"search.stat: {self.options.stat} is undefined at every active slot of {current.label} "
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
        note = (f"{o.stat} {value:.4g} at {probes_mod.slot_text(slot, s.names, 'slot ')}, the {o.order} of "
                f"{len(ranking)} untried active slots; {why}")
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
                    f"best single change: {probes_mod.slot_text(best_slot, s.names, 'slot ')} ({best.label}); {why}",
                    s.judge(current, cands))
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


def _found_name(kind: str, granularity: str, count: int) -> str:
    return f"{kind}-{granularity}-{count}"


def _found(s: Search, kept: dict, granularity: str, seconds: float = 0.0) -> dict:
    """A placement found at one seed, as measure_found takes it: its slots and masks, and its ReLU count (of
    the model built with them)."""
    slots, masks = gates.placement(kept, granularity)
    model = {"slots": {str(k): v for k, v in slots.items()}, "masks": {str(k): v for k, v in masks.items()}}
    spec = s.spec_with(model)
    count = build_model(spec.model, s.splits.input_shape, s.splits.num_classes).relu_count()
    return {"model": model, "relu_count": count, "seconds": seconds}


def random_placements(s: Search, budgets: list[int]) -> dict[str, dict[int, dict]]:
    """Chance at each budget: for every seed a placement of that many nonlinear elements drawn at random
    (relulab.search.gates.random_kept, reproducible by seed)."""
    granularity = s.options.granularity
    model = build_model(s.base.spec.model, s.splits.input_shape, s.splits.num_classes)
    return {_found_name("random", granularity, b): {seed: _found(s, gates.random_kept(model, granularity, b, seed),
                                                                 granularity) for seed in s.seeds}
            for b in budgets}


def learned_placements(s: Search, budgets: list[int]) -> dict[str, dict[int, dict]]:
    """For every seed and budget: the gates trained from that seed's measured base model, binarised to the
    budget. Each is stored as it is found (store.search_placements): a resumed search reuses it."""
    o = s.options
    training = o.gate_training()
    stored = s.store.search_placements(s.id)
    names = {b: _found_name("learned", o.granularity, b) for b in budgets}
    to_find = sorted({seed for seed in s.seeds for b in budgets if (names[b], seed) not in stored})
    bases = s.base_models(to_find) if to_find else {}
    found: dict[str, dict[int, dict]] = {}
    for seed in s.seeds:
        for b in budgets:
            name = names[b]
            if (name, seed) not in stored:
                started = time.perf_counter()
                model = copy.deepcopy(bases[seed])
                costs = {slot: cost for slot, (_, cost) in gates.gate_layout(model, o.granularity).items()}
                values = gates.learn_gates(model, s.device_splits(), s.base.spec, o.granularity, b, training, seed,
                                           s.device)
                one = _found(s, gates.fill_budget(values, costs, b), o.granularity, time.perf_counter() - started)
                s.log(f"[learned] seed {seed}, budget {b:,}: gates trained {training.epochs} epochs in "
                      f"{one['seconds']:.1f} s, {one['relu_count']:,} ReLUs kept")
                if o.finetune_epochs:  # before the placement is stored: a resumed search has both or neither
                    one["model"]["finetuned"] = finetune(s, model, one["model"], name, seed)
                s.store.save_search_placement(s.id, name, seed, one["model"], one["relu_count"], one["seconds"])
                stored[(name, seed)] = one
            found.setdefault(name, {})[seed] = stored[(name, seed)]
    return found


def finetune(s: Search, model: torch.nn.Module, found: dict, name: str, seed: int) -> str:
    """SNL's last step: the gate-trained `model` with its binarised placement fixed (`found`: slots and masks)
    trained on for search.finetune_epochs by the recipe, and recorded as a run of its own (its key: the
    placement's run key, marked fine-tuned by this search; its spec the placement's at those epochs, though no
    spec reproduces its starting weights, which its data names). Returns its key."""
    spec = s.spec_with(found)
    key = f"{run_key(spec, seed)}-finetuned-{s.id}"  # the placement's key, before the epochs change
    spec.train.epochs = s.options.finetune_epochs
    model.set_slots(spec.model.slots)
    model.set_masks(spec.model.masks)
    if key not in s.store.done_keys([key]):
        result = run_model(spec, model, seed, s.device_splits())
        run = SweepRun(Job(spec, seed, key), s.exp.name, s.part.name, f"{name}-finetuned",
                       data={"finetuned_from": run_key(s.spec(()), seed), "search": s.id})
        stored = s.sweep.record_trained(run, result)
        s.log(run_line(f"[learned] {name} seed {seed}, fine-tuned {spec.train.epochs} epochs", result, stored))
    return key


def _budget_rows(s: Search, base: Measured, measured: dict[str, Measured], names: list[str],
                 references: dict[str, Measured]) -> list[dict]:
    return [s.row(base, 0)] + [s.row(measured[n], i + 1, references.get(n, base)) for i, n in enumerate(names)]


def random_baseline(s: Search) -> dict:
    budgets = s.budgets()
    base = s.measure([()])[frozenset()]
    found = random_placements(s, budgets)
    measured = s.measure_found(found)
    names = list(found)
    note = f"{s.options.granularity} granularity, a random placement per seed at each budget; " + "; ".join(
        f"{b:,} ReLUs: {measured[n].mean * 100:.2f}%" for b, n in zip(budgets, names))
    s.save_step(1, "random", base, "measured", _budget_rows(s, base, measured, names, {}), None, note)
    return {**s.summary_of(base), "budgets": budgets,
            "by_budget": {str(b): s.summary_of(measured[n]) for b, n in zip(budgets, names)}}


def learned(s: Search) -> dict:
    o = s.options
    budgets = s.budgets()
    schedule = s.base.spec.train.schedule
    if o.finetune_epochs and schedule is not None:  # before any gates train: the fine-tuning's schedule must fit
        copy.deepcopy(schedule).validate(o.finetune_epochs, "search.finetune_epochs")
    base = s.measure([()])[frozenset()]  # the models the gates start from (their kept weights)
    found = learned_placements(s, budgets)
    chance = random_placements(s, budgets)
    measured = s.measure_found({**found, **chance})  # one sweep: the learned and random runs train together
    names, chance_names = list(found), list(chance)
    against = {n: measured[c] for n, c in zip(names, chance_names)}
    leads = []
    for b, n, c in zip(budgets, names, chance_names):
        cmp = compare(measured[n].accs, measured[c].accs, o.alpha)
        leads.append(f"{b:,} ReLUs: learned {measured[n].mean * 100:.2f}% vs random {measured[c].mean * 100:.2f}%"
                     + (f" ({cmp.diff * 100:+.2f} points, {cmp.verdict})" if cmp else ""))
    best = max((measured[n] for n in names), key=lambda m: m.mean if math.isfinite(m.mean) else -math.inf)
    s.save_step(1, "learned", base, "measured", _budget_rows(s, base, measured, names, against), best,
                f"{o.granularity} gates, {o.gate_epochs} epochs from each seed's base model; " + "; ".join(leads))
    s.save_step(2, "random", base, "measured", _budget_rows(s, base, measured, chance_names, {}), None,
                f"chance: a random {o.granularity} placement per seed at each budget")
    if o.finetune_epochs:
        tuned = {n: stored_measurement(s.store, measured[n].off, f"{n}-finetuned",
                                       [found[n][seed]["model"]["finetuned"] for seed in s.seeds], o.metric,
                                       s.probe_set.name, measured[n].relu_count) for n in names}
        s.save_step(3, "finetuned", base, "measured",
                    [s.row(base, 0)] + [s.row(tuned[n], i + 1, against[n]) for i, n in enumerate(names)], None,
                    f"each seed's gate-trained model with its placement, fine-tuned {o.finetune_epochs} epochs "
                    "(SNL's protocol), against chance at the same budget")
    return {**s.summary_of(best), "budgets": budgets,
            "by_budget": {str(b): {"learned": s.summary_of(measured[n]), "random": s.summary_of(measured[c])}
                          for b, n, c in zip(budgets, names, chance_names)}}


STRATEGIES: dict[str, Callable[[Search], dict]] = {
    "greedy": greedy,
    "oracle": oracle,
    "exhaustive": exhaustive,
    "budget": budget,
    "learned": learned,
    "random": random_baseline,
}


# ---------------------------------------------------------------- running one


def prepare_search(exp: Experiment, options: SearchOptions, part: Optional[str] = None,
                   config: Optional[str] = None):
    """Everything checked before the store is touched: (part, base variant, splits, resolved options)."""
    p = pick_part(exp, part, "search.part")
    base = pick_variant(p, config, "search.config")
    splits = load_data(base.spec.data)
    try:
        model = build_model(base.spec.model, splits.input_shape, splits.num_classes)
    except UserError as e:
        raise UserError(f"configs.{base.config}: {e}") from None
    active = [s.index for s in model.slots if not s.off]
    if not active:
        raise UserError(f"search.config: {base.name} has no slot switched on; start from a configuration with "
                        "activations")
    return p, base, splits, options.validate(active)


def run_search(exp: Experiment, options: SearchOptions, part: Optional[str] = None, config: Optional[str] = None,
               log: Callable[[str], None] = _log, poll_s: float = 2.0,
               executor: Optional[Executor] = None, trackers: Optional[Trackers] = None) -> SearchOutcome:
    """Run (or resume) one search on `exp`; every step is stored as it completes. `executor` says where its
    runs train (relulab.experiments.executors: in this process by default, or on a Ray cluster); the probes
    are measured here, on the final weights, and this process alone writes the store (and logs each run it trains
    to `trackers`: relulab.experiments.tracking)."""
    p, base, splits, options = prepare_search(exp, options, part, config)
    executor = executor if executor is not None else InProcessExecutor()
    try:
        where = executor.open(exp.device, {data_key(base.spec.data): splits})  # may refuse: nothing written yet
        device = executor.driver_device
        # Claims every run a step needs at once: they train together, packed as the hardware allows.
        with sweeping(exp, executor, {data_key(base.spec.data): splits.classes}, log, pack=exp.pack,
                      resume=exp.resume, poll_s=poll_s, trackers=trackers) as (store, sweep):
            store.ensure_probe_search_tables()
            ensure_plan(store, exp)
            s = Search(exp, p, base, options, store, splits, device, sweep, log)
            store.begin_search({"id": s.id, "experiment": exp.name, "part": p.name, "base": base.name,
                                "strategy": options.strategy, "options_json": json.dumps(asdict(options)),
                                "seeds_json": json.dumps(s.seeds), "epochs": base.spec.train.epochs,
                                "metric": options.metric, "probe_set": s.probe_set.name,
                                "val_is_test": int(base.spec.data.split == "test"),
                                "spec_json": json.dumps(base.spec.to_dict(), sort_keys=True, default=str),
                                "slot_sizes_json": json.dumps({str(k): v for k, v in s.sizes.items()
                                                               if k in s.active})})
            log(f"search {s.id} ({options.strategy}) on {exp.name}/{p.name}, from {base.name}: {len(s.active)} "
                f"active slots, seeds {s.seeds}, {base.spec.train.epochs} epochs, {where}; store {exp.store}")
            store.start_heartbeat()
            result = STRATEGIES[options.strategy](s)
            store.finish_search(s.id, result)
    finally:
        executor.close()
    return SearchOutcome(s.id, options.strategy, result, s.trained, s.reused, s.probed_again)
