"""The report's files: the HTML page (the jinja2 template `relulab/templates/report.html`, images embedded, every
user-provided string escaped), the Markdown, the CSVs (summary, runs, epochs, each search's candidates and
correlations, the points of every strategy's ReLU count against accuracy, a probe's tables) and the TensorBoard
logs.
"""
from __future__ import annotations

import csv
import io
import json
import math
import time
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Optional

import jinja2

from relulab.core.util import write_atomic, write_bytes_atomic
from relulab.experiments import trackers
from relulab.experiments.tracking import FINAL_METRICS, TrackedRun, log_run, stored_epochs
from relulab.probes.statistics import class_table, degenerate_columns
from relulab.report.collect import ExperimentData
from relulab.report.figures import heatmap_figure, stat_over_epochs_figure
from relulab.report.format import csv_number, md_escape, safe_name, spec_text
from relulab.report.measures import has_data
from relulab.report.pareto import CSV_COLUMNS as PARETO_CSV_COLUMNS, csv_rows as pareto_rows
from relulab.report.sections import PartReport, comparisons_method


VAL_IS_TEST_WARNING = ("validation data is the test set ({parts}): best-epoch accuracies are chosen on the test "
                       "set and are optimistic; use a held-out split (e.g. stratified:0.1) for model selection")


def _warning(data: ExperimentData) -> Optional[str]:
    parts = data.val_is_test_parts
    if not parts:
        return None
    return VAL_IS_TEST_WARNING.format(parts=", ".join(parts))


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(md_escape(h) for h in header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(md_escape(c) for c in row) + " |" for row in rows]


def markdown(data: ExperimentData, reports: list[PartReport]) -> str:
    lines = []
    warning = _warning(data)
    if warning:
        lines += [f"> **Warning:** {md_escape(warning)}", ""]
    lines += [f"# {md_escape(data.name)}", ""]
    description = data.spec.get("description")
    if description:
        lines += [md_escape(description), ""]
    lines += [f"Runs in the store: {data.done} of {data.planned} planned. Accuracies in percent: mean ± half-width "
              f"of the 95% interval over seeds (Student t). {comparisons_method(data.correction)}", ""]
    if data.overrides:
        lines += ["Command-line overrides, applied to every run: "
                  + md_escape(", ".join(f"{k}={json.dumps(v)}" for k, v in data.overrides.items())), ""]
    for r in reports:
        lines += [f"## {md_escape(r.data.name)}", ""] if len(reports) > 1 else []
        if r.data.description:
            lines += [md_escape(r.data.description), ""]
        if r.data.val_is_test:
            lines += ["Validation data: **the test set**.", ""]
        lines += _md_table(r.header, r.rows) + [""]
        if r.comparisons:
            lines += _md_table(r.comparison_header, r.comparisons) + [""]
        for s in r.sections:
            lines += [f"### {md_escape(s.title)}", ""]
            if s.note:
                lines += [md_escape(s.note), ""]
            if s.lines:
                lines += ["```"] + s.lines + ["```", ""]
            if s.rows:
                lines += _md_table(s.header, s.rows) + [""]
            if s.figure:
                lines += [f"![{md_escape(s.figure.title)}](figures/{r.slug}-{s.figure.slug}.png)", "",
                          f"*{md_escape(s.figure.caption)}*", ""]
    return "\n".join(lines)


SUMMARY_COLUMNS = ["experiment", "part", "configuration", "config", "grid", "baseline", "seeds_planned", "runs_done",
                   "runs_diverged", "best_val_acc_mean", "best_val_acc_std", "best_val_acc_ci_low",
                   "best_val_acc_ci_high", "final_val_acc_mean", "final_val_acc_std", "final_val_acc_ci_low",
                   "final_val_acc_ci_high", "best_epoch_mean", "seconds_mean", "seconds_std", "seconds_ci_low",
                   "seconds_ci_high", "seconds_per_epoch_mean", "test_acc_mean", "diff_vs_baseline",
                   "diff_ci_low", "diff_ci_high", "p_value", "p_adjusted", "distinguishable", "correction",
                   "val_is_test"]


