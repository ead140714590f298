"""Activation functions by name, each with its derivative and recommended initializer.

One table (`ACTIVATIONS`) maps a name to an `Activation` record; `get_activation`
is the only lookup, in the spirit of timm's `create_act.py`. Names may carry one
numeric parameter after a colon: `leaky_relu:0.2` (negative slope), `elu:0.5`
(alpha), `prelu:0.1` (initial slope).

The closed-form derivatives are checked against autograd in the tests; they are
what the seed 001 and 004 figures plot.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import nn

from relulab.core.registry import canonical, lookup

Tensor = torch.Tensor

# SELU's constants (Klambauer et al. 2017), as in torch.nn.SELU and Keras.
SELU_ALPHA = 1.6732632423543772848170429916717
SELU_SCALE = 1.0507009873554804934193349852946


@dataclass(frozen=True)
class Activation:
    """What relulab knows about one activation function."""

    name: str
    module: Callable[[Optional[float]], nn.Module]  # builds the layer, given the optional parameter
    fn: Callable[[Tensor, Optional[float]], Tensor]  # elementwise value
    grad: Callable[[Tensor, Optional[float]], Tensor]  # elementwise derivative d fn / dx
    recommended_init: str  # a key of relulab.init.INITIALIZERS
    default_param: Optional[float] = None
    saturating: bool = False  # sigmoid/tanh: the probes measure saturation for these
    description: str = ""


def _relu_grad(x: Tensor, _p) -> Tensor:
    # Convention (seed 004): the derivative at 0 is 0, as in PyTorch's autograd.
    return (x > 0).to(x.dtype)


def _leaky_grad(x: Tensor, slope) -> Tensor:
    return torch.where(x > 0, torch.ones_like(x), torch.full_like(x, slope))


def _elu(x: Tensor, alpha) -> Tensor:
    return torch.where(x > 0, x, alpha * torch.expm1(x))


def _elu_grad(x: Tensor, alpha) -> Tensor:
    return torch.where(x > 0, torch.ones_like(x), alpha * torch.exp(x))


def _normal_cdf(x: Tensor) -> Tensor:
    return 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0)))


def _gelu_grad(x: Tensor, _p) -> Tensor:
    pdf = torch.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)
    return _normal_cdf(x) + x * pdf


def _silu_grad(x: Tensor, _p) -> Tensor:
    s = torch.sigmoid(x)
    return s * (1.0 + x * (1.0 - s))


def _mish_grad(x: Tensor, _p) -> Tensor:
    t = torch.tanh(nn.functional.softplus(x))
    return t + x * (1.0 - t * t) * torch.sigmoid(x)


def _sigmoid_grad(x: Tensor, _p) -> Tensor:
    s = torch.sigmoid(x)
    return s * (1.0 - s)


def _tanh_grad(x: Tensor, _p) -> Tensor:
    t = torch.tanh(x)
    return 1.0 - t * t


ACTIVATIONS: dict[str, Activation] = {
    a.name: a
    for a in [
        Activation("relu", lambda p: nn.ReLU(), lambda x, p: torch.relu(x), _relu_grad, "he_normal",
                   description="max(0, x)"),
        Activation("leaky_relu", lambda p: nn.LeakyReLU(p), lambda x, p: nn.functional.leaky_relu(x, p),
                   _leaky_grad, "he_normal", default_param=0.01, description="x if x > 0 else slope * x"),
        Activation("prelu", lambda p: nn.PReLU(init=p), lambda x, p: torch.where(x > 0, x, p * x), _leaky_grad,
                   "he_normal", default_param=0.25, description="leaky ReLU with a learned slope"),
        Activation("elu", lambda p: nn.ELU(p), _elu, _elu_grad, "he_normal", default_param=1.0,
                   description="x if x > 0 else alpha * (exp(x) - 1)"),
        Activation("selu", lambda p: nn.SELU(), lambda x, p: SELU_SCALE * _elu(x, SELU_ALPHA),
                   lambda x, p: SELU_SCALE * _elu_grad(x, SELU_ALPHA), "lecun_normal",
                   description="scaled ELU; self-normalizing with LeCun init"),
        Activation("gelu", lambda p: nn.GELU(), lambda x, p: x * _normal_cdf(x), _gelu_grad, "he_normal",
                   description="x * Phi(x)"),
        Activation("silu", lambda p: nn.SiLU(), lambda x, p: x * torch.sigmoid(x), _silu_grad, "he_normal",
                   description="x * sigmoid(x), a.k.a. swish"),
        Activation("mish", lambda p: nn.Mish(), lambda x, p: x * torch.tanh(nn.functional.softplus(x)),
                   _mish_grad, "he_normal", description="x * tanh(softplus(x))"),
        Activation("sigmoid", lambda p: nn.Sigmoid(), lambda x, p: torch.sigmoid(x), _sigmoid_grad,
                   "glorot_uniform", saturating=True, description="1 / (1 + exp(-x))"),
        Activation("tanh", lambda p: nn.Tanh(), lambda x, p: torch.tanh(x), _tanh_grad, "glorot_uniform",
                   saturating=True, description="hyperbolic tangent"),
        Activation("identity", lambda p: nn.Identity(), lambda x, p: x, lambda x, p: torch.ones_like(x),
                   "glorot_uniform", description="no activation (the slot is off)"),
    ]
}

# Other spellings users type; "none"/"off"/"linear" all mean the slot is switched off.
ALIASES = {"none": "identity", "off": "identity", "linear": "identity", "swish": "silu", "leaky": "leaky_relu",
           "lrelu": "leaky_relu"}


def activation_names() -> list[str]:
    return sorted(ACTIVATIONS)


def parse_activation(spec: str, field: str = "activation") -> tuple[Activation, Optional[float]]:
    """`'leaky_relu:0.2'` -> (the leaky_relu record, 0.2). Raises UserError naming `field`."""
    return lookup(spec, field, ACTIVATIONS, ALIASES, "an activation")


def canonical_name(spec: str, field: str = "activation") -> str:
    """The canonical spelling of an activation spec ('none' -> 'identity', 'LReLU:0.2' -> 'leaky_relu:0.2')."""
    return canonical(*parse_activation(spec, field))


def get_activation(spec: str, field: str = "activation") -> nn.Module:
    """Build the activation layer named by `spec`."""
    act, param = parse_activation(spec, field)
    return act.module(param)


def activation_fn(spec: str) -> Callable[[Tensor], Tensor]:
    """The elementwise function, for plots and tests."""
    act, param = parse_activation(spec)
    return lambda x: act.fn(x, param)


def activation_grad(spec: str) -> Callable[[Tensor], Tensor]:
    """The closed-form derivative, for plots and tests."""
    act, param = parse_activation(spec)
    return lambda x: act.grad(x, param)


def is_off(spec: str) -> bool:
    """True when the slot computes nothing (identity)."""
    return parse_activation(spec)[0].name == "identity"
