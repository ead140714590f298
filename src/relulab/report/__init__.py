"""Reports from the store: tables (Markdown, CSV), plots (PNG, optional SVG), one self-contained HTML file.

    from relulab.report import build_report
    paths = build_report("runs/quickstart.sqlite")        # -> runs/quickstart-report/report.html, ...

Everything comes from the store (the plan saved by `relulab run`, the runs, their
epochs and probe statistics, the analyses), so a report can be rebuilt at any time,
including while a sweep is still running (missing runs are counted and said).

Per part: the seeds' table (configuration | best val acc | time), extended with the
95% interval over seeds, final accuracy, best epoch, seeds and the comparison with the
baseline; accuracy and loss curves (mean over seeds, band = the tables' 95% interval, or the
range over seeds with band="minmax"), all configurations on each panel (seed 001's figure),
time per epoch, per-slot sparsity when probed, post-activation mean and variance through
depth at initialisation and after training when `mean_out` and `std_out` are probed (seed 002's premise), and the
part's analyses (activation plots with derivatives, activation cost, ReLU's
demonstration). Then three kinds of sections from probes and searches (issue 4): per-epoch
probe statistics (`slot_stats`, the spec's `probes:`) plotted over epochs, one line per slot;
final-model probe statistics (`run_probes`, written by `relulab search` and `relulab probe`):
a slot x statistic table per probed configuration (mean over seeds) and, for the baseline,
seed 000's layer x class tables of ratio_num and ratio_sum with their heatmaps; and each
`relulab search` of the part: its path or placements with accuracies (mean ± 95% interval over
seeds, Welch comparisons), the heuristic judgement (rank correlations), ReLU count against
accuracy for `budget`, and every strategy's ReLU count against accuracy side by side (per base:
one figure, and a table of the best accuracy within each budget). A part whose validation data
is the test set is flagged at the top of the HTML and the Markdown, and in a `val_is_test`
column of every CSV (summary, runs, epochs, the searches', pareto.csv), which `pandas.read_csv`
loads as they are. `correction=` (holm, bh) adjusts each part's comparisons with the baseline together.
The HTML embeds its images (base64) and links nothing outside itself; jinja2's autoescape escapes every
user-provided string.

The modules, in the order a report is made:

- `collect`: the store read into typed report data (`ExperimentData`, `PartData`, `VariantData`).
- `measures`: numbers derived from it for tables and figures (curves, seconds packed and alone,
  sparsity and depth profiles by slot, probe means).
- `format`: the one text formatter (numbers, intervals, percentages, p-values, CSV cells, Markdown text).
- `figures`: the part's matplotlib figures; `search_figures`: the searches' figures.
- `sections`: the part's sections and the renderers of the analyses (`RENDERERS`, one per name of
  `relulab.experiments.analyses.ANALYSES`); `search_sections`: the searches' sections.
- `pareto`: every strategy's ReLU count against accuracy per base of a part's searches (figure, best
  accuracy within each budget, `pareto.csv`).
- `writers`: HTML (jinja2 template), Markdown, the CSVs, TensorBoard logs, and a probe's tables and figures.
- `folders`: the report's folder and TensorBoard's, checked before anything trains.
- `build`: `build_report`, which puts a report together and writes its folder whole.
- `compare`: two experiments or two configurations side by side (`relulab compare`).
"""
from __future__ import annotations

import importlib

# The public entry points, by the module that defines them. They load on first use (PEP 562), so that importing
# the package, or `relulab.report.compare` (`relulab compare`, and every CLI start), does not load matplotlib,
# jinja2 and torch with the figures.
_EXPORTS = {
    "ReportFiles": "relulab.report.build",
    "build_report": "relulab.report.build",
    "check_report_dir": "relulab.report.folders",
    "check_tensorboard_dir": "relulab.report.folders",
    "default_out_dir": "relulab.report.folders",
    "require_tensorboard": "relulab.report.writers",
    "write_probe_tables": "relulab.report.writers",
}
__all__ = sorted(_EXPORTS)


def warm_up() -> None:
    """Load what writing a report loads on first use (`relulab.report.build.warm_up`), and only then: a function
    of the package itself, so that handing it to a background thread (relulab.core.background) imports nothing."""
    importlib.import_module("relulab.report.build").warm_up()


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'relulab.report' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
