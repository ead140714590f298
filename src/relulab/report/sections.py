"""The report's sections of a part (`Section`: a title, an optional table, text lines, a figure, a note): the
seeds' table and the comparisons with the baseline, time per epoch packed and alone, through depth, sparsity,
probe statistics over epochs and of the final models, and the renderers of the part's analyses (`RENDERERS`,
one per name of `relulab.experiments.analyses.ANALYSES`). The searches' sections are in
`relulab.report.search_sections`; `relulab.report.build.part_report` puts a part's sections together.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Optional

from relulab.core.stats import CORRECTION_TITLES
from relulab.experiments.analyses import ANALYSES
from relulab.report.collect import PartData, VariantData, number_or_nan, trained_packed
from relulab.report.figures import (FigureOut, activations_figure, cost_figure, cost_numbers, cost_text,
                                    curves_figure, depth_figure, epoch_time_figure, heatmap_figure, sparsity_figure,
                                    stat_over_epochs_figure, threads_text)
from relulab.report.format import PCT, fixed, percent, safe_name, seconds, significant, slot_text
from relulab.report.measures import (DEPTH_EVAL_NOTE, Band, DepthProfile, alone_seconds_per_epoch, depth_profiles,
                                     epoch_stat_curves, has_data, last_probed_epoch, mean_seconds_per_epoch,
                                     packed_runs, probe_means, representative_slots, seeds_text, sparsity_by_slot)


@dataclass
class Section:
    """One rendered block of a part: an optional table, text lines, a figure."""

    title: str
    header: list[str] = field(default_factory=list)
    rows: list[list[str]] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)
    figure: Optional[FigureOut] = None
    note: str = ""


@dataclass
class PartReport:
    data: PartData
    slug: str
    header: list[str]
    rows: list[list[str]]
    comparisons: list[list[str]]
    sections: list[Section]
    comparison_header: list[str] = field(default_factory=lambda: list(COMPARISON_HEADER))

    @property
    def figures(self) -> list[FigureOut]:
        return [s.figure for s in self.sections if s.figure is not None]


TABLE_HEADER = ["configuration", "best val acc (%)", "final val acc (%)", "best epoch", "seconds", "s / epoch",
                "seeds", "vs baseline (best val acc, points)"]
COMPARISON_HEADER = ["configuration", "baseline", "metric", "difference (points)", "95% interval", "p (Welch)",
                     "verdict"]
COST_HEADER = ["activation", "forward median (ms)", "forward IQR (ms)", "forward + backward median (ms)",
               "forward + backward IQR (ms)", "vs relu"]
SEED_TABLE_STATS = ("ratio_num", "ratio_sum")  # seed 000's heuristics: shown per class
MAX_EPOCH_PANELS = 8


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


def summary_rows(part: PartData) -> list[list[str]]:
    """The seeds' table, extended: mean ± 95% interval half-width over seeds."""
    rows = []
    for v in part.variants:
        s = v.stats
        rows.append([v.name, s.best_val_acc.format(PCT), s.final_val_acc.format(PCT), _best_epoch_text(v),
                     s.seconds.format(1.0, 1), fixed(s.seconds_per_epoch.mean, 2), _seeds_text(v), _vs_text(v, part)])
    if part.baseline is None:
        return [r[:-1] for r in rows]
    return rows


def table_header(part: PartData) -> list[str]:
    return TABLE_HEADER if part.baseline is not None else TABLE_HEADER[:-1]


def comparison_header(correction: Optional[str]) -> list[str]:
    """The comparisons' columns; with a correction, its adjusted p beside Welch's."""
    if correction is None:
        return list(COMPARISON_HEADER)
    at = COMPARISON_HEADER.index("p (Welch)") + 1
    return [*COMPARISON_HEADER[:at], f"p ({CORRECTION_TITLES[correction]})", *COMPARISON_HEADER[at:]]


def comparisons_method(correction: Optional[str]) -> str:
    """How the comparisons were made, in a sentence (the HTML's and the Markdown's)."""
    done = "Comparisons: Welch's t-test against the baseline, two-sided, alpha 0.05"
    if correction is None:
        return f"{done}, no correction for several comparisons."
    return (f"{done}; the p-values of each part's comparisons on a metric adjusted together "
            f"({CORRECTION_TITLES[correction]}), and the verdicts judged on them.")


