"""`--model pkg.module:build` / `--model path/to/file.py:build` and `--model-kwargs`: a model by reference on the
command line (relulab.zoo.reference), shared by `relulab train` and `relulab inspect`."""
from __future__ import annotations

import json
from typing import Optional

from relulab.core.errors import UserError
from relulab.core.reference import is_target, resolve_target
from relulab.zoo.models import MODELS
from relulab.zoo.reference import PYTHON

MODEL_HELP = (f"One of {', '.join(n for n in MODELS if n != PYTHON)}, or your own: MODULE:FUNCTION or FILE.py:FUNCTION "
              "(a function returning an nn.Module; its activations become slots).")
KWARGS_HELP = "Keyword arguments for --model's function, as a JSON object, e.g. '{\"width\": 32}'."
# The library's field names -> the options that set them
OPTION_NAMES = {"model.target": "--model", "model.source_sha256": "--model", "model.kwargs": "--model-kwargs"}


def model_fields(model: str, kwargs: Optional[str]) -> dict:
    """The ModelSpec fields --model and --model-kwargs give: {'name': NAME} for a built-in model, {'name':
    'python', 'target': ..., 'kwargs': {...}} for a target (a file path made absolute from the current folder)."""
    given = parse_kwargs(kwargs)
    if not is_target(model):
        return {"name": model, "kwargs": given}  # kwargs on a built-in model: ModelSpec.validate refuses them
    return {"name": PYTHON, "target": resolve_target(model, None, "--model"), "kwargs": given}


def parse_kwargs(text: Optional[str], option: str = "--model-kwargs") -> dict:
    if text is None or not text.strip():
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"{option}: expected a JSON object such as '{{\"width\": 32}}' ({e.msg} at character "
                        f"{e.pos})") from None
    if not isinstance(value, dict):
        raise UserError(f"{option}: expected a JSON object such as '{{\"width\": 32}}', got {text!r}")
    return value
