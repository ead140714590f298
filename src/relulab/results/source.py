"""Where the tables come from: a store opened read-only (or the caller's open one), the experiments asked for,
each run's configuration in the plan, and a run's spec flattened into hyperparameter columns.
"""
from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import fields
from typing import Iterator, Optional

from relulab.core.errors import UserError, unknown_choice
from relulab.store import RETRAINED_FOR_PROBING, Store
from relulab.zoo.activations import is_off
from relulab.zoo.models import ModelSpec
from relulab.zoo.optim import OptimizerSpec

@contextmanager
def opened(store) -> Iterator[Store]:
    """`store` itself when it is an open Store (left open), else the store at that path opened read-only."""
    if isinstance(store, Store):
        yield store
        return
    reader = Store(store, create=False)
    try:
        yield reader
    finally:
        reader.close()


def experiment_names(store: Store, experiment: Optional[str]) -> list[str]:
    """The experiments to read: `experiment` (checked), else every one of the store, oldest first."""
    names = list(reversed(store.experiment_names()))
    if experiment is None:
        return names
    if experiment not in names:
        raise unknown_choice("results.experiment", experiment, names)
    return [experiment]


def plan_configs(exp: dict) -> dict[tuple[str, str], dict]:
    """{(part, variant): {config, grid (JSON text, None for none), baseline}} of an experiment, as its plan has it."""
    baselines = {(r["part"], r["variant"]): r["baseline"] for r in exp["plan"]}
    return {(part["name"], v["name"]): {"config": v["config"], "grid": json_text(v["grid"]) if v["grid"] else None,
                                        "baseline": baselines.get((part["name"], v["name"]))}
            for part in exp["parts"] for v in part["variants"]}


def json_text(value) -> str:
    return json.dumps(value, sort_keys=True)


# ---------------------------------------------------------------- hyperparameters

HPARAM_COLUMNS = ["dataset", "model", "activation", "slots_off", "init", "optimizer", "lr", "batch_size", "epochs"]


def _known(cls, mapping: dict) -> dict:
    """The fields of dataclass `cls` in `mapping` (a store written by another relulab may have more or fewer)."""
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in (mapping or {}).items() if k in names}


def hyperparameters(spec: dict) -> dict:
    """The hyperparameters most analyses group by, as the run trained with them: the optimizer's default learning
    rate and the initializer `auto` resolved, the slots switched off (identity) as their numbers, '1 4'."""
    data, model, train = spec.get("data") or {}, spec.get("model") or {}, spec.get("train") or {}
    model_spec = ModelSpec(**_known(ModelSpec, model))
    optimizer = OptimizerSpec(**_known(OptimizerSpec, train.get("optimizer")))
    return {"dataset": data.get("name"), "model": model_spec.name, "activation": model_spec.activation,
            "slots_off": " ".join(_slots_off(model_spec.slots)), "init": _resolved(model_spec.kernel_init,
                                                                                  model_spec.init),
            "optimizer": optimizer.name, "lr": _resolved(optimizer.resolved_lr, optimizer.lr),
            "batch_size": train.get("batch_size"), "epochs": train.get("epochs")}


def _slots_off(slots: dict) -> list[str]:
    """The slots (numbers, or a model by reference's names) whose activation is identity, in slot order; JSON
    made the numbers text."""
    off = [str(slot) for slot, act in slots.items() if _resolved(lambda: is_off(act), False)]
    return sorted(off, key=lambda s: (not s.isdigit(), int(s) if s.isdigit() else 0, s))


def _resolved(resolve, stored):
    """What `resolve()` makes of a stored value, or the value as stored where this relulab cannot resolve it (an
    activation of a model by reference, a name from another version)."""
    try:
        return resolve()
    except (UserError, KeyError):
        return stored


def flat_spec(spec: dict, prefix: str = "") -> dict:
    """Every field of a run's spec as a dotted column (`train.optimizer.lr`); lists and empty mappings as JSON
    text, so that every cell is a plain value in CSV, Parquet and JSON alike."""
    out = {}
    for key, value in spec.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flat_spec(value, f"{name}."))
        elif isinstance(value, (dict, list)):
            out[name] = json_text(value)
        else:
            out[name] = value
    return out


def retrained_for(run: dict) -> Optional[str]:
    """The key of the stored run this one is a copy of, retrained for probing; None for a run of its own."""
    return (run.get("data") or {}).get(RETRAINED_FOR_PROBING)
