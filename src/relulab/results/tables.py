"""The store's tables as pandas DataFrames: `runs`, `epochs`, `slot_stats`, `searches` and `summary`.

Each run's rows start with who it is (experiment, part, configuration as the report names it, the config it was
expanded from, its grid point, its baseline, whether the plan holds it, seed, key) and the hyperparameters most
analyses group by (`source.HPARAM_COLUMNS`); `runs` adds every field of the spec as a dotted column. Numbers are
as stored (fractions, seconds); a number the store does not have is NA.
"""
from __future__ import annotations

import json
import math
from typing import Iterable, Optional

import pandas as pd

from relulab.core.stats import Comparison, Summary, check_correction
from relulab.probes.statistics import stored_slot_names
from relulab.report.collect import collect
from relulab.results.source import (HPARAM_COLUMNS, experiment_names, flat_spec, hyperparameters, json_text, opened,
                                    plan_configs, retrained_for)

ID_COLUMNS = ["experiment", "part", "configuration", "config", "grid", "baseline", "in_plan", "seed", "key"]
SHORT_ID_COLUMNS = [c for c in ID_COLUMNS if c != "in_plan"]  # epochs' and statistics' rows: join runs on key
RESULT_COLUMNS = ["status", "best_val_acc", "best_epoch", "final_val_acc", "test_acc", "test_loss", "diverged_at",
                  "epochs_trained", "seconds", "seconds_per_epoch", "params", "relu_count", "val_is_test",
                  "trained_with", "retrained_for", "device", "host", "code_version", "torch_version", "python_version", "finished"]
EPOCH_COLUMNS = ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "seconds"]
SLOT_COLUMNS = ["source", "probe_set", "epoch", "stat", "slot", "slot_name", "class", "class_name", "images", "value"]
SEARCH_COLUMNS = ["search", "experiment", "part", "base", "strategy", "metric", "probe_set", "epochs", "search_seeds",
                  "status", "val_is_test", "step", "kind", "current", "decision", "chosen", "note", "position",
                  "placement", "slots_off", "slot", "relu_count", "seeds", "runs", "diverged", "mean", "std",
                  "ci_low", "ci_high", "reference", "diff", "diff_low", "diff_high", "p", "verdict", "heuristic",
                  "accs", "run_keys"]
MEASURES = ["best_val_acc", "final_val_acc", "test_acc", "best_epoch", "seconds", "seconds_per_epoch"]
STAT_PARTS = ["n", "mean", "std", "ci_low", "ci_high"]
COMPARISON_PARTS = ["diff_vs_baseline", "diff_ci_low", "diff_ci_high", "p_value", "p_adjusted", "distinguishable"]
SUMMARY_COLUMNS = (["experiment", "part", "configuration", "config", "grid", "baseline", *HPARAM_COLUMNS,
                    "seeds_planned", "runs_done", "runs_diverged"]
                   + [f"{m}_{s}" for m in MEASURES for s in STAT_PARTS]
                   + COMPARISON_PARTS + [f"final_{c}" for c in COMPARISON_PARTS] + ["correction", "val_is_test"])
INTEGERS = {"seed", "best_epoch", "diverged_at", "epochs_trained", "params", "trained_with", "epoch", "slot", "class",
            "images", "step", "position", "relu_count", "seeds", "runs", "diverged", "batch_size", "epochs",
            "seeds_planned", "runs_done", "runs_diverged", *(f"{m}_n" for m in MEASURES)}
BOOLEANS = {"in_plan", "val_is_test", "distinguishable", "final_distinguishable"}
# The runs table's columns that `runs` keeps as stored (the others are decoded, renamed or derived there)
_RUN_NUMBERS = ["status", "best_val_acc", "best_epoch", "final_val_acc", "test_acc", "test_loss", "diverged_at",
                "seconds", "params", "device", "host", "code_version", "torch_version", "python_version"]


def frame(rows: list[dict], columns: list[str]) -> pd.DataFrame:
    """`rows` as a DataFrame: `columns` first (all of them, even with no row), then any others in the order met;
    integer and boolean columns as pandas' nullable types, so that a missing number stays NA, not 0 or NaN."""
    df = pd.DataFrame.from_records(rows) if rows else pd.DataFrame()
    others = [c for c in df.columns if c not in columns]
    df = df.reindex(columns=[*columns, *others])
    for column in df.columns:
        if column in INTEGERS:
            df[column] = pd.array([None if _missing(v) else int(v) for v in df[column]], dtype="Int64")
        elif column in BOOLEANS:
            df[column] = pd.array([None if _missing(v) else bool(v) for v in df[column]], dtype="boolean")
    return df