# The report's CSVs are plain tables that `pandas.read_csv` loads as they are: a part whose validation data is the
# test set says so in each row (`val_is_test`), not in a comment line above the header.
def _csv_with_header(columns: list[str]):
    """(buffer, csv writer) with the column names written."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    return buf, writer


def summary_csv(data: ExperimentData) -> str:
    buf, writer = _csv_with_header(SUMMARY_COLUMNS)
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
                   c.p_adjusted if c else None,
                   "" if c is None or c.distinguishable is None else str(c.distinguishable).lower(),
                   data.correction or "none", str(part.val_is_test).lower()]
            writer.writerow([csv_number(x) for x in row])
    return buf.getvalue()


RUN_COLUMNS = ["experiment", "part", "configuration", "seed", "status", "best_val_acc", "best_epoch", "final_val_acc",
               "test_acc", "diverged_at", "epochs", "seconds", "params", "val_is_test", "device", "code_version",
               "torch_version", "key"]


def runs_csv(data: ExperimentData) -> str:
    buf, writer = _csv_with_header(RUN_COLUMNS)
    for part in data.parts:
        for v in part.variants:
            for r in v.runs:
                writer.writerow([csv_number(x) for x in [
                    data.name, part.name, v.name, r["seed"], r["status"], r["best_val_acc"], r["best_epoch"],
                    r["final_val_acc"], r["test_acc"], r["diverged_at"], r["epochs"], r["seconds"], r["params"],
                    str(bool(r["val_is_test"])).lower(), r["device"], r["code_version"], r["torch_version"],
                    r["key"]]])
    return buf.getvalue()


EPOCH_COLUMNS = ["experiment", "part", "configuration", "seed", "key", "epoch", "train_loss", "train_acc", "val_loss",
                 "val_acc", "seconds", "val_is_test"]


def epochs_csv(data: ExperimentData) -> str:
    """Every run's per-epoch history, one line per epoch (the store's `epochs` rows, runs in the runs.csv order)."""
    buf, writer = _csv_with_header(EPOCH_COLUMNS)
    for part in data.parts:
        for v in part.variants:
            for r in v.runs:
                for e in v.epochs[r["key"]]:
                    writer.writerow([csv_number(x) for x in [
                        data.name, part.name, v.name, r["seed"], r["key"], e["epoch"], e["train_loss"], e["train_acc"],
                        e["val_loss"], e["val_acc"], e["seconds"], str(bool(r["val_is_test"])).lower()]])
    return buf.getvalue()


SEARCH_CSV_COLUMNS = ["search", "strategy", "step", "decision", "chosen", "position", "placement", "slots_off", "slot",
                      "slot_name", "relu_count", "seeds", "runs", "diverged", "mean", "std", "ci_low", "ci_high",
                      "reference",
                      "diff", "diff_low", "diff_high", "p", "verdict", "statistic", "accs", "run_keys",
                      "test_acc_mean", "test_acc_ci_low", "test_acc_ci_high", "test_acc_runs", "val_is_test"]
CORRELATION_CSV_COLUMNS = ["search", "strategy", "step", "current", "stat", "n", "spearman", "spearman_low",
                           "spearman_high", "spearman_p", "spearman_p_holm", "kendall", "kendall_low", "kendall_high",
                           "kendall_p", "kendall_p_holm", "compared", "resamples", "highest_pick_diff",
                           "lowest_pick_diff", "best_diff", "random_diff", "highest_vs_random_low",
                           "highest_vs_random_high", "lowest_vs_random_low", "lowest_vs_random_high"]


def search_csvs(data: ExperimentData) -> dict[str, str]:
    """{file name: text}: search-<id>.csv (every candidate of every step) and search-<id>-correlations.csv, per
    search."""
    written = {}
    for part in data.parts:
        for s in part.searches:
            steps = {st["step"]: st for st in s["steps"]}
            buf, writer = _csv_with_header(SEARCH_CSV_COLUMNS)
            for c in s["candidates"]:
                st = steps.get(c["step"], {})
                slot_name = (s.get("slot_names") or {}).get(c["slot"], "")
                writer.writerow([csv_number(x) for x in [
                    s["id"], s["strategy"], c["step"], st.get("decision"), st.get("chosen"), c["position"],
                    c["placement"], " ".join(map(str, c["off"])), c["slot"], slot_name, c["relu_count"], c["seeds"],
                    c["runs"],
                    c["diverged"], c["mean"], c["std"], c["ci_low"], c["ci_high"], c["reference"], c["diff"],
                    c["diff_low"], c["diff_high"], c["p"], c["verdict"], c["heuristic"], json.dumps(c["accs"]),
                    " ".join(c["run_keys"]), c.get("test_mean"), c.get("test_ci_low"), c.get("test_ci_high"),
                    c.get("test_n"), str(bool(s["val_is_test"])).lower()]])
            written[f"search-{s['id']}.csv"] = buf.getvalue()
            if s.get("judgements"):
                buf = io.StringIO()
                writer = csv.writer(buf, lineterminator="\n")
                writer.writerow(CORRELATION_CSV_COLUMNS)
                for c in s["judgements"]:
                    writer.writerow([csv_number(x) for x in [s["id"], s["strategy"]] +
                                     [c[k] for k in CORRELATION_CSV_COLUMNS[2:]]])
                written[f"search-{s['id']}-correlations.csv"] = buf.getvalue()
    return written


def pareto_csv(data: ExperimentData) -> dict[str, str]:
    """{"pareto.csv": text}: every point of the Pareto sections (relulab.report.pareto), one row each; {} where no
    search has a point."""
    rows = [row for part in data.parts for row in pareto_rows(part.name, part.searches)]
    if not rows:
        return {}
    buf, writer = _csv_with_header(PARETO_CSV_COLUMNS)
    for row in rows:
        writer.writerow([csv_number(x) for x in row])
    return {"pareto.csv": buf.getvalue()}


def provenance_rows(data: ExperimentData) -> list[list[str]]:
    counts: dict[tuple, int] = {}
    for part in data.parts:
        for v in part.variants:
            for r in v.runs:
                key = (r["code_version"], r["torch_version"], r["python_version"], r["device"], r["host"])
                counts[key] = counts.get(key, 0) + 1
    return [[*map(str, k), str(n)] for k, n in sorted(counts.items(), key=lambda kv: -kv[1])]


PROVENANCE_HEADER = ["relulab", "torch", "python", "device", "host", "runs"]


@lru_cache(maxsize=1)
def html_template() -> jinja2.Template:
    """The report page's template, compiled once a process (jinja2's autoescape on: every user string escaped)."""
    source = (resources.files("relulab") / "templates" / "report.html").read_text(encoding="utf-8")
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    return env.from_string(source)


def render_html(data: ExperimentData, reports: list[PartReport]) -> str:
    return html_template().render(
        data=data, reports=reports, warning=_warning(data), provenance=provenance_rows(data),
        provenance_header=PROVENANCE_HEADER, comparisons_method=comparisons_method(data.correction),
        spec_yaml=spec_text(data.spec),
        overrides=[f"{k}={json.dumps(v)}" for k, v in data.overrides.items()],
        generated=time.strftime("%Y-%m-%d %H:%M:%S %Z"), multiple_parts=len(reports) > 1)


def require_tensorboard():
    """TensorBoard's SummaryWriter, or a UserError (report.tensorboard) saying how to install it."""
    return trackers.require_tensorboard("report.tensorboard")


