"""Registries: tables of name -> entry, and the name lookups they share.

`Registry` is the table (models, activations): a dict whose `entry` turns an unknown name into a
one-line error that names the config field, with a did-you-mean hint. `lookup` is the lookup of
activations and initializers, which take a name with an optional numeric parameter after a colon
("leaky_relu:0.2", "constant:0.1") and accept a few other spellings.
"""
from __future__ import annotations

from typing import Dict, Optional, Protocol, TypeVar

from relulab.core.errors import UserError, unknown_choice


class Named(Protocol):
    name: str
    default_param: Optional[float]


Entry = TypeVar("Entry", bound=Named)
T = TypeVar("T")


class Registry(Dict[str, T]):
    """name -> entry. Adding one is `REGISTRY[name] = entry`; everything that decides by name reads the entry."""

    def entry(self, name: str, field: str) -> T:
        """The entry called `name`; an unknown name is a UserError naming `field`, with a did-you-mean hint."""
        if name not in self:
            raise unknown_choice(field, name, self)
        return self[name]


def lookup(spec: str, field: str, table: dict[str, Entry], aliases: dict[str, str], kind: str
           ) -> tuple[Entry, Optional[float]]:
    """`'NAME[:PARAM]'` -> (the table's entry, the parameter or the entry's default)."""
    if not isinstance(spec, str) or not spec.strip():
        raise UserError(f"{field}: expected {kind} name, got {spec!r}")
    name, _, param_text = spec.strip().lower().partition(":")
    name = aliases.get(name, name)
    if name not in table:
        raise unknown_choice(field, spec, list(table) + list(aliases))
    entry = table[name]
    if not param_text:
        return entry, entry.default_param
    if entry.default_param is None:
        raise UserError(f"{field}: '{name}' takes no parameter, got '{spec}'")
    try:
        return entry, float(param_text)
    except ValueError:
        raise UserError(f"{field}: parameter of '{name}' must be a number, got '{param_text}'") from None


def canonical(entry: Named, param: Optional[float]) -> str:
    """The one spelling stored in configs: the name, plus the parameter when it is not the default."""
    if param is None or param == entry.default_param:
        return entry.name
    return f"{entry.name}:{param:g}"
