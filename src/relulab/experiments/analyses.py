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

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from relulab.zoo import activations
from relulab.core.env import device_name
from relulab.core.errors import UserError, is_number, unknown_choice


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


WARMUP_CALLS = 3  # untimed calls first: the allocator's and the kernels' caches, a CUDA context's first launch


def _quartiles_ms(measurement) -> dict:
    """Median, interquartile range and quartiles (ms) of a torch.utils.benchmark Measurement's per-call times."""
    q25, median, q75 = (float(q) * 1e3 for q in np.quantile(measurement.times, [0.25, 0.5, 0.75]))
    return {"median_ms": median, "iqr_ms": q75 - q25, "q25_ms": q25, "q75_ms": q75,
            "measurements": len(measurement.times), "calls_per_measurement": measurement.number_per_run}


def time_activation(spec: str, elements: int, min_run_time: float, threads: int, device: torch.device) -> dict:
    """Forward, and forward + backward, of activation `spec` over `elements` floats, timed by
    torch.utils.benchmark (Timer.blocked_autorange: blocks of calls for at least `min_run_time` seconds each, after
    WARMUP_CALLS untimed calls, on `threads` threads; CUDA is synchronised around every block): {"forward":
    quartiles, "forward_backward": quartiles}, as _quartiles_ms. The spread of the blocks is the noise a shared
    machine adds, shown rather than hidden in one number."""
    from torch.utils.benchmark import Timer

    layer = activations.get_activation(spec).to(device)
    x = torch.randn(elements, device=device, requires_grad=True)
    grad = torch.ones(elements, device=device)
    scope = {"layer": layer, "x": x, "grad": grad}
    out = {}
    for what, stmt in (("forward", "layer(x)"), ("forward_backward", "layer(x).backward(grad); x.grad = None")):
        timer = Timer(stmt, globals=scope, num_threads=threads, label=spec, sub_label=what)
        timer.timeit(WARMUP_CALLS)
        out[what] = _quartiles_ms(timer.blocked_autorange(min_run_time=min_run_time))
    return out


def _activation_cost(options: dict, used: list[str], device: torch.device) -> dict:
    names = _resolve_names(options["activations"], used, "activation_cost.activations")
    elements, min_run_time = int(options["elements"]), float(options["min_run_time"])
    threads = torch.get_num_threads() if options["threads"] == "auto" else int(options["threads"])
    rows = []
    for name in names:
        timed = time_activation(name, elements, min_run_time, threads, device)
        rows.append({"activation": name, **{f"{what}_{k}": v for what, q in timed.items() for k, v in q.items()}})
    return {"elements": elements, "min_run_time": min_run_time, "threads": threads, "warmup": WARMUP_CALLS,
            "timer": "torch.utils.benchmark.Timer.blocked_autorange", "device": device_name(device), "rows": rows,
            "lines": [f"{r['activation']:<11} forward {r['forward_median_ms']:7.3f} ms (IQR {r['forward_iqr_ms']:.3f}),"
                      f" forward+backward {r['forward_backward_median_ms']:7.3f} ms "
                      f"(IQR {r['forward_backward_iqr_ms']:.3f}); {threads} thread{'s' * (threads != 1)}" for r in rows]}


ANALYSES: dict[str, Analysis] = {
    a.name: a
    for a in [
        Analysis("relu_demo", _relu_demo, {"inputs": [1.0, 1000.0, 0.0, -1.0, -1000.0]}, False,
                 "ReLU applied to a few inputs, printed as source 004 does"),
        Analysis("activation_plots", _activation_plots, {"activations": "auto", "range": [-10.0, 10.0]}, False,
                 "each activation with its derivative (auto: those the part uses; all: every one)"),
        Analysis("activation_cost", _activation_cost,
                 {"activations": "all", "elements": 1 << 22, "min_run_time": 0.5, "threads": "auto"}, True,
                 "forward and forward+backward time over a large tensor, per activation (torch.utils.benchmark: "
                 "median and interquartile range; threads: auto is torch's count)"),
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


def _positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _check_options(name: str, options: dict, field: str) -> None:
    if "elements" in options and not _positive_int(options["elements"]):
        raise UserError(f"{field}.elements: expected a positive integer, got {options['elements']!r}")
    if "threads" in options and options["threads"] != "auto" and not _positive_int(options["threads"]):
        raise UserError(f"{field}.threads: expected auto or a positive integer, got {options['threads']!r}")
    if "min_run_time" in options and not (is_number(options["min_run_time"]) and options["min_run_time"] > 0):
        raise UserError(f"{field}.min_run_time: expected a positive number of seconds, got "
                        f"{options['min_run_time']!r}")
    if "range" in options:
        r = options["range"]
        if not (isinstance(r, list) and len(r) == 2 and all(isinstance(v, (int, float)) for v in r) and r[0] < r[1]):
            raise UserError(f"{field}.range: expected [low, high] with low < high, got {r!r}")
    if "inputs" in options and not (isinstance(options["inputs"], list)
                                    and all(isinstance(v, (int, float)) for v in options["inputs"])):
        raise UserError(f"{field}.inputs: expected a list of numbers, got {options['inputs']!r}")
    if "activations" in options and options["activations"] not in ("auto", "all"):
        _resolve_names(options["activations"], [], f"{field}.activations")
