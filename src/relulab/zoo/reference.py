"""Models by reference: the user's own network, built by the user's code and slotified.

    model: {name: python, target: "nets.py:build", kwargs: {width: 32}}     # a spec (the path: from the spec's folder)
    relulab train --model nets.py:build --model-kwargs '{"width": 32}'     # the command line
    ModelSpec("python", target="nets.py:build", activation="keep")         # Python (or python_model(...))

The builder contract: `target` names a function (`module:function`, or `file.py:function`, relulab.core.
reference), called as `build(**kwargs)` and returning an `nn.Module` that maps a batch of the dataset's inputs to
one row of logits per example. Where its signature has a parameter `num_classes` or `input_shape` that `kwargs`
does not set, it is given the dataset's number of classes, or one example's shape (a tuple, (C, H, W) for
images). The module is slotified (relulab.zoo.slotify: every activation use a named slot) on a batch of zeros of
that shape, and its output must have a column per class.

Then the spec's fields apply as for relulab's own models: `slots` (by number, or by the slot's name: `{3: identity,
"layer1.0.relu#2": tanh}`), `off`, and `activation`, which for a model by reference is `keep` (the model's own
activations stay: the default in a spec and on the command line) unless set, and then goes in every slot. The
fields that shape relulab's own models (init, bias_init, output_init, widths, batchnorm, bn_flavour) are the
builder's business: set them through `kwargs`.

`source_sha256`, filled in when the spec is validated, is the SHA-256 of the builder's file (relulab.core.
reference): it is in the run key, so editing the model makes new runs, and it is kept with every run's spec. A
spec whose file has changed since it was validated is refused rather than trained under its old key.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
from torch import nn

from relulab.core.errors import UserError
from relulab.core.reference import (call_target, check_same_source, load_target, record_source, resolve_target,
                                    short_name)
from relulab.zoo.models import KEEP, MODELS, ModelEntry, ModelSpec, SlottedModel
from relulab.zoo.slotify import slotify

PYTHON = "python"
# ModelSpec fields that shape relulab's own models; a model by reference takes its shape from its kwargs.
BUILDER_FIELDS = ("init", "bias_init", "output_init", "widths", "batchnorm", "bn_flavour")
_DEFAULTS = ModelSpec()


def python_model(target: str, kwargs: Optional[dict] = None, *, activation: str = KEEP,
                 slots: Optional[dict] = None, base_dir: Optional[Path] = None) -> ModelSpec:
    """The ModelSpec of the model `target` builds (a file path relative to `base_dir`, default the current
    folder), validated: its source's hash filled in."""
    spec = ModelSpec(PYTHON, activation, dict(slots or {}), target=resolve_target(target, base_dir, "model.target"),
                     kwargs=dict(kwargs or {}))
    return spec.validate()


def validate_reference(spec: ModelSpec, prefix: str) -> None:
    """Check a model by reference's fields and fill in `source_sha256` (importing the target)."""
    if spec.target is None:
        raise UserError(f"{prefix}.target: a model by reference (name: python) needs a target, 'module:function' "
                        "or 'file.py:function'")
    for key in BUILDER_FIELDS:
        if getattr(spec, key) != getattr(_DEFAULTS, key):
            raise UserError(f"{prefix}.{key}: a model by reference is shaped by its own code; leave {prefix}.{key} "
                            f"out and pass the builder what it takes in {prefix}.kwargs")
    record_source(spec, prefix)


def build_python_model(spec: ModelSpec, input_shape: tuple, num_classes: int) -> SlottedModel:
    """The user's model: built by its target, slotified, with the spec's activations in its slots."""
    build, sha = load_target(spec.target, "model.target")
    check_same_source(spec.target, spec.source_sha256, sha, "model.source_sha256")
    name = short_name(spec.target)
    model = call_target(build, spec.kwargs, {"num_classes": num_classes, "input_shape": tuple(input_shape)}, name,
                        "model.target", "model.kwargs")
    if not isinstance(model, nn.Module):
        raise UserError(f"model.target: {name} returned a {type(model).__name__}, not an nn.Module")
    try:
        slotted = slotify(model, torch.zeros(2, *input_shape))
    except UserError as e:
        raise UserError(f"model.target: {name}: {e}") from None
    if slotted.num_classes != num_classes:
        gives = f"{slotted.num_classes} outputs per example" if slotted.num_classes else "no row of logits per example"
        raise UserError(f"model.target: {name} gives {gives}; the data has {num_classes} classes (a builder that "
                        "takes num_classes is given it)")
    if spec.activation != KEEP:
        slotted.set_slots({s.index: spec.activation for s in slotted.slots}, "model.activation")
    check_one_activation_a_slot(slotted, spec.slots)
    slotted.set_slots(spec.slots, "model.slots")
    return slotted


def check_one_activation_a_slot(model: SlottedModel, slots: dict) -> None:
    """A slot given by its number and by its name must get one activation (`{1: identity, act: tanh}` is a typo)."""
    given: dict[int, tuple] = {}
    for key, act in slots.items():
        try:
            slot = model.slot(key)
        except UserError as e:
            raise UserError(f"model.slots: {e}") from None
        if given.setdefault(slot.index, (key, act))[1] != act:
            raise UserError(f"model.slots: {slot.label} is both {given[slot.index][1]} (as {given[slot.index][0]!r}) "
                            f"and {act} (as {key!r})")


MODELS[PYTHON] = ModelEntry(build_python_model, packs="alone", by_reference=True, validate=validate_reference)
