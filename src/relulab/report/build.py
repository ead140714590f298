"""Reports from the store: tables (Markdown, CSV), plots (PNG, optional SVG), one self-contained HTML file.

    paths = build_report("runs/quickstart.sqlite")        # -> runs/quickstart-report/report.html, ...

Everything comes from the store (the plan saved by `relulab run`, the runs, their
epochs and probe statistics, the analyses), so a report can be rebuilt at any time,
including while a sweep is still running (missing runs are counted and said).

Per part: the seeds' table (configuration | best val acc | time), extended with the
95% interval over seeds, final accuracy, best epoch, seeds and the comparison with the
baseline; accuracy and loss curves (mean over seeds, band = range over seeds), all
configurations on one chart (seed 001's figure), time per epoch, per-slot sparsity
when probed, post-activation mean and variance through depth at initialisation and
after training when `mean_out` and `std_out` are probed (seed 002's premise), and the
part's analyses (activation plots with derivatives, activation cost, ReLU's
demonstration). A part whose validation data is the test set is flagged
at the top of every format. The HTML embeds its images (base64) and links nothing
outside itself; jinja2's autoescape escapes every user-provided string.
"""
from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Callable, Optional

import jinja2
import numpy as np
import torch
import yaml
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from relulab.zoo import activations
from relulab.core.errors import UserError
from relulab.core.stats import ConfigStats, RunNumbers, describe_runs, with_baseline
from relulab.store.database import Store, load_timings, timing_key
from relulab.core.util import check_output_dir, staged_folder, write_atomic, write_bytes_atomic

PCT = 100.0  # accuracies are shown in percent, as in the seeds' tables
VAL_IS_TEST_WARNING = ("validation data is the test set ({parts}): best-epoch accuracies are chosen on the test "
                       "set and are optimistic; use a held-out split (e.g. stratified:0.1) for model selection")


# ---------------------------------------------------------------- collecting


@dataclass
class VariantData:
    name: str
    config: str
    grid: dict
    baseline: Optional[str]
    seeds: list[int]
    runs: list[dict]  # store rows, in seed order
    epochs: dict[str, list[dict]]  # run key -> epoch rows
    slot_stats: dict[str, dict]  # run key -> {stat: {epoch: {slot: value}}}
    stats: Optional[ConfigStats] = None
    alone: Optional[dict] = None  # the configuration's timed pass alone on its runs' device (store.load_timings)

    def numbers(self) -> list[RunNumbers]:
        return [RunNumbers(r["seed"], r["status"], _nan(r["best_val_acc"]), _nan(r["final_val_acc"]),
                           r["best_epoch"], r["seconds"], r["epochs"], r["test_acc"], r["diverged_at"])
                for r in self.runs]


@dataclass
class PartData:
    name: str
    description: str
    val_is_test: bool
    baseline: Optional[str]
    variants: list[VariantData]
    analyses: dict[str, dict]  # name -> stored artifact {"value", "provenance"}
    searches: list[dict] = field(default_factory=list)  # issue 4: relulab search results (store.load_searches)
    run_probes: dict[str, list[dict]] = field(default_factory=dict)  # issue 4: variant -> final-model probe rows
    # issue 19: (variant, stored run row, row of its copy retrained for probing) where the probe rows are a copy's
    retrained: list[tuple[str, dict, dict]] = field(default_factory=list)


@dataclass
class ExperimentData:
    name: str
    origin: str
    spec: dict
    overrides: dict  # command-line fields applied to every run
    store: Path
    parts: list[PartData]
    planned: int
    done: int

    @property
    def val_is_test_parts(self) -> list[str]:
        return [p.name for p in self.parts if p.val_is_test]


def _nan(value) -> float:
    return math.nan if value is None else value


def collect(store: Store, name: str) -> ExperimentData:
    from relulab.experiments.run import analysis_key

    exp = store.load_experiment(name)
    keys = [row["run_key"] for row in exp["plan"]]
    runs, epochs, slots = store.runs(keys), store.epochs(keys), store.slot_stats(keys)
    parts = []
    for meta in exp["parts"]:
        rows = [r for r in exp["plan"] if r["part"] == meta["name"]]
        variants = []
        for v in meta["variants"]:
            mine = [r for r in rows if r["variant"] == v["name"]]
            done = [runs[r["run_key"]] for r in mine if r["run_key"] in runs]
            variants.append(VariantData(v["name"], v["config"], v["grid"], mine[0]["baseline"] if mine else None,
                                        [r["seed"] for r in mine], done,
                                        {r["key"]: epochs.get(r["key"], []) for r in done},
                                        {r["key"]: slots.get(r["key"], {}) for r in done}))
        found = {n: store.artifact(analysis_key(name, meta["name"], n, o)) for n, o in meta["analyses"].items()}
        # A single-part spec's description is the experiment's: say it once.
        description = "" if meta["description"] == str(exp["spec"].get("description") or "").strip() \
            else meta["description"]
        parts.append(PartData(meta["name"], description, meta["val_is_test"], meta["baseline"], variants,
                              {n: a for n, a in found.items() if a is not None}))
    attach_probes_and_searches(store, name, parts)  # issue 4 (defined at the end of this module)
    attach_timings(store, exp["plan"], parts)
    _fill_stats(parts)
    return ExperimentData(name, exp["origin"], exp["spec"], exp["overrides"], store.path, parts, len(set(keys)),
                          len(set(keys) & set(runs)))


def attach_timings(store: Store, plan: list[dict], parts: list[PartData]) -> None:
    """Each variant's timed pass alone (relulab.experiments.time_packed_configs), on the device most of its runs
    trained on: a timing from another device would not compare with them."""
    spec_of = {(r["part"], r["variant"]): r["spec_json"] for r in plan}
    keys = {pv: timing_key(spec_json) for pv, spec_json in spec_of.items()}
    timings = load_timings(store, set(keys.values()))
    for part in parts:
        for v in part.variants:
            devices = Counter(r["device"] for r in v.runs)
            if devices and (part.name, v.name) in keys:
                v.alone = timings.get((keys[(part.name, v.name)], devices.most_common(1)[0][0]))


def _fill_stats(parts: list[PartData]) -> None:
    for part in parts:
        by_name = {v.name: v for v in part.variants}
        for v in part.variants:
            v.stats = describe_runs(v.numbers(), len(v.seeds))
            if v.baseline and v.baseline in by_name:
                with_baseline(v.stats, v.numbers(), by_name[v.baseline].numbers())


# ---------------------------------------------------------------- tables


def _fmt(value, digits: int = 2, scale: float = 1.0) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value * scale:.{digits}f}"


def _best_epoch_text(v: VariantData) -> str:
    epochs = [r["best_epoch"] for r in v.runs if r["status"] == "done" and r["best_epoch"] is not None]
    if not epochs:
        return "-"
    mean = sum(epochs) / len(epochs)
    return f"{mean:.1f} ({min(epochs)}-{max(epochs)})" if len(epochs) > 1 else str(epochs[0])


def _seeds_text(v: VariantData) -> str:
    s = v.stats
    text = str(s.done) if s.done == s.planned else f"{s.done} of {s.planned}"
    return text + (f", {s.diverged} diverged" if s.diverged else "")


def _vs_text(v: VariantData, part: PartData) -> str:
    if part.baseline is None:
        return ""
    if v.baseline is None:
        return "baseline"
    c = v.stats.vs_baseline
    if c is None:
        return "no finished runs to compare"
    return f"{c.format(PCT)}: {c.verdict}"


TABLE_HEADER = ["configuration", "best val acc (%)", "final val acc (%)", "best epoch", "seconds", "s / epoch",
                "seeds", "vs baseline (best val acc, points)"]


def summary_rows(part: PartData) -> list[list[str]]:
    """The seeds' table, extended: mean ± 95% interval half-width over seeds."""
    rows = []
    for v in part.variants:
        s = v.stats
        rows.append([v.name, s.best_val_acc.format(PCT), s.final_val_acc.format(PCT), _best_epoch_text(v),
                     s.seconds.format(1.0, 1), _fmt(s.seconds_per_epoch.mean, 2), _seeds_text(v), _vs_text(v, part)])
    if part.baseline is None:
        return [r[:-1] for r in rows]
    return rows


def table_header(part: PartData) -> list[str]:
    return TABLE_HEADER if part.baseline is not None else TABLE_HEADER[:-1]


COMPARISON_HEADER = ["configuration", "baseline", "metric", "difference (points)", "95% interval", "p (Welch)",
                     "verdict"]


def comparison_rows(part: PartData) -> list[list[str]]:
    rows = []
    for v in part.variants:
        if v.baseline is None:
            continue
        for metric, c in (("best val acc", v.stats.vs_baseline), ("final val acc", v.stats.vs_baseline_final)):
            if c is None:
                rows.append([v.name, v.baseline, metric, "-", "-", "-", "no finished runs to compare"])
                continue
            interval = "-" if c.low is None else f"[{c.low * PCT:+.2f}, {c.high * PCT:+.2f}]"
            rows.append([v.name, v.baseline, metric, f"{c.diff * PCT:+.2f}", interval,
                         "-" if c.p is None else f"{c.p:.2g}", c.verdict])
    return rows


def sparsity_by_slot(v: VariantData, stat: str = "sparsity") -> dict[int, float]:
    """Mean over the variant's runs of `stat` at each run's last probed epoch, per slot."""
    per_slot: dict[int, list[float]] = {}
    for stats in v.slot_stats.values():
        by_epoch = stats.get(stat)
        if not by_epoch:
            continue
        for slot, value in by_epoch[max(by_epoch)].items():
            per_slot.setdefault(slot, []).append(value)
    return {slot: float(np.nanmean(vals)) for slot, vals in sorted(per_slot.items())}


def sparsity_rows(part: PartData) -> tuple[list[str], list[list[str]]]:
    table = {v.name: sparsity_by_slot(v) for v in part.variants}
    slots = sorted({s for by_slot in table.values() for s in by_slot})
    if not slots:
        return [], []
    header = ["configuration"] + [f"slot {s}" for s in slots]
    return header, [[name] + [_fmt(by_slot.get(s), 3) for s in slots] for name, by_slot in table.items() if by_slot]


def cost_rows(value: dict) -> list[list[str]]:
    rows = value["rows"]
    relu = next((r["forward_backward_ms"] for r in rows if r["activation"] == "relu"), None)
    return [[r["activation"], f"{r['forward_ms']:.2f}", f"{r['forward_backward_ms']:.2f}",
             f"{r['forward_backward_ms'] / relu:.2f}x" if relu else "-"] for r in rows]


