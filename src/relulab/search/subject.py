"""What a search or a probe is about: one part and configuration of an experiment (`pick_part`,
`pick_variant`), the experiment's plan in the store (`ensure_plan`), probe statistics as store rows
(`probe_rows`).

Errors name the argument as a field of the caller (`search.config`, `probe.part`): the command line shows
them as its options (--config, --part).
"""
from __future__ import annotations

from typing import Optional

from relulab.core.errors import UserError, unknown_choice
from relulab.experiments.plan import Experiment, Part, Variant
from relulab.experiments.spec import resolve_part
from relulab.probes import statistics as probes_mod
from relulab.store.database import Store


def pick_variant(part: Part, config: Optional[str], field: str = "config") -> Variant:
    """The configuration a search or probe starts from: `config` (a configuration or variant name), else the
    part's baseline, else its first configuration. Errors name `field` (search.config, probe.config)."""
    if config is None:
        config = part.baseline or part.variants[0].name
    exact = [v for v in part.variants if v.name == config]
    if exact:
        return exact[0]
    by_config = [v for v in part.variants if v.config == config]
    if len(by_config) == 1:
        return by_config[0]
    if len(by_config) > 1:
        raise UserError(f"{field}: {config} has several grid points ({', '.join(v.name for v in by_config)}); "
                        "name one")
    raise unknown_choice(field, config, [v.name for v in part.variants])


def pick_part(exp: Experiment, name: Optional[str], field: str = "part") -> Part:
    """The part `name` of `exp`, or its only part. Errors name `field` (search.part, probe.part)."""
    if name is None:
        if len(exp.parts) > 1:
            raise UserError(f"{field}: {exp.name} has several parts ({', '.join(p.name for p in exp.parts)}); "
                            "name one")
        return exp.parts[0]
    name = resolve_part(name, [p.name for p in exp.parts])  # quickstart's parts answer to the presets' former names
    for part in exp.parts:
        if part.name == name:
            return part
    raise unknown_choice(field, name, [p.name for p in exp.parts])


def ensure_plan(store: Store, exp: Experiment) -> None:
    """Save the experiment's plan if the store has none yet, so that `relulab report` can render the results
    of a search or probe run before any sweep; a sweep's plan, once there, is left alone."""
    if exp.name not in store.experiment_names():
        store.save_plan(exp.name, exp.origin, exp.raw, [p.meta() for p in exp.parts], exp.plan_rows(),
                        exp.run_overrides)


def probe_rows(result: probes_mod.ProbeResult) -> list[tuple]:
    """A ProbeResult as store rows: (stat, slot, class, class name, images, value)."""
    return result.store_rows()

