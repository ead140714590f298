"""A report of one experiment of a store, put together and written (`build_report`); `part_report` gathers a
part's sections.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from relulab.core.stats import check_correction
from relulab.core.util import staged_folder, write_atomic, write_bytes_atomic
from relulab.report.collect import PartData, collect, pick_experiment
from relulab.report.folders import check_report_dir, check_tensorboard_dir, default_out_dir
from relulab.report.measures import DEFAULT_BAND, Band, band_named
from relulab.report.pareto import pareto_sections
from relulab.report.search_sections import search_sections
from relulab.report.sections import (PartReport, comparison_header, comparison_rows, part_sections, summary_rows,
                                     table_header)
from relulab.report.writers import (epochs_csv, markdown, pareto_csv, render_html, require_tensorboard, runs_csv,
                                    search_csvs, summary_csv, write_tensorboard)
from relulab.store import Store


def _slug(index: int, name: str) -> str:
    return f"{index + 1}-{re.sub(r'[^A-Za-z0-9_.-]+', '-', name)}"


def part_report(index: int, part: PartData, svg: bool, band: Band, correction: Optional[str] = None
                ) -> PartReport:
    """A part's tables and sections: its own (relulab.report.sections), then each of its searches', then every
    strategy's ReLU count against accuracy per base (relulab.report.pareto)."""
    sections = part_sections(part, svg, band)
    for search in part.searches:
        sections += search_sections(search, svg)
    sections += pareto_sections(part.searches, svg)
    return PartReport(part, _slug(index, part.name), table_header(part), summary_rows(part),
                      comparison_rows(part, correction), sections, comparison_header(correction))


@dataclass
class ReportFiles:
    html: Path
    markdown: Path
    summary_csv: Path
    runs_csv: Path
    figures: list[Path]
    tensorboard: Optional[Path] = None
    extra: list[Path] = field(default_factory=list)  # the searches' CSVs and pareto.csv
    epochs_csv: Optional[Path] = None  # every run's per-epoch history


def warm_up() -> None:
    """Load what writing a report loads on first use, writing nothing: the modules matplotlib draws and encodes a
    figure with (and its fonts, drawn once into memory), scipy's special functions (the intervals), the searches'
    views and the HTML template. `relulab run` has it done on a thread while the GPU trains
    (relulab.core.background), so that its report starts warm; nothing depends on it having run."""
    import importlib
    import io

    from relulab.report.figures import new_figure
    from relulab.report.writers import html_template

    # scipy.special: relulab.core.stats imports it at the first interval; the searches' views: collect's searches.
    for name in ("scipy.special", "relulab.search.judgement"):
        importlib.import_module(name)
    fig = new_figure(1.0, 1.0)
    fig.add_subplot().plot([0.0, 1.0], [0.0, 1.0], label="warm-up")
    fig.suptitle("warm-up")
    fig.savefig(io.BytesIO(), format="png", dpi=20)
    html_template()


def build_report(store_path: str | Path, experiment: Optional[str] = None, out_dir: Optional[str | Path] = None,
                 svg: bool = False, tensorboard: Optional[str | Path] = None, band: str = DEFAULT_BAND,
                 correction: Optional[str] = None) -> ReportFiles:
    """Write report.html, report.md, summary.csv, runs.csv, epochs.csv and figures/ for one experiment of a store.
    `band`: what the figures' bands over seeds are, ci95 (the tables' 95% interval of the mean) or minmax (the
    range); with `correction` (holm, bh: core.stats.CORRECTIONS) the comparisons with the baseline are adjusted
    together.

    The files are written into a staging folder beside `out_dir` and put in its place whole, so a killed
    report, or one that meets a full disk, leaves the earlier report as it was."""
    bands = band_named(band, "report.band")
    correction = check_correction(correction, "report.correction")
    if tensorboard is not None:
        require_tensorboard()  # fail before writing anything when tensorboard is missing
    store = Store(store_path, create=False)
    try:
        name = pick_experiment(store, experiment)
        data = collect(store, name, correction)
    finally:
        store.close()
    out = check_report_dir(Path(out_dir).expanduser().resolve() if out_dir else default_out_dir(data.store, name))
    logdir = check_tensorboard_dir(tensorboard, out) if tensorboard is not None else None
    reports = [part_report(i, p, svg, bands, correction) for i, p in enumerate(data.parts)]
    figures: dict[str, bytes] = {}
    for r in reports:
        for f in r.figures:
            figures[f"figures/{r.slug}-{f.slug}.png"] = f.png
            if f.svg:
                figures[f"figures/{r.slug}-{f.slug}.svg"] = f.svg
    tables = {"report.html": render_html(data, reports), "report.md": markdown(data, reports),
              "summary.csv": summary_csv(data), "runs.csv": runs_csv(data), "epochs.csv": epochs_csv(data),
              **search_csvs(data), **pareto_csv(data)}
    with staged_folder(out) as staging:
        for relative, blob in figures.items():
            write_bytes_atomic(staging / relative, blob)
        for relative, text in tables.items():
            write_atomic(staging / relative, text)
    files = ReportFiles(out / "report.html", out / "report.md", out / "summary.csv", out / "runs.csv",
                        [out / relative for relative in figures],
                        extra=[out / relative for relative in tables
                               if relative.startswith("search-") or relative == "pareto.csv"],
                        epochs_csv=out / "epochs.csv")
    if logdir is not None:
        files.tensorboard = write_tensorboard(data, logdir)
    return files
