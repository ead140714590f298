"""One-off analyses an experiment part can ask for besides training (source 004's figures and numbers).

    analyses: [relu_demo, activation_plots]              # in a spec: names ...
    analyses: {activation_cost: {elements: 1000000}}     # ... or names with options

Each `Analysis` computes a JSON-able result that goes into the store's `artifacts`
table, so reports draw from the store like everything else. A `measured` analysis
(a timing) depends on the machine: it is measured once and kept, with its
provenance; the others are recomputed on every run (they are cheap and exact).
`relulab.report` has a renderer for each name.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable

import torch

from relulab.zoo import activations
from relulab.core.env import device_name
from relulab.core.errors import UserError, unknown_choice


@dataclass(frozen=True)
class Analysis:
    name: str
    compute: Callable[[dict, list[str], torch.device], dict]  # (options, activations in the part, device) -> result
    defaults: dict
    measured: bool
    description: str


def _relu_demo(options: dict, used: list[str], device: torch.device) -> dict:
    # Source 004's demonstration, computed by relulab's own relu rather than restated.
    xs = [float(x) for x in options["inputs"]]
    ys = activations.activation_fn("relu")(torch.tensor(xs, dtype=torch.float64)).tolist()
    return {"pairs": [[x, y] for x, y in zip(xs, ys)],
            "lines": [f"rectified({x:.1f}) is {y:.1f}" for x, y in zip(xs, ys)]}


def _resolve_names(value, used: list[str], field: str) -> list[str]:
    if value == "auto":
        return used
    if value == "all":
        return activations.activation_names()
    if not isinstance(value, list) or not value:
        raise UserError(f"{field}: expected auto, all or a list of activation names, got {value!r}")
    return [activations.canonical_name(str(v), field) for v in value]


def _activation_plots(options: dict, used: list[str], device: torch.device) -> dict:
    return {"activations": _resolve_names(options["activations"], used, "activation_plots.activations"),
            "range": [float(options["range"][0]), float(options["range"][1])]}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_activation(spec: str, elements: int, repeats: int, device: torch.device) -> tuple[float, float]:
    """Median milliseconds of (forward, forward + backward) of activation `spec` over `elements` floats."""
    layer = activations.get_activation(spec).to(device)
    x = torch.randn(elements, device=device, requires_grad=True)
    grad = torch.ones(elements, device=device)
    forward, both = [], []
    for i in range(repeats + 2):  # two warm-up rounds: allocator and kernel caches
        _sync(device)
        t0 = time.perf_counter()
        y = layer(x)
        _sync(device)
        t1 = time.perf_counter()
        y.backward(grad)
        _sync(device)
        t2 = time.perf_counter()
        x.grad = None
        if i >= 2:
            forward.append((t1 - t0) * 1e3)
            both.append((t2 - t0) * 1e3)
    return statistics.median(forward), statistics.median(both)


def _activation_cost(options: dict, used: list[str], device: torch.device) -> dict:
    names = _resolve_names(options["activations"], used, "activation_cost.activations")
    elements, repeats = int(options["elements"]), int(options["repeats"])
    rows = []
    for name in names:
        fwd, both = time_activation(name, elements, repeats, device)
        rows.append({"activation": name, "forward_ms": fwd, "forward_backward_ms": both})
    return {"elements": elements, "repeats": repeats, "device": device_name(device), "rows": rows,
            "lines": [f"{r['activation']:<11} forward {r['forward_ms']:7.2f} ms, forward+backward "
                      f"{r['forward_backward_ms']:7.2f} ms" for r in rows]}


ANALYSES: dict[str, Analysis] = {
    a.name: a
    for a in [
        Analysis("relu_demo", _relu_demo, {"inputs": [1.0, 1000.0, 0.0, -1.0, -1000.0]}, False,
                 "ReLU applied to a few inputs, printed as source 004 does"),
        Analysis("activation_plots", _activation_plots, {"activations": "auto", "range": [-10.0, 10.0]}, False,
                 "each activation with its derivative (auto: those the part uses; all: every one)"),
        Analysis("activation_cost", _activation_cost,
                 {"activations": "all", "elements": 1 << 22, "repeats": 5}, True,
                 "median time of forward and forward+backward over a large tensor, per activation"),
    ]
}


def parse_analyses(value, field: str = "analyses") -> dict[str, dict]:
    """A list of names, or a mapping name -> options; returns {name: options with defaults filled in}."""
    if value is None:
        return {}
    if isinstance(value, list):
        value = {name: {} for name in value}
    if not isinstance(value, dict):
        raise UserError(f"{field}: expected a list of analysis names or a mapping of name to options, got {value!r}")
    parsed = {}
    for name, options in value.items():
        if name not in ANALYSES:
            raise unknown_choice(field, name, ANALYSES)
        options = options or {}
        if not isinstance(options, dict):
            raise UserError(f"{field}.{name}: expected a mapping of options, got {options!r}")
        defaults = ANALYSES[name].defaults
        for key in options:
            if key not in defaults:
                raise unknown_choice(f"{field}.{name}", key, defaults)
        parsed[name] = {**defaults, **options}
        _check_options(name, parsed[name], f"{field}.{name}")
    return parsed


def _check_options(name: str, options: dict, field: str) -> None:
    for key in ("elements", "repeats"):
        if key in options and (not isinstance(options[key], int) or isinstance(options[key], bool)
                               or options[key] < 1):
            raise UserError(f"{field}.{key}: expected a positive integer, got {options[key]!r}")
    if "range" in options:
        r = options["range"]
        if not (isinstance(r, list) and len(r) == 2 and all(isinstance(v, (int, float)) for v in r) and r[0] < r[1]):
            raise UserError(f"{field}.range: expected [low, high] with low < high, got {r!r}")
    if "inputs" in options and not (isinstance(options["inputs"], list)
                                    and all(isinstance(v, (int, float)) for v in options["inputs"])):
        raise UserError(f"{field}.inputs: expected a list of numbers, got {options['inputs']!r}")
    if "activations" in options and options["activations"] not in ("auto", "all"):
        _resolve_names(options["activations"], [], f"{field}.activations")
