"""Two experiments side by side, or two configurations of one: what `relulab compare` prints.

    c = compare_stores("runs/a.sqlite", "runs/b.sqlite")                 # every configuration both hold
    c = compare_stores("runs/a.sqlite", configs=["relu", "tanh"])        # two configurations of one store
    for row in c.rows:
        row.comparison.diff, row.comparison.verdict                      # B - A, Welch, as the report says it

Each row summarizes one metric (best or final validation accuracy, or test accuracy) over the finished runs
of each side (diverged runs are counted and left out, as in the report) and compares them with the report's
own statistics (`relulab.core.stats.compare`: the difference B - A, its 95% Welch interval, p and the verdict).
What makes two sides comparable is checked too: where their runs differ in epochs, dataset, whether the
validation data is the test set, code version or device, `differences` says so. With `correction` (holm, bh:
relulab.core.stats.CORRECTIONS) the rows' p-values are adjusted together, and the verdicts judged on them
(`StoreComparison.comparisons`).

Stores are opened read-only. A configuration is a variant of the experiment's plan, named as the report names
it (`part/variant` in an experiment of several parts).
"""
from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

from relulab.core.errors import UserError, unknown_choice
from relulab.core.stats import (CORRECTION_TITLES, Comparison, Summary, check_correction, compare, summarize,
                                with_correction)
from relulab.report.format import PCT, csv_number
from relulab.store import Store

METRICS = ("best_val_acc", "final_val_acc", "test_acc")
MAX_NAMES_SHOWN = 20


# ---------------------------------------------------------------- reading a side


@dataclass(frozen=True)
class Side:
    """One experiment of one store: its configurations' stored runs."""

    store: Path
    experiment: str
    configs: dict[str, list[dict]]  # configuration -> its runs (store rows), in plan order

    @property
    def label(self) -> str:
        return f"{self.store} (experiment {self.experiment})"


def read_side(path: str | Path, experiment: Optional[str], option: str, prefer: Optional[str] = None) -> Side:
    """The runs of `experiment` of the store at `path`, opened read-only; when None, the store's only experiment,
    or `prefer` where the store holds it among several. `option` names the experiment's field in errors."""
    store = Store(path, create=False)
    try:
        name = _pick_experiment(store, experiment, option, prefer)
        exp = store.load_experiment(name)
        runs = store.runs(row["run_key"] for row in exp["plan"])
        several_parts = len(exp["parts"]) > 1
        configs: dict[str, list[dict]] = {}
        for row in exp["plan"]:
            config = f"{row['part']}/{row['variant']}" if several_parts else row["variant"]
            configs.setdefault(config, [])
            if row["run_key"] in runs and runs[row["run_key"]] not in configs[config]:
                configs[config].append(runs[row["run_key"]])
        return Side(store.path, name, configs)
    finally:
        store.close()


def _pick_experiment(store: Store, name: Optional[str], option: str, prefer: Optional[str]) -> str:
    names = store.experiment_names()
    if not names:
        raise UserError(f"store: {store.path} holds no experiment yet")
    if name is None and prefer in names:
        return prefer
    if name is None and len(names) > 1:
        raise UserError(f"{option}: {store.path} holds several experiments ({', '.join(names)}); name one")
    if name is not None and name not in names:
        raise unknown_choice(option, name, names)
    return name or names[0]


# ---------------------------------------------------------------- the comparison


@dataclass(frozen=True)
class CompareRow:
    """One configuration of side A against one of side B, on one metric."""

    config_a: str
    config_b: str
    values_a: tuple[float, ...]  # the metric of each finished run, in plan order
    values_b: tuple[float, ...]
    diverged_a: int
    diverged_b: int

    @property
    def a(self) -> Summary:
        return summarize(self.values_a)

    @property
    def b(self) -> Summary:
        return summarize(self.values_b)

    @property
    def comparison(self) -> Optional[Comparison]:
        """B - A (Welch); None where a side has no finished run."""
        return compare(self.values_b, self.values_a)

    @property
    def config(self) -> str:
        return self.config_a if self.config_a == self.config_b else f"{self.config_a} vs {self.config_b}"

    @property
    def verdict(self) -> str:
        return _verdict(self.comparison)