def write_tensorboard(data: ExperimentData, logdir: Path) -> Path:
    """One TensorBoard run per (part, configuration, seed), from the store, written by the tracker that logs runs
    live (relulab.experiments.trackers.TensorBoardTracker: the same files, less the weights' histograms, which
    the store does not hold); rewritten on every report."""
    tracker = trackers.TensorBoardTracker(logdir, "report.tensorboard")
    try:
        for part in data.parts:
            for v in part.variants:
                for r in v.runs:
                    run = TrackedRun(r["key"], data.name, part.name, v.name, r["seed"], r["spec"], r["data"])
                    log_run(tracker, run, stored_epochs(run, v.epochs[r["key"]], v.slot_stats[r["key"]]),
                            {m: r[m] for m in FINAL_METRICS})
    finally:
        tracker.close()
    return tracker.logdir


# ---------------------------------------------------------------- relulab probe's files


def write_probe_tables(pr, names: list[str], folder: Path, svg: bool) -> list[Path]:
    """`relulab probe`'s files in `folder`, for a probe run (relulab.search.strategies.ProbeRun): every statistic
    at every probed epoch as one CSV, and for each of `names` seed 000's layer x class heatmap at the last epoch
    and, with several epochs, the statistic over them. Returns the files written."""
    stem = f"{safe_name(pr.variant)}-seed{pr.seed}-{safe_name(pr.probe_set)}"
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["experiment", "part", "configuration", "seed", "run_key", "probe_set", "epoch", "stat", "slot",
                     "slot_name", "class", "class_name", "images", "value"])
    for epoch, result in sorted(pr.results.items()):
        for stat, slot, cls, class_name, value in result.rows():
            images = result.counts[cls] if cls >= 0 else result.images
            writer.writerow([pr.experiment, pr.part, pr.variant, pr.seed, pr.probed_key, pr.probe_set, epoch, stat,
                             slot, pr.slot_names.get(slot, ""), cls, class_name, images,
                             "" if not math.isfinite(value) else repr(float(value))])
    written = [write_atomic(folder / f"{stem}.csv", buf.getvalue())]
    last = max(pr.results)
    for name in names:
        result = pr.results[last]
        if name not in result.overall:
            continue
        header, rows = class_table(result, name)
        fig = heatmap_figure([str(h) for h in header], rows, f"{name} of {pr.variant}, seed {pr.seed}",
                             f"{stem}-{name}", f"epoch {last}, probe set {pr.probe_set}", svg,
                             degenerate_columns(result, name), pr.slot_names, quantity=name,
                             about=f"epoch {last}, probe set {pr.probe_set}; one run (seed {pr.seed}): no band")
        written.append(write_bytes_atomic(folder / f"{stem}-{name}.png", fig.png))
        if fig.svg:
            written.append(write_bytes_atomic(folder / f"{stem}-{name}.svg", fig.svg))
        if len(pr.results) > 1:
            epochs = sorted(pr.results)
            curves = {slot: (epochs, [pr.results[e].overall[name].get(slot, math.nan) for e in epochs])
                      for slot in result.slots}
            if not has_data(curves):  # saturation of a ReLU model: no empty figure
                continue
            fig = stat_over_epochs_figure(f"{name} over epochs", [(f"{pr.variant} seed {pr.seed}", curves)], name,
                                          f"{stem}-{name}-epochs", f"probe set {pr.probe_set}", svg, pr.slot_names,
                                          about=f"probe set {pr.probe_set}; one run (seed {pr.seed}): no band")
            written.append(write_bytes_atomic(folder / f"{stem}-{name}-epochs.png", fig.png))
    return written
