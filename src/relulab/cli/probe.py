"""`relulab probe`: per-slot statistics of one configuration's model, per layer and class (source 000's tables)."""
from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

import relulab.experiments as experiments
from relulab.probes.statistics import class_table, degenerate_columns, degenerate_text, parse_stats
from relulab.report.format import slot_text
from relulab.core.util import check_output_dir
from relulab.cli.app import OneSeed, SeedAlias, Sets, app, option_names, read_one_seed
from relulab.cli.run import (Address, CpusPerTask, ExecutorName, GpusPerTask, check_outputs, failed_tasks_exit,
                             report_dir)

console = Console(stderr=True, soft_wrap=True)
DEFAULT_STATS = "ratio_num,ratio_sum"


@app.command("probe")
def probe_command(
    spec: str = typer.Argument(..., help="A YAML spec file, or a preset name (relulab presets)."),
    config: Optional[str] = typer.Option(None, help="The configuration (default: the baseline)."),
    seeds: OneSeed = None,
    seed: SeedAlias = [],
    stats: str = typer.Option(DEFAULT_STATS, help="Statistics to print and draw, comma-separated, or all "
                              "(every statistic is computed and stored)."),
    probe_set: str = typer.Option("first", "--probe-set", help="The images: first (the first training image of "
                                  "each class, as source 000 took them), per-class:N or val:N."),
    epoch: Optional[str] = typer.Option(None, help="Probe after these epochs: last (default), all, or a list "
                                        "like 1,10,50 (no epoch's weights but the last are kept, so the run is then "
                                        "trained with the probe attached; a run already in the store, as a copy "
                                        "stored as its own record)."),
    part: Optional[str] = typer.Option(None, help="The part of a multi-part spec."),
    epochs: Optional[int] = typer.Option(None, "--epochs", "-e", min=1, help="Epochs of the run."),
    device: Optional[str] = typer.Option(None, help="auto, cpu, cuda or cuda:N (default: the spec's, else auto)."),
    data_path: Optional[str] = typer.Option(None, help="File or folder to load the dataset from."),
    set_: Sets = [],
    override: list[str] = typer.Option([], "--override", hidden=True, help="The former name of --set here."),
    store: Optional[Path] = typer.Option(None, help="The SQLite store (default: the spec's, else "
                                         "runs/<name>.sqlite, shared with relulab run)."),
    out: Optional[Path] = typer.Option(None, help="Folder for the CSV and heatmaps (default: <name>-probes next "
                                       "to the store). With --out, nothing is written outside it (and the store)."),
    report: Optional[bool] = typer.Option(None, "--report/--no-report", help="Also rebuild the experiment's HTML "
                                          "report: by default next to the store, but with --out only when asked, "
                                          "and then into OUT/report."),
    svg: bool = typer.Option(False, help="Also write the plots as SVG."),
    executor: ExecutorName = "in-process",
    address: Address = None,
    gpus_per_task: GpusPerTask = None,
    cpus_per_task: CpusPerTask = None,
    yes: bool = typer.Option(False, "--yes", help=f"Accept a spec of more than {experiments.PLAN_LIMIT} runs."),
):
    """Probe statistics of a configuration's model, per slot and class: from the store, the run's kept weights,
    or by training it.

    Prints a layer x class table with the average column for each statistic (source 000's layout), and writes
    them as CSV and heatmaps; with several --epoch values, also each statistic over the epochs."""
    from relulab.experiments.executors import make_executor
    from relulab.report import write_probe_tables
    from relulab.search import probe_configuration

    runner = make_executor(executor, address, gpus_per_task, cpus_per_task)  # before anything is read or written
    names = parse_stats(stats, "--stats")
    seed_number = read_one_seed(seeds, seed, "relulab probe probes one model", default=0)
    overrides = experiments.Overrides(epochs=epochs, device=device, data_path=data_path,
                                      store=str(store) if store else None, sets=[*set_, *override], yes=yes)
    with option_names({"--set train.epochs": "--epochs"} if epochs is not None else {}):
        exp = experiments.load_experiment(spec, overrides)
    folder = Path(out).expanduser().resolve() if out else exp.store.parent / f"{exp.name}-probes"
    # `--out DIR` keeps everything in DIR: the report is rebuilt only when asked, and then goes under DIR too.
    want_report = report if report is not None else out is None
    report_folder = folder / "report" if out else None  # None: the experiment's report next to the store
    check_outputs(exp.store, report_dir(exp.store, exp.name, report_folder) if want_report else None)
    folder = check_output_dir(folder, "--out")
    with failed_tasks_exit():  # the run trains (there: on Ray) only where the store has no statistics of it
        pr = probe_configuration(exp, seed_number, probe_set, epoch, part, config, executor=runner)
    if not pr.results:
        console.print(f"{pr.variant} seed {seed_number}: no model to probe")
        raise typer.Exit(1)
    last = max(pr.results)
    print_tables(pr, names, last)
    written = write_probe_tables(pr, names, folder, svg)
    console.print(f"{probed_line(pr)}; files: {', '.join(str(p) for p in written)}")
    if want_report:
        from relulab.report import build_report

        files = build_report(exp.store, exp.name, report_folder, svg=svg)
        print(files.html)


