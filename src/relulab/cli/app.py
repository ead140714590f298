"""The typer application every command module registers on, and shared CLI helpers.

The library's errors name spec fields (`search.strategy: unknown value 'beam'`, `executor.address: ...`);
the command line shows them as the options that set those fields (`--strategy`, `--address`). FIELD_FLAGS is
that one map, applied to every UserError the command prints (relulab.cli.main).
"""
from __future__ import annotations

import re
from contextlib import contextmanager
from typing import Mapping

import typer

from relulab.core.errors import UserError

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
    "probe.seed": "--seed",
    "probe.epochs": "--epoch",
    "probe.probe_set": "--probe-set",
    "probe.stats": "--stats",
    **{f"export.{name}": f"--{name}" for name in ("out", "best", "part", "seed", "experiment", "config", "epochs")},
    "compare.metric": "--metric",
    "compare.experiment_a": "--experiment-a",
    "compare.experiment_b": "--experiment-b",
    "compare.config": "--config",
    "report.experiment": "--experiment",
    "report.tensorboard": "--tensorboard",
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
