"""The one exception type for user mistakes, and a small helper for checking input.

Anything the user can get wrong (a config field, a CLI value, a data file) raises
`UserError` with a one-line message that names the field or file and says what was
expected. The CLI turns it into `error: <message>` and exit code 2; library callers
can catch it like any other exception (it is a `ValueError`).
"""
from __future__ import annotations

from difflib import get_close_matches
from typing import Iterable


class UserError(ValueError):
    """A mistake in user input: bad config value, missing or corrupt file."""

    def __init__(self, message: str):
        # Keep it to one line: the CLI prints it as-is.
        super().__init__(" ".join(str(message).split()))


def unknown_choice(field: str, value: object, choices: Iterable[str]) -> UserError:
    """The error for a name that is not in a registry, with a did-you-mean hint."""
    choices = sorted(choices)
    hint = get_close_matches(str(value), choices, n=1)
    suggestion = f" (did you mean '{hint[0]}'?)" if hint else ""
    return UserError(f"{field}: unknown value '{value}'{suggestion}; expected one of: {', '.join(choices)}")


def is_number(value) -> bool:
    """An int or float, but not a bool (which Python counts as an int)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)
