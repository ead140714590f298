"""Activation functions by name, each with its derivative and recommended initializer.

One table (`ACTIVATIONS`) maps a name to an `Activation` record; `get_activation`
is the only lookup, in the spirit of timm's `create_act.py`. Names may carry one
numeric parameter after a colon: `leaky_relu:0.2` (negative slope), `elu:0.5`
(alpha), `prelu:0.1` (initial slope).

The closed-form derivatives are checked against autograd in the tests; they are
what the seed 001 and 004 figures plot. Where the derivative is a function of the
output (ReLU, sigmoid, tanh, identity), the record holds it in that form
(`output_grad`) and the derivative of the input is that of its output, so each
is written once: the fused MLP step (relulab.packing.fused), which keeps only the
layers' outputs, takes it from here, and the Triton kernels switch on the record's
`kernel_code` (relulab.kernels.activation_code holds their Triton form).

`TORCH_MODULES`, `TORCH_FUNCTIONS` and `TORCH_METHODS` are how PyTorch code spells the registry's activations
(`nn.LeakyReLU(0.2)`, `F.gelu`, `x.relu()`): `relulab.zoo.slotify` reads them to find the activations of any
model, through `module_activation` and `call_activation`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from relulab.core.registry import Registry, canonical, lookup

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
    recommended_init: str  # a key of relulab.zoo.init.INITIALIZERS
    default_param: Optional[float] = None
    saturating: bool = False  # sigmoid/tanh: the probes measure saturation for these
    description: str = ""
    # The derivative as a function of the output y = fn(x), where it is one (and then `grad` is it of fn(x)).
    output_grad: Optional[Callable[[Tensor], Tensor]] = None
    # The code relulab's Triton kernels switch on (relulab.kernels.activation_code); only with output_grad,
    # since the kernels keep only outputs. None: the kernels lack it.
    kernel_code: Optional[int] = None
    # Weights of its own in each model (PReLU's slope): a stack of models cannot hold them (relulab.packing.rules).
    learned: bool = False


def _positive(t: Tensor) -> Tensor:
    # ReLU's derivative, from its input or its output alike. Convention (seed 004): the derivative at 0 is 0,
    # as in PyTorch's autograd.
    return (t > 0).to(t.dtype)


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


# The derivatives from the output y, as PyTorch's backward of each activation computes them.
def _sigmoid_output_grad(y: Tensor) -> Tensor:
    return (1 - y) * y


def _tanh_output_grad(y: Tensor) -> Tensor:
    return 1 - y * y


ACTIVATIONS: Registry[Activation] = Registry({
    a.name: a
    for a in [
        Activation("relu", lambda p: nn.ReLU(), lambda x, p: torch.relu(x), lambda x, p: _positive(x), "he_normal",
                   description="max(0, x)", output_grad=_positive, kernel_code=1),
        Activation("leaky_relu", lambda p: nn.LeakyReLU(p), lambda x, p: nn.functional.leaky_relu(x, p),
                   _leaky_grad, "he_normal", default_param=0.01, description="x if x > 0 else slope * x"),
        Activation("prelu", lambda p: nn.PReLU(init=p), lambda x, p: torch.where(x > 0, x, p * x), _leaky_grad,
                   "he_normal", default_param=0.25, description="leaky ReLU with a learned slope", learned=True),
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
        Activation("sigmoid", lambda p: nn.Sigmoid(), lambda x, p: torch.sigmoid(x),
                   lambda x, p: _sigmoid_output_grad(torch.sigmoid(x)), "glorot_uniform", saturating=True,
                   description="1 / (1 + exp(-x))", output_grad=_sigmoid_output_grad, kernel_code=2),
        Activation("tanh", lambda p: nn.Tanh(), lambda x, p: torch.tanh(x),
                   lambda x, p: _tanh_output_grad(torch.tanh(x)), "glorot_uniform", saturating=True,
                   description="hyperbolic tangent", output_grad=_tanh_output_grad, kernel_code=3),
        Activation("identity", lambda p: nn.Identity(), lambda x, p: x, lambda x, p: torch.ones_like(x),
                   "glorot_uniform", description="no activation (the slot is off)", output_grad=torch.ones_like,
                   kernel_code=0),
    ]
})

# The activations relulab's Triton kernels (and the fused MLP step) have: name -> kernel code, and code -> record.
KERNEL_CODES: dict[str, int] = {a.name: a.kernel_code for a in ACTIVATIONS.values() if a.kernel_code is not None}
BY_KERNEL_CODE: dict[int, Activation] = {code: ACTIVATIONS[name] for name, code in KERNEL_CODES.items()}

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


# ---------------------------------------------------------------- PyTorch's spellings


@dataclass(frozen=True)
class TorchSpelling:
    """One way PyTorch code writes a registry activation (`nn.LeakyReLU`, `F.leaky_relu`, `x.relu()`)."""

    name: str  # the registry's name
    # The registry's numeric parameter: the module's attribute, the function's keyword (or its second positional
    # argument), both spelled the same in PyTorch (negative_slope, alpha). None: the activation takes none.
    param: Optional[str] = None
    # Settings that must hold for PyTorch's function to be the registry's (GELU's tanh approximation is another
    # function): attribute or keyword -> value; an absent keyword has PyTorch's default, which is this value.
    fixed: tuple[tuple[str, object], ...] = ()


_GELU = TorchSpelling("gelu", fixed=(("approximate", "none"),))

# Module classes, matched by exact type: a subclass may compute something else in its own forward. PReLU is not
# here: its slope is a weight of the model (one per channel, if it likes), which a slot would replace.
TORCH_MODULES: dict[type, TorchSpelling] = {
    nn.ReLU: TorchSpelling("relu"), nn.LeakyReLU: TorchSpelling("leaky_relu", "negative_slope"),
    nn.ELU: TorchSpelling("elu", "alpha"), nn.SELU: TorchSpelling("selu"), nn.GELU: _GELU,
    nn.SiLU: TorchSpelling("silu"), nn.Mish: TorchSpelling("mish"), nn.Sigmoid: TorchSpelling("sigmoid"),
    nn.Tanh: TorchSpelling("tanh"),
}

# Functions, by the name a reader finds in the code (the slot names use it). In-place variants compute the same.
TORCH_FUNCTIONS: dict[str, tuple[Callable, TorchSpelling]] = {
    # (F.relu_ is torch.relu_ itself, so a call of it reads as torch.relu_.)
    "F.relu": (F.relu, TorchSpelling("relu")),
    "torch.relu": (torch.relu, TorchSpelling("relu")), "torch.relu_": (torch.relu_, TorchSpelling("relu")),
    "F.leaky_relu": (F.leaky_relu, TorchSpelling("leaky_relu", "negative_slope")),
    "F.elu": (F.elu, TorchSpelling("elu", "alpha")), "F.selu": (F.selu, TorchSpelling("selu")),
    "torch.selu": (torch.selu, TorchSpelling("selu")), "F.gelu": (F.gelu, _GELU),
    "F.silu": (F.silu, TorchSpelling("silu")), "F.mish": (F.mish, TorchSpelling("mish")),
    "torch.sigmoid": (torch.sigmoid, TorchSpelling("sigmoid")), "F.sigmoid": (F.sigmoid, TorchSpelling("sigmoid")),
    "torch.tanh": (torch.tanh, TorchSpelling("tanh")), "F.tanh": (F.tanh, TorchSpelling("tanh")),
}
FUNCTION_NAMES: dict[Callable, str] = {fn: name for name, (fn, _) in TORCH_FUNCTIONS.items()}

# Tensor methods: x.relu(), x.sigmoid_(), ...
TORCH_METHODS: dict[str, TorchSpelling] = {
    m: TorchSpelling(m.rstrip("_")) for m in ("relu", "relu_", "sigmoid", "sigmoid_", "tanh", "tanh_")
}


def _spelled(spelling: TorchSpelling, setting: Callable[[str, object], object]) -> Optional[str]:
    """The registry spec of `spelling` with its settings read through `setting(name, default)`; None where the
    settings are not the registry's function (tanh-approximate GELU) or the parameter is not a number known now
    (a value computed in forward)."""
    if any(setting(key, value) != value for key, value in spelling.fixed):
        return None
    if spelling.param is None:
        return spelling.name
    value = setting(spelling.param, None)
    if value is None:
        return spelling.name
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return canonical(ACTIVATIONS[spelling.name], float(value))


def module_activation(module: nn.Module) -> Optional[str]:
    """The registry spec an activation module computes (`nn.LeakyReLU(0.2)` -> 'leaky_relu:0.2'), or None."""
    spelling = TORCH_MODULES.get(type(module))
    return None if spelling is None else _spelled(spelling, lambda key, default: getattr(module, key, default))


def call_activation(kind: str, target, args: tuple, kwargs: dict) -> Optional[str]:
    """The registry spec of a call (`kind` 'function' with the function, or 'method' with the method's name) with
    its arguments after the input, or None where the call is not a registry activation."""
    if kind == "method":
        spelling = TORCH_METHODS.get(target) if isinstance(target, str) else None
    else:
        name = FUNCTION_NAMES.get(target) if callable(target) else None
        spelling = TORCH_FUNCTIONS[name][1] if name else None
    if spelling is None:
        return None
    values = dict(kwargs)
    if spelling.param is not None and len(args) > 1:
        values.setdefault(spelling.param, args[1])
    return _spelled(spelling, values.get)
