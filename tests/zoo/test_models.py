import pytest
import torch
from torch import nn

from relulab.core.errors import UserError
from relulab.zoo.models import (MODELS, ModelEntry, ModelSpec, build_deep_mlp, build_model, keras_param_count,
                                parse_off, parse_slots, parse_widths)


def test_seed_cnn_matches_the_keras_summary():
    model = build_model(ModelSpec("seed-cnn"), (3, 32, 32), 10)
    assert keras_param_count(model) == 1_149_026
    assert len(model.slots) == 10
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_seed_cnn_layer_order_is_conv_slot_batchnorm():
    model = build_model(ModelSpec("seed-cnn"), (3, 32, 32), 10)
    kinds = [type(m).__name__ for m in model.body][:3]
    assert kinds == ["Conv2d", "Slot", "BatchNorm2d"]
    bn = model.body[2]
    assert bn.momentum == pytest.approx(0.01) and bn.eps == pytest.approx(1e-3)  # Keras' 0.99 / 1e-3


def test_seed_cnn_takes_other_channels_and_refuses_small_inputs():
    model = build_model(ModelSpec("seed-cnn"), (1, 32, 32), 10)
    assert model(torch.zeros(2, 1, 32, 32)).shape == (2, 10)
    with pytest.raises(UserError, match="at least 32x32"):
        build_model(ModelSpec("seed-cnn"), (1, 28, 28), 10)


def test_deep_mlp_of_seed_001():
    model = build_model(ModelSpec("deep-mlp", activation="tanh"), (1, 28, 28), 10)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [l.out_features for l in linears] == [300] + [100] * 49 + [10]
    assert len(model.slots) == 50 and model.placement() == ["tanh"] * 50
    assert not any(isinstance(m, nn.BatchNorm1d) for m in model.modules())


def test_bn_mlp_of_seed_002_with_and_without_batchnorm():
    with_bn = build_model(ModelSpec("bn-mlp", activation="selu"), (1, 28, 28), 10)
    linears = [m for m in with_bn.modules() if isinstance(m, nn.Linear)]
    assert [l.out_features for l in linears] == [512] + [256] * 50 + [10]
    assert sum(isinstance(m, nn.BatchNorm1d) for m in with_bn.modules()) == 51
    without = build_model(ModelSpec("bn-mlp", batchnorm=False), (1, 28, 28), 10)
    assert not any(isinstance(m, nn.BatchNorm1d) for m in without.modules())


def test_slots_can_be_set_per_layer_and_switched():
    model = build_model(ModelSpec("seed-cnn", slots={7: "identity", 10: "none"}), (3, 32, 32), 10)
    assert model.placement() == ["relu"] * 6 + ["identity", "relu", "relu", "identity"]
    model.slot(2).set("leaky_relu:0.2")
    assert isinstance(model.slot(2).act, nn.LeakyReLU) and model.slot(7).off


def test_init_auto_uses_the_recommended_initializer():
    torch.manual_seed(0)
    model = build_model(ModelSpec("deep-mlp", activation="selu", init="auto", widths=[400, 400]), (1, 20, 20), 10)
    first = model.body[1].weight
    assert first.var().item() == pytest.approx(1 / 400, rel=0.05)  # lecun_normal


def test_bias_init_tip_of_seed_004():
    model = build_model(ModelSpec("deep-mlp", widths=[8, 8], bias_init="constant:0.1"), (1, 4, 4), 3)
    hidden = [m for m in model.modules() if isinstance(m, nn.Linear)][:-1]
    assert all(torch.allclose(l.bias, torch.full_like(l.bias, 0.1)) for l in hidden)
    assert torch.count_nonzero(model.body[-1].bias) == 0  # the classifier keeps zero bias


def test_parsers():
    assert parse_widths("300,100x3") == [300, 100, 100, 100]
    assert parse_slots("7=identity,10=relu") == {7: "identity", 10: "relu"}
    assert parse_slots({"7": "none"}) == {7: "identity"}
    assert parse_off("7,10") == {7: "identity", 10: "identity"}
    for bad in ("x=relu", "0=relu", "7"):
        with pytest.raises(UserError):
            parse_slots(bad)


@pytest.mark.parametrize("spec,field", [
    (ModelSpec("resnet"), "model.name"), (ModelSpec(activation="nope"), "model.activation"),
    (ModelSpec(init="he_nrmal"), "model.init"), (ModelSpec(widths=[10, -1]), "model.widths"),
    (ModelSpec(slots={1: "nope"}), "model.slots.1"), (ModelSpec(bn_flavour="tf"), "model.bn_flavour")])
def test_bad_model_specs(spec, field):
    with pytest.raises(UserError, match=f"^{field}:"):
        spec.validate()


def test_a_model_entry_names_how_it_packs():
    with pytest.raises(ValueError, match="packs"):
        ModelEntry(build_deep_mlp, packs="stacked")
    assert [name for name, entry in MODELS.items() if entry.conv] == ["seed-cnn", "resnet20", "resnet18-cifar",
                                                                       "vgg16-bn"]
    with pytest.raises(UserError, match="did you mean 'deep-mlp'"):
        ModelSpec("deep-mpl").validate()


def test_slot_numbers_beyond_the_model():
    with pytest.raises(UserError, match="slots 1..10"):
        build_model(ModelSpec("seed-cnn", slots={11: "relu"}), (3, 32, 32), 10)
