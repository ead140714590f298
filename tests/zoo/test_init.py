import math

import pytest
import torch

from relulab.zoo import init
from relulab.core.errors import UserError

FAN_IN, FAN_OUT = 300, 500  # a Linear(300 -> 500) weight is (500, 300)

EXPECTED_VAR = {
    "glorot_uniform": 2 / (FAN_IN + FAN_OUT),
    "glorot_normal": 2 / (FAN_IN + FAN_OUT),
    "he_normal": 2 / FAN_IN,
    "he_uniform": 2 / FAN_IN,
    "lecun_normal": 1 / FAN_IN,
    "lecun_uniform": 1 / FAN_IN,
    "random_uniform": 0.05**2 / 3,
    "random_normal": 0.05**2,
    "truncated_normal": 0.05**2 * 0.87962566103423978**2,
    "orthogonal": 1 / FAN_OUT,  # a (500, 300) matrix with orthonormal columns of norm 1
}


@pytest.mark.parametrize("name", sorted(EXPECTED_VAR))
def test_empirical_mean_and_variance(name):
    torch.manual_seed(0)
    w = init.initialize(torch.empty(FAN_OUT, FAN_IN), name)
    assert abs(w.mean().item()) < 0.01 * math.sqrt(EXPECTED_VAR[name]) * 10
    assert w.var().item() == pytest.approx(EXPECTED_VAR[name], rel=0.03)


@pytest.mark.parametrize("name,limit", [("glorot_uniform", math.sqrt(6 / (FAN_IN + FAN_OUT))),
                                        ("he_uniform", math.sqrt(6 / FAN_IN)),
                                        ("lecun_uniform", math.sqrt(3 / FAN_IN)),
                                        ("random_uniform", 0.05)])
def test_uniform_limits(name, limit):
    w = init.initialize(torch.empty(FAN_OUT, FAN_IN), name)
    assert w.abs().max().item() <= limit
    assert w.abs().max().item() > 0.99 * limit


def test_truncated_normals_are_cut_at_two_std():
    w = init.initialize(torch.empty(FAN_OUT, FAN_IN), "he_normal")
    std_before_truncation = math.sqrt(2 / FAN_IN) / 0.87962566103423978
    assert w.abs().max().item() <= 2 * std_before_truncation + 1e-6


def test_conv_fans_count_the_receptive_field():
    w = torch.empty(96, 48, 3, 3)
    assert init.compute_fans(w) == (48 * 9, 96 * 9)
    torch.manual_seed(0)
    init.initialize(w, "he_normal")
    assert w.var().item() == pytest.approx(2 / (48 * 9), rel=0.05)


def test_constant_zeros_ones():
    assert init.initialize(torch.empty(3), "constant:0.1").tolist() == pytest.approx([0.1] * 3)
    assert init.initialize(torch.empty(3), "zeros").tolist() == [0, 0, 0]
    assert init.initialize(torch.empty(3), "ones").tolist() == [1, 1, 1]


@pytest.mark.parametrize("bad", ["he_nrmal", "zeros:1", "constant:x", ""])
def test_bad_initializers(bad):
    with pytest.raises(UserError) as err:
        init.initialize(torch.empty(3, 3), bad, "model.init")
    assert str(err.value).startswith("model.init:")
