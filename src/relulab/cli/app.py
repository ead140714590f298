"""The typer application every command module registers on, and shared CLI helpers.

The library's errors name spec fields (`search.strategy: unknown value 'beam'`, `executor.address: ...`);
the command line shows them as the options that set those fields (`--strategy`, `--address`). FIELD_FLAGS is
that one map, applied to every UserError the command prints (relulab.cli.main).
"""
from __future__ import annotations

import re
from contextlib import contextmanager
from typing import Annotated, Mapping, Optional, Sequence

import typer

from relulab.core.errors import UserError
from relulab.experiments import parse_seeds

app = typer.Typer(
    name="relulab",
    help="Fast, honest, reproducible experiments on activation functions.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# spec field (as library errors name it) -> the command-line option that sets it
FIELD_FLAGS = {
    "executor.name": "--executor",
    "executor.address": "--address",
    "executor.gpus_per_task": "--gpus-per-task",
    "executor.cpus_per_task": "--cpus-per-task",
    **{f"search.{name}": f"--{name.replace('_', '-')}"
       for name in ("strategy", "stat", "order", "budget", "patience", "k", "keep", "choose", "alpha", "metric",
                    "probe_set", "max_placements", "part", "config")},
    "probe.part": "--part",
    "probe.config": "--config",
    "probe.seed": "--seeds",
    "probe.epochs": "--epoch",
    "probe.probe_set": "--probe-set",
    "probe.stats": "--stats",
    **{f"export.{name}": f"--{name}" for name in ("out", "best", "part", "experiment", "config", "epochs")},
    "export.seed": "--seeds",
    "compare.metric": "--metric",
    "compare.experiment_a": "--experiment-a",
    "compare.experiment_b": "--experiment-b",
    "compare.config": "--config",
    "report.experiment": "--experiment",
    "report.tensorboard": "--tensorboard",
    "report.band": "--band",
    "tracking.tensorboard": "--tensorboard",  # relulab.experiments.trackers: the live trackers
    "tracking.mlflow": "--mlflow",
    "overrides.parts": "--part",  # relulab.experiments.Overrides: what the command line changes in a spec
    "overrides.yes": "--yes",
}
# A field anywhere in a message ("only with executor.name ray"), not inside a longer name (search.keep, not .k).
_FIELD = re.compile(r"(?<![\w.-])(" + "|".join(map(re.escape, sorted(FIELD_FLAGS, key=len, reverse=True)))
                    + r")(?![\w-])")


def flag_message(message: str, leading: Mapping[str, str] = {}) -> str:  # noqa: B006 - read only
    """A library error as the command line says it: its fields as options (FIELD_FLAGS), and a leading field
    in `leading` (a command's own names, such as build_report's out_dir: --out) as that option."""
    field, colon, rest = message.partition(":")
    if colon and field in leading:
        message = f"{leading[field]}:{rest}"
    return _FIELD.sub(lambda m: FIELD_FLAGS[m.group(1)], message)


@contextmanager
def option_names(leading: Mapping[str, str]):
    """Re-raise UserErrors naming the command's options (--epochs) instead of what the library named: a leading
    field of `leading`, and every field of FIELD_FLAGS."""
    try:
        yield
    except UserError as e:
        raise UserError(flag_message(str(e), leading)) from None


# ---------------------------------------------------------------- the options every command reads alike

# Random seeds, in every command that takes them (train, run, search, probe, export-model): --seeds 0,1,2 or 0-4,
# or --seed N, an alias kept for scripts (repeatable: several add up). The two together are refused rather than
# merged: which one a script meant is not clear.
Seeds = Annotated[Optional[str], typer.Option(
    "--seeds", help="Random seeds: 0,1,2, 0-4 or 0,5-9, a run each (default: the spec's; relulab train: 0).")]
SeedAlias = Annotated[list[str], typer.Option(
    "--seed", "-s", help="A seed (or seeds, as --seeds): the same as --seeds, repeatable (several add up).")]
OneSeed = Annotated[Optional[str], typer.Option(
    "--seeds", help="The random seed of the run: one, e.g. 0, read as every command reads --seeds (relulab probe: "
    "0 when not given).")]
# Spec fields, in every command that reads a spec (run, search, probe).
Sets = Annotated[list[str], typer.Option(
    "--set", help="Override a spec field, KEY=VALUE with the value read as YAML: --set data.name=fashion-mnist, "
    "--set model.widths=[64,64], --set train.epochs=null for the default (repeatable; applied to every run).")]


def read_seeds(seeds: Optional[str], seed: Sequence[str]) -> Optional[list[int]]:
    """The seeds of --seeds, or of every --seed merged (a seed given twice is refused); None when neither option
    is given. Both at once are refused, in one line naming both."""
    if seeds is not None and seed:
        raise UserError("--seeds/--seed: give the seeds one way, --seeds 0,1,2 or --seed 0 --seed 1, not both")
    if seeds is not None:
        return parse_seeds(seeds, "--seeds")
    if not seed:
        return None
    return parse_seeds([s for text in seed for s in parse_seeds(text, "--seed")], "--seed")


def read_one_seed(seeds: Optional[str], seed: Sequence[str], why: str, default: Optional[int] = None) -> int:
    """The one seed of a command that names one run (`why` says so, e.g. "relulab probe probes one model"), read
    as read_seeds reads them; `default` when no seed is given (None: one is needed)."""
    chosen = read_seeds(seeds, seed)
    option = "--seed" if seed else "--seeds"
    if chosen is None:
        if default is None:
            raise UserError(f"--seeds: {why}, so one seed is needed, e.g. --seeds 0")
        return default
    if len(chosen) > 1:
        given = seeds if seeds is not None else ",".join(seed)
        raise UserError(f"{option}: {why}, so one seed; got {given!r}")
    return chosen[0]