def comparison_rows(part: PartData, correction: Optional[str] = None) -> list[list[str]]:
    rows = []
    for v in part.variants:
        if v.baseline is None:
            continue
        for metric, c in (("best val acc", v.stats.vs_baseline), ("final val acc", v.stats.vs_baseline_final)):
            if c is None:
                rows.append([v.name, v.baseline, metric, "-", "-", "-"] + ["-"] * (correction is not None)
                            + ["no finished runs to compare"])
                continue
            interval = "-" if c.low is None else f"[{c.low * PCT:+.2f}, {c.high * PCT:+.2f}]"
            adjusted = [] if correction is None else ["-" if c.p_adjusted is None else f"{c.p_adjusted:.2g}"]
            rows.append([v.name, v.baseline, metric, f"{c.diff * PCT:+.2f}", interval,
                         "-" if c.p is None else f"{c.p:.2g}", *adjusted, c.verdict])
    return rows


def sparsity_rows(part: PartData) -> tuple[list[str], list[list[str]]]:
    table = {v.name: sparsity_by_slot(v) for v in part.variants}
    slots = sorted({s for by_slot in table.values() for s in by_slot})
    if not slots:
        return [], []
    header = ["configuration"] + [slot_text(s, part.slot_names, "slot ") for s in slots]
    return header, [[name] + [fixed(by_slot.get(s), 3) for s in slots] for name, by_slot in table.items() if by_slot]


def cost_rows(value: dict) -> list[list[str]]:
    """Median and interquartile range per activation (ms), forward and forward + backward, and the median
    forward + backward against relu's."""
    rows = [cost_numbers(r) for r in value["rows"]]
    relu = next((r["forward_backward"]["median"] for r in rows if r["activation"] == "relu"), None)
    return [[r["activation"]] + [fixed(r[what][k], 3) for what in ("forward", "forward_backward")
                                 for k in ("median", "iqr")]
            + [f"{r['forward_backward']['median'] / relu:.2f}x" if relu else "-"] for r in rows]


def time_table(part: PartData) -> tuple[list[str], list[list[str]]]:
    """Per configuration: seconds per epoch as the sweep trained it (packed: each run's share of a joint time) and
    alone (a timed pass of one model, or the runs that trained alone); against the baseline where there is one."""
    steps = {v.alone.steps for v in part.variants if v.alone}
    alone_header = f"s / epoch alone (timed pass, {steps.pop()} steps)" if len(steps) == 1 else \
        "s / epoch alone (timed pass)"
    header = ["configuration", "s / epoch (packed share)", alone_header]
    by_name = {v.name: v for v in part.variants}
    rows = []
    for v in part.variants:
        alone = alone_seconds_per_epoch(v)
        text = seconds(alone)
        if alone is not None and not v.alone:
            text += " (its runs, trained alone)"
        elif v.alone and len(steps) > 1:
            text += f" ({v.alone.steps} steps)"
        row = [v.name, seconds(mean_seconds_per_epoch([r for r in v.runs if trained_packed(r)])), text]
        if part.baseline is not None:
            base = alone_seconds_per_epoch(by_name[v.baseline]) if v.baseline in by_name else None
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
                 f"{t.steps} training steps after {t.warmup} warm-up steps, scaled to an epoch's "
                 f"{t.steps_per_epoch} steps, plus one validation pass; measured once per configuration and "
                 "device (time_alone: false in the spec skips it).")
    if any(v.alone is None and any(trained_packed(r) for r in v.runs) for v in part.variants):
        note += (" '-': not timed alone (time_alone: false, or its runs trained on another device than the one "
                 "relulab run drove the sweep from).")
    return note


def _depth_cell(profiles: dict[str, DepthProfile], slot: int) -> str:
    return f"{significant(profiles['mean'].at(slot), 3)} / {significant(profiles['variance'].at(slot), 3)}"


def depth_rows(part: PartData, table: dict[str, dict]) -> tuple[list[str], list[list[str]]]:
    """A row per (representative) slot; for each configuration a column at init and one after training, each
    cell 'mean / variance'."""
    last = last_probed_epoch(part)
    columns = [(name, when) for name, profiles in table.items() for when in ("init", "trained") if when in profiles]
    header = ["slot"] + [f"{name} {'init' if when == 'init' else f'epoch {last}'}" for name, when in columns]
    slots = sorted({s for profiles in table.values() for p in profiles.values() for s in p["mean"].slots})
    rows = [[slot_text(slot, part.slot_names)] + [_depth_cell(table[name][when], slot) for name, when in columns]
            for slot in representative_slots(slots)]
    return header, rows


