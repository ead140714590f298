"""Masks (relulab.zoo.masks, Slot.keep): channel and unit placements in the spec, the masked slot's maths, ReLU
counts, and errors that name the field."""
import pytest
import torch

from relulab.core.errors import UserError
from relulab.experiments.plan import canonical_spec, run_key
from relulab.training.specs import RunSpec
from relulab.zoo.masks import Mask, element_cost, gate_shape, parse_mask
from relulab.zoo.models import ModelSpec, build_model

CIFAR = (3, 32, 32)


def _random_keep(shape, p, seed):
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed)) < p


@pytest.mark.parametrize("granularity,shape", [("channel", (16,)), ("unit", (16, 32, 32)), ("unit", (7,))])
def test_a_mask_survives_its_text(granularity, shape):
    mask = Mask(granularity, _random_keep(shape, 0.3, 0))
    back = parse_mask(mask.text())
    assert back.granularity == granularity and torch.equal(back.keep, mask.keep)


@pytest.mark.parametrize("text,says", [
    ("layer:16:eJwDAAAAAAE=", "granularity"),
    ("channel:4x4:eJwDAAAAAAE=", "shape"),
    ("channel:16:!!", "base64"),
    ("channel", "GRANULARITY:SHAPE:BITS"),
    (Mask("channel", torch.ones(8, dtype=torch.bool)).text().replace(":8:", ":24:"), "bits for a shape of 24"),
])
def test_a_bad_mask_is_refused_naming_its_slot(text, says):
    with pytest.raises(UserError) as error:
        ModelSpec("resnet20", masks={3: text}).validate()
    assert "model.masks.3" in str(error.value) and says in str(error.value)


def test_a_mask_of_the_wrong_shape_for_its_slot_is_refused():
    with pytest.raises(UserError, match=r"model\.masks\.8: a channel mask of this slot has shape 32"):
        build_model(ModelSpec("resnet20", masks={8: Mask("channel", torch.ones(16, dtype=torch.bool)).text()}),
                    CIFAR, 10)


def test_a_masked_slot_is_its_activation_where_kept_and_the_identity_elsewhere():
    keep = _random_keep((16, 32, 32), 0.5, 1)
    channels = _random_keep((16,), 0.5, 2)
    model = build_model(ModelSpec("resnet20", masks={1: Mask("unit", keep).text(),
                                                     3: Mask("channel", channels).text()}), CIFAR, 10)
    x = torch.randn(4, 16, 32, 32)
    unit_slot, channel_slot = model.slot(1), model.slot(3)
    torch.testing.assert_close(unit_slot(x), torch.where(keep, x.relu(), x), rtol=0, atol=0)
    expected = x.clone()
    expected[:, channels] = x[:, channels].relu()
    torch.testing.assert_close(channel_slot(x), expected, rtol=0, atol=0)
    x.requires_grad_(True)
    unit_slot(x).sum().backward()  # the identity's gradient where masked off, relu's where kept
    torch.testing.assert_close(x.grad, torch.where(keep, (x > 0).float(), torch.ones_like(x)))


def test_relu_counts_count_the_elements_that_stay_nonlinear():
    model = build_model(ModelSpec("resnet20"), CIFAR, 10)
    full = model.relu_counts()
    assert full[1] == 16 * 32 * 32 and full[19] == 64 * 8 * 8 and model.relu_count() == sum(full.values()) == 188416
    channels, units = _random_keep((32,), 0.5, 3), _random_keep((16, 32, 32), 0.1, 4)
    spec = ModelSpec("resnet20", slots={2: "identity"},
                     masks={8: Mask("channel", channels).text(), 1: Mask("unit", units).text()})
    counts = build_model(spec, CIFAR, 10).relu_counts()
    assert counts[2] == 0 and counts[8] == int(channels.sum()) * 16 * 16 and counts[1] == int(units.sum())
    assert counts[5] == full[5]
    assert element_cost("channel", (32, 16, 16)) == 256 and gate_shape("unit", (32, 16, 16)) == (32, 16, 16)


def test_runs_without_masks_keep_their_keys_and_masks_change_them():
    spec = RunSpec(model=ModelSpec("resnet20"))
    assert "masks" not in canonical_spec(spec)["model"]  # the stores written before masks existed stay valid
    masked = RunSpec(model=ModelSpec("resnet20", masks={1: Mask("channel", _random_keep((16,), 0.5, 5)).text()}))
    other = RunSpec(model=ModelSpec("resnet20", masks={1: Mask("channel", _random_keep((16,), 0.5, 6)).text()}))
    assert len({run_key(spec, 0), run_key(masked, 0), run_key(other, 0)}) == 3


def test_a_masked_model_saves_and_loads_its_masks_with_its_weights():
    spec = ModelSpec("resnet20", masks={3: Mask("channel", _random_keep((16,), 0.5, 7)).text()})
    model = build_model(spec, CIFAR, 10)
    again = build_model(spec, CIFAR, 10)
    again.load_state_dict(model.state_dict())
    assert torch.equal(again.slot(3).keep, model.slot(3).keep)
