"""`relulab search`: which activation slots can be switched off (relulab.search)."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

import relulab.experiments as experiments
from relulab.cli.app import SeedAlias, Seeds, Sets, app, option_names, read_seeds
from relulab.cli.run import (Address, CpusPerTask, ExecutorName, GpusPerTask, MlflowUri, TensorBoardDir, check_outputs,
                             failed_tasks_exit, open_tracking, print_tracking, report_dir)
from relulab.report.format import slot_text, slots_text

console = Console(stderr=True, soft_wrap=True)


@app.command("search")
def search_command(
    spec: str = typer.Argument(..., help="A YAML spec file, or a preset name (relulab presets)."),
    strategy: str = typer.Option("greedy", help="greedy (source 000's), oracle (every single-slot change, best by "
                                 "accuracy), exhaustive (every placement up to --k slots off), budget (exactly k "
                                 "slots on, for each k of --keep), learned (gates trained with an L1 push to each "
                                 "of --budgets, SNL's method) or random (chance at each of --budgets)."),
    config: Optional[str] = typer.Option(None, help="The configuration to start from (default: the baseline)."),
    part: Optional[str] = typer.Option(None, help="The part of a multi-part spec."),
    stat: str = typer.Option("ratio_num", help="greedy / budget: the probe statistic that ranks the slots "
                             "(relulab.probes: ratio_num, ratio_sum, std, dead_fraction, sign_entropy, ...)."),
    order: str = typer.Option("highest", help="greedy / budget: switch off the slot with the highest or lowest "
                              "value first (source 000's variants B and A)."),
    budget: Optional[int] = typer.Option(None, help="greedy / oracle: slots switched off at most (default 20% of "
                                         "the active slots, source 000's 2 of 10)."),
    patience: int = typer.Option(1, help="greedy: stop after this many rejected proposals in a row."),
    k: int = typer.Option(2, "--k", help="exhaustive: every placement with up to k slots off."),
    keep: Optional[str] = typer.Option(None, help="budget: numbers of slots kept on, e.g. 0,2,4 or 0-10 "
                                       "(default: every number)."),
    choose: str = typer.Option("stat", help="budget: which slots stay on: stat (ranked by --stat/--order on the "
                               "base model) or exhaustive (every placement)."),
    plain_rule: bool = typer.Option(False, "--plain-rule", help="Accept a change when the mean improves (source "
                                    "000's rule) instead of when Welch's test says it is better beyond seed "
                                    "noise."),
    accept_all: bool = typer.Option(False, "--accept-all", help="greedy: accept every proposal whatever it "
                                    "measured (EASIER's rule: switch off, retrain, go on); each step still says "
                                    "whether its change is beyond seed noise."),
    alpha: float = typer.Option(0.05, help="Welch's test level for accepting a change."),
    metric: str = typer.Option("best_val_acc", help="best_val_acc (source 000's), final_val_acc or test_acc."),
    probe_set: str = typer.Option("first", help="Images the statistics are computed on: first (the first "
                                  "training image of each class, as source 000 took them), per-class:N or val:N."),
    max_placements: int = typer.Option(100, help="exhaustive / budget: refuse to plan more placements."),
    granularity: str = typer.Option("channel", help="learned / random: what is switched off: layer (whole slots), "
                                    "channel, or unit (each channel x position, SNL's setting)."),
    budgets: Optional[str] = typer.Option(None, help="learned / random: the ReLU counts to reach, fractions of the "
                                          "base's (0.5,0.25,0.1, the default) or counts (40000)."),
    gate_epochs: Optional[int] = typer.Option(None, help="learned: epochs of gate training from each seed's base "
                                              "model (relulab.search.gates)."),
    lasso: Optional[float] = typer.Option(None, help="learned: the starting weight of the L1 push of the gates "
                                          "toward 0 (it grows each epoch the soft ReLU count is above the budget)."),
    finetune_epochs: Optional[int] = typer.Option(None, help="learned: also fine-tune each seed's gate-trained "
                                                  "model with its binarised placement for this many epochs "
                                                  "(SNL's protocol), beside the placement trained by the recipe."),
    seeds: Seeds = None,
    seed: SeedAlias = [],
    epochs: Optional[int] = typer.Option(None, "--epochs", "-e", min=1, help="Epochs of every run (e.g. fewer "
                                         "for a quick oracle step; runs are keyed by it, so they are not mixed "
                                         "with runs of other lengths)."),
    device: Optional[str] = typer.Option(None, help="auto, cpu, cuda or cuda:N (default: the spec's, else auto)."),
    data_path: Optional[str] = typer.Option(None, help="File or folder to load the dataset from."),
    set_: Sets = [],
    store: Optional[Path] = typer.Option(None, help="The SQLite store (default: the spec's, else "
                                         "runs/<name>.sqlite, shared with relulab run)."),
    out: Optional[Path] = typer.Option(None, help="Report folder (default: <name>-report next to the store)."),
    report: bool = typer.Option(True, help="Write the experiment's report (with every search) when done."),
    svg: bool = typer.Option(False, help="Also write the plots as SVG."),
    tensorboard: TensorBoardDir = None,
    mlflow: MlflowUri = None,
    keep_weights: Optional[bool] = typer.Option(None, "--keep-weights/--no-keep-weights", help="Keep each finished "
                                                "run's final and best-epoch weights beside the store (the spec's "
                                                "keep_weights; default auto: where a run's take at most 256 MiB)."),
    executor: ExecutorName = "in-process",
    address: Address = None,
    gpus_per_task: GpusPerTask = None,
    cpus_per_task: CpusPerTask = None,
    yes: bool = typer.Option(False, "--yes", help=f"Accept a spec of more than {experiments.PLAN_LIMIT} runs."),
):
    """Search which activation slots to switch off; results go to the store and the experiment's report.

    Runs already in the store (from relulab run, another search or a killed one) are reused, never retrained:
    run the same command again after an interruption and it goes on where it stopped."""
    from relulab.experiments.executors import make_executor
    from relulab.search import SearchOptions, load_search_views, run_search
    from relulab.store import Store

    runner = make_executor(executor, address, gpus_per_task, cpus_per_task)  # before anything is read or written
    options = SearchOptions(strategy, stat, order, budget, patience, k, keep, choose, plain_rule, alpha, metric,
                            probe_set, max_placements, accept_all, granularity=granularity, budgets=budgets,
                            gate_epochs=gate_epochs, lasso=lasso, finetune_epochs=finetune_epochs)
    overrides = experiments.Overrides(
        seeds=read_seeds(seeds, seed), epochs=epochs, device=device, data_path=data_path,
        store=str(store) if store else None, sets=list(set_), yes=yes, keep_weights=keep_weights)
    with option_names({"--set train.epochs": "--epochs"} if epochs is not None else {}):
        exp = experiments.load_experiment(spec, overrides)
    check_outputs(exp.store, report_dir(exp.store, exp.name, out) if report else None, tensorboard)
    with open_tracking(tensorboard, mlflow) as trackers, failed_tasks_exit():
        outcome = run_search(exp, options, part, config, executor=runner, trackers=trackers)
        with Store(exp.store, create=False) as s:
            found = next(x for x in load_search_views(s, exp.name) if x["id"] == outcome.id)
        print_search(found)
        console.print(f"search {outcome.id}: {outcome.trained} runs trained, {outcome.reused} already in the store"
                      + (f", {outcome.probed_again} retrained to probe them" if outcome.probed_again else "")
                      + f"; store {exp.store}")
        print_tracking(tensorboard, mlflow)
        if report:
            from relulab.report import build_report

            files = build_report(exp.store, exp.name, out, svg=svg)
            trackers.report_written(files.html.parent, exp.name)
            console.print(f"report: {files.markdown} (Markdown), {', '.join(str(p) for p in files.extra)} (CSV)")
            print(files.html)


def _interval_text(mean, low, high) -> str:
    if mean is None or mean != mean:
        return "-"
    if low is None or low != low:
        return f"{mean * 100:.2f}"
    return f"{mean * 100:.2f} ± {(high - low) * 50:.2f}"


def _acc(c: dict) -> str:
    return _interval_text(c["mean"], c["ci_low"], c["ci_high"])


def _test(c: dict) -> str:
    """The candidate's mean test accuracy over its seeds (from its stored runs) with the 95% interval."""
    return _interval_text(c.get("test_mean"), c.get("test_ci_low"), c.get("test_ci_high"))


