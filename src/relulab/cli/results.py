"""`relulab export`: a store's tables (runs, epochs, slot statistics, searches, summary) as CSV, Parquet or JSON
files (relulab.results)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from relulab.cli.app import app, option_names

console = Console(stderr=True, soft_wrap=True)

# what relulab.results' errors name -> this command's options
EXPORT_OPTIONS = {"export.format": "--format", "export.out": "--out", "results.experiment": "--experiment",
                  "results.correction": "--correction"}


@app.command("export")
def export_command(
    store: Path = typer.Argument(..., help="The store (.sqlite)."),
    format: str = typer.Option("csv", "--format", "-f", help="csv, parquet (needs the parquet extra: pip install "
                               "relulab[parquet]) or json (a list of records per table)."),
    out: Path = typer.Option(..., "--out", "-o", help="The folder to write the tables into (made if needed)."),
    experiment: Optional[str] = typer.Option(None, help="Only this experiment of the store (default: all)."),
    correction: str = typer.Option("none", help="The summary's adjustment of each part's comparisons with the "
                                   "baseline: none, holm or bh (Benjamini-Hochberg)."),
):
    """Write a store's results as tables: runs (hyperparameters as columns), epochs (per-epoch history),
    slot_stats (stored per-slot probe statistics), searches (each step's placements) and summary (mean, std and
    95% interval per configuration, the Welch comparison with the baseline). Tables with no row are skipped."""
    from relulab.results.export import export_tables

    with option_names(EXPORT_OPTIONS):
        done = export_tables(store, format, out, experiment, correction)
    for name, (path, rows) in done.written.items():
        console.print(f"{name}: {rows} rows")
        print(path)
    if done.empty:
        console.print(f"no rows, not written: {', '.join(done.empty)}")
