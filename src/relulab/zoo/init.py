"""Weight initializers by their Keras names, with Keras' exact definitions.

Keras computes fans the same way PyTorch lays weights out, so for a Linear weight
(out, in) fan_in = in, and for a Conv weight (out, in, kh, kw) fan_in = in * kh * kw,
fan_out = out * kh * kw.

The variance-scaling family (glorot/he/lecun) follows keras.initializers.VarianceScaling:
- `*_uniform`: U(-limit, limit) with limit = sqrt(3 * scale / fan)
- `*_normal`: a normal truncated at two standard deviations, whose std *after*
  truncation is sqrt(scale / fan); Keras divides by 0.8796... to get there.

Names may carry one parameter: `constant:0.1`, `random_uniform:0.1` (limit),
`random_normal:0.02` (std). `bias_init` takes the same names; seed 004's tip of a small
positive bias is `constant:0.1`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import nn

from relulab.core.registry import canonical, lookup

# Std of a unit normal truncated to [-2, 2] is 0.8796...; Keras divides by it so the
# truncated samples have the intended variance.
TRUNCATED_STD = 0.87962566103423978


@torch.no_grad()
def truncated_normal_(t: torch.Tensor, std: float) -> torch.Tensor:
    """Fill `t` with N(0, std^2) truncated at two standard deviations, by inverse transform sampling: uniforms
    over the normal CDF's range on [-2 std, 2 std], mapped through its inverse (erfinv). Written here rather than
    calling `nn.init.trunc_normal_`, which is not one method across torch versions (torch 2.13 samples by
    rejection, with a host synchronisation per round, and draws other numbers): a seed gives the same weights under
    every torch."""
    edge = math.erf(2.0 / math.sqrt(2.0))  # 2 * CDF(2) - 1: the uniforms' range is [-edge, edge]
    t.uniform_(-edge, edge).erfinv_()
    return t.mul_(std * math.sqrt(2.0)).clamp_(-2 * std, 2 * std)


def compute_fans(weight: torch.Tensor) -> tuple[int, int]:
    """(fan_in, fan_out) of a Linear or Conv weight, as Keras computes them."""
    if weight.dim() < 2:
        return weight.numel(), weight.numel()
    receptive_field = math.prod(weight.shape[2:])
    return weight.shape[1] * receptive_field, weight.shape[0] * receptive_field


def _variance_scaling(scale: float, mode: str, distribution: str):
    def init(t: torch.Tensor, _param) -> torch.Tensor:
        fan_in, fan_out = compute_fans(t)
        fan = {"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2}[mode]
        variance = scale / max(1.0, fan)
        if distribution == "uniform":
            limit = math.sqrt(3.0 * variance)
            return nn.init.uniform_(t, -limit, limit)
        std = math.sqrt(variance) / TRUNCATED_STD
        return truncated_normal_(t, std)

    return init


@dataclass(frozen=True)
class Initializer:
    name: str
    apply: Callable[[torch.Tensor, Optional[float]], torch.Tensor]  # fills the tensor in place
    default_param: Optional[float] = None
    description: str = ""


INITIALIZERS: dict[str, Initializer] = {
    i.name: i
    for i in [
        Initializer("glorot_uniform", _variance_scaling(1.0, "fan_avg", "uniform"),
                    description="U(-l, l), l = sqrt(6 / (fan_in + fan_out)); Keras' default"),
        Initializer("glorot_normal", _variance_scaling(1.0, "fan_avg", "normal"),
                    description="truncated normal, var = 2 / (fan_in + fan_out)"),
        Initializer("he_normal", _variance_scaling(2.0, "fan_in", "normal"),
                    description="truncated normal, var = 2 / fan_in"),
        Initializer("he_uniform", _variance_scaling(2.0, "fan_in", "uniform"),
                    description="U(-l, l), l = sqrt(6 / fan_in)"),
        Initializer("lecun_normal", _variance_scaling(1.0, "fan_in", "normal"),
                    description="truncated normal, var = 1 / fan_in"),
        Initializer("lecun_uniform", _variance_scaling(1.0, "fan_in", "uniform"),
                    description="U(-l, l), l = sqrt(3 / fan_in)"),
        Initializer("random_uniform", lambda t, p: nn.init.uniform_(t, -p, p), default_param=0.05,
                    description="U(-0.05, 0.05) (Keras RandomUniform)"),
        Initializer("random_normal", lambda t, p: nn.init.normal_(t, 0.0, p), default_param=0.05,
                    description="N(0, 0.05^2) (Keras RandomNormal)"),
        Initializer("truncated_normal", lambda t, p: truncated_normal_(t, p),
                    default_param=0.05, description="N(0, 0.05^2) truncated at 2 std (Keras TruncatedNormal)"),
        Initializer("orthogonal", lambda t, p: nn.init.orthogonal_(t, gain=p), default_param=1.0,
                    description="a random orthogonal matrix times the gain"),
        Initializer("zeros", lambda t, p: nn.init.zeros_(t), description="all 0"),
        Initializer("ones", lambda t, p: nn.init.ones_(t), description="all 1"),
        Initializer("constant", lambda t, p: nn.init.constant_(t, p), default_param=0.0,
                    description="all equal to the parameter, e.g. constant:0.1"),
    ]
}

ALIASES = {"xavier_uniform": "glorot_uniform", "xavier_normal": "glorot_normal", "kaiming_normal": "he_normal",
           "kaiming_uniform": "he_uniform", "randomuniform": "random_uniform", "randomnormal": "random_normal",
           "zero": "zeros", "one": "ones"}


def initializer_names() -> list[str]:
    return sorted(INITIALIZERS)


def parse_initializer(spec: str, field: str = "init") -> tuple[Initializer, Optional[float]]:
    """`'constant:0.1'` -> (the constant record, 0.1). Raises UserError naming `field`."""
    return lookup(spec, field, INITIALIZERS, ALIASES, "an initializer")


def canonical_name(spec: str, field: str = "init") -> str:
    return canonical(*parse_initializer(spec, field))


@torch.no_grad()
def initialize(tensor: torch.Tensor, spec: str, field: str = "init") -> torch.Tensor:
    """Fill `tensor` in place with the initializer named by `spec`."""
    init, param = parse_initializer(spec, field)
    if tensor.is_meta:
        # No values to draw (parameter counts build models on the meta device). There in-place ops such as erfinv_
        # and normal_ run torch._refs, whose first call imports torch._dynamo (torch 2.11 and 2.13): 5.8 s of seed
        # 001's command on an H200.
        return tensor
    return init.apply(tensor, param)


def init_layer(layer: nn.Module, kernel_init: str, bias_init: str = "zeros") -> None:
    """Initialize a Linear or Conv layer's kernel and bias (Keras: bias zeros by default)."""
    initialize(layer.weight, kernel_init, "init")
    if getattr(layer, "bias", None) is not None:
        initialize(layer.bias, bias_init, "bias_init")
