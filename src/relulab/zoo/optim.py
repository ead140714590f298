"""Optimizers by name, in two flavours of defaults, and Keras-style weight penalties.

`flavour="torch"` gives PyTorch's classes with PyTorch's defaults. `flavour="keras"`
reproduces Keras 3's update rules and defaults exactly, because the sources ran Keras:

- Adam: eps 1e-7 added to sqrt(v) *without* bias correction ("epsilon hat"), the
  bias corrections folded into the step size.
- RMSprop: rho 0.9 (PyTorch: alpha 0.99) and eps 1e-7 *inside* the square root:
  w -= lr * g / sqrt(v + eps).
- SGD and momentum: the same rule in both libraries for a constant learning rate.

Weight decay (`weight_decay`, `weight_decay_kind`) is one rule for every optimizer, applied just before its
step to every parameter it trains (weights, biases and batch norm scales alike, as `torch.optim.SGD(
model.parameters(), weight_decay=...)` does in the common ResNet recipes): `l2` adds rate * w to the gradient
(PyTorch's `weight_decay` argument of SGD, Adam, RMSprop), `decoupled` shrinks the weights by lr * rate
(AdamW; Loshchilov & Hutter 2019), with the learning rate of that step, so schedules scale it too.

The update rules are elementwise, so `StackedOptimizer` writes them once more for stacked
weights (many models trained as one, relulab.packing).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Optional, Sequence

import torch
from torch import nn

from relulab.core.errors import UserError, is_number, unknown_choice

FLAVOURS = ("torch", "keras")
DEFAULT_LR = {"sgd": 0.01, "momentum": 0.01, "nesterov": 0.01, "adam": 1e-3, "adamw": 1e-3, "rmsprop": 1e-3}
WEIGHT_DECAY_KINDS = ("l2", "decoupled")
# What an unset weight_decay / weight_decay_kind means: AdamW's own defaults; no decay for the rest, and L2 (the
# gradient term PyTorch's weight_decay argument adds) as their kind when a rate is given.
DEFAULT_WEIGHT_DECAY = {"adamw": 0.01}
DEFAULT_WEIGHT_DECAY_KIND = {"adamw": "decoupled"}


class KerasAdam(torch.optim.Optimizer):
    """Adam exactly as keras.optimizers.Adam updates (Keras 3)."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-7):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["m"] = torch.zeros_like(p)
                    state["v"] = torch.zeros_like(p)
                state["step"] += 1
                t = state["step"]
                alpha = group["lr"] * (1 - beta2**t) ** 0.5 / (1 - beta1**t)
                m, v, g = state["m"], state["v"], p.grad
                m.add_(g - m, alpha=1 - beta1)
                v.add_(g * g - v, alpha=1 - beta2)
                p.sub_(alpha * m / (v.sqrt() + group["eps"]))


