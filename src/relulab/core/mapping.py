"""Plain dataclasses from mappings (a YAML spec's sections): unknown fields named with a did-you-mean, scalars
checked against the field's type, every error one line that names the field's path (`train.optimizer.lr`)."""
from __future__ import annotations

import math
import typing
from dataclasses import fields

from relulab.core.errors import UserError
from relulab.core.ranges import INT64_MAX, show_int


def check_mapping(value, path: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise UserError(f"{path}: expected a mapping, got {value!r}")
    return value


def check_keys(mapping: dict, allowed, path: str) -> None:
    for key in mapping:
        if key not in allowed:
            from difflib import get_close_matches

            hint = get_close_matches(str(key), [str(a) for a in allowed], n=1)
            did_you_mean = f" (did you mean '{hint[0]}'?)" if hint else ""
            where = f"{path}.{key}" if path else str(key)
            raise UserError(f"{where}: unknown field{did_you_mean}; expected one of: {', '.join(allowed)}")


def coerce(value, hint, path: str):
    """Check a scalar against its dataclass field type; YAML reads 1e-3 as a string, so numbers may be text."""
    args = typing.get_args(hint)
    optional = type(None) in args
    kind = next((a for a in args if a is not type(None)), hint) if args and typing.get_origin(hint) is typing.Union \
        else hint
    if value is None:
        if optional:
            return None
        raise UserError(f"{path}: a value is required")
    if kind is float:
        return coerce_float(value, path)
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise UserError(f"{path}: expected an integer, got {value!r}")
    if kind is int and not -INT64_MAX - 1 <= value <= INT64_MAX:  # what the store (SQLite) holds
        raise UserError(f"{path}: {show_int(value)} is beyond a 64-bit integer")
    if kind is bool and not isinstance(value, bool):
        raise UserError(f"{path}: expected true or false, got {value!r}")
    if kind is str:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)  # `scaling: 255`
        if not isinstance(value, str):
            raise UserError(f"{path}: expected text, got {value!r}")
    return value


def coerce_float(value, path: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise UserError(f"{path}: expected a number, got {value!r}")
    try:
        number = float(value)
    except ValueError:
        raise UserError(f"{path}: expected a number, got {value!r}") from None
    except OverflowError:  # an integer of 400 digits
        raise UserError(f"{path}: expected a finite number, got {show_int(value)}") from None
    if not math.isfinite(number):
        raise UserError(f"{path}: expected a finite number, got {value!r}")
    return number


def from_mapping(cls, mapping, path: str, extra: tuple = ()):
    mapping = dict(check_mapping(mapping, path))
    names = [f.name for f in fields(cls)]
    check_keys(mapping, names + list(extra), path)
    hints = typing.get_type_hints(cls)
    return cls(**{k: coerce(v, hints[k], f"{path}.{k}") for k, v in mapping.items() if k not in extra})
