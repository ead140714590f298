"""Folding what an off slot makes linear (relulab.zoo.fold): the folded model computes what the original does,
with fewer layers; what cannot fold exactly is left alone (or merged only when asked, the difference reported)."""
import pytest
import torch
from torch import nn

from relulab.core.errors import UserError
from relulab.zoo.fold import fold, fold_structure, layer_count
from relulab.zoo.models import ModelSpec, Slot, SlotNet, build_model
from relulab.zoo.slotify import slotify

ATOL = 1e-10  # the comparisons are in float64: what is left is the fold's own error, not float32 rounding


def made(spec: ModelSpec, input_shape=(1, 8, 8), classes=10, seed=0) -> SlotNet:
    """The model in float64, its batch norms given running statistics and affine weights that are not 0 and 1
    (a fresh batch norm is the identity, which would fold right even if the fold were wrong)."""
    torch.manual_seed(seed)
    model = build_model(spec, input_shape, classes).double()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.normal_()
            m.bias.data.normal_()
    return model.eval()


def same_outputs(model, folded, shape, atol=ATOL, n=8):
    x = torch.randn(n, *shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.allclose(folded(x), model(x), atol=atol, rtol=0), (folded(x) - model(x)).abs().max()


def off(*slots):
    return {s: "identity" for s in slots}


def test_deep_mlp_with_half_its_slots_off_folds_exactly_into_half_the_layers():
    model = made(ModelSpec(widths=[24] + [16] * 9, slots=off(*range(2, 11, 2))))
    folded, report = fold(model)
    same_outputs(model, folded, (1, 8, 8))
    assert (report.layers_before, report.layers_after) == (11, 6) == (layer_count(model), layer_count(folded))
    assert report.params_after == sum(p.numel() for p in folded.parameters()) < report.params_before
    assert report.exact and report.left_alone == []
    assert report.max_abs_diff_float64 < ATOL and report.max_abs_diff == report.max_abs_diff_float64  # float64 model
    assert report.merges[0].layers == ["body.3", "body.4", "body.5"]  # Dense 2, its off slot, Dense 3
    assert folded.placement() == ["relu"] * 5  # the off slots went with the layers they joined


def test_a_chain_of_off_slots_is_one_dense_layer():
    model = made(ModelSpec(widths=[12, 12, 12, 12], slots=off(1, 2, 3, 4)))
    folded, report = fold(model)
    same_outputs(model, folded, (1, 8, 8))
    assert [type(m) for m in folded.body] == [nn.Flatten, nn.Linear] and report.layers_after == 1


def test_fold_leaves_the_model_given_as_it_was():
    model = made(ModelSpec(widths=[8, 8], slots=off(1)))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    fold(model)
    assert len(model.body) == 6 and all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())


def test_bn_mlp_with_slots_off_folds_its_batch_norms_and_dense_layers_exactly():
    model = made(ModelSpec(name="bn-mlp", widths=[20] + [16] * 5, slots=off(2, 3, 5)))
    folded, report = fold(model)
    same_outputs(model, folded, (1, 8, 8))
    assert not any(isinstance(m, nn.BatchNorm1d) for m in folded.modules())  # each folds, back or forward
    assert report.layers_before == 13 and report.layers_after == 4  # 20 | 16 (x3 merged) | 16 (x2 merged) | 10


def test_batch_norms_after_live_slots_fold_forward_into_the_next_dense_layer():
    model = made(ModelSpec(widths=[16, 16, 16], batchnorm=True))  # Dense, relu, BN: BN goes into the next Dense
    folded, report = fold(model)
    same_outputs(model, folded, (1, 8, 8))
    assert report.layers_after == 4 and folded.placement() == ["relu"] * 3


def test_seed_cnn_with_slots_off_composes_its_valid_convolutions_exactly():
    model = made(ModelSpec(name="seed-cnn", widths=[8, 8, 8, 8, 8, 8, 8, 8, 8], slots=off(1, 3, 4)), (3, 32, 32))
    folded, report = fold(model)
    same_outputs(model, folded, (3, 32, 32), n=2)
    convs = [m for m in folded.body if isinstance(m, nn.Conv2d)]
    assert [tuple(c.kernel_size) for c in convs[:2]] == [(5, 5), (7, 7)]  # 3+3-1; 3+3+3-2
    assert len(convs) == 7 and report.exact and report.layers_after < report.layers_before
    # the slots before the max-pools are live: the batch norms after them fold forward into the next conv,
    # except where a max-pool stands between (it does not commute with a negative scale)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in folded.modules()) == 3


def test_an_off_slot_before_a_max_pool_is_left_alone_and_said():
    model = made(ModelSpec(name="seed-cnn", widths=[4] * 9, batchnorm=False, slots=off(1, 6)), (3, 32, 32))
    folded, report = fold(model)
    same_outputs(model, folded, (3, 32, 32), n=2)
    assert report.left_alone == ["slot 6: between Conv2d body.10 and MaxPool2d body.12: not two dense or two "
                                 "convolution layers"]
    assert [s.index for s in folded.slots if s.off] == [6]


def convs(first_padding, second_padding, second_stride=1, bn=True):
    spec = ModelSpec(name="seed-cnn")
    layers = [nn.Conv2d(3, 4, 3, padding=first_padding), Slot(1, "identity"), *[nn.BatchNorm2d(4)] * bn,
              nn.Conv2d(4, 5, 3, stride=second_stride, padding=second_padding)]
    torch.manual_seed(0)
    return made_by_hand(SlotNet(layers, spec, (3, 9, 9), 5))