@dataclass(frozen=True)
class Difference:
    """Something that makes the two sides of some rows less comparable: what it is, and its values on each side."""

    aspect: str  # epochs, data.<field>, val_is_test, code version, device
    a: str
    b: str
    configs: tuple[str, ...]  # the rows (CompareRow.config) where it differs


@dataclass(frozen=True)
class StoreComparison:
    a: Side
    b: Side
    metric: str
    rows: list[CompareRow]
    differences: list[Difference]
    correction: Optional[str] = None  # the rows' p-values adjusted together (core.stats.CORRECTIONS)

    @property
    def comparisons(self) -> list[Optional[Comparison]]:
        """Each row's B - A, adjusted with the others by the correction where there is one."""
        return with_correction([row.comparison for row in self.rows], self.correction)

    @property
    def one_store(self) -> bool:
        return self.a.store == self.b.store and self.a.experiment == self.b.experiment


def compare_stores(store_a: str | Path, store_b: Optional[str | Path] = None, configs: Sequence[str] = (),
                   experiment_a: Optional[str] = None, experiment_b: Optional[str] = None,
                   metric: str = "best_val_acc", correction: Optional[str] = None) -> StoreComparison:
    """Compare the configurations two experiments share (by name; only `configs` where given), or, where both
    sides are one experiment of one store, the two `configs` named (A, then B). Differences are B - A."""
    if metric not in METRICS:
        raise unknown_choice("compare.metric", metric, METRICS)
    correction = check_correction(correction, "compare.correction")
    a = read_side(store_a, experiment_a, "compare.experiment_a")
    b_path = Path(store_a if store_b is None else store_b).expanduser().resolve()
    one_experiment = b_path == a.store and experiment_b in (None, a.experiment)
    b = a if one_experiment else read_side(b_path, experiment_b, "compare.experiment_b", prefer=a.experiment)
    pairs = _config_pairs(a, b, list(configs))
    rows = [_row(a, b, name_a, name_b, metric) for name_a, name_b in pairs]
    return StoreComparison(a, b, metric, rows, _differences(a, b, rows), correction)


def _config_pairs(a: Side, b: Side, configs: list[str]) -> list[tuple[str, str]]:
    """(config of A, config of B) of each row."""
    if a is b:
        if len(configs) != 2:
            raise UserError(f"compare.config: comparing within one experiment ({a.label}) takes two configurations, "
                            f"--config A --config B; got {len(configs)}")
        for name in configs:
            _check_config(name, a, "A and B")
        return [(configs[0], configs[1])]
    for name in configs:
        for side, which in ((a, "A"), (b, "B")):
            _check_config(name, side, which)
    shared = configs or [name for name in a.configs if name in b.configs]
    if not shared:
        raise UserError(f"compare: the two sides share no configuration name; A, {a.label}, has: "
                        f"{_names(a)}; B, {b.label}, has: {_names(b)} (name two of one store with --config A "
                        "--config B)")
    return [(name, name) for name in dict.fromkeys(shared)]


def _check_config(name: str, side: Side, which: str) -> None:
    if name not in side.configs:
        raise UserError(f"{unknown_choice('--config', name, side.configs)} (the configurations of {which}, "
                        f"{side.label})")


def _names(side: Side) -> str:
    names = list(side.configs)
    return ", ".join(names[:MAX_NAMES_SHOWN]) + (f", ... ({len(names)} in all)" if len(names) > MAX_NAMES_SHOWN
                                                 else "")


def _metric_values(runs: list[dict], metric: str) -> tuple[float, ...]:
    return tuple(r[metric] for r in runs if r["status"] == "done" and r[metric] is not None
                 and math.isfinite(r[metric]))


