import numpy as np
import pytest
import torch
from torch import nn

from relulab.zoo.optim import (STACKED_OPTIMIZERS, WEIGHT_DECAY_KINDS, KerasAdam, KerasRMSprop, OptimizerSpec,
                               StackedOptimizer, build_optimizer, weight_penalty)
from relulab.core.errors import UserError


def _run(optimizer_cls, grads, **kw):
    w = nn.Parameter(torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64))
    opt = optimizer_cls([w], **kw)
    for g in grads:
        w.grad = torch.tensor(g, dtype=torch.float64)
        opt.step()
    return w.detach().numpy()


GRADS = [[0.1, -0.2, 0.0], [0.3, 0.1, 1e-4], [-0.5, 0.2, 2.0], [0.05, 0.05, 0.05]]


def test_keras_adam_matches_the_keras3_formula():
    lr, b1, b2, eps = 1e-3, 0.9, 0.999, 1e-7
    w, m, v = np.array([0.5, -1.0, 2.0]), np.zeros(3), np.zeros(3)
    for t, g in enumerate(np.array(GRADS), start=1):
        alpha = lr * np.sqrt(1 - b2**t) / (1 - b1**t)
        m += (g - m) * (1 - b1)
        v += (g * g - v) * (1 - b2)
        w -= m * alpha / (np.sqrt(v) + eps)
    np.testing.assert_allclose(_run(KerasAdam, GRADS), w, rtol=1e-12)


def test_keras_rmsprop_puts_eps_inside_the_root():
    lr, rho, eps = 1e-3, 0.9, 1e-7
    w, v = np.array([0.5, -1.0, 2.0]), np.zeros(3)
    for g in np.array(GRADS):
        v = rho * v + (1 - rho) * g * g
        w -= lr * g / np.sqrt(v + eps)
    np.testing.assert_allclose(_run(KerasRMSprop, GRADS), w, rtol=1e-12)
    # ... which is not PyTorch's RMSprop with its own defaults.
    torch_w = _run(torch.optim.RMSprop, GRADS, lr=1e-3)
    assert not np.allclose(torch_w, w)


def test_flavours_pick_the_classes():
    params = [nn.Parameter(torch.zeros(2))]
    assert isinstance(build_optimizer(params, OptimizerSpec("adam", flavour="keras")), KerasAdam)
    assert isinstance(build_optimizer(params, OptimizerSpec("rmsprop", flavour="keras")), KerasRMSprop)
    assert isinstance(build_optimizer(params, OptimizerSpec("adam")), torch.optim.Adam)
    sgd = build_optimizer(params, OptimizerSpec("momentum", lr=0.1))
    assert sgd.param_groups[0]["momentum"] == 0.9 and sgd.param_groups[0]["lr"] == 0.1


def test_weight_penalty_is_keras_style():
    w = torch.tensor([[1.0, -2.0], [3.0, 0.0]])
    assert weight_penalty([w], l1=0.1).item() == pytest.approx(0.6)
    assert weight_penalty([w], l2=0.01).item() == pytest.approx(0.14)  # no factor 1/2


@pytest.mark.parametrize("spec,field", [(OptimizerSpec("adagrad"), "optimizer.name"),
                                        (OptimizerSpec("adam", lr=-1), "optimizer.lr"),
                                        (OptimizerSpec("adam", flavour="tf"), "optimizer.flavour")])
def test_bad_specs(spec, field):
    with pytest.raises(UserError, match=f"^{field}:"):
        spec.validate()


# ---------------------------------------------------------------- weight decay

def _steps(optimizer_for, grads, lrs=None, dtype=torch.float32):
    """Weights after steps with the given gradients; `lrs`: the learning rate of each step (a schedule)."""
    w = nn.Parameter(torch.tensor([0.5, -1.0, 2.0], dtype=dtype))
    opt = optimizer_for([w])
    for t, g in enumerate(grads):
        if lrs is not None:
            opt.param_groups[0]["lr"] = lrs[t]
        w.grad = torch.tensor(g, dtype=dtype)
        opt.step()
    return w.detach().clone()