COST_HEADER = ["activation", "forward (ms)", "forward + backward (ms)", "vs relu"]


# ---------------------------------------------------------------- figures


@dataclass
class FigureOut:
    slug: str
    title: str
    caption: str
    png: bytes
    svg: Optional[bytes] = None

    @property
    def png_base64(self) -> str:
        return base64.b64encode(self.png).decode("ascii")


def _new_figure(width: float = 7.0, height: float = 4.2):
    from matplotlib.figure import Figure  # the object API: no pyplot, no global backend switch

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _save(fig, slug: str, title: str, caption: str, svg: bool) -> FigureOut:
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=110, metadata={"Software": None})
    svg_bytes = None
    if svg:
        buf = io.BytesIO()
        fig.savefig(buf, format="svg", metadata={"Date": None})
        svg_bytes = buf.getvalue()
    return FigureOut(slug, title, caption, png.getvalue(), svg_bytes)


def _colors(n: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def curve(v: VariantData, metric: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(epochs, mean, low, high) of `metric` over the variant's runs; band = range over seeds."""
    # Columns are the epoch numbers the store holds (not 1..N): a run cut short, or a store whose numbers were
    # damaged, still draws what it has.
    numbers = sorted({row["epoch"] for rows in v.epochs.values() for row in rows})
    column = {epoch: i for i, epoch in enumerate(numbers)}
    table = np.full((len(v.epochs), len(numbers)), np.nan)
    for i, rows in enumerate(v.epochs.values()):
        for row in rows:
            value = row[metric]
            table[i, column[row["epoch"]]] = value if value is not None and math.isfinite(value) else np.nan
    keep = ~np.all(np.isnan(table), axis=0) if numbers else np.zeros(0, dtype=bool)
    epochs = np.asarray(numbers, dtype=np.int64)[keep]
    table = table[:, keep]
    if table.size == 0:
        return epochs, np.zeros(0), np.zeros(0), np.zeros(0)
    return epochs, np.nanmean(table, 0), np.nanmin(table, 0), np.nanmax(table, 0)


def _plot_metric(ax, part: PartData, metric: str, label: str, scale: float = 1.0, legend: bool = True) -> None:
    for color, v in zip(_colors(len(part.variants)), part.variants):
        epochs, mean, low, high = curve(v, metric)
        if not len(epochs):
            continue
        ax.plot(epochs, mean * scale, color=color, marker="o", markersize=3, label=v.name)
        if len(v.epochs) > 1:
            ax.fill_between(epochs, low * scale, high * scale, color=color, alpha=0.18, linewidth=0)
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(label)
    ax.grid(alpha=0.3)
    if "loss" in metric and _all_positive(ax):
        ax.set_yscale("log")
    if legend and part.variants:
        ax.legend(fontsize=8)


def _all_positive(ax) -> bool:
    ys = [y for line in ax.get_lines() for y in line.get_ydata() if np.isfinite(y)]
    return bool(ys) and min(ys) > 0 and max(ys) / min(ys) > 20


def accuracy_figure(part: PartData, svg: bool) -> FigureOut:
    fig = _new_figure()
    ax = fig.add_subplot()
    _plot_metric(ax, part, "val_acc", "validation accuracy (%)", PCT)
    return _save(fig, "val-accuracy", "Validation accuracy, all configurations",
                 "Mean over seeds; the band is the range over seeds.", svg)


def curves_figure(part: PartData, svg: bool) -> FigureOut:
    fig = _new_figure(10, 7)
    axes = fig.subplots(2, 2)
    panels = [("train_acc", "train accuracy (%)", PCT), ("val_acc", "validation accuracy (%)", PCT),
              ("train_loss", "train loss", 1.0), ("val_loss", "validation loss", 1.0)]
    for ax, (metric, label, scale) in zip(axes.flat, panels):
        _plot_metric(ax, part, metric, label, scale, legend=metric == "val_acc")
    return _save(fig, "curves", "Accuracy and loss", "Mean over seeds; the band is the range over seeds. Train "
                 "numbers are running means over each epoch (as Keras reports them).", svg)


def epoch_time_figure(part: PartData, svg: bool) -> FigureOut:
    fig = _new_figure(7, 0.6 + 0.38 * max(3, len(part.variants)))
    ax = fig.add_subplot()
    names, means, lows, highs = [], [], [], []
    for v in part.variants:
        per_run = [r["seconds"] / r["epochs"] for r in v.runs if r["epochs"]]
        names.append(v.name)
        means.append(np.mean(per_run) if per_run else 0.0)
        lows.append(min(per_run) if per_run else 0.0)
        highs.append(max(per_run) if per_run else 0.0)
    y = np.arange(len(names))
    # Clipped: packed runs share one timing, and the mean of equal numbers can round below their minimum.
    err = np.clip(np.array([np.subtract(means, lows), np.subtract(highs, means)]), 0, None)
    alone = [v.alone["epoch_seconds"] if v.alone else 0.0 for v in part.variants]
    caption = "Measured wall time per epoch, mean over runs; whiskers: range over runs."
    if any(alone):  # each configuration's own time beside its packed share
        ax.barh(y - 0.2, means, 0.4, xerr=err, color=_colors(len(names)), capsize=3)
        ax.barh(y + 0.2, alone, 0.4, color=_colors(len(names)), alpha=0.5, hatch="//")
        ax.legend(handles=[Patch(color="0.45", label="as trained (packed share)"),
                           Patch(facecolor="0.45", alpha=0.5, hatch="//", label="alone (timed pass)")],
                  fontsize=8, loc="lower right")
        caption += " Hatched: one model of the configuration timed alone (a short timed pass, scaled to an epoch)."
    else:
        ax.barh(y, means, xerr=err, color=_colors(len(names)), capsize=3)
    ax.set_yticks(y, names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("seconds per epoch (training + validation)")
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, "epoch-time", "Time per epoch", caption, svg)


def _trained_packed(run: dict) -> bool:
    return run["data"].get("trained_with", 1) > 1


def _mean_per_epoch(runs: list[dict]) -> Optional[float]:
    per_run = [r["seconds"] / r["epochs"] for r in runs if r["epochs"]]
    return float(np.mean(per_run)) if per_run else None


def _alone_seconds(v: VariantData) -> Optional[float]:
    """A configuration's own seconds per epoch: its timed pass, else its runs that trained alone."""
    if v.alone:
        return v.alone["epoch_seconds"]
    return _mean_per_epoch([r for r in v.runs if not _trained_packed(r)])


def _seconds(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.3g}"


def time_table(part: PartData) -> tuple[list[str], list[list[str]]]:
    """Per configuration: seconds per epoch as the sweep trained it (packed: each run's share of a joint time) and
    alone (a timed pass of one model, or the runs that trained alone); against the baseline where there is one."""
    steps = {v.alone["steps"] for v in part.variants if v.alone}
    alone_header = f"s / epoch alone (timed pass, {steps.pop()} steps)" if len(steps) == 1 else \
        "s / epoch alone (timed pass)"
    header = ["configuration", "s / epoch (packed share)", alone_header]
    by_name = {v.name: v for v in part.variants}
    rows = []
    for v in part.variants:
        alone = _alone_seconds(v)
        text = _seconds(alone)
        if alone is not None and not v.alone:
            text += " (its runs, trained alone)"
        elif v.alone and len(steps) > 1:
            text += f" ({v.alone['steps']} steps)"
        row = [v.name, _seconds(_mean_per_epoch([r for r in v.runs if _trained_packed(r)])), text]
        if part.baseline is not None:
            base = _alone_seconds(by_name[v.baseline]) if v.baseline in by_name else None
            row.append("baseline" if v.baseline is None else
                       "-" if alone is None or not base else f"{alone / base:.2f}x")
        rows.append(row)
    if part.baseline is not None:
        header.append("alone vs baseline")
    return header, rows


def _time_note(part: PartData, packed: int) -> str:
    timed = [v.alone for v in part.variants if v.alone]
    note = (f"{packed} runs were trained together with others as one batched computation; their seconds are each "
            "run's share of the joint wall time, not the time a run takes alone (pack: false in the spec trains "
            "them one by one).")
    if timed:
        t = timed[0]
        note += (f" The alone column times one model of each configuration by itself on the same device and data: "
                 f"{t['steps']} training steps after {t['warmup']} warm-up steps, scaled to an epoch's "
                 f"{t['steps_per_epoch']} steps, plus one validation pass; measured once per configuration and "
                 "device (time_alone: false in the spec skips it).")
    if any(v.alone is None and any(_trained_packed(r) for r in v.runs) for v in part.variants):
        note += (" '-': not timed alone (time_alone: false, or its runs trained on another device than the one "
                 "relulab run drove the sweep from).")
    return note


def sparsity_figure(part: PartData, svg: bool) -> Optional[FigureOut]:
    table = {v.name: sparsity_by_slot(v) for v in part.variants}
    if not any(table.values()):
        return None
    fig = _new_figure()
    ax = fig.add_subplot()
    for color, (name, by_slot) in zip(_colors(len(table)), table.items()):
        if by_slot:
            ax.plot(list(by_slot), list(by_slot.values()), color=color, marker="o", label=name)
    ax.set_xlabel("slot (layer)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("fraction of exact zeros")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, "sparsity", "Sparsity per layer", "Fraction of exact zeros in each slot's output on the probe "
                 "set after the last epoch, mean over seeds.", svg)


# ---------------------------------------------------------------- through depth (seed 002's premise)
#
# SELU's claim (Klambauer et al. 2017): with LeCun init and standardised inputs, every layer's output keeps mean 0
# and variance 1. The probes `mean_out` and `std_out` measure each slot's output over the probe set; the figure
# draws them (variance = std squared) by depth, before training (epoch 0) and after the last epoch, against
# that target.

DEPTH_TARGET = {"mean": 0.0, "variance": 1.0}
MAX_TABLE_SLOTS = 12  # slots a by-slot table shows before it shows a representative selection


@dataclass
class DepthProfile:
    """One statistic of one configuration at one epoch, by slot: mean over seeds and the seeds' range."""

    slots: list[int]
    mean: list[float]
    low: list[float]
    high: list[float]

    def at(self, slot: int) -> float:
        return self.mean[self.slots.index(slot)] if slot in self.slots else math.nan


def _depth_values(v: VariantData, epoch_of: Callable[[dict], Optional[int]]) -> dict[str, dict[int, list[float]]]:
    """{"mean" | "variance": {slot: one value per run}} at the epoch `epoch_of` picks from each run's epochs."""
    out: dict[str, dict[int, list[float]]] = {"mean": {}, "variance": {}}
    for stats in v.slot_stats.values():
        means, stds = stats.get("mean_out") or {}, stats.get("std_out") or {}
        epoch = epoch_of(means)
        if epoch is None or epoch not in stds:
            continue
        for slot, value in means[epoch].items():
            out["mean"].setdefault(slot, []).append(value)
        for slot, value in stds[epoch].items():
            out["variance"].setdefault(slot, []).append(value * value if value is not None else math.nan)
    return out


def _profile(by_slot: dict[int, list[float]]) -> Optional[DepthProfile]:
    slots, mean, low, high = [], [], [], []
    for slot, values in sorted(by_slot.items()):
        finite = [x for x in values if x is not None and math.isfinite(x)]
        slots.append(slot)
        mean.append(float(np.mean(finite)) if finite else math.nan)
        low.append(min(finite) if finite else math.nan)
        high.append(max(finite) if finite else math.nan)
    return DepthProfile(slots, mean, low, high) if slots else None


def depth_profiles(v: VariantData) -> dict[str, dict[str, DepthProfile]]:
    """{"init" | "trained": {"mean" | "variance": profile}} of a configuration's slot outputs; "init" is epoch 0
    (before training; absent from stores written before it was measured), "trained" each run's last epoch."""
    pick = {"init": lambda by_epoch: 0 if 0 in by_epoch else None,
            "trained": lambda by_epoch: max((e for e in by_epoch if e > 0), default=None)}
    out = {}
    for when, epoch_of in pick.items():
        profiles = {what: _profile(values) for what, values in _depth_values(v, epoch_of).items()}
        if all(profiles.values()):
            out[when] = profiles
    return out


def _last_epoch(part: PartData) -> Optional[int]:
    epochs = {e for v in part.variants for stats in v.slot_stats.values() for e in (stats.get("mean_out") or {})}
    return max((e for e in epochs if e > 0), default=None)


def _depth_scale(ax, what: str, values: list[float]) -> bool:
    """Variances through 50 layers can vanish (1e-19) or explode: a log scale then, where a variance of exactly 0
    (a layer whose outputs are all equal) cannot be drawn; means far from 0: a symmetric log scale. Whether
    zeros were left out."""
    finite = [x for x in values if math.isfinite(x)]
    positive = [x for x in finite if x > 0]
    if what == "variance" and positive and max(positive) / min(positive) > 50:
        ax.set_yscale("log", nonpositive="mask")
        return any(x <= 0 for x in finite)
    if what == "mean" and finite and max(abs(x) for x in finite) > 10:
        ax.set_yscale("symlog", linthresh=1.0)
    return False


# The probes run the model in eval mode, as it is evaluated; what that means for batch norm must be said beside
# the numbers, or "with batch norm, at initialisation" reads as something it is not.
DEPTH_EVAL_NOTE = ("Measured in eval mode: batch norm applies its running statistics, which before training are "
                   "mean 0 and variance 1 (it passes its input through), so at epoch 0 a model with batch norm "
                   "measures like the same weights without it; after training they are the running averages "
                   "(Keras' momentum 0.99 is slow to settle).")


def depth_figure(part: PartData, table: dict[str, dict], svg: bool) -> FigureOut:
    """Rows: mean, variance; columns: at initialisation, after training (one y scale per row, so that the two
    can be compared); a line per configuration."""
    whens = [w for w in ("init", "trained") if any(w in p for p in table.values())]
    fig = _new_figure(5.2 * len(whens) + 1.6, 7.4)
    axes = fig.subplots(2, len(whens), squeeze=False, sharex=True, sharey="row")
    last = _last_epoch(part)
    titles = {"init": "at initialisation (epoch 0)", "trained": f"after training (epoch {last})"}
    zeros = False
    for row, what in enumerate(("mean", "variance")):
        drawn = [DEPTH_TARGET[what]] + [x for profiles in table.values() for when in whens if when in profiles
                                        for p in [profiles[when][what]] for x in p.mean + p.low + p.high]
        zeros |= _depth_scale(axes[row][0], what, drawn)  # shared by the row
        log = axes[row][0].get_yscale() == "log"
        for col, when in enumerate(whens):
            ax = axes[row][col]
            for color, (name, profiles) in zip(_colors(len(table)), table.items()):
                if when not in profiles:
                    continue
                p = profiles[when][what]
                # on a log scale a band reaching 0 is cut there (NaN), not drawn to a masked point
                low = [x if not log or x > 0 else math.nan for x in p.low]
                ax.plot(p.slots, p.mean, color=color, marker="o", markersize=2.5, linewidth=1.3, label=name)
                ax.fill_between(p.slots, low, p.high, color=color, alpha=0.18, linewidth=0)
            ax.axhline(DEPTH_TARGET[what], color="black", linestyle="--", linewidth=1,
                       label="target (mean 0, variance 1)")
            ax.set_title(f"{what} of each slot's output, {titles[when]}", fontsize=9)
            ax.grid(alpha=0.3)
            if row == 1:
                ax.set_xlabel("slot (depth)")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes[row][0].set_ylabel(what)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right center", fontsize=8)
    caption = ("Mean and variance (std squared) of each slot's output over every entry of the probe set, mean over "
               "seeds; the band is the range over seeds; dashed: the self-normalising target (mean 0, variance 1). "
               "Left: the network as initialised; right: after the last epoch. " + DEPTH_EVAL_NOTE)
    if zeros:
        caption += " Variances of exactly 0 (a slot whose outputs are all equal) are off the log scale."
    return _save(fig, "depth", "Post-activation mean and variance through depth", caption, svg)


def representative_slots(slots: list[int], most: int = MAX_TABLE_SLOTS) -> list[int]:
    """Every slot when there are few; else the first, the last and every multiple of a round step between."""
    slots = sorted(slots)
    if len(slots) <= most:
        return slots
    for step in (2, 5, 10, 20, 25, 50, 100, 200, 250, 500, 1000):
        picks = sorted({slots[0], slots[-1], *(s for s in slots if s % step == 0)})
        if len(picks) <= most:
            return picks
    return sorted({slots[0], slots[-1]})


def _depth_cell(profiles: dict[str, DepthProfile], slot: int) -> str:
    return f"{_num_text(profiles['mean'].at(slot), 3)} / {_num_text(profiles['variance'].at(slot), 3)}"


def depth_rows(part: PartData, table: dict[str, dict]) -> tuple[list[str], list[list[str]]]:
    """A row per (representative) slot; for each configuration a column at init and one after training, each
    cell 'mean / variance'."""
    last = _last_epoch(part)
    columns = [(name, when) for name, profiles in table.items() for when in ("init", "trained") if when in profiles]
    header = ["slot"] + [f"{name} {'init' if when == 'init' else f'epoch {last}'}" for name, when in columns]
    slots = sorted({s for profiles in table.values() for p in profiles.values() for s in p["mean"].slots})
    rows = [[str(slot)] + [_depth_cell(table[name][when], slot) for name, when in columns]
            for slot in representative_slots(slots)]
    return header, rows


def depth_sections(part: PartData, svg: bool) -> list[Section]:
    table = {v.name: depth_profiles(v) for v in part.variants}
    table = {name: profiles for name, profiles in table.items() if profiles}
    if not table:
        return []
    header, rows = depth_rows(part, table)
    shown = len(rows)
    total = len({s for profiles in table.values() for p in profiles.values() for s in p["mean"].slots})
    which = "every slot" if shown == total else f"{shown} of the {total} slots (the figure has every slot)"
    note = (f"Each cell: mean / variance of the slot's output over the probe set, mean over seeds; {which}. The "
            f"self-normalising target is mean 0, variance 1. {DEPTH_EVAL_NOTE}")
    if not any("init" in profiles for profiles in table.values()):
        note += " This store has no measurement before training (epoch 0): it was written before relulab made one."
    return [Section("Through depth: post-activation mean and variance", header, rows, figure=depth_figure(
        part, table, svg), note=note)]


def activations_figure(value: dict, svg: bool) -> FigureOut:
    names, (low, high) = value["activations"], value["range"]
    cols = min(3, len(names))
    rows = math.ceil(len(names) / cols)
    fig = _new_figure(3.4 * cols, 2.6 * rows)
    x = torch.linspace(low, high, 801, dtype=torch.float64)
    for i, name in enumerate(names):
        ax = fig.add_subplot(rows, cols, i + 1)
        ax.plot(x, activations.activation_fn(name)(x), label=name)
        ax.plot(x, activations.activation_grad(name)(x), linestyle="--", label="derivative")
        ax.axhline(0, color="grey", linewidth=0.6)
        ax.axvline(0, color="grey", linewidth=0.6)
        ax.set_title(name, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return _save(fig, "activations", "Activation functions and their derivatives",
                 "Solid: the function; dashed: its closed-form derivative (relulab.activations; 0 at x = 0 for "
                 "ReLU by convention).", svg)


def cost_figure(value: dict, svg: bool) -> FigureOut:
    rows = value["rows"]
    fig = _new_figure(7, 0.6 + 0.35 * max(3, len(rows)))
    ax = fig.add_subplot()
    y = np.arange(len(rows))
    ax.barh(y - 0.2, [r["forward_ms"] for r in rows], height=0.4, label="forward")
    ax.barh(y + 0.2, [r["forward_backward_ms"] for r in rows], height=0.4, label="forward + backward")
    ax.set_yticks(y, [r["activation"] for r in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(f"milliseconds for {value['elements']:,} elements ({value['device']})")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, "activation-cost", "Cost of each activation function",
                 f"Median of {value['repeats']} timings after two warm-ups.", svg)


# ---------------------------------------------------------------- sections


@dataclass
class Section:
    """One rendered block of a part: an optional table, text lines, a figure."""

    title: str
    header: list[str] = field(default_factory=list)
    rows: list[list[str]] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)
    figure: Optional[FigureOut] = None
    note: str = ""


def _relu_demo_section(value: dict, svg: bool) -> Section:
    return Section("ReLU's demonstration", lines=value["lines"],
                   note="relulab's relu applied to seed 004's inputs.")


def _activation_plots_section(value: dict, svg: bool) -> Section:
    return Section("Activation functions", figure=activations_figure(value, svg))


def _activation_cost_section(value: dict, svg: bool) -> Section:
    return Section("Cost of each activation", COST_HEADER, cost_rows(value), figure=cost_figure(value, svg),
                   note=f"{value['elements']:,} float32 elements on {value['device']}; median of "
                        f"{value['repeats']} timings.")


# analysis name -> renderer; relulab.analyses.ANALYSES has the same names
RENDERERS: dict[str, Callable[[dict, bool], Section]] = {
    "relu_demo": _relu_demo_section,
    "activation_plots": _activation_plots_section,
    "activation_cost": _activation_cost_section,
}


@dataclass
class PartReport:
    data: PartData
    slug: str
    header: list[str]
    rows: list[list[str]]
    comparisons: list[list[str]]
    sections: list[Section]

    @property
    def figures(self) -> list[FigureOut]:
        return [s.figure for s in self.sections if s.figure is not None]


def _slug(index: int, name: str) -> str:
    return f"{index + 1}-{re.sub(r'[^A-Za-z0-9_.-]+', '-', name)}"


def _packed(part: PartData) -> int:
    """How many of the part's runs were trained together with others (relulab.pack)."""
    return sum(_trained_packed(r) for v in part.variants for r in v.runs)


def part_report(index: int, part: PartData, svg: bool) -> PartReport:
    sections = []
    if any(v.runs for v in part.variants):
        packed = _packed(part)
        header, rows = time_table(part) if packed else ([], [])
        sections += [Section("Validation accuracy", figure=accuracy_figure(part, svg)),
                     Section("Curves", figure=curves_figure(part, svg)),
                     Section("Time per epoch", header, rows, figure=epoch_time_figure(part, svg),
                             note=_time_note(part, packed) if packed else "")]
    sections += depth_sections(part, svg)
    header, rows = sparsity_rows(part)
    if rows:
        sections.append(Section("Sparsity per layer", header if len(header) <= 13 else [],
                                rows if len(header) <= 13 else [], figure=sparsity_figure(part, svg),
                                note="Fraction of exact zeros in each slot's output (last epoch, mean over seeds)."))
    for name, artifact in part.analyses.items():
        sections.append(RENDERERS[name](artifact["value"], svg))
    sections += probe_search_sections(part, svg)  # issue 4 (defined at the end of this module)
    return PartReport(part, _slug(index, part.name), table_header(part), summary_rows(part),
                      comparison_rows(part), sections)


# ---------------------------------------------------------------- writing


def _md_escape(text) -> str:
    return html.escape(" ".join(str(text).split()), quote=False).replace("|", "\\|")


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(_md_escape(h) for h in header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(_md_escape(c) for c in row) + " |" for row in rows]


def _warning(data: ExperimentData) -> Optional[str]:
    parts = data.val_is_test_parts
    if not parts:
        return None
    return VAL_IS_TEST_WARNING.format(parts=", ".join(parts))


def markdown(data: ExperimentData, reports: list[PartReport]) -> str:
    lines = []
    warning = _warning(data)
    if warning:
        lines += [f"> **Warning:** {_md_escape(warning)}", ""]
    lines += [f"# {_md_escape(data.name)}", ""]
    description = data.spec.get("description")
    if description:
        lines += [_md_escape(description), ""]
    lines += [f"Runs in the store: {data.done} of {data.planned} planned. Accuracies in percent: mean ± half-width "
              "of the 95% interval over seeds (Student t); comparisons: Welch's t-test against the baseline.", ""]
    if data.overrides:
        lines += ["Command-line overrides, applied to every run: "
                  + _md_escape(", ".join(f"{k}={json.dumps(v)}" for k, v in data.overrides.items())), ""]
    for r in reports:
        lines += [f"## {_md_escape(r.data.name)}", ""] if len(reports) > 1 else []
        if r.data.description:
            lines += [_md_escape(r.data.description), ""]
        if r.data.val_is_test:
            lines += ["Validation data: **the test set**.", ""]
        lines += _md_table(r.header, r.rows) + [""]
        if r.comparisons:
            lines += _md_table(COMPARISON_HEADER, r.comparisons) + [""]
        for s in r.sections:
            lines += [f"### {_md_escape(s.title)}", ""]
            if s.note:
                lines += [_md_escape(s.note), ""]
            if s.lines:
                lines += ["```"] + s.lines + ["```", ""]
            if s.rows:
                lines += _md_table(s.header, s.rows) + [""]
            if s.figure:
                lines += [f"![{_md_escape(s.figure.title)}](figures/{r.slug}-{s.figure.slug}.png)", ""]
    return "\n".join(lines)


SUMMARY_COLUMNS = ["experiment", "part", "configuration", "config", "grid", "baseline", "seeds_planned", "runs_done",
                   "runs_diverged", "best_val_acc_mean", "best_val_acc_std", "best_val_acc_ci_low",
                   "best_val_acc_ci_high", "final_val_acc_mean", "final_val_acc_std", "final_val_acc_ci_low",
                   "final_val_acc_ci_high", "best_epoch_mean", "seconds_mean", "seconds_std", "seconds_ci_low",
                   "seconds_ci_high", "seconds_per_epoch_mean", "test_acc_mean", "diff_vs_baseline",
                   "diff_ci_low", "diff_ci_high", "p_value", "distinguishable", "val_is_test"]


def _csv_number(value) -> str:
    if value is None:
        return ""
    if isinstance(value, (float, np.floating)):
        return "" if math.isnan(value) else repr(float(value))
    return str(value)


def _csv_with_header(data: ExperimentData, columns: list[str]):
    """(buffer, csv writer) with the store's warning line, if any, and the column names written."""
    buf = io.StringIO()
    warning = _warning(data)
    if warning:
        buf.write(f"# warning: {warning}\n")
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    return buf, writer


def summary_csv(data: ExperimentData) -> str:
    buf, writer = _csv_with_header(data, SUMMARY_COLUMNS)
    for part in data.parts:
        for v in part.variants:
            s, c = v.stats, v.stats.vs_baseline
            row = [data.name, part.name, v.name, v.config, json.dumps(v.grid, sort_keys=True) if v.grid else "",
                   v.baseline or "", s.planned, s.done, s.diverged,
                   s.best_val_acc.mean, s.best_val_acc.std, s.best_val_acc.low, s.best_val_acc.high,
                   s.final_val_acc.mean, s.final_val_acc.std, s.final_val_acc.low, s.final_val_acc.high,
                   s.best_epoch.mean, s.seconds.mean, s.seconds.std, s.seconds.low, s.seconds.high,
                   s.seconds_per_epoch.mean, s.test_acc.mean,
                   c.diff if c else None, c.low if c else None, c.high if c else None, c.p if c else None,
                   "" if c is None or c.distinguishable is None else str(c.distinguishable).lower(),
                   str(part.val_is_test).lower()]
            writer.writerow([_csv_number(x) for x in row])
    return buf.getvalue()


RUN_COLUMNS = ["experiment", "part", "configuration", "seed", "status", "best_val_acc", "best_epoch", "final_val_acc",
               "test_acc", "diverged_at", "epochs", "seconds", "params", "val_is_test", "device", "code_version",
               "torch_version", "key"]


def runs_csv(data: ExperimentData) -> str:
    buf, writer = _csv_with_header(data, RUN_COLUMNS)
    for part in data.parts:
        for v in part.variants:
            for r in v.runs:
                writer.writerow([_csv_number(x) for x in [
                    data.name, part.name, v.name, r["seed"], r["status"], r["best_val_acc"], r["best_epoch"],
                    r["final_val_acc"], r["test_acc"], r["diverged_at"], r["epochs"], r["seconds"], r["params"],
                    str(bool(r["val_is_test"])).lower(), r["device"], r["code_version"], r["torch_version"],
                    r["key"]]])
    return buf.getvalue()


def provenance_rows(data: ExperimentData) -> list[list[str]]:
    counts: dict[tuple, int] = {}
    for part in data.parts:
        for v in part.variants:
            for r in v.runs:
                key = (r["code_version"], r["torch_version"], r["python_version"], r["device"], r["host"])
                counts[key] = counts.get(key, 0) + 1
    return [[*map(str, k), str(n)] for k, n in sorted(counts.items(), key=lambda kv: -kv[1])]


PROVENANCE_HEADER = ["relulab", "torch", "python", "device", "host", "runs"]


def render_html(data: ExperimentData, reports: list[PartReport]) -> str:
    source = (resources.files("relulab") / "templates" / "report.html").read_text(encoding="utf-8")
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    return env.from_string(source).render(
        data=data, reports=reports, warning=_warning(data), provenance=provenance_rows(data),
        provenance_header=PROVENANCE_HEADER, comparison_header=COMPARISON_HEADER,
        spec_yaml=yaml.safe_dump(data.spec, sort_keys=False, allow_unicode=True),
        overrides=[f"{k}={json.dumps(v)}" for k, v in data.overrides.items()],
        generated=time.strftime("%Y-%m-%d %H:%M:%S %Z"), multiple_parts=len(reports) > 1)


@dataclass
class ReportFiles:
    html: Path
    markdown: Path
    summary_csv: Path
    runs_csv: Path
    figures: list[Path]
    tensorboard: Optional[Path] = None
    extra: list[Path] = field(default_factory=list)  # the searches' CSVs


def default_out_dir(store_path: Path, experiment: str) -> Path:
    return store_path.parent / f"{experiment}-report"


def pick_experiment(store: Store, name: Optional[str]) -> str:
    if name is not None:
        return name
    names = store.experiment_names()
    if not names:
        raise UserError(f"store: {store.path} holds no experiment yet")
    if len(names) > 1:
        raise UserError(f"--experiment: {store.path} holds several experiments ({', '.join(names)}); name one")
    return names[0]


# What a report folder holds. The folder is replaced whole on every report (util.staged_folder), so a folder that
# holds anything else is refused rather than replaced: `--out .` must never take the user's files with it.
REPORT_ENTRIES = re.compile(r"^(?:report\.html|report\.md|summary\.csv|runs\.csv|figures|search-[0-9a-f]+"
                            r"(?:-correlations)?\.csv)$")


def check_report_dir(out: str | Path, field: str = "out_dir") -> Path:
    """`out` can take a report: a new folder, or an earlier report's (which the new one replaces)."""
    out = check_output_dir(out, field)
    if out.is_dir():
        foreign = sorted(p.name for p in out.iterdir() if not REPORT_ENTRIES.match(p.name))
        if foreign:
            shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
            raise UserError(f"{field}: {out} holds files that are not a report's ({shown}); a report replaces its "
                            "folder whole, so give it a folder of its own")
    return out


def check_tensorboard_dir(logdir: str | Path, out: Path, field: str = "tensorboard") -> Path:
    logdir = check_output_dir(logdir, field)
    if logdir == out or out in logdir.parents:
        raise UserError(f"{field}: {logdir} is inside the report folder {out}, which is replaced whole on every "
                        "report; put the logs elsewhere")
    return logdir


def build_report(store_path: str | Path, experiment: Optional[str] = None, out_dir: Optional[str | Path] = None,
                 svg: bool = False, tensorboard: Optional[str | Path] = None) -> ReportFiles:
    """Write report.html, report.md, summary.csv, runs.csv and figures/ for one experiment of a store.

    The files are written into a staging folder beside `out_dir` and put in its place whole, so a killed
    report, or one that meets a full disk, leaves the earlier report as it was."""
    if tensorboard is not None:
        require_tensorboard()  # fail before writing anything when tensorboard is missing
    store = Store(store_path, create=False)
    try:
        name = pick_experiment(store, experiment)
        data = collect(store, name)
    finally:
        store.close()
    out = check_report_dir(Path(out_dir).expanduser().resolve() if out_dir else default_out_dir(data.store, name))
    logdir = check_tensorboard_dir(tensorboard, out) if tensorboard is not None else None
    reports = [part_report(i, p, svg) for i, p in enumerate(data.parts)]
    figures: dict[str, bytes] = {}
    for r in reports:
        for f in r.figures:
            figures[f"figures/{r.slug}-{f.slug}.png"] = f.png
            if f.svg:
                figures[f"figures/{r.slug}-{f.slug}.svg"] = f.svg
    tables = {"report.html": render_html(data, reports), "report.md": markdown(data, reports),
              "summary.csv": summary_csv(data), "runs.csv": runs_csv(data), **search_csvs(data)}
    with staged_folder(out) as staging:
        for relative, blob in figures.items():
            write_bytes_atomic(staging / relative, blob)
        for relative, text in tables.items():
            write_atomic(staging / relative, text)
    files = ReportFiles(out / "report.html", out / "report.md", out / "summary.csv", out / "runs.csv",
                        [out / relative for relative in figures],
                        extra=[out / relative for relative in tables if relative.startswith("search-")])
    if logdir is not None:
        files.tensorboard = write_tensorboard(data, logdir)
    return files


# ---------------------------------------------------------------- TensorBoard


def require_tensorboard():
    """TensorBoard's SummaryWriter, or a UserError saying how to install it."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise UserError("--tensorboard: the tensorboard package is not installed; "
                        "pip install relulab[tensorboard]") from None
    return SummaryWriter


def write_tensorboard(data: ExperimentData, logdir: Path) -> Path:
    """One TensorBoard run per (part, configuration, seed), from the store; rewritten on every report."""
    SummaryWriter = require_tensorboard()
    logdir = logdir.expanduser().resolve()
    for part in data.parts:
        for v in part.variants:
            for r in v.runs:
                folder = logdir / part.name / v.name / f"seed{r['seed']}"
                for old in folder.glob("events.out.tfevents.*"):  # ours, from an earlier report: no duplicates
                    old.unlink()
                writer = SummaryWriter(str(folder))
                for e in v.epochs[r["key"]]:
                    for metric in ("train_loss", "train_acc", "val_loss", "val_acc", "seconds"):
                        if e[metric] is not None and math.isfinite(e[metric]):
                            writer.add_scalar(metric, e[metric], e["epoch"])
                for stat, by_epoch in v.slot_stats[r["key"]].items():
                    for epoch, by_slot in by_epoch.items():
                        for slot, value in by_slot.items():
                            writer.add_scalar(f"{stat}/slot{slot:02d}", value, epoch)
                writer.close()
    return logdir


# ---------------------------------------------------------------- probes and searches (issue 4)
#
# Three kinds of sections, drawn from the store like everything else:
# - per-epoch probe statistics (`slot_stats`, the spec's `probes:`), plotted over epochs, one line per slot;
# - final-model probe statistics (`run_probes`, written by `relulab search` and `relulab probe`): a slot x
#   statistic table per probed configuration (mean over seeds) and, for the baseline, seed 000's layer x class
#   tables of ratio_num and ratio_sum with their heatmaps;
# - each `relulab search` of the part: its path or placements with accuracies (mean ± 95% interval over seeds,
#   Welch comparisons), the heuristic judgement (rank correlations), ReLU count against accuracy for `budget`.

SEED_TABLE_STATS = ("ratio_num", "ratio_sum")  # seed 000's heuristics: shown per class
MAX_EPOCH_PANELS = 8
MAX_EXHAUSTIVE_ROWS = 25


def attach_probes_and_searches(store: Store, name: str, parts: list[PartData]) -> None:
    from relulab.search import load_search_views
    from relulab.store.database import load_run_probes

    searches = load_search_views(store, name)  # with test accuracies and judgements from the stored runs
    for part in parts:
        part.searches = [s for s in searches if s["part"] == part.name]
        for v in part.variants:
            final = {r["key"]: r["epochs"] for r in v.runs}  # the final model only (relulab probe --epoch may
            rows = [r for r in load_run_probes(store, list(final)) if r["epoch"] == final[r["run_key"]]]  # add more)
            rows += _retrained_probes(store, part, v, {r["run_key"] for r in rows})
            if rows:
                part.run_probes[v.name] = rows


def _retrained_probes(store: Store, part: PartData, v: VariantData, probed: set[str]) -> list[dict]:
    """The final-model probe rows of the copies retrained for probing of `v`'s runs that have none of their
    own; each copy is noted in `part.retrained`, so that the report shows its accuracy beside the stored run's."""
    from relulab.store.database import load_run_probes, retrained_key

    unprobed = {retrained_key(r["key"]): r for r in v.runs if r["key"] not in probed}
    copies = store.runs(unprobed)
    rows = [r for r in load_run_probes(store, list(copies)) if r["epoch"] == copies[r["run_key"]]["epochs"]]
    for key in sorted({r["run_key"] for r in rows}, key=lambda k: unprobed[k]["seed"]):
        part.retrained.append((v.name, unprobed[key], copies[key]))
    return rows


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", str(text)).strip("-") or "x"


def _pct(value, digits: int = 2) -> str:
    return _fmt(value, digits, PCT)


def _interval(mean, low, high, scale: float = PCT, digits: int = 2) -> str:
    if mean is None or not math.isfinite(mean):
        return "-"
    if low is None or high is None or not (math.isfinite(low) and math.isfinite(high)):
        return f"{mean * scale:.{digits}f} (n=1)"
    return f"{mean * scale:.{digits}f} ± {(high - low) / 2 * scale:.{digits}f}"


def _diff_text(c: dict) -> str:
    d, low, high = c.get("diff"), c.get("diff_low"), c.get("diff_high")
    if d is None or not math.isfinite(d):
        return "-"
    text = f"{d * PCT:+.2f}"
    if low is not None and high is not None and math.isfinite(low) and math.isfinite(high):
        text += f" [{low * PCT:+.2f}, {high * PCT:+.2f}]"
    return text


def _p_text(p) -> str:
    return "-" if p is None or not math.isfinite(p) else f"{p:.2g}"


def _num_text(value, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:.{digits}g}"


# ---------------------------------------------------------------- probe statistics over epochs


def epoch_stat_curves(v: VariantData, stat: str) -> dict[int, tuple[list[int], list[float]]]:
    """slot -> (epochs, mean over the variant's runs) of one per-epoch statistic."""
    table: dict[int, dict[int, list[float]]] = {}
    for stats in v.slot_stats.values():
        for epoch, by_slot in (stats.get(stat) or {}).items():
            for slot, value in by_slot.items():
                table.setdefault(slot, {}).setdefault(epoch, []).append(value)
    out = {}
    for slot, by_epoch in sorted(table.items()):
        epochs = sorted(by_epoch)
        out[slot] = (epochs, [float(np.nanmean(by_epoch[e])) if any(np.isfinite(by_epoch[e])) else math.nan
                              for e in epochs])
    return out


def stat_over_epochs_figure(title: str, panels: list[tuple[str, dict[int, tuple[list, list]]]], ylabel: str,
                            slug: str, caption: str, svg: bool) -> FigureOut:
    cols = min(3, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig = _new_figure(3.8 * cols + 1.2, 2.9 * rows + 0.4)
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax, (name, curves) in zip(axes.flat, panels):
        colors = _colors(max(1, len(curves)))
        for color, (slot, (epochs, values)) in zip(colors, curves.items()):
            ax.plot(epochs, values, color=color, marker="o", markersize=2.5, label=f"slot {slot}")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside right center", fontsize=7)
    return _save(fig, slug, title, caption, svg)


def _epoch_sections(part: PartData, svg: bool) -> list[Section]:
    from relulab.probes.statistics import STATS

    # sparsity keeps its own section (per layer, last epoch); every other per-epoch statistic is drawn over epochs
    names = sorted({stat for v in part.variants for stats in v.slot_stats.values() for stat in stats} - {"sparsity"},
                   key=lambda n: (list(STATS).index(n) if n in STATS else len(STATS), n))
    sections = []
    for stat in names:
        panels = [(v.name, epoch_stat_curves(v, stat)) for v in part.variants]
        panels = [(n, c) for n, c in panels if has_data(c)]  # saturation of a ReLU model: no panel at all
        if not panels:
            continue
        if len(panels) == 1 and len(next(iter(panels[0][1].values()))[0]) < 2:
            continue  # a single epoch: nothing to plot over epochs
        notes = []
        if len(panels) > MAX_EPOCH_PANELS:
            notes.append(f"Only the first {MAX_EPOCH_PANELS} configurations are drawn.")
        slots = sorted({slot for _, curves in panels for slot in curves})
        drawn = representative_slots(slots)
        if len(drawn) < len(slots):
            notes.append(f"Slots {', '.join(map(str, drawn))} of {len(slots)} are drawn.")
            panels = [(n, {s: c[s] for s in drawn if s in c}) for n, c in panels]
        skipped = [v.name for v in part.variants if v.name not in {n for n, _ in panels}
                   and any(stat in stats for stats in v.slot_stats.values())]
        if skipped:
            notes.append(f"{stat} is undefined for {', '.join(skipped)} (no panel).")
        description = STATS[stat].description if stat in STATS else stat
        sections.append(Section(f"{stat} over epochs", note=" ".join(notes), figure=stat_over_epochs_figure(
            f"{stat} per slot over epochs", panels[:MAX_EPOCH_PANELS], stat, f"epochs-{_safe(stat)}",
            f"{description}; measured on the probe set after every epoch (epoch 0: before training), mean over "
            "seeds.", svg)))
    return sections


def has_data(curves: dict[int, tuple[list, list]]) -> bool:
    """Whether any slot's curve has a finite value (saturation is NaN at every slot of a ReLU model)."""
    return any(math.isfinite(y) for _, values in curves.values() for y in values)


# ---------------------------------------------------------------- final-model probe statistics


def probe_means(rows: list[dict], probe_set: str) -> tuple[dict, dict, list[str], int, dict[int, int]]:
    """From run_probes rows of several runs (seeds), each at its last probed epoch on `probe_set`:
    ({stat: {slot: mean over runs}}, {stat: {slot: {class: mean}}}, class names, runs, {class (-1: all): the
    fewest images it had in any run})."""
    rows = [r for r in rows if r["probe_set"] == probe_set]
    last: dict[str, int] = {}
    for r in rows:
        last[r["run_key"]] = max(last.get(r["run_key"], 0), r["epoch"])
    overall: dict = {}
    per_class: dict = {}
    classes: dict[int, str] = {}
    images: dict[int, int] = {}
    for r in rows:
        if r["epoch"] != last[r["run_key"]]:
            continue
        images[r["class"]] = min(images.get(r["class"], r["images"]), r["images"])
        if r["class"] < 0:
            overall.setdefault(r["stat"], {}).setdefault(r["slot"], []).append(r["value"])
        else:
            classes[r["class"]] = r["class_name"]
            per_class.setdefault(r["stat"], {}).setdefault(r["slot"], {}).setdefault(r["class"], []).append(
                r["value"])

    def mean(values):
        finite = [x for x in values if math.isfinite(x)]
        return float(np.mean(finite)) if finite else math.nan

    return ({s: {k: mean(v) for k, v in by.items()} for s, by in overall.items()},
            {s: {k: {c: mean(v) for c, v in byc.items()} for k, byc in by.items()} for s, by in per_class.items()},
            [classes[c] for c in sorted(classes)], len(last), images)


def heatmap_figure(header: list[str], rows: list[list], title: str, slug: str, caption: str,
                   svg: bool, degenerate: Optional[list[bool]] = None) -> FigureOut:
    """Seed 000's heatmap: a row per slot, a column per class and the average, each cell annotated. Columns marked
    in `degenerate` (relulab.probes.degenerate_columns: a class of one image for a statistic taken across images)
    are grey and say n/a: they are not data, and they do not set the colour scale."""
    values = np.array([[np.nan if v is None else float(v) for v in row[1:]] for row in rows], dtype=float)
    marked = np.zeros(values.shape[1], dtype=bool) if degenerate is None else np.asarray(degenerate, dtype=bool)
    values[:, marked] = np.nan
    fig = _new_figure(1.0 + 0.72 * len(header), 0.9 + 0.42 * len(rows))
    ax = fig.add_subplot()
    finite = values[np.isfinite(values)]
    if marked.any():
        grey = np.where(marked[None, :], 1.0, np.nan) * np.ones_like(values)
        ax.imshow(np.ma.masked_invalid(grey), aspect="auto", cmap="Greys", vmin=0, vmax=5)
    image = ax.imshow(np.ma.masked_invalid(values), aspect="auto", cmap="viridis",
                      vmin=finite.min() if finite.size else 0, vmax=finite.max() if finite.size else 1)
    ax.set_xticks(range(len(header) - 1), header[1:], rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(rows)), [f"slot {row[0]}" for row in rows], fontsize=8)
    ax.axvline(len(header) - 2.5, color="white", linewidth=2)  # the average column stands apart
    middle = (finite.min() + finite.max()) / 2 if finite.size else 0
    for i in range(values.shape[0]):
        for j in range(values.shape[1]):
            if marked[j]:
                ax.text(j, i, "n/a", ha="center", va="center", fontsize=6.5, color="dimgrey")
            elif np.isfinite(values[i, j]):
                ax.text(j, i, f"{values[i, j]:.2f}", ha="center", va="center", fontsize=6.5,
                        color="black" if values[i, j] > middle else "white")
    fig.colorbar(image, ax=ax, fraction=0.04)
    if marked.any():
        caption += " Grey n/a: a class with one probe image, where this statistic (taken across images) is fixed " \
                   "by its definition, not measured."
    return _save(fig, slug, title, caption, svg)


def _class_table_rows(per_class: dict, overall: dict, classes: list[str]) -> tuple[list[str], list[list]]:
    header = ["slot"] + classes + ["average"]
    rows = [[slot] + [per_class.get(slot, {}).get(c, math.nan) for c in range(len(classes))]
            + [overall.get(slot, math.nan)] for slot in sorted(overall)]
    return header, rows


def _probe_sections(part: PartData, svg: bool) -> list[Section]:
    from relulab.probes.statistics import STATS, degenerate, degenerate_text

    sections = []
    retrained = {copy["key"] for _, _, copy in part.retrained}
    baseline = part.baseline if part.baseline in part.run_probes else next(iter(part.run_probes), None)
    for name, rows in part.run_probes.items():
        for probe_set in sorted({r["probe_set"] for r in rows}):
            overall, per_class, classes, runs, images = probe_means(rows, probe_set)
            stats = [s for s in STATS if s in overall] + sorted(s for s in overall if s not in STATS)
            slots = sorted({slot for by in overall.values() for slot in by})
            table = [[s] + [degenerate_text(images.get(-1, 0)) if degenerate(s, images.get(-1, 0))
                            else _num_text(overall[s].get(slot)) for slot in slots] for s in stats]
            copies = len({r["run_key"] for r in rows if r["probe_set"] == probe_set} & retrained)
            sections.append(Section(
                f"Probe statistics of {name} (probe set {probe_set})", ["statistic"] + [f"slot {k}" for k in slots],
                table, note=f"The final model of each of {runs} runs, on the probe set {probe_set}; value over all "
                            "probe images (the average column of the per-class tables), mean over the runs. "
                            "Statistics of the slot's input (pre-activation) unless named _out; relulab.probes "
                            "defines each." + (f" {copies} of the {runs} models are copies retrained for probing "
                                               "(see Retrained for probing)." if copies else "")))
            if name != baseline:
                continue
            for stat in SEED_TABLE_STATS:
                if stat not in per_class:
                    continue
                header, body = _class_table_rows(per_class[stat], overall[stat], classes)
                counts = [images.get(c, 0) for c in range(len(classes))] + [images.get(-1, 0)]
                marked = [degenerate(stat, n) for n in counts]
                slug = f"probes-{_safe(name)}-{_safe(probe_set)}-{stat}"
                sections.append(Section(
                    f"{stat} per layer and class: {name} (probe set {probe_set})", header,
                    [[str(r[0])] + [degenerate_text(n) if m else _num_text(x, 3)
                                    for x, n, m in zip(r[1:], counts, marked)] for r in body],
                    note="Seed 000's layout: a row per slot, a column per class, and the average over the probe "
                         f"images; mean over {runs} runs.",
                    figure=heatmap_figure(header, body, f"{stat} of {name}", slug,
                                          f"{STATS[stat].description}; probe set {probe_set}.", svg, marked)))
    if part.retrained:
        sections.append(_retrained_section(part.retrained))
    return sections


def _retrained_section(retrained: list[tuple[str, dict, dict]]) -> Section:
    """The runs whose probe statistics come from a copy retrained for probing, each copy's accuracy beside the
    stored run's: the copy is another model, and the difference says how far apart they are."""
    rows = []
    for name, run, copy in retrained:
        diff = _nan(copy["best_val_acc"]) - _nan(run["best_val_acc"])
        rows.append([name, str(run["seed"]), _pct(run["best_val_acc"]), _pct(copy["best_val_acc"]),
                     "-" if not math.isfinite(diff) else f"{diff * PCT:+.2f}", copy["key"]])
    return Section("Retrained for probing", ["configuration", "seed", "stored run best val acc (%)",
                                             "retrained copy best val acc (%)", "difference (points)", "copy"],
                   rows, note="The probe statistics above of these runs are those of a copy trained again only to be "
                              "probed (the stored run kept no weights to probe, or statistics at several epochs were "
                              "asked for, which takes training), stored as a record of its own: another model than "
                              "the one whose accuracy the tables report (packed and alone, floating point sums "
                              "differ, and training amplifies it). Runs that keep their weights (keep_weights) are "
                              "probed themselves.")


# ---------------------------------------------------------------- searches


def _clamp_percent(ax) -> None:
    """Intervals over few seeds can reach past 0% or 100%: keep the axis on accuracies that exist."""
    low, high = ax.get_ylim()
    ax.set_ylim(max(low, -2.0), min(high, 102.0))


def _stat_order(rows: list[dict]) -> list[dict]:
    from relulab.probes.statistics import STATS

    order = list(STATS)
    return sorted(rows, key=lambda r: (order.index(r["stat"]) if r["stat"] in order else len(order), r["stat"]))


def _search_title(s: dict) -> str:
    o = s["options"]
    what = {"greedy": f"greedy by {o['stat']} ({o['order']} first)",
            "oracle": "oracle (every single-slot change)",
            "exhaustive": f"exhaustive, up to {o['k']} slots off",
            "budget": f"budget (slots kept on: {', '.join(map(str, o['keep']))})"}[s["strategy"]]
    return f"Search: {what}, from {s['base']}"


def _search_note(s: dict) -> str:
    o = s["options"]
    rule = "the seed's plain rule (accept if the mean improves)" if o.get("plain_rule") else \
        f"Welch's t-test, p < {o['alpha']} with a higher mean"
    parts = [f"{len(s['seeds'])} seeds ({', '.join(map(str, s['seeds']))}), {s['epochs']} epochs, "
             f"metric {s['metric']}, probe set {s['probe_set']}"]
    if s["strategy"] in ("greedy", "oracle"):
        parts.append(f"budget {o['budget']} slots off, acceptance by {rule}")
    if s["strategy"] == "greedy":
        parts.append(f"patience {o['patience']}")
    if s["val_is_test"]:
        parts.append("validation data is the test set: accuracies chosen on it are optimistic")
    result = s.get("result") or {}
    if s["status"] != "done":
        parts.append("NOT FINISHED (run the same command again to resume)")
    elif result:
        final = next((c for c in s["candidates"] if c["placement"] == result["final"] and "test_mean" in c), None)
        held_out = f", test accuracy {_test_text(final)}%" if final is not None and s["metric"] != "test_acc" else ""
        parts.append(f"result: {result['final']} at {_interval(result['mean'], result['ci_low'], result['ci_high'])}"
                     f"% {s['metric']}{held_out} ({result.get('relu_count', 0):,} activations per image)")
        if "distinguishably_better" in result:
            better = result["distinguishably_better"]
            parts.append("better than the base beyond seed noise: " + (", ".join(better) if better else "none"))
    return f"Search {s['id']}: " + "; ".join(parts) + "."


def _candidates(s: dict, step: int) -> list[dict]:
    return [c for c in s["candidates"] if c["step"] == step]


def search_path_figure(s: dict, svg: bool) -> Optional[FigureOut]:
    """Accuracy of the current model at each step (line) and every candidate tried (accepted or not)."""
    if not s["steps"]:
        return None
    fig = _new_figure(7, 4)
    ax = fig.add_subplot()
    path_x, path_y, labels = [], [], []
    for step in s["steps"]:
        cands = _candidates(s, step["step"])
        ref = next((c for c in cands if c["position"] == 0), None)
        if ref and not path_x:
            path_x.append(0)
            path_y.append(ref["mean"] * PCT)
            labels.append(ref["placement"])
            if ref["ci_low"] is not None and math.isfinite(ref["ci_low"]):
                ax.errorbar([0], [ref["mean"] * PCT], yerr=[[(ref["mean"] - ref["ci_low"]) * PCT],
                                                            [(ref["ci_high"] - ref["mean"]) * PCT]],
                            color="tab:blue", capsize=3)
        for c in cands:
            if c["position"] == 0:
                continue
            accepted = c["placement"] == step["chosen"]
            err = None
            if c["ci_low"] is not None and math.isfinite(c["ci_low"]):
                err = [[(c["mean"] - c["ci_low"]) * PCT], [(c["ci_high"] - c["mean"]) * PCT]]
            ax.errorbar([step["step"]], [c["mean"] * PCT], yerr=err, fmt="o" if accepted else "x",
                        color="tab:green" if accepted else "tab:red", alpha=0.9 if accepted else 0.55, capsize=3)
            if s["strategy"] == "greedy" or accepted:
                ax.annotate(c["placement"], (step["step"], c["mean"] * PCT), textcoords="offset points",
                            xytext=(5, 3), fontsize=7)
        if step["decision"] == "accepted":
            chosen = next(c for c in cands if c["placement"] == step["chosen"])
            path_x.append(step["step"])
            path_y.append(chosen["mean"] * PCT)
    if path_x:
        ax.plot(path_x, path_y, color="tab:blue", marker="s", label="current model")
        ax.annotate(labels[0], (0, path_y[0]), textcoords="offset points", xytext=(5, 3), fontsize=7)
    ax.set_xlabel("step")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(f"{s['metric']} (%)")
    _clamp_percent(ax)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return _save(fig, f"search-{s['id'][:8]}-path", "Search path",
                 "Blue: the current model after each step; green: accepted candidates, red crosses: rejected ones; "
                 "bars: 95% intervals over seeds.", svg)


def _greedy_rows(s: dict) -> list[list[str]]:
    rows = []
    for step in s["steps"]:
        cands = _candidates(s, step["step"])
        cur = next((c for c in cands if c["position"] == 0), None)
        prop = next((c for c in cands if c["position"] == 1), None)
        if prop is None:
            continue
        rows.append([str(step["step"]), step["current"], f"{prop['placement']} (slot {prop['slot']})",
                     _num_text(prop["heuristic"]), _interval(prop["mean"], prop["ci_low"], prop["ci_high"]),
                     _test_text(prop), _interval(cur["mean"], cur["ci_low"], cur["ci_high"]) if cur else "-",
                     _test_text(cur) if cur else "-", _diff_text(prop), _p_text(prop["p"]), step["decision"]])
    return rows


def _test_text(c: dict) -> str:
    """A candidate's mean test accuracy over its seeds with the 95% interval (computed from its stored runs)."""
    return _interval(c.get("test_mean"), c.get("test_ci_low"), c.get("test_ci_high"))


GREEDY_HEADER = ["step", "current", "proposal", "statistic", "proposal acc (%)", "proposal test acc (%)",
                 "current acc (%)", "current test acc (%)", "difference (points)", "p (Welch)", "decision"]
CANDIDATE_HEADER = ["slot off", "placement", "acc (%)", "test acc (%)", "vs current (points)", "p (Welch)",
                    "statistic"]
CORRELATION_HEADER = ["statistic", "n", "Spearman rho [95% bootstrap]", "p", "p (Holm)", "Kendall tau [95% bootstrap]",
                      "p", "p (Holm)", "highest-first pick", "lowest-first pick", "best change"]


def _points(value) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value * PCT:+.2f}"


def _correlation_text(value, low, high) -> str:
    text = _num_text(value, 3)
    if text != "-" and low is not None and high is not None and math.isfinite(low) and math.isfinite(high):
        text += f" [{low:+.2f}, {high:+.2f}]"
    return text


def correlation_rows(corr: list[dict]) -> list[list[str]]:
    return [[c["stat"], str(c["n"]), _correlation_text(c["spearman"], c.get("spearman_low"), c.get("spearman_high")),
             _p_text(c["spearman_p"]), _p_text(c.get("spearman_p_holm")),
             _correlation_text(c["kendall"], c.get("kendall_low"), c.get("kendall_high")), _p_text(c["kendall_p"]),
             _p_text(c.get("kendall_p_holm")), _points(c["highest_pick_diff"]), _points(c["lowest_pick_diff"]),
             _points(c["best_diff"])] for c in corr]


def correlation_figure(corr: list[dict], title: str, slug: str, svg: bool) -> Optional[FigureOut]:
    corr = [c for c in corr if c["spearman"] is not None and math.isfinite(c["spearman"])]
    if not corr:
        return None
    fig = _new_figure(7, 0.8 + 0.36 * len(corr))
    ax = fig.add_subplot()
    y = np.arange(len(corr))
    ax.barh(y - 0.2, [c["spearman"] for c in corr], height=0.4, label="Spearman rho",
            xerr=_bootstrap_errors(corr, "spearman"), error_kw={"capsize": 2, "elinewidth": 0.8})
    ax.barh(y + 0.2, [c["kendall"] for c in corr], height=0.4, label="Kendall tau",
            xerr=_bootstrap_errors(corr, "kendall"), error_kw={"capsize": 2, "elinewidth": 0.8})
    ax.set_yticks(y, [f"{c['stat']} (n={c['n']})" for c in corr], fontsize=8)
    ax.invert_yaxis()
    ax.axvline(0, color="grey", linewidth=0.8)
    ax.set_xlim(-1.05, 1.05)
    ax.set_xlabel("rank correlation with the measured change in accuracy")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, slug, title, "Positive: switching off the slot with the HIGHEST value first was the right "
                 "order; negative: the lowest. n = single-slot candidates with a finite value; whiskers: 95% "
                 "bootstrap intervals over slots and seeds.", svg)


def _bootstrap_errors(corr: list[dict], name: str) -> Optional[np.ndarray]:
    """Whiskers (below, above) from the rows' bootstrap intervals; zero length where a row has none."""
    low, high = [], []
    for c in corr:
        a, b = c.get(f"{name}_low"), c.get(f"{name}_high")
        ok = a is not None and b is not None and math.isfinite(a) and math.isfinite(b)
        low.append(max(0.0, c[name] - a) if ok else 0.0)
        high.append(max(0.0, b - c[name]) if ok else 0.0)
    return np.array([low, high]) if any(low) or any(high) else None


def oracle_figure(s: dict, step: int, svg: bool) -> Optional[FigureOut]:
    cands = [c for c in _candidates(s, step) if c["position"] > 0 and c["slot"] is not None]
    if not cands:
        return None
    fig = _new_figure(7, 3.6)
    ax = fig.add_subplot()
    xs = [c["slot"] for c in cands]
    ys = [(c["diff"] if c["diff"] is not None and math.isfinite(c["diff"]) else 0) * PCT for c in cands]
    lo = [max(0.0, (c["diff"] - c["diff_low"]) * PCT) if c["diff_low"] is not None and math.isfinite(c["diff_low"])
          else 0 for c in cands]
    hi = [max(0.0, (c["diff_high"] - c["diff"]) * PCT) if c["diff_high"] is not None
          and math.isfinite(c["diff_high"]) else 0 for c in cands]
    ax.bar(xs, ys, yerr=[lo, hi], capsize=3, color=["tab:green" if v > 0 else "tab:red" for v in ys])
    ax.axhline(0, color="grey", linewidth=0.8)
    ax.set_xlabel("slot switched off")
    ax.set_xticks(xs)
    ax.set_ylabel("change in accuracy (points)")
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, f"search-{s['id'][:8]}-oracle-{step}", f"Oracle step {step}: every single-slot change",
                 "Measured change in accuracy (mean over seeds) of switching each slot off, with the 95% interval "
                 "of the difference (Welch).", svg)