def _number(value, form: str) -> str:
    return "-" if value is None or value != value else format(value, form)


def _rho(value, low, high) -> str:
    text = _number(value, "+.3f")
    return text if low is None or high is None else f"{text} [{low:+.2f}, {high:+.2f}]"


def print_judgement(out: Console, rows: list[dict], step: int) -> None:
    """A judgement's table: each statistic's rank correlations with their bootstrap intervals, raw and
    Holm-adjusted p-values, and the note on comparing many statistics at once."""
    from relulab.search import false_positive_note

    rows = [c for c in rows if c["step"] == step and c["spearman"] is not None and c["spearman"] == c["spearman"]]
    if not rows:
        return
    t = Table(title=f"rank correlation with the measured change (step {step}: {rows[0]['current']}, "
                    f"{max(c['n'] for c in rows)} single-slot changes)", title_justify="left")
    for column in ("statistic", "n", "Spearman [95% bootstrap]", "p", "p (Holm)", "Kendall [95% bootstrap]", "p",
                   "p (Holm)"):
        t.add_column(column, justify="right")
    for c in rows:
        t.add_row(c["stat"], str(c["n"]), _rho(c["spearman"], c.get("spearman_low"), c.get("spearman_high")),
                  _number(c["spearman_p"], ".2g"), _number(c.get("spearman_p_holm"), ".2g"),
                  _rho(c["kendall"], c.get("kendall_low"), c.get("kendall_high")), _number(c["kendall_p"], ".2g"),
                  _number(c.get("kendall_p_holm"), ".2g"))
    out.print(t)
    note = false_positive_note(rows[0].get("compared", 0))
    if note:
        out.print(f"  {note}")


