"""`relulab run` (an experiment: spec or preset), `relulab report` (from a store) and `relulab presets`."""
from __future__ import annotations

import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

import relulab.experiments as experiments
import relulab.report
from relulab.core import background
from relulab.core.errors import UserError
from relulab.core.util import check_output_file
from relulab.cli.app import SeedAlias, Seeds, Sets, app, option_names, read_seeds

console = Console(stderr=True, soft_wrap=True)

# Where runs train: the options of every command that trains (run, search, probe), defined once here.
ExecutorName = Annotated[str, typer.Option(
    "--executor", help="Where runs train: in-process (this process) or ray (a Ray cluster; needs the ray extra). The "
    "store is written by this process either way.")]
Address = Annotated[Optional[str], typer.Option(
    help="With --executor ray: the cluster to join, HOST:6379, or auto for one started with `ray start` on this "
    "machine (default: start a local Ray with this machine's GPUs and CPUs).")]
GpusPerTask = Annotated[Optional[float], typer.Option(
    help="With --executor ray: GPUs per task, 0 to 1 (0.5: two tasks share a GPU; 0: train on CPUs). Default: 1 "
    "when the cluster has GPUs.")]
CpusPerTask = Annotated[Optional[int], typer.Option(
    help="With --executor ray: CPU cores per task, also its torch threads unless the spec sets threads "
    "(default 1).")]
# Live tracking (relulab.experiments.trackers): the options of every command that trains a sweep (run, search).
TensorBoardDir = Annotated[Optional[Path], typer.Option(
    "--tensorboard", help="Log each run to TensorBoard in this folder as it finishes, while the sweep goes on: every "
    "epoch's scalars and learning rate, slot statistics and weight histograms, hyperparameters for the HParams "
    "tab (needs the tensorboard extra).")]
MlflowUri = Annotated[Optional[str], typer.Option(
    "--mlflow", help="Log each run to this MLflow tracking store as it finishes (params, per-epoch metrics, tags), "
    "e.g. sqlite:///mlflow.db or http://host:5000; the report goes to the sweep's MLflow run as an artifact "
    "(needs the mlflow extra).")]


@contextmanager
def failed_tasks_exit():
    """Ray tasks that failed for good end the command with one line and exit code 1: the finished runs are
    stored, and running the command again retries the rest."""
    from relulab.experiments.executors import TaskFailed

    try:
        yield
    except TaskFailed as e:
        print(f"error: {e}", file=sys.stderr)
        raise typer.Exit(1)


@app.command("run")
def run_command(
    spec: str = typer.Argument(..., help="A YAML spec file, or a preset name (relulab presets)."),
    seeds: Seeds = None,
    seed: SeedAlias = [],
    epochs: Optional[int] = typer.Option(None, "--epochs", "-e", min=1, help="Epochs of every run."),
    device: Optional[str] = typer.Option(None, help="auto, cpu, cuda or cuda:N (default: the spec's, else auto)."),
    data_path: Optional[str] = typer.Option(None, help="File or folder to load every run's dataset from."),
    set_: Sets = [],
    part: list[str] = typer.Option([], help="Run only this part of a multi-part spec (repeatable)."),
    store: Optional[Path] = typer.Option(None, help="The SQLite store (default: the spec's, else "
                                         "runs/<name>.sqlite)."),
    out: Optional[Path] = typer.Option(None, help="Report folder (default: runs/<name>-report next to the store)."),
    report: bool = typer.Option(True, help="Write the report when the sweep is done."),
    svg: bool = typer.Option(False, help="Also write the plots as SVG."),
    tensorboard: TensorBoardDir = None,
    mlflow: MlflowUri = None,
    executor: ExecutorName = "in-process",
    address: Address = None,
    gpus_per_task: GpusPerTask = None,
    cpus_per_task: CpusPerTask = None,
    keep_weights: Optional[bool] = typer.Option(None, "--keep-weights/--no-keep-weights", help="Keep each finished "
                                                "run's final and best-epoch weights beside the store (the spec's "
                                                "keep_weights; default auto: where a run's take at most 256 MiB)."),
    yes: bool = typer.Option(False, "--yes", help=f"Run a plan of more than {experiments.PLAN_LIMIT} runs "
                             "(refused without it: a grid that large is more often a typo)."),
):
    """Run an experiment: every configuration x seed not yet in the store, then its report.

    Re-running the same command after an interruption (even kill -9) finishes what is missing.
    With --executor ray the runs train on a Ray cluster, a pack of models per task."""
    from relulab.experiments.executors import make_executor

    runner = make_executor(executor, address, gpus_per_task, cpus_per_task)  # before anything is read or written
    overrides = experiments.Overrides(
        seeds=read_seeds(seeds, seed), epochs=epochs, device=device, data_path=data_path,
        store=str(store) if store else None, sets=list(set_), parts=list(part), yes=yes, keep_weights=keep_weights)
    with option_names({"--set train.epochs": "--epochs"} if epochs is not None else {}):
        exp = experiments.load_experiment(spec, overrides)
    check_outputs(exp.store, report_dir(exp.store, exp.name, out) if report else None, tensorboard)
    if report:  # the report's modules load while the GPU trains, where it does
        background.when_device_busy(relulab.report.warm_up)
    with open_tracking(tensorboard, mlflow) as trackers, failed_tasks_exit():
        try:
            summary = experiments.run_experiment(exp, executor=runner, trackers=trackers)
        finally:
            background.finish()
        _print_summary(summary)
        print_tracking(tensorboard, mlflow)
        if report:
            from relulab.report import build_report

            files = build_report(exp.store, exp.name, out, svg=svg)
            trackers.report_written(files.html.parent, exp.name)
            console.print(f"report: {files.markdown} (Markdown), {files.summary_csv} (CSV)")
            print(files.html)  # the last line on stdout: the HTML report