def _row(a: Side, b: Side, name_a: str, name_b: str, metric: str) -> CompareRow:
    runs_a, runs_b = a.configs[name_a], b.configs[name_b]
    return CompareRow(name_a, name_b, _metric_values(runs_a, metric), _metric_values(runs_b, metric),
                      sum(r["status"] == "diverged" for r in runs_a), sum(r["status"] == "diverged" for r in runs_b))


# ---------------------------------------------------------------- what makes the sides comparable


def _spec(run: dict) -> dict:
    return json.loads(run["spec_json"])


def _data_fields(run: dict) -> dict:
    data = dict(_spec(run)["data"])
    data.pop("download", None)  # where the files came from does not change the data
    return data


# aspect -> what it is in each run; a rule lives here, once
ASPECTS: dict[str, Callable[[dict], object]] = {
    "epochs": lambda run: _spec(run)["train"]["epochs"],
    "val_is_test": lambda run: bool(run["val_is_test"]),
    "code version": lambda run: run["code_version"],
    "device": lambda run: run["device"],
}


def _values_text(values: set) -> str:
    return ", ".join(sorted(json.dumps(v) if not isinstance(v, str) else v for v in values))


def _row_differences(runs_a: list[dict], runs_b: list[dict]) -> list[tuple[str, str, str]]:
    """(aspect, A's values, B's values) wherever the two sets of runs differ."""
    if not runs_a or not runs_b:
        return []
    found = []
    for aspect, of in ASPECTS.items():
        values_a, values_b = {of(r) for r in runs_a}, {of(r) for r in runs_b}
        if values_a != values_b:
            found.append((aspect, _values_text(values_a), _values_text(values_b)))
    fields = sorted({k for r in runs_a + runs_b for k in _data_fields(r)})
    for key in fields:
        values_a = {json.dumps(_data_fields(r).get(key), sort_keys=True) for r in runs_a}
        values_b = {json.dumps(_data_fields(r).get(key), sort_keys=True) for r in runs_b}
        if values_a != values_b:
            found.append((f"data.{key}", ", ".join(sorted(values_a)), ", ".join(sorted(values_b))))
    return found


def _differences(a: Side, b: Side, rows: list[CompareRow]) -> list[Difference]:
    grouped: dict[tuple[str, str, str], list[str]] = {}
    for row in rows:
        for found in _row_differences(a.configs[row.config_a], b.configs[row.config_b]):
            grouped.setdefault(found, []).append(row.config)
    return [Difference(aspect, va, vb, tuple(configs)) for (aspect, va, vb), configs in grouped.items()]


# ---------------------------------------------------------------- as text, JSON and CSV


METRIC_NAMES = {"best_val_acc": "best val acc", "final_val_acc": "final val acc", "test_acc": "test acc"}


def table(c: StoreComparison) -> tuple[list[str], list[list[str]]]:
    """The side-by-side table in the report's words: mean ± half-width of the 95% interval (percent), B - A in
    points with its interval, Welch's p (and the corrected one, with a correction) and the verdict."""
    metric = METRIC_NAMES[c.metric]
    adjusted_header = [] if c.correction is None else [f"p ({CORRECTION_TITLES[c.correction]})"]
    header = ["configuration", "n A", f"A {metric} (%)", "n B", f"B {metric} (%)", "B - A (points) [95% interval]",
              "p (Welch)", *adjusted_header, "verdict"]
    rows = []
    for row, comparison in zip(c.rows, c.comparisons):
        adjusted = [] if c.correction is None else [_p_text(comparison and comparison.p_adjusted)]
        rows.append([row.config, _n_text(row.a.n, row.diverged_a), row.a.format(PCT), _n_text(row.b.n, row.diverged_b),
                     row.b.format(PCT), "-" if comparison is None else comparison.format(PCT),
                     _p_text(comparison and comparison.p), *adjusted, _verdict(comparison)])
    return header, rows