def made_by_hand(model):
    model = model.double()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_(), m.running_var.uniform_(0.5, 2), m.weight.data.normal_(), m.bias.data.normal_()
    return model.eval()


@pytest.mark.parametrize("first_padding,second_stride", [(0, 1), (1, 1), (0, 2), (2, 2)])
def test_convolutions_merge_exactly_where_the_second_does_not_pad(first_padding, second_stride):
    model = convs(first_padding, 0, second_stride)
    folded, report = fold(model)
    same_outputs(model, folded, (3, 9, 9))
    (merged,) = folded.body
    assert tuple(merged.kernel_size) == (5, 5) and tuple(merged.padding) == (first_padding,) * 2
    assert tuple(merged.stride) == (second_stride,) * 2 and report.exact


def test_a_padded_second_convolution_is_refused_unless_approximate_and_differs_only_at_the_borders():
    model = convs(1, 1)  # two 'same' 3x3 convolutions: the second pads the intermediate map with zeros
    folded, report = fold(model)  # the batch norm folds; the convolutions stay two
    same_outputs(model, folded, (3, 9, 9))
    assert [type(m) for m in folded.body] == [nn.Conv2d, nn.Conv2d]  # the off slot went with the batch norm
    assert report.left_alone == ["Conv2d body.0 and Conv2d body.3: the second pads by (1, 1), so one convolution "
                                 "for both differs at the borders; merged only with approximate=True"]
    with pytest.raises(UserError, match="nothing to fold.*pads by \\(1, 1\\).*approximate=True"):
        fold(convs(1, 1, bn=False))  # nothing else to fold: refused
    folded, report = fold(model, approximate=True)
    assert not report.exact and report.merges[0].exact is False and report.layers_after == 1
    x = torch.randn(4, 3, 9, 9, dtype=torch.float64)
    with torch.no_grad():
        diff = (folded(x) - model(x)).abs()
    assert diff[..., 1:-1, 1:-1].max() < ATOL  # the interior is exact
    assert diff.max() > 1e-3 and report.max_abs_diff_float64 > 1e-3  # the one-pixel frame is not


def resnet(slots):
    return made(ModelSpec(name="resnet20", widths=[4, 8, 8], slots=slots), (3, 32, 32))


def test_residual_blocks_fold_their_batch_norms_and_leave_the_skip_connection_alone():
    model = resnet(off(2, 3))  # layer1.0.relu1 (between two padded convs) and layer1.0.relu2 (after the sum)
    folded, report = fold(model)
    same_outputs(model, folded, (3, 32, 32), n=2)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    block = folded.body[0].layer1[0]
    assert isinstance(block.bn1, nn.Identity) and isinstance(block.conv2, nn.Conv2d)  # not merged: it pads
    assert [s.name for s in folded.slots if s.off] == ["layer1.0.relu1", "layer1.0.relu2"]
    assert any("after a residual sum" in note for note in report.left_alone)
    assert report.layers_after == report.layers_before - 19  # its 19 batch norms (its shortcuts have none)


def test_approximate_merges_inside_a_residual_block_never_across_its_sum():
    model = resnet(off(2, 3))
    folded, report = fold(model, approximate=True)
    block = folded.body[0].layer1[0]
    assert tuple(block.conv1.kernel_size) == (5, 5) and isinstance(block.conv2, nn.Identity)
    assert isinstance(block.relu2, Slot) and not report.exact  # the sum and what follows it are left alone


def test_a_model_with_nothing_linear_to_fold_is_refused_in_one_line():
    with pytest.raises(UserError, match="^model deep-mlp: nothing to fold: expected an off \\(identity\\) slot"):
        fold(made(ModelSpec(widths=[8, 8])))


def test_models_by_reference_are_refused():
    user = slotify(nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)), torch.zeros(1, 4))
    user.slot(1).set("identity")
    with pytest.raises(UserError, match="fold takes relulab's own models"):
        fold(user)


def test_a_plain_sequential_folds_given_an_example_input():
    model = nn.Sequential(nn.Linear(4, 6), nn.Identity(), nn.Linear(6, 3)).double()
    with pytest.raises(UserError, match="give example_input"):
        fold(model)
    folded, report = fold(model, example_input=torch.randn(5, 4, dtype=torch.float64))
    assert len(folded) == 1 and report.max_abs_diff < ATOL


def test_fold_structure_of_a_fresh_model_takes_the_folded_weights():
    """How a folded checkpoint loads: the same folds on a newly built model give the same state_dict keys."""
    spec = ModelSpec(name="bn-mlp", widths=[12] * 4, slots=off(2))
    model = made(spec)
    folded, _ = fold(model)
    fresh = fold_structure(build_model(spec, (1, 8, 8), 10).double())
    fresh.load_state_dict(folded.state_dict())
    same_outputs(model, fresh.eval(), (1, 8, 8))


def test_a_slot_masked_with_no_element_kept_is_off_and_folds_like_one():
    """A mask that keeps nothing nonlinear (relulab.zoo.masks) makes the slot the identity: it counts as off, no
    ReLUs, and its two dense layers fold; a mask that keeps some elements leaves the slot alone."""
    from relulab.zoo.masks import Mask
    nothing = Mask("unit", torch.zeros(16, dtype=torch.bool)).text()
    some = Mask("unit", torch.arange(16) % 2 == 0).text()
    model = made(ModelSpec(widths=[16] * 4, masks={2: nothing, 3: some}))
    assert model.slot(2).off and not model.slot(3).off
    assert model.relu_counts()[2] == 0 and model.relu_counts()[3] == 8
    folded, report = fold(model)
    same_outputs(model, folded, (1, 8, 8))
    assert layer_count(folded) == layer_count(model) - 1