def _missing(value) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))


# ---------------------------------------------------------------- each run's identity


def _run_identities(store, name: str) -> list[tuple[dict, dict]]:
    """(run row, its identity and hyperparameters) of every run the store holds of experiment `name`: the plan's
    in its order, then the others (a search's placements, copies retrained for probing)."""
    exp = store.load_experiment(name)
    configs = plan_configs(exp)
    position = {(r["part"], r["variant"]): r["position"] for r in exp["plan"]}
    planned = {r["run_key"] for r in exp["plan"]}
    found = []
    for run in store.experiment_runs(name):
        config = configs.get((run["part"], run["variant"]), {})
        ident = {"experiment": name, "part": run["part"], "configuration": run["variant"],
                 "config": config.get("config"), "grid": config.get("grid"), "baseline": config.get("baseline"),
                 "in_plan": run["key"] in planned, "seed": run["seed"], "key": run["key"],
                 **hyperparameters(run["spec"])}
        found.append((run, ident))
    found.sort(key=lambda ri: (position.get((ri[0]["part"], ri[0]["variant"]), math.inf), ri[0]["part"],
                               ri[0]["variant"], ri[0]["seed"], ri[0]["key"]))
    return found


def _identities(store, experiment: Optional[str]) -> Iterable[tuple[dict, dict]]:
    for name in experiment_names(store, experiment):
        yield from _run_identities(store, name)


def _short(ident: dict) -> dict:
    return {k: v for k, v in ident.items() if k != "in_plan"}


# ---------------------------------------------------------------- the tables


def runs(store, experiment: Optional[str] = None) -> pd.DataFrame:
    """One row per stored run: identity, hyperparameters, results, provenance, then every spec field."""
    rows = []
    with opened(store) as s:
        for run, ident in _identities(s, experiment):
            result = {k: run[k] for k in _RUN_NUMBERS}
            trained = run["epochs"]
            result.update(epochs_trained=trained, seconds_per_epoch=run["seconds"] / trained if trained else None,
                          val_is_test=bool(run["val_is_test"]), trained_with=(run["data"] or {}).get("trained_with", 1),
                          relu_count=(run["data"] or {}).get("relu_count"),
                          retrained_for=retrained_for(run), finished=run["finished"])
            rows.append({**ident, **result, **flat_spec(run["spec"])})
    df = frame(rows, [*ID_COLUMNS, *HPARAM_COLUMNS, *RESULT_COLUMNS])
    df["finished"] = pd.to_datetime(df["finished"], unit="s", utc=True)
    return df


def epochs(store, experiment: Optional[str] = None) -> pd.DataFrame:
    """One row per stored epoch of every run: the run's identity and hyperparameters, then the epoch's metrics."""
    rows = []
    with opened(store) as s:
        found = list(_identities(s, experiment))
        history = s.epochs(run["key"] for run, _ in found)
        for run, ident in found:
            rows += [{**_short(ident), **{c: e[c] for c in EPOCH_COLUMNS}} for e in history.get(run["key"], [])]
    return frame(rows, [*SHORT_ID_COLUMNS, *HPARAM_COLUMNS, *EPOCH_COLUMNS])


def slot_stats(store, experiment: Optional[str] = None) -> pd.DataFrame:
    """Every stored per-slot probe statistic: `source` slot_stats, the spec's `probes:` at each epoch while
    training (class -1: all probe images); `source` run_probes, `relulab probe`'s and `relulab search`'s of a
    model on a named probe set, per class and for all (-1)."""
    rows = []
    with opened(store) as s:
        found = list(_identities(s, experiment))
        keys = [run["key"] for run, _ in found]
        per_epoch, probed = s.slot_stats(keys), s.run_probes(keys)
        for run, ident in found:
            names = stored_slot_names(run["data"])
            for stat, by_epoch in sorted(per_epoch.get(run["key"], {}).items()):
                for epoch, by_slot in sorted(by_epoch.items()):
                    rows += [{**_short(ident), "source": "slot_stats", "probe_set": None, "epoch": epoch, "stat": stat,
                              "slot": slot, "slot_name": names.get(slot), "class": -1, "class_name": None,
                              "images": None, "value": value} for slot, value in sorted(by_slot.items())]
        idents = {run["key"]: (ident, stored_slot_names(run["data"])) for run, ident in found}
        for p in probed:
            ident, names = idents[p["run_key"]]
            rows.append({**_short(ident), "source": "run_probes", "probe_set": p["probe_set"], "epoch": p["epoch"],
                         "stat": p["stat"], "slot": p["slot"], "slot_name": names.get(p["slot"]), "class": p["class"],
                         "class_name": p["class_name"], "images": p["images"], "value": p["value"]})
    return frame(rows, [*SHORT_ID_COLUMNS, *HPARAM_COLUMNS, *SLOT_COLUMNS])