@pytest.mark.parametrize("name,native", [
    ("sgd", lambda p: torch.optim.SGD(p, lr=0.1, weight_decay=5e-2)),
    ("momentum", lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=5e-2)),
    ("nesterov", lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-2)),
    ("adam", lambda p: torch.optim.Adam(p, lr=0.1, weight_decay=5e-2)),
    ("rmsprop", lambda p: torch.optim.RMSprop(p, lr=0.1, weight_decay=5e-2)),
])
def test_l2_weight_decay_is_pytorchs_weight_decay_argument(name, native):
    ours = _steps(lambda p: build_optimizer(p, OptimizerSpec(name, lr=0.1, weight_decay=5e-2)), GRADS)
    assert torch.equal(ours, _steps(native, GRADS))
    assert not torch.equal(ours, _steps(lambda p: build_optimizer(p, OptimizerSpec(name, lr=0.1)), GRADS))


def test_adamw_and_decoupled_adam_are_pytorchs_adamw_with_the_steps_learning_rate():
    lrs = [0.1, 0.05, 0.02, 0.01]  # a schedule: decoupled decay scales with each step's rate
    native = _steps(lambda p: torch.optim.AdamW(p, lr=0.1), GRADS, lrs)  # AdamW's default decay 0.01
    assert torch.equal(_steps(lambda p: build_optimizer(p, OptimizerSpec("adamw", lr=0.1)), GRADS, lrs), native)
    decoupled = OptimizerSpec("adam", lr=0.1, weight_decay=0.01, weight_decay_kind="decoupled")
    assert torch.equal(_steps(lambda p: build_optimizer(p, decoupled), GRADS, lrs), native)
    no_decay = OptimizerSpec("adamw", lr=0.1, weight_decay=0.0)
    assert torch.equal(_steps(lambda p: build_optimizer(p, no_decay), GRADS, lrs),
                       _steps(lambda p: torch.optim.Adam(p, lr=0.1), GRADS, lrs))


def test_weight_decay_reaches_every_parameter_biases_and_batch_norm_included():
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    before = [p.detach().clone() for p in model.parameters()]
    opt = build_optimizer(model.parameters(), OptimizerSpec("sgd", lr=0.1, weight_decay=0.5))
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    for p, b in zip(model.parameters(), before):
        torch.testing.assert_close(p.detach(), b * (1 - 0.1 * 0.5))


@pytest.mark.parametrize("kind", WEIGHT_DECAY_KINDS)
@pytest.mark.parametrize("name,flavour", [(n, "torch") for n in STACKED_OPTIMIZERS] + [("adam", "keras"),
                                                                                     ("rmsprop", "keras")])
def test_the_stacked_optimizer_decays_as_the_plain_one(name, flavour, kind):
    """Two models of a stack with different rates and learning rates against two plain optimizers (float64)."""
    specs = [OptimizerSpec(name, lr=lr, flavour=flavour, weight_decay=rate, weight_decay_kind=kind)
             for lr, rate in ((0.05, 0.1), (0.02, 0.03))]
    start = torch.tensor([[0.5, -1.0, 2.0], [1.5, 0.25, -0.75]], dtype=torch.float64)
    stacked_params = start.clone()
    stacked = StackedOptimizer(stacked_params, specs)
    grads = torch.tensor(GRADS, dtype=torch.float64)
    for g in grads:
        stacked.step(stacked_params, torch.stack([g, 2 * g]))
    for k, spec in enumerate(specs):
        w = nn.Parameter(start[k].clone())
        plain = build_optimizer([w], spec)
        for g in grads:
            w.grad = g * (k + 1)
            plain.step()
        torch.testing.assert_close(stacked_params[k], w.detach(), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("spec,field", [(OptimizerSpec("sgd", weight_decay=-1e-4), "optimizer.weight_decay"),
                                        (OptimizerSpec("sgd", weight_decay="lots"), "optimizer.weight_decay"),
                                        (OptimizerSpec("sgd", weight_decay_kind="l1"), "optimizer.weight_decay_kind")])
def test_bad_weight_decay(spec, field):
    with pytest.raises(UserError, match=f"^{field}:"):
        spec.validate()
