import numpy as np
import pytest
import torch
from torch import nn

from relulab.zoo.optim import KerasAdam, KerasRMSprop, OptimizerSpec, build_optimizer, weight_penalty
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
