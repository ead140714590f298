import pytest
import torch

from relulab.zoo import activations
from relulab.core.errors import UserError

NAMES = activations.activation_names() + ["leaky_relu:0.2", "elu:0.5", "prelu:0.1"]


@pytest.mark.parametrize("name", NAMES)
def test_closed_form_derivative_matches_autograd(name):
    x = torch.cat([torch.linspace(-6, 6, 241, dtype=torch.float64), torch.tensor([0.0], dtype=torch.float64)])
    x.requires_grad_(True)
    layer = activations.get_activation(name).double()
    layer(x).sum().backward()
    expected = activations.activation_grad(name)(x.detach())
    torch.testing.assert_close(x.grad, expected, rtol=1e-7, atol=1e-7)


@pytest.mark.parametrize("name", NAMES)
def test_function_matches_the_layer(name):
    x = torch.linspace(-5, 5, 101, dtype=torch.float64)
    layer = activations.get_activation(name).double()
    torch.testing.assert_close(layer(x), activations.activation_fn(name)(x))


def test_the_kernels_activations_have_their_derivative_from_the_output_once():
    # The fused step and the Triton kernels take the derivative from the output (`output_grad`); the
    # derivative of the input is that same function of fn(x), so the two cannot drift apart.
    x = torch.linspace(-6, 6, 241)
    for name, code in activations.KERNEL_CODES.items():
        act = activations.ACTIVATIONS[name]
        assert torch.equal(act.grad(x, None), act.output_grad(act.fn(x, None))), name
        assert activations.BY_KERNEL_CODE[code] is act
    assert sorted(activations.KERNEL_CODES) == ["identity", "relu", "sigmoid", "tanh"]
    assert len(set(activations.KERNEL_CODES.values())) == len(activations.KERNEL_CODES)
    assert [a.name for a in activations.ACTIVATIONS.values() if a.learned] == ["prelu"]


def test_relu_demonstration_of_seed_004():
    relu = activations.activation_fn("relu")
    inputs = torch.tensor([1.0, 1000.0, 0.0, -1.0, -1000.0])
    assert relu(inputs).tolist() == [1.0, 1000.0, 0.0, 0.0, 0.0]
    # Derivative at 0 is 0 by convention.
    assert activations.activation_grad("relu")(torch.tensor([0.0])).item() == 0.0


def test_recommended_initializers():
    rec = {name: a.recommended_init for name, a in activations.ACTIVATIONS.items()}
    assert rec["relu"] == rec["leaky_relu"] == rec["prelu"] == rec["elu"] == "he_normal"
    assert rec["selu"] == "lecun_normal"
    assert rec["sigmoid"] == rec["tanh"] == "glorot_uniform"


def test_aliases_and_canonical_names():
    assert activations.canonical_name("none") == "identity"
    assert activations.canonical_name("LReLU:0.2") == "leaky_relu:0.2"
    assert activations.canonical_name("leaky_relu:0.01") == "leaky_relu"
    assert activations.is_off("off")


@pytest.mark.parametrize("bad", ["nope", "", "relu:2", "elu:abc"])
def test_bad_names_are_one_line_errors(bad):
    with pytest.raises(UserError) as err:
        activations.get_activation(bad, "model.activation")
    assert str(err.value).startswith("model.activation:")
    assert "\n" not in str(err.value)