class KerasRMSprop(torch.optim.Optimizer):
    """RMSprop exactly as keras.optimizers.RMSprop updates (Keras 3, no momentum, not centered)."""

    def __init__(self, params, lr=1e-3, rho=0.9, eps=1e-7):
        super().__init__(params, dict(lr=lr, rho=rho, eps=eps))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            rho = group["rho"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["v"] = torch.zeros_like(p)
                v, g = state["v"], p.grad
                v.mul_(rho).addcmul_(g, g, value=1 - rho)
                p.sub_(group["lr"] * g / (v + group["eps"]).sqrt())


@dataclass
class OptimizerSpec:
    """Which optimizer, with which learning rate and defaults. A plain record for configs."""

    name: str = "adam"
    lr: Optional[float] = None  # None: the optimizer's usual default (DEFAULT_LR)
    flavour: str = "torch"
    momentum: float = 0.9  # for momentum / nesterov
    weight_decay: Optional[float] = None  # None: the optimizer's default (DEFAULT_WEIGHT_DECAY, else 0)
    weight_decay_kind: Optional[str] = None  # l2 | decoupled; None: DEFAULT_WEIGHT_DECAY_KIND, else l2

    def resolved_lr(self) -> float:
        return DEFAULT_LR[self.name] if self.lr is None else self.lr

    def resolved_weight_decay(self) -> float:
        return DEFAULT_WEIGHT_DECAY.get(self.name, 0.0) if self.weight_decay is None else self.weight_decay

    def resolved_weight_decay_kind(self) -> str:
        return DEFAULT_WEIGHT_DECAY_KIND.get(self.name, "l2") if self.weight_decay_kind is None \
            else self.weight_decay_kind

    def validate(self, prefix: str = "optimizer") -> "OptimizerSpec":
        if self.name not in DEFAULT_LR:
            raise unknown_choice(f"{prefix}.name", self.name, DEFAULT_LR)
        if self.flavour not in FLAVOURS:
            raise unknown_choice(f"{prefix}.flavour", self.flavour, FLAVOURS)
        if self.lr is not None and not (is_number(self.lr) and 0 < self.lr < math.inf):
            raise UserError(f"{prefix}.lr: expected a positive number, got {self.lr!r}")
        if not (is_number(self.momentum) and 0 <= self.momentum < 1):
            raise UserError(f"{prefix}.momentum: expected a number in [0, 1), got {self.momentum!r}")
        if self.weight_decay is not None and not (is_number(self.weight_decay) and 0 <= self.weight_decay < 1):
            raise UserError(f"{prefix}.weight_decay: expected a number in [0, 1), got {self.weight_decay!r}")
        if self.weight_decay_kind is not None and self.weight_decay_kind not in WEIGHT_DECAY_KINDS:
            raise unknown_choice(f"{prefix}.weight_decay_kind", self.weight_decay_kind, WEIGHT_DECAY_KINDS)
        return self


class WeightDecay:
    """A step pre-hook (`Optimizer.register_step_pre_hook`) that applies weight decay before the optimizer's
    own update: the same arithmetic as PyTorch's (`grad.add(param, alpha=rate)` for l2 in SGD, Adam and
    RMSprop; `param.mul_(1 - lr * rate)` in AdamW), so one rule serves every optimizer and flavour."""

    def __init__(self, rate: float, kind: str):
        self.rate, self.kind = rate, kind

    @torch.no_grad()
    def __call__(self, optimizer: torch.optim.Optimizer, args, kwargs) -> None:
        for group in optimizer.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if self.kind == "l2":
                    p.grad.add_(p, alpha=self.rate)
                else:
                    p.mul_(1 - group["lr"] * self.rate)


def build_optimizer(params: Iterable[nn.Parameter], spec: OptimizerSpec) -> torch.optim.Optimizer:
    spec.validate()
    lr = spec.resolved_lr()
    params = list(params)
    optimizer = _undecayed(params, spec, lr)
    rate = spec.resolved_weight_decay()
    if rate:
        optimizer.register_step_pre_hook(WeightDecay(rate, spec.resolved_weight_decay_kind()))
    return optimizer


def _undecayed(params: list[nn.Parameter], spec: OptimizerSpec, lr: float) -> torch.optim.Optimizer:
    """The optimizer's own update rule; weight decay is added by `WeightDecay`."""
    if spec.name == "sgd":
        return torch.optim.SGD(params, lr=lr)
    if spec.name in ("momentum", "nesterov"):
        return torch.optim.SGD(params, lr=lr, momentum=spec.momentum, nesterov=spec.name == "nesterov")
    if spec.name == "adamw":  # AdamW is Adam with decoupled decay, which WeightDecay applies as AdamW does
        return torch.optim.Adam(params, lr=lr)
    if spec.flavour == "keras":
        return {"adam": KerasAdam, "rmsprop": KerasRMSprop}[spec.name](params, lr=lr)
    return {"adam": torch.optim.Adam, "rmsprop": torch.optim.RMSprop}[spec.name](params, lr=lr)


def kernel_weights(model: nn.Module) -> list[nn.Parameter]:
    """The weight matrices / conv kernels (what Keras' kernel_regularizer penalizes): no biases, no BN."""
    return [m.weight for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d))]