def relu_count_figure(s: dict, svg: bool) -> Optional[FigureOut]:
    cands = [c for c in s["candidates"] if c["mean"] is not None and math.isfinite(c["mean"])]
    if not cands:
        return None
    fig = _new_figure(7, 4.2)
    ax = fig.add_subplot()
    for c in cands:
        err = None
        if c["ci_low"] is not None and math.isfinite(c["ci_low"]):
            err = [[(c["mean"] - c["ci_low"]) * PCT], [(c["ci_high"] - c["mean"]) * PCT]]
        ax.errorbar([c["relu_count"]], [c["mean"] * PCT], yerr=err, fmt="o", color="tab:blue", capsize=3, alpha=0.8)
    frontier, best = [], -math.inf
    for c in sorted(cands, key=lambda c: (c["relu_count"], -c["mean"])):
        if c["mean"] > best:
            best = c["mean"]
            frontier.append(c)
    ax.plot([c["relu_count"] for c in frontier], [c["mean"] * PCT for c in frontier], drawstyle="steps-post",
            color="tab:orange", marker="D", markersize=5, zorder=3, label="frontier: best accuracy for its ReLU count")
    ax.set_xlabel("ReLU count (activations computed per image)")
    ax.set_ylabel(f"{s['metric']} (%)")
    _clamp_percent(ax)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    place_labels(ax, [(c["relu_count"], c["mean"] * PCT, c["placement"]) for c in frontier])
    return _save(fig, f"search-{s['id'][:8]}-relu-count", "ReLU count against accuracy",
                 "Each point a placement (mean over seeds, 95% interval); the ReLU count sums the output sizes of "
                 "the slots that are on.", svg)