def depth_sections(part: PartData, svg: bool, band: Band) -> list[Section]:
    if part.watched:
        return []  # its steps are not epochs, nor measured in eval mode: mean_out and std_out are drawn over steps
    table = {v.name: depth_profiles(v, band) for v in part.variants}
    table = {name: profiles for name, profiles in table.items() if profiles}
    seeds = [sum(bool(stats.get("mean_out")) for stats in v.slot_stats.values()) for v in part.variants
             if v.name in table]
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
        part, table, band, seeds, svg), note=note)]


def epoch_sections(part: PartData, svg: bool) -> list[Section]:
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
        over, when = (("training steps", "measured by relulab.watch on the training batch of each recorded step "
                       "(step 0: before the first update)") if part.watched else
                      ("epochs", "measured on the probe set after every epoch (epoch 0: before training)"))
        seeds = [sum(stat in stats for stats in v.slot_stats.values()) for v in part.variants]
        sections.append(Section(f"{stat} over {over}", note=" ".join(notes), figure=stat_over_epochs_figure(
            f"{stat} per slot over {over}", panels[:MAX_EPOCH_PANELS], stat, f"epochs-{safe_name(stat)}",
            f"{description}; {when}, mean over seeds.", svg, part.slot_names,
            about=f"a panel per configuration, a line per slot; mean over {seeds_text(seeds)}; no band",
            xlabel="step" if part.watched else "epoch")))
    return sections


def _class_table_rows(per_class: dict, overall: dict, classes: list[str]) -> tuple[list[str], list[list]]:
    header = ["slot"] + classes + ["average"]
    rows = [[slot] + [per_class.get(slot, {}).get(c, math.nan) for c in range(len(classes))]
            + [overall.get(slot, math.nan)] for slot in sorted(overall)]
    return header, rows