def print_search(s: dict) -> None:
    """Each step's candidates (validation-chosen and test accuracy), decision and judgement, then the result."""
    out = Console(width=None if sys.stdout.isatty() else 160)
    names = s.get("slot_names") or {}
    judged = {c["step"] for c in s.get("judgements", [])}
    for step in s["steps"]:
        cands = [c for c in s["candidates"] if c["step"] == step["step"]]
        table = Table(title=f"{s['strategy']} step {step['step']}: from {step['current']}, {step['decision']}"
                            + (f" {step['chosen']}" if step["chosen"] else ""), title_justify="left")
        for column in ("placement", "ReLUs", "slot", "acc (%)", "test acc (%)", "vs", "diff (points)", "p",
                       "statistic"):
            table.add_column(column, justify="right")
        shown = cands if len(cands) <= 30 else cands[:30]
        for c in shown:
            diff = "-" if c["diff"] is None or c["diff"] != c["diff"] else f"{c['diff'] * 100:+.2f}"
            slot = "-" if c["slot"] is None else slot_text(c["slot"], names)
            table.add_row(c["placement"], _number(c["relu_count"], ","), slot, _acc(c), _test(c),
                          c["reference"] or "-", diff, _number(c["p"], ".2g"), _number(c["heuristic"], ".4g"))
        out.print(table)
        if step["note"]:
            out.print(f"  {step['note']}")
        if step["step"] in judged:
            print_judgement(out, s["judgements"], step["step"])
    r = s.get("result") or {}
    if r:
        acc = _interval_text(r["mean"], r["ci_low"], r["ci_high"])
        final = next((c for c in s["candidates"] if c["placement"] == r["final"]), None)
        held_out = f", test acc {_test(final)}%" if final is not None and s["metric"] != "test_acc" else ""
        out.print(f"result: {r['final']} (slots off: {slots_text(r['off'], names)}), {s['metric']} "
                  f"{acc}%{held_out}, {r['relu_count']:,} activations per image")
