"""The `relulab` command: parse, call the library, print.

Each subcommand lives in its own module here and registers itself on `app`
(cli/app.py). `main` is the console entry point: it turns every user mistake (a
`UserError` from the library, or a usage error from the option parser) into one
line on stderr and exit code 2, never a traceback; the library's errors name spec fields,
which it shows as the options that set them (cli/app.py's FIELD_FLAGS).
"""
from __future__ import annotations

import sys

import typer

from relulab.core.errors import UserError
from relulab.cli.app import app, flag_message

# Importing the command modules registers their commands on `app`.
from relulab.cli import train as _train  # noqa: E402,F401
from relulab.cli import run as _run  # noqa: E402,F401
from relulab.cli import probe as _probe  # noqa: E402,F401  (issue 4)
from relulab.cli import search as _search  # noqa: E402,F401  (issue 4)
from relulab.cli import export as _export  # noqa: E402,F401  (issue 19)
from relulab.cli import compare as _compare  # noqa: E402,F401  (issue 19)
from relulab.cli import inspect as _inspect  # noqa: E402,F401  (issue 21)
from relulab.cli import results as _results  # noqa: E402,F401  (issue 24)
from relulab.cli import fold as _fold  # noqa: E402,F401  (issue 23)

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


INTERRUPTED = 130  # the shell's code for a process ended by Ctrl-C (128 + SIGINT)
# Commands that keep every finished run in a store, so that running them again goes on where they stopped.
RESUMABLE = ("run", "search", "probe")


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        code = app(args=argv, standalone_mode=False)
    except UserError as e:  # the library names fields (search.strategy); the user typed options (--strategy)
        print(f"error: {flag_message(str(e))}", file=sys.stderr)
        sys.exit(2)
    except USAGE_ERRORS as e:  # bad option, missing argument, wrong type
        if not e.format_message():  # `relulab` alone: the help was printed, nothing went wrong
            sys.exit(0)
        print(f"error: {e.format_message()}", file=sys.stderr)
        sys.exit(2)
    except ABORTS:
        code = INTERRUPTED
    if code == INTERRUPTED:  # typer turns Ctrl-C inside a command into this exit code itself, silently
        print(_interrupted_line(argv), file=sys.stderr)
    sys.exit(code if isinstance(code, int) else 0)


def _interrupted_line(argv: list[str]) -> str:
    command = next((a for a in argv if not a.startswith("-")), "")
    if command in RESUMABLE:
        return "interrupted; run the same command to resume (finished runs are in the store)"
    return "interrupted"