def probe_sections(part: PartData, svg: bool) -> list[Section]:
    from relulab.probes.statistics import STATS, degenerate, degenerate_text

    sections = []
    retrained = {copy["key"] for _, _, copy in part.retrained}
    baseline = part.baseline if part.baseline in part.run_probes else next(iter(part.run_probes), None)
    names_of = {v.name: v.slot_names for v in part.variants}
    for name, rows in part.run_probes.items():
        names = names_of.get(name, {})
        for probe_set in sorted({r["probe_set"] for r in rows}):
            overall, per_class, classes, runs, images = probe_means(rows, probe_set)
            stats = [s for s in STATS if s in overall] + sorted(s for s in overall if s not in STATS)
            slots = sorted({slot for by in overall.values() for slot in by})
            table = [[s] + [degenerate_text(images.get(-1, 0)) if degenerate(s, images.get(-1, 0))
                            else significant(overall[s].get(slot)) for slot in slots] for s in stats]
            copies = len({r["run_key"] for r in rows if r["probe_set"] == probe_set} & retrained)
            sections.append(Section(
                f"Probe statistics of {name} (probe set {probe_set})",
                ["statistic"] + [slot_text(k, names, "slot ") for k in slots],
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
                slug = f"probes-{safe_name(name)}-{safe_name(probe_set)}-{stat}"
                sections.append(Section(
                    f"{stat} per layer and class: {name} (probe set {probe_set})", header,
                    [[slot_text(r[0], names)] + [degenerate_text(n) if m else significant(x, 3)
                                    for x, n, m in zip(r[1:], counts, marked)] for r in body],
                    note="Source 000's layout: a row per slot, a column per class, and the average over the probe "
                         f"images; mean over {runs} runs.",
                    figure=heatmap_figure(header, body, f"{stat} of {name}", slug,
                                          f"{STATS[stat].description}; probe set {probe_set}.", svg, marked,
                                          names, quantity=stat,
                                          about=f"probe set {probe_set}; mean over {seeds_text([runs])}; no band")))
    if part.retrained:
        sections.append(_retrained_section(part.retrained))
    return sections


def _retrained_section(retrained: list[tuple[str, dict, dict]]) -> Section:
    """The runs whose probe statistics come from a copy retrained for probing, each copy's accuracy beside the
    stored run's: the copy is another model, and the difference says how far apart they are."""
    rows = []
    for name, run, copy in retrained:
        diff = number_or_nan(copy["best_val_acc"]) - number_or_nan(run["best_val_acc"])
        rows.append([name, str(run["seed"]), percent(run["best_val_acc"]), percent(copy["best_val_acc"]),
                     "-" if not math.isfinite(diff) else f"{diff * PCT:+.2f}", copy["key"]])
    return Section("Retrained for probing", ["configuration", "seed", "stored run best val acc (%)",
                                             "retrained copy best val acc (%)", "difference (points)", "copy"],
                   rows, note="The probe statistics above of these runs are those of a copy trained again only to be "
                              "probed (the stored run kept no weights to probe, or statistics at several epochs were "
                              "asked for, which takes training), stored as a record of its own: another model than "
                              "the one whose accuracy the tables report (packed and alone, floating point sums "
                              "differ, and training amplifies it). Runs that keep their weights (keep_weights) are "
                              "probed themselves.")


def _relu_demo_section(value: dict, svg: bool) -> Section:
    return Section("ReLU's demonstration", lines=value["lines"],
                   note="relulab's relu applied to source 004's inputs.")


def _activation_plots_section(value: dict, svg: bool) -> Section:
    return Section("Activation functions", figure=activations_figure(value, svg))


def _activation_cost_section(value: dict, svg: bool) -> Section:
    threads = f", {threads_text(value)}" if "threads" in value else ""
    return Section(f"Cost of each activation ({value['device']}{threads})", COST_HEADER, cost_rows(value),
                   figure=cost_figure(value, svg),
                   note=f"{value['elements']:,} float32 elements on {value['device']}. {cost_text(value)}.")


def checked_renderers(renderers: dict[str, Callable[[dict, bool], Section]]) -> dict:
    """`renderers`, where they are exactly one per analysis: relulab.experiments.analyses.ANALYSES is the one list
    of analysis names (experiments cannot import the report), so an analysis without a renderer, or a renderer
    of no analysis, stops the report's import instead of failing a report of a store that holds one."""
    missing, extra = sorted(set(ANALYSES) - set(renderers)), sorted(set(renderers) - set(ANALYSES))
    if missing or extra:
        raise RuntimeError(f"relulab.report.sections.RENDERERS: no renderer for the analyses {missing}, "
                           f"renderers of no analysis {extra}")
    return renderers


# analysis name -> renderer of its stored value
RENDERERS: dict[str, Callable[[dict, bool], Section]] = checked_renderers({
    "relu_demo": _relu_demo_section,
    "activation_plots": _activation_plots_section,
    "activation_cost": _activation_cost_section,
})


def training_sections(part: PartData, svg: bool, band: Band) -> list[Section]:
    """Accuracy and loss curves and time per epoch, where the part has finished runs with epochs (a watched
    model's have none of relulab's)."""
    if not any(v.epochs.get(r["key"]) for v in part.variants for r in v.runs):
        return []
    packed = packed_runs(part)
    header, rows = time_table(part) if packed else ([], [])
    return [Section("Accuracy and loss", figure=curves_figure(part, band, svg)),
            Section("Time per epoch", header, rows, figure=epoch_time_figure(part, band, svg),
                    note=_time_note(part, packed) if packed else "")]


def sparsity_sections(part: PartData, svg: bool) -> list[Section]:
    header, rows = sparsity_rows(part)
    if not rows:
        return []
    return [Section("Sparsity per layer", header if len(header) <= 13 else [], rows if len(header) <= 13 else [],
                    figure=sparsity_figure(part, svg),
                    note="Fraction of exact zeros in each slot's output ("
                         f"{'last recorded step' if part.watched else 'last epoch'}, mean over seeds).")]


def part_sections(part: PartData, svg: bool, band: Band) -> list[Section]:
    """A part's sections but its searches', in the report's order; `band`: what the figures' bands over seeds
    are (relulab.report.measures.BANDS)."""
    sections = training_sections(part, svg, band) + depth_sections(part, svg, band) + sparsity_sections(part, svg)
    sections += [RENDERERS[name](artifact["value"], svg) for name, artifact in part.analyses.items()]
    return sections + epoch_sections(part, svg) + probe_sections(part, svg)