def _label_offsets(rings: int = 10) -> list[tuple[int, int]]:
    """Offsets (points) to try for a label, nearest first: the four corners of its point, then further up and
    down, left and right."""
    return [(dx, dy * (4 + 8 * ring)) for ring in range(rings + 1) for dx, dy in ((4, 1), (4, -1), (-4, 1), (-4, -1))]


def _overlap(a, b) -> float:
    width = min(a.x1, b.x1) - max(a.x0, b.x0)
    height = min(a.y1, b.y1) - max(a.y0, b.y0)
    return width * height if width > 0 and height > 0 else 0.0


def place_labels(ax, points: list[tuple[float, float, str]], fontsize: float = 7) -> list:
    """Annotate each (x, y, text) at the first offset where the label stays on the figure and covers no label
    placed before, no point and not the legend (else where it covers least); a leader line joins a label moved
    away from its point. Returns the labels' boxes in display space. Call it once the axes are final (limits,
    scales, legend): positions are measured on the laid-out figure."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.text import Text
    from matplotlib.transforms import Bbox

    fig = ax.figure
    if not hasattr(fig.canvas, "get_renderer"):
        FigureCanvasAgg(fig)
    fig.canvas.draw()  # the layout, so that display positions hold
    renderer = fig.canvas.get_renderer()
    page = fig.bbox
    marker = 3.0 * fig.dpi / 72  # half a marker's width, in pixels
    obstacles = [Bbox.from_extents(px - marker, py - marker, px + marker, py + marker)
                 for px, py in ax.transData.transform([(x, y) for x, y, _ in points])]
    legend = ax.get_legend()
    if legend is not None:
        obstacles.append(legend.get_window_extent(renderer))
    boxes: list = []
    for x, y, text in points:
        best = None
        for n, (dx, dy) in enumerate(_label_offsets()):
            label = ax.annotate(text, (x, y), textcoords="offset points", xytext=(dx, dy), fontsize=fontsize,
                                ha="left" if dx > 0 else "right", va="bottom" if dy > 0 else "top",
                                arrowprops={"arrowstyle": "-", "color": "grey", "linewidth": 0.5} if n >= 4 else None)
            label.set_in_layout(False)
            label.update_positions(renderer)
            box = Text.get_window_extent(label, renderer).padded(2)  # the text alone (with a gap), not its line
            inside = page.x0 <= box.x0 and box.x1 <= page.x1 and page.y0 <= box.y0 and box.y1 <= page.y1
            cost = (0 if inside else 10 * box.width * box.height) + sum(_overlap(box, b) for b in boxes + obstacles)
            if best is None or cost < best[0]:
                if best is not None:
                    best[1].remove()
                best = (cost, label, box)
            else:
                label.remove()
            if cost == 0:
                break
        boxes.append(best[2])
    return boxes


def _placement_rows(cands: list[dict], kept: bool = False) -> list[list[str]]:
    rows = []
    for c in cands:
        off = c["off"]
        rows.append(([str(c.get("kept", "-"))] if kept else []) + [
            c["placement"], ", ".join(map(str, off)) or "none", f"{c['relu_count']:,}",
            _interval(c["mean"], c["ci_low"], c["ci_high"]), _test_text(c), _diff_text(c), _p_text(c["p"]),
            c["verdict"] or "-"])
    return rows


PLACEMENT_HEADER = ["placement", "slots off", "ReLU count", "acc (%)", "test acc (%)", "vs base (points)",
                    "p (Welch)", "verdict"]


def _search_sections(s: dict, svg: bool) -> list[Section]:
    title, note = _search_title(s), _search_note(s)
    sections = []
    if s["strategy"] == "greedy":
        sections.append(Section(title, GREEDY_HEADER, _greedy_rows(s), note=note, figure=search_path_figure(s, svg)))
        sections += _all_judgement_sections(s, svg)
    elif s["strategy"] == "oracle":
        path = []
        for st in s["steps"]:
            path.append([str(st["step"]), st["current"], st["decision"], st["note"]])
        sections.append(Section(title, ["step", "current", "decision", "why"], path, note=note,
                                figure=search_path_figure(s, svg)))
        for st in s["steps"]:
            cands = [c for c in _candidates(s, st["step"]) if c["position"] > 0]
            rows = [[str(c["slot"]), c["placement"], _interval(c["mean"], c["ci_low"], c["ci_high"]), _test_text(c),
                     _diff_text(c), _p_text(c["p"]), _num_text(c["heuristic"])] for c in cands]
            stat = s["options"]["stat"]
            sections.append(Section(f"Oracle step {st['step']}: every single-slot change of {st['current']}",
                                    CANDIDATE_HEADER[:-1] + [stat], rows, figure=oracle_figure(s, st["step"], svg)))
            sections += _judgement_sections(s, st["step"], st["current"], svg)
    elif s["strategy"] == "exhaustive":
        cands = _candidates(s, 1)
        shown = cands[:MAX_EXHAUSTIVE_ROWS]
        extra = f" The {len(shown)} best of {len(cands)} placements are shown; the search CSV has all." \
            if len(cands) > len(shown) else ""
        sections.append(Section(title, PLACEMENT_HEADER, _placement_rows(shown), note=note + extra,
                                figure=relu_count_figure(s, svg)))
        sections += _judgement_sections(s, 1, s["base"], svg)
    elif s["strategy"] == "budget":
        cands = _candidates(s, 1)
        total = len(s["slot_sizes"])
        for c in cands:
            c["kept"] = total - len(c["off"])
        sections.append(Section(title, ["slots on"] + PLACEMENT_HEADER, _placement_rows(cands, kept=True),
                                note=note, figure=relu_count_figure(s, svg)))
        sections += _all_judgement_sections(s, svg)
    return sections


def _judgement_sections(s: dict, step: int, current: str, svg: bool) -> list[Section]:
    from relulab.search import false_positive_note

    corr = _stat_order([c for c in s.get("judgements", []) if c["step"] == step])
    if not corr:
        return []
    singles = f"{max(c['n'] for c in corr)} single-slot changes of {current}"
    if s["strategy"] == "greedy":
        singles += " (the proposals tried from it, rejected and accepted)"
    note = (f"For each statistic (on {current}, mean over seeds), the rank correlation with the measured change in "
            f"accuracy of switching each slot off, over {singles}; the pick columns give the change the "
            "highest-first and lowest-first choices got, and the best there was (points). Brackets: 95% bootstrap "
            f"intervals ({corr[0].get('resamples') or 0} resamples of the slots, then of the seeds within).")
    extra = false_positive_note(corr[0].get("compared", 0))
    return [Section(f"Heuristic judgement, step {step}: statistics of {current} against the measured changes",
                    CORRELATION_HEADER, correlation_rows(corr), note=note + (" " + extra if extra else ""),
                    figure=correlation_figure(corr, f"Heuristic judgement, step {step}",
                                              f"search-{s['id'][:8]}-judgement-{step}", svg))]


def _all_judgement_sections(s: dict, svg: bool) -> list[Section]:
    """Greedy and budget: a judgement for every model whose single-slot changes the search happened to measure."""
    sections = []
    for step in sorted({c["step"] for c in s.get("judgements", [])}):
        current = next(c["current"] for c in s["judgements"] if c["step"] == step)
        sections += _judgement_sections(s, step, current, svg)
    return sections


def probe_search_sections(part: PartData, svg: bool) -> list[Section]:
    sections = _epoch_sections(part, svg) + _probe_sections(part, svg)
    for s in part.searches:
        sections += _search_sections(s, svg)
    return sections


SEARCH_CSV_COLUMNS = ["search", "strategy", "step", "decision", "chosen", "position", "placement", "slots_off", "slot",
                      "relu_count", "seeds", "runs", "diverged", "mean", "std", "ci_low", "ci_high", "reference",
                      "diff", "diff_low", "diff_high", "p", "verdict", "statistic", "accs", "run_keys",
                      "test_acc_mean", "test_acc_ci_low", "test_acc_ci_high", "test_acc_runs"]
CORRELATION_CSV_COLUMNS = ["search", "strategy", "step", "current", "stat", "n", "spearman", "spearman_low",
                           "spearman_high", "spearman_p", "spearman_p_holm", "kendall", "kendall_low", "kendall_high",
                           "kendall_p", "kendall_p_holm", "compared", "resamples", "highest_pick_diff",
                           "lowest_pick_diff", "best_diff"]


def search_csvs(data: ExperimentData) -> dict[str, str]:
    """{file name: text}: search-<id>.csv (every candidate of every step) and search-<id>-correlations.csv, per
    search."""
    written = {}
    for part in data.parts:
        for s in part.searches:
            steps = {st["step"]: st for st in s["steps"]}
            buf = io.StringIO()
            warning = _warning(data)
            if warning and s["val_is_test"]:
                buf.write(f"# warning: {warning}\n")
            writer = csv.writer(buf, lineterminator="\n")
            writer.writerow(SEARCH_CSV_COLUMNS)
            for c in s["candidates"]:
                st = steps.get(c["step"], {})
                writer.writerow([_csv_number(x) for x in [
                    s["id"], s["strategy"], c["step"], st.get("decision"), st.get("chosen"), c["position"],
                    c["placement"], " ".join(map(str, c["off"])), c["slot"], c["relu_count"], c["seeds"], c["runs"],
                    c["diverged"], c["mean"], c["std"], c["ci_low"], c["ci_high"], c["reference"], c["diff"],
                    c["diff_low"], c["diff_high"], c["p"], c["verdict"], c["heuristic"], json.dumps(c["accs"]),
                    " ".join(c["run_keys"]), c.get("test_mean"), c.get("test_ci_low"), c.get("test_ci_high"),
                    c.get("test_n")]])
            written[f"search-{s['id']}.csv"] = buf.getvalue()
            if s.get("judgements"):
                buf = io.StringIO()
                writer = csv.writer(buf, lineterminator="\n")
                writer.writerow(CORRELATION_CSV_COLUMNS)
                for c in s["judgements"]:
                    writer.writerow([_csv_number(x) for x in [s["id"], s["strategy"]] +
                                     [c[k] for k in CORRELATION_CSV_COLUMNS[2:]]])
                written[f"search-{s['id']}-correlations.csv"] = buf.getvalue()
    return written
