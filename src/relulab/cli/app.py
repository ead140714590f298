"""The typer application every command module registers on, and shared CLI helpers."""
from __future__ import annotations

from contextlib import contextmanager

import typer

from relulab.core.errors import UserError

app = typer.Typer(
    name="relulab",
    help="Fast, honest, reproducible experiments on activation functions.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@contextmanager
def option_names(mapping: dict[str, str]):
    """Re-raise UserErrors naming the command's options (--activation) instead of config fields."""
    try:
        yield
    except UserError as e:
        field, _, rest = str(e).partition(":")
        if field in mapping:
            raise UserError(f"{mapping[field]}:{rest}") from None
        raise
