"""A report of one experiment of a store, put together and written (`build_report`); `part_report` gathers a
part's sections.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from relulab.core.errors import UserError
from relulab.core.stats import check_correction
from relulab.core.util import check_output_dir, staged_folder, write_atomic, write_bytes_atomic
from relulab.report.collect import PartData, collect, pick_experiment
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


def default_out_dir(store_path: Path, experiment: str) -> Path:
    return store_path.parent / f"{experiment}-report"


# What a report folder holds. The folder is replaced whole on every report (util.staged_folder), so a folder that
# holds anything else is refused rather than replaced: `--out .` must never take the user's files with it.
REPORT_ENTRIES = re.compile(r"^(?:report\.html|report\.md|summary\.csv|runs\.csv|epochs\.csv|pareto\.csv|figures|"
                            r"search-[0-9a-f]+(?:-correlations)?\.csv)$")


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


def check_tensorboard_dir(logdir: str | Path, out: Optional[Path], field: str = "tensorboard") -> Path:
    """`logdir` can take TensorBoard's files, outside the report folder `out` (None: no report is written)."""
    logdir = check_output_dir(logdir, field)
    if out is not None and (logdir == out or out in logdir.parents):
        raise UserError(f"{field}: {logdir} is inside the report folder {out}, which is replaced whole on every "
                        "report; put the logs elsewhere")
    return logdir


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