REPORT_OPTIONS = {"out_dir": "--out", "tensorboard": "--tensorboard", "report.correction": "--correction"}


def report_dir(store: Path, name: str, out: Optional[Path]) -> Path:
    from relulab.report import default_out_dir

    return Path(out).expanduser().resolve() if out else default_out_dir(store, name)


def check_outputs(store: Path, report: Optional[Path] = None, tensorboard: Optional[Path] = None) -> None:
    """Every place a command will write, checked before it trains anything (an hour of training must not end
    in "not a directory"): the store's file, the report's folder, TensorBoard's folder."""
    from relulab.report import check_report_dir, check_tensorboard_dir

    check_output_file(store, "store")
    if report is not None:
        check_report_dir(report, "--out")
    if tensorboard is not None:
        check_tensorboard_dir(tensorboard, report, "--tensorboard")


def open_tracking(tensorboard: Optional[Path], mlflow: Optional[str]):
    """The live trackers of --tensorboard and --mlflow, each checked (package, folder, URI) before anything trains:
    a missing package is a usage error, said before hours of training."""
    from relulab.experiments.trackers import open_trackers

    return open_trackers({"tensorboard": tensorboard, "mlflow": mlflow})


def print_tracking(tensorboard: Optional[Path], mlflow: Optional[str]) -> None:
    """Where the live logs are, as the commands that show them."""
    if tensorboard is not None:
        console.print(f"tensorboard: tensorboard --logdir {Path(tensorboard).expanduser().absolute()}")
    if mlflow is not None:
        console.print(f"mlflow: mlflow ui --backend-store-uri {mlflow}")


def _print_summary(s: experiments.SweepSummary) -> None:
    parts = [f"{s.trained} runs trained", f"{s.already_done} already done"]
    if s.diverged:
        parts.append(f"{s.diverged} diverged")
    if s.finished_elsewhere:
        parts.append(f"{s.finished_elsewhere} finished first by another process")
    console.print(f"done: {', '.join(parts)}; store {s.store}")


@app.command("report")
def report_command(
    target: str = typer.Argument(..., help="A store (.sqlite), or the spec / preset that was run."),
    experiment: Optional[str] = typer.Option(None, help="Which experiment of the store (when it holds several)."),
    store: Optional[Path] = typer.Option(None, help="The store, when TARGET is a spec or preset."),
    out: Optional[Path] = typer.Option(None, help="Report folder (default: <name>-report next to the store)."),
    svg: bool = typer.Option(False, help="Also write the plots as SVG."),
    tensorboard: Optional[Path] = typer.Option(None, help="Also write TensorBoard logs here."),
    correction: str = typer.Option("none", help="Adjust each part's comparisons with the baseline together: none, "
                                   "holm (Holm: the chance of any false positive) or bh (Benjamini-Hochberg: their "
                                   "expected share)."),
    band: str = typer.Option("ci95", help="The figures' bands over seeds: ci95 (the tables' 95% interval of the "
                             "mean) or minmax (the range over seeds)."),
):
    """Write an experiment's report (HTML, Markdown, CSV, plots) from its store."""
    from relulab.report import build_report

    store_path, name = _resolve_target(target, store, experiment)
    with option_names(REPORT_OPTIONS):
        files = build_report(store_path, name, out, svg=svg, tensorboard=tensorboard, band=band,
                             correction=correction)
    console.print(f"report: {files.markdown} (Markdown), {files.summary_csv} (CSV), {len(files.figures)} figures")
    if files.tensorboard:
        console.print(f"tensorboard: tensorboard --logdir {files.tensorboard}")
    print(files.html)


def _resolve_target(target: str, store: Optional[Path], experiment: Optional[str]) -> tuple[Path, Optional[str]]:
    path = Path(target).expanduser()
    if path.is_file() and path.suffix not in (".yaml", ".yml"):
        return path, experiment
    if path.suffix in (".sqlite", ".db", ".sqlite3"):
        raise UserError(f"store: {path.resolve()} does not exist (run the experiment first: relulab run ...)")
    # The runs are in the store already: a plan past PLAN_LIMIT was run with --yes, and is not refused here.
    exp = experiments.load_experiment(target, experiments.Overrides(store=str(store) if store else None, yes=True))
    return exp.store, experiment or exp.name


@app.command("presets")
def presets_command():
    """The built-in experiments (relulab run NAME), with the former names they still answer to."""
    table = Table("preset", "former name", "description")
    for name in experiments.preset_names():
        raw, _, _ = experiments.read_spec(name)
        description = " ".join(str(raw.get("description", "")).split())
        table.add_row(name, ", ".join(experiments.preset_aliases(name)), description)
    Console().print(table)