def searches(store, experiment: Optional[str] = None) -> pd.DataFrame:
    """One row per placement a search's step measured, as stored (Store.searches), with the search's settings
    (its options as `options.<name>` columns) and the step's decision."""
    rows = []
    with opened(store) as s:
        for name in experiment_names(s, experiment):
            for search in s.searches(name):
                head = {"search": search.id, "experiment": search.experiment, "part": search.part,
                        "base": search.base, "strategy": search.strategy, "metric": search.metric,
                        "probe_set": search.probe_set, "epochs": search.epochs,
                        "search_seeds": " ".join(map(str, search.seeds or [])), "status": search.status,
                        "val_is_test": bool(search.val_is_test),
                        **{f"options.{k}": v for k, v in flat_spec(search.options or {}).items()}}
                for step in search.steps:
                    measured = [c for c in search.candidates if c.step == step.step]
                    top = {**head, "step": step.step, "kind": step.kind, "current": step.current,
                           "decision": step.decision, "chosen": step.chosen, "note": step.note}
                    rows += [{**top, **_candidate(c)} for c in measured] or [top]
    return frame(rows, SEARCH_COLUMNS)


def _candidate(c) -> dict:
    out = {k: getattr(c, k) for k in ("position", "placement", "slot", "relu_count", "seeds", "runs", "diverged",
                                       "mean", "std", "ci_low", "ci_high", "reference", "diff", "diff_low",
                                       "diff_high", "p", "verdict", "heuristic")}
    return {**out, "slots_off": " ".join(map(str, c.off)), "accs": json_text(c.accs), "run_keys": " ".join(c.run_keys)}


def summary(store, experiment: Optional[str] = None, correction: Optional[str] = None) -> pd.DataFrame:
    """One row per configuration of each experiment's plan: over its seeds' finished runs, each measure's n, mean,
    standard deviation and 95% interval, and the Welch comparison with the baseline (best and final validation
    accuracy), as the report computes them (relulab.report.collect); with `correction` (holm, bh) each part's
    comparisons are adjusted together, as in the report."""
    correction = check_correction(correction, "results.correction")
    rows = []
    with opened(store) as s:
        for name in experiment_names(s, experiment):
            specs = {(r["part"], r["variant"]): r["spec_json"] for r in s.load_experiment(name)["plan"]}
            data = collect(s, name, correction)
            for part in data.parts:
                for v in part.variants:
                    rows.append(_summary_row(name, part, v, specs.get((part.name, v.name)), correction))
    return frame(rows, SUMMARY_COLUMNS)


def _summary_row(name: str, part, v, spec_json: Optional[str], correction: Optional[str]) -> dict:
    s = v.stats
    row = {"experiment": name, "part": part.name, "configuration": v.name, "config": v.config,
           "grid": json_text(v.grid) if v.grid else None, "baseline": v.baseline,
           **(hyperparameters(json.loads(spec_json)) if spec_json else {}),
           "seeds_planned": s.planned, "runs_done": s.done, "runs_diverged": s.diverged,
           "correction": correction or "none", "val_is_test": part.val_is_test}
    for measure in MEASURES:
        row.update(_stat_columns(measure, getattr(s, measure)))
    row.update(_comparison_columns("", s.vs_baseline))
    row.update(_comparison_columns("final_", s.vs_baseline_final))
    return row


def _stat_columns(measure: str, s: Summary) -> dict:
    return {f"{measure}_n": s.n, f"{measure}_mean": s.mean, f"{measure}_std": s.std, f"{measure}_ci_low": s.low,
            f"{measure}_ci_high": s.high}


def _comparison_columns(prefix: str, c: Optional[Comparison]) -> dict:
    if c is None:
        return {}
    values = [c.diff, c.low, c.high, c.p, c.p_adjusted, c.distinguishable]
    return {f"{prefix}{k}": v for k, v in zip(COMPARISON_PARTS, values)}