def weight_penalty(kernels: list[torch.Tensor], l1: float = 0.0, l2: float = 0.0) -> torch.Tensor | float:
    """Keras' regularizer terms: l1 * sum|w| + l2 * sum w^2 (no factor 1/2), added to the loss."""
    penalty: torch.Tensor | float = 0.0
    for w in kernels:
        if l1:
            penalty = penalty + l1 * w.abs().sum()
        if l2:
            penalty = penalty + l2 * w.pow(2).sum()
    return penalty


# The optimizers StackedOptimizer has, each with the state it keeps (tensors shaped like the weights).
STACKED_OPTIMIZERS = {"sgd": [], "momentum": ["buf"], "nesterov": ["buf"], "adam": ["m", "v"], "rmsprop": ["v"]}


class StackedOptimizer:
    """The optimizers above, written once for stacked (K, n) weights (K models, or one model's parameters
    flattened) with a per-model learning rate and weight decay; `specs`: the K models' optimizers, which differ
    at most in learning rate and weight decay rate. The rules match torch.optim (flavour torch) and Keras 3
    (flavour keras), and weight decay is `WeightDecay`'s (`lr` is a (K, 1) tensor: a packed run's schedule overwrites it before
    each step, relulab.packing.units)."""

    def __init__(self, params: torch.Tensor, specs: Sequence[OptimizerSpec]):
        opt = specs[0]
        self.name, self.flavour, self.momentum = opt.name, opt.flavour, opt.momentum
        self.lr = torch.tensor([[spec.resolved_lr()] for spec in specs], device=params.device, dtype=params.dtype)
        self.decay_kind = opt.resolved_weight_decay_kind()  # one for the stack (part of the stack keys)
        rates = [spec.resolved_weight_decay() for spec in specs]
        self.decay = torch.tensor([[rate] for rate in rates], device=params.device, dtype=params.dtype) \
            if any(rates) else None
        # On the device, so graphs can replay it; in the weights' dtype, as are lr and decay.
        self.step_count = torch.zeros((), device=params.device, dtype=params.dtype)
        self.state = {name: torch.zeros_like(params) for name in STACKED_OPTIMIZERS[self.name]}

    @torch.no_grad()
    def step(self, params: torch.Tensor, grad: torch.Tensor) -> None:
        self.step_count += 1
        if self.decay is not None and self.decay_kind == "l2":
            grad = grad + self.decay * params
        elif self.decay is not None:
            params.mul_(1 - self.lr * self.decay)
        getattr(self, f"_{self.name}")(params, grad)

    def _sgd(self, p, g):
        p.addcmul_(self.lr, g, value=-1)  # p - lr * g in one pass over p

    def _momentum(self, p, g):
        # torch.optim.SGD's rule (Keras' is the same for a constant learning rate); the buffer
        # starts at zero, so the first step sets it to the gradient as torch does.
        buf = self.state["buf"]
        buf.mul_(self.momentum).add_(g)
        p.sub_(self.lr * buf)

    def _nesterov(self, p, g):
        buf = self.state["buf"]
        buf.mul_(self.momentum).add_(g)
        p.sub_(self.lr * (g + self.momentum * buf))

    def _adam(self, p, g):
        beta1, beta2 = 0.9, 0.999
        m, v, t = self.state["m"], self.state["v"], self.step_count
        m.lerp_(g, 1 - beta1)
        v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        if self.flavour == "keras":  # eps 1e-7 outside the bias correction ("epsilon hat")
            alpha = self.lr * torch.sqrt(1 - beta2**t) / (1 - beta1**t)
            p.sub_(alpha * m / (v.sqrt() + 1e-7))
        else:
            denom = v.sqrt() / torch.sqrt(1 - beta2**t) + 1e-8
            p.sub_(self.lr / (1 - beta1**t) * m / denom)

    def _rmsprop(self, p, g):
        rho, eps = (0.9, 1e-7) if self.flavour == "keras" else (0.99, 1e-8)
        v = self.state["v"]
        v.mul_(rho).addcmul_(g, g, value=1 - rho)
        if self.flavour == "keras":
            p.sub_(self.lr * g / (v + eps).sqrt())
        else:
            p.sub_(self.lr * g / (v.sqrt() + eps))

    def state_tensors(self) -> list[torch.Tensor]:
        return [self.step_count, *self.state.values()]
