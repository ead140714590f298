"""The `relulab` command: parse, call the library, print.

Each subcommand lives in its own module here and registers itself on `app`
(cli/app.py). `main` is the console entry point: it turns every user mistake (a
`UserError` from the library, or a usage error from the option parser) into one
line on stderr and exit code 2, never a traceback.
"""
from __future__ import annotations

import sys

import typer

from ..errors import UserError
from .app import app

# Importing the command modules registers their commands on `app`.
from . import train as _train  # noqa: E402,F401
from . import run as _run  # noqa: E402,F401
from . import probe as _probe  # noqa: E402,F401  (issue 4)
from . import search as _search  # noqa: E402,F401  (issue 4)

# Recent typer vendors its own copy of click (and click may not be installed at all); older typer uses click.
USAGE_ERRORS: tuple = ()
ABORTS: tuple = (typer.Abort, KeyboardInterrupt)
for _module in ("typer._click.exceptions", "click.exceptions"):
    try:
        _exceptions = __import__(_module, fromlist=["ClickException", "Abort"])
    except ImportError:
        continue
    USAGE_ERRORS += (_exceptions.ClickException,)
    ABORTS += tuple(getattr(_exceptions, name) for name in ("Abort",) if hasattr(_exceptions, name))


def main(argv: list[str] | None = None) -> None:
    try:
        code = app(args=argv, standalone_mode=False)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except USAGE_ERRORS as e:  # bad option, missing argument, wrong type
        if not e.format_message():  # `relulab` alone: the help was printed, nothing went wrong
            sys.exit(0)
        print(f"error: {e.format_message()}", file=sys.stderr)
        sys.exit(2)
    except ABORTS:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)
