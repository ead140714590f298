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


def test_truncated_normals_are_the_inverse_cdf_of_the_same_uniforms():
    # One method under every torch (nn.init.trunc_normal_ changed its algorithm in 2.13): the seed's uniforms
    # over [-erf(sqrt 2), erf(sqrt 2)] through erfinv, computed here independently in float64 by scipy.
    from scipy.special import erfinv

    std = 0.07
    edge = math.erf(math.sqrt(2.0))
    torch.manual_seed(5)
    uniforms = torch.empty(FAN_OUT, FAN_IN).uniform_(-edge, edge).double().numpy()
    torch.manual_seed(5)
    w = init.truncated_normal_(torch.empty(FAN_OUT, FAN_IN), std)
    expected = torch.from_numpy(erfinv(uniforms) * std * math.sqrt(2.0)).float()
    assert torch.allclose(w, expected, rtol=1e-5, atol=1e-7)
    assert w.abs().max().item() <= 2 * std
    assert w.std().item() == pytest.approx(std * 0.87962566103423978, rel=0.02)


def test_initializing_imports_no_compiler():
    # torch._dynamo takes seconds to import, and the meta device's in-place ops (erfinv_ among them) import it on
    # their first call: parameter counts build models there, so initializers (relulab's, and the CIFAR nets' own)
    # leave meta tensors alone. A stack's activation limit (largest_activation) runs its model on the CPU: on the
    # meta device batch norm would import it too.
    import subprocess
    import sys

    code = ("import sys, torch; from relulab.zoo import init; from relulab.zoo.models import ModelSpec, "
            "parameter_count; [init.initialize(torch.empty(30, 20), n) for n in ('he_normal', 'glorot_normal', "
            "'truncated_normal', 'orthogonal')]; print(parameter_count(ModelSpec('deep-mlp', init='he_normal'), "
            "(784,), 10), parameter_count(ModelSpec('seed-cnn', init='lecun_normal'), (3, 32, 32), 10), "
            "parameter_count(ModelSpec('resnet20'), (3, 32, 32), 10)); "
            "from relulab.zoo.models import largest_activation; largest_activation(ModelSpec('resnet20'), (3, 32, 32), 10); "
            "print('torch._dynamo' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split("\n")[1] == "False", out.stdout
