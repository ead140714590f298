"""Lists of integers typed as text: '0,1,2', '0-4' or a mix ('0,2,5-7'). The one parser of seeds, epochs and
counts on the command line and in specs.

Every number is checked against its bounds and the size of the list is counted before it is built, so that
`0-99999999999999` is a one-line error rather than a list that fills the memory.
"""
from __future__ import annotations

import re

from relulab.core.errors import UserError

INT64_MAX = 2 ** 63 - 1  # SQLite's INTEGER, and so every integer relulab stores
MAX_ITEMS = 10_000  # more seeds (epochs, counts) than anyone runs: a typo, not a plan
_ITEM = re.compile(r"\s*([0-9]+)\s*(?:-\s*([0-9]+)\s*)?")


def show_int(value) -> str:
    """An integer (or its digits) for an error message: in full unless it is too long to read."""
    digits = str(value).lstrip("-").lstrip("0") or "0"
    return str(value) if len(digits) <= 30 else f"a number of {len(digits)} digits"


def _to_int(digits: str, maximum: int) -> int:
    """int(digits), or maximum + 1 for one too long to be in range (Python refuses to convert 4300 digits)."""
    digits = digits.lstrip("0") or "0"
    return int(digits) if len(digits) <= len(str(maximum)) else maximum + 1


def parse_ranges(text: str, field: str, *, noun: str = "numbers", expected: str = "numbers like 0,2,4 or 0-10",
                 minimum: int = 0, maximum: int = INT64_MAX, bounds: str = "", limit: int = MAX_ITEMS) -> list[int]:
    """The integers of `text` in the order written. Refused: anything but comma-separated numbers and low-high
    ranges (`expected` says what was), numbers outside minimum..maximum (`bounds` says why those), a range that
    runs backwards, and more than `limit` numbers in all."""
    pairs = []
    for item in str(text).split(","):  # an empty item ("1,,2") is a typo: refused
        match = _ITEM.fullmatch(item)
        if not match:
            raise UserError(f"{field}: expected {expected}, got {text!r}")
        for digits in filter(None, match.groups()):
            if not minimum <= _to_int(digits, maximum) <= maximum:
                raise UserError(f"{field}: {noun} run from {minimum} to {maximum}{bounds}, got {show_int(digits)}")
        low = _to_int(match.group(1), maximum)
        high = _to_int(match.group(2), maximum) if match.group(2) is not None else low
        if high < low:
            raise UserError(f"{field}: the range {low}-{high} runs backwards; write {high}-{low}")
        pairs.append((low, high))
    count = sum(high - low + 1 for low, high in pairs)
    if count > limit:
        raise UserError(f"{field}: {str(text).strip()} is {count} {noun}; at most {limit}")
    return [value for low, high in pairs for value in range(low, high + 1)]