HOW_PROBED = {  # ProbeRun.source -> how its statistics were had
    "store": "probe statistics from the store",
    "weights": "probed the kept weights",
    "trained": "probed the freshly trained model",
    "retrained": "probed as it trained",
}


def _acc(row: Optional[dict], column: str = "best_val_acc") -> str:
    value = (row or {}).get(column)
    return "-" if value is None or not math.isfinite(value) else f"{value * 100:.2f}%"


def probed_line(pr) -> str:
    """Which model the statistics describe: the stored run itself, or a copy of it retrained for probing (with
    both accuracies: a retrained model is another model)."""
    if pr.copy is None:
        return f"{HOW_PROBED[pr.source]} of run {pr.key} (best val acc {_acc(pr.run)})"
    return (f"statistics of a copy of run {pr.key} retrained for probing (run {pr.probed_key}, a record of its own; "
            f"{HOW_PROBED[pr.source]}): the copy's best val acc {_acc(pr.copy)}, the stored run's {_acc(pr.run)}")


def _cell(value) -> str:
    return "-" if value is None or (isinstance(value, float) and not math.isfinite(value)) else f"{value:.4g}"


def print_tables(pr, names: list[str], epoch: int) -> None:
    out = Console(width=None if sys.stdout.isatty() else 200)
    result = pr.results[epoch]
    for name in names:
        if name not in result.overall:
            continue
        header, rows = class_table(result, name)
        table = Table(title=f"{name}: {pr.variant} seed {pr.seed}, epoch {epoch}, probe set {pr.probe_set} "
                            f"({result.images} images)", title_justify="left")
        for i, column in enumerate(header):
            table.add_column(str(column), justify="left" if i == 0 else "right")
        marked = degenerate_columns(result, name)
        counts = [*result.counts, result.images]
        for row in rows:
            table.add_row(slot_text(row[0], pr.slot_names), *[f"[dim]{degenerate_text(n)}[/dim]" if m else _cell(v)
                                         for v, n, m in zip(row[1:], counts, marked)])
        out.print(table)
    if len(pr.results) > 1:
        epochs = sorted(pr.results)
        for name in names:
            table = Table(title=f"{name} over epochs (average over the probe images)", title_justify="left")
            table.add_column("slot", justify="left")
            for e in epochs:
                table.add_column(str(e), justify="right")
            for slot in result.slots:
                table.add_row(slot_text(slot, pr.slot_names),
                              *[_cell(pr.results[e].overall.get(name, {}).get(slot)) for e in epochs])
            out.print(table)