def _p_text(p: Optional[float]) -> str:
    return "-" if p is None else f"{p:.2g}"


def _verdict(comparison: Optional[Comparison]) -> str:
    return "no finished runs to compare" if comparison is None else comparison.verdict


def _n_text(n: int, diverged: int) -> str:
    return f"{n} (+{diverged} diverged)" if diverged else str(n)


def sides_text(c: StoreComparison) -> list[str]:
    """Which side is which, in a line each."""
    if c.one_store:
        return [f"A: {c.rows[0].config_a}, B: {c.rows[0].config_b}, of {c.a.label}"]
    return [f"A: {c.a.label}", f"B: {c.b.label}"]


def differences_text(c: StoreComparison) -> list[str]:
    every = len(c.rows)
    lines = []
    for d in c.differences:
        where = "every configuration" if len(d.configs) == every and every > 1 else ", ".join(d.configs)
        lines.append(f"{d.aspect}: A {d.a}; B {d.b} ({where})")
    return lines


def _finite(value) -> Optional[float]:
    return None if value is None or (isinstance(value, float) and not math.isfinite(value)) else value


def _summary_json(s: Summary, values: tuple[float, ...], diverged: int) -> dict:
    return {"n": s.n, "mean": _finite(s.mean), "std": _finite(s.std), "low": s.low, "high": s.high,
            "values": list(values), "diverged": diverged}


def to_json(c: StoreComparison) -> dict:
    def comparison(d: Optional[Comparison]) -> Optional[dict]:
        return None if d is None else {"diff": d.diff, "low": d.low, "high": d.high, "p": d.p,
                                       "p_adjusted": d.p_adjusted, "distinguishable": d.distinguishable}

    return {"metric": c.metric, "correction": c.correction or "none",
            "a": {"store": str(c.a.store), "experiment": c.a.experiment},
            "b": {"store": str(c.b.store), "experiment": c.b.experiment},
            "rows": [{"config_a": r.config_a, "config_b": r.config_b,
                      "a": _summary_json(r.a, r.values_a, r.diverged_a),
                      "b": _summary_json(r.b, r.values_b, r.diverged_b),
                      "b_minus_a": comparison(d), "verdict": _verdict(d)} for r, d in zip(c.rows, c.comparisons)],
            "differences": [{"aspect": d.aspect, "a": d.a, "b": d.b, "configs": list(d.configs)}
                            for d in c.differences]}


CSV_COLUMNS = ["config_a", "config_b", "metric", "n_a", "mean_a", "ci_low_a", "ci_high_a", "diverged_a", "n_b",
               "mean_b", "ci_low_b", "ci_high_b", "diverged_b", "diff", "diff_ci_low", "diff_ci_high", "p_value",
               "p_adjusted", "correction", "distinguishable", "verdict", "differs"]


def to_csv(c: StoreComparison) -> str:
    """One line per row, in fractions (as summary.csv), a plain table for `pandas.read_csv`: what differs between
    the sides where the row is (`differs`: aspect, A's and B's values; ... ) is a column of its own."""
    differs = {}
    for d in c.differences:
        for config in d.configs:
            differs.setdefault(config, []).append(f"{d.aspect}: A {d.a}, B {d.b}")
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for r, d in zip(c.rows, c.comparisons):
        a, b = r.a, r.b
        writer.writerow(csv_number(x) for x in [
            r.config_a, r.config_b, c.metric, a.n, a.mean, a.low, a.high, r.diverged_a, b.n, b.mean, b.low, b.high,
            r.diverged_b, d.diff if d else None, d.low if d else None, d.high if d else None, d.p if d else None,
            d.p_adjusted if d else None, c.correction or "none",
            "" if d is None or d.distinguishable is None else str(d.distinguishable).lower(), _verdict(d),
            "; ".join(differs.get(r.config, []))])
    return buf.getvalue()
