"""relulab.search.gates: the gate math, budgets met, placements that build into models of the ReLU count they
promise, random placements by seed, SNL's lasso training on digits, and errors that name the fields."""
import copy
import math

import pytest
import torch

from relulab.core.errors import UserError
from relulab.data import DataSpec, Splits, load_data
from relulab.search.gates import (GateTraining, Gates, fill_budget, full_count, gate_layout, layout_costs,
                                  learn_gates, placement, random_kept)
from relulab.training.specs import RunSpec, TrainSpec
from relulab.zoo.masks import Mask, parse_mask
from relulab.zoo.models import ModelSpec, build_model

CIFAR = (3, 32, 32)
MLP = ModelSpec("deep-mlp", widths=[16, 16])


@pytest.fixture(scope="module")
def digits():
    return load_data(DataSpec("digits"))


@pytest.fixture(scope="module")
def resnet():
    return build_model(ModelSpec("resnet20"), CIFAR, 10)


def _scores(layout, seed):
    generator = torch.Generator().manual_seed(seed)
    return {index: torch.rand(shape, generator=generator) for index, (shape, _) in layout.items()}


def _kept_cost(kept, costs):
    return sum(int(keep.sum()) * costs[index] for index, keep in kept.items())


def _plain_fill(scores, costs, budget):
    """The rule, one element at a time: best score first, ties by slot then flat index; keep what fits."""
    elements = [(-float(v), index, i) for index in sorted(scores) for i, v in enumerate(scores[index].reshape(-1))]
    kept = {index: torch.zeros(scores[index].numel(), dtype=torch.bool) for index in scores}
    left = budget
    for _, index, i in sorted(elements):
        if costs[index] <= left:
            kept[index][i] = True
            left -= costs[index]
    return {index: keep.reshape(scores[index].shape) for index, keep in kept.items()}


# ------------------------------------------------------------------------------------------ the gate math


@pytest.mark.parametrize("granularity", ["layer", "channel", "unit"])
@pytest.mark.parametrize("model_spec,input_shape,slot", [(ModelSpec("resnet20"), CIFAR, 8), (MLP, (1, 8, 8), 2)])
def test_a_gated_slot_is_a_relu_plus_one_minus_a_x_broadcast_over_its_gate(granularity, model_spec, input_shape,
                                                                             slot):
    model = build_model(model_spec, input_shape, 10)
    layout = gate_layout(model, granularity)
    gates = Gates(model, layout, torch.device("cpu"))
    with torch.no_grad():
        for index, a in gates.slopes.items():
            a.copy_(torch.rand(a.shape, generator=torch.Generator().manual_seed(index)))
    out_shape = model.slot_shapes()[slot]
    x = torch.randn(4, *out_shape, generator=torch.Generator().manual_seed(9))
    a = gates.slopes[slot]
    plain_a = {"layer": lambda: a[0],  # one number for the slot
               "channel": lambda: a.reshape(1, -1, *[1] * (len(out_shape) - 1)),  # one per channel
               "unit": lambda: a.unsqueeze(0)}[granularity]()  # one per element
    plain = plain_a * x.relu() + (1 - plain_a) * x
    torch.testing.assert_close(model.slot(slot)(x), plain, rtol=0, atol=1e-6)

    weights = torch.randn(x.shape, generator=torch.Generator().manual_seed(10))
    (model.slot(slot)(x) * weights).sum().backward()
    gated_grad = a.grad.clone()
    a.grad = None
    (plain * weights).sum().backward()  # the plain form through the same a: the gradient reaches a alike
    torch.testing.assert_close(gated_grad, a.grad)
    assert gated_grad.abs().sum() > 0
    gates.remove()
    torch.testing.assert_close(model.slot(slot)(x), x.relu(), rtol=0, atol=0)  # the hooks are gone


def test_the_layout_covers_the_slots_that_are_on(resnet):
    layout = gate_layout(resnet, "channel")
    assert sorted(layout) == list(range(1, 20)) and layout[1] == ((16,), 32 * 32) and layout[19] == ((64,), 8 * 8)
    assert full_count(layout) == resnet.relu_count() == full_count(gate_layout(resnet, "unit"))
    off = build_model(ModelSpec("resnet20", slots={4: "identity"}), CIFAR, 10)
    assert 4 not in gate_layout(off, "layer") and gate_layout(off, "layer")[5] == ((1,), 16 * 32 * 32)


# ------------------------------------------------------------------------------------------ budgets


def test_unit_granularity_meets_the_budget_exactly_and_the_built_model_counts_it(resnet):
    layout = gate_layout(resnet, "unit")
    costs = layout_costs(layout)
    for budget in (0, 1, 12345, 100_000):
        kept = fill_budget(_scores(layout, budget), costs, budget)
        assert _kept_cost(kept, costs) == budget
    slots, masks = placement(kept, "unit")
    assert slots == {} and sorted(masks) == sorted(layout)
    assert build_model(ModelSpec("resnet20", slots=slots, masks=masks), CIFAR, 10).relu_count() == 100_000


@pytest.mark.parametrize("granularity,budget", [("channel", 50_000), ("channel", 777), ("layer", 60_000),
                                                ("layer", 1000)])
def test_channel_and_layer_keep_within_the_budget_and_leave_out_nothing_that_would_fit(resnet, granularity,
                                                                                      budget):
    layout = gate_layout(resnet, granularity)
    costs = layout_costs(layout)
    kept = fill_budget(_scores(layout, 3), costs, budget)
    used = _kept_cost(kept, costs)
    assert used <= budget
    left_out = [costs[index] for index, keep in kept.items() for k in keep.reshape(-1) if not k]
    assert all(cost > budget - used for cost in left_out)
    slots, masks = placement(kept, granularity)
    built = build_model(ModelSpec("resnet20", slots=slots, masks=masks), CIFAR, 10)
    assert built.relu_count() == used


def test_layer_placements_switch_slots_off_on_seed_cnn_and_keep_the_base_overrides():
    model = build_model(ModelSpec("seed-cnn"), CIFAR, 10)
    layout = gate_layout(model, "layer")
    costs = layout_costs(layout)
    scores = {index: torch.tensor([float(index % 3)]) for index in layout}
    budget = model.relu_count() // 2
    kept = fill_budget(scores, costs, budget)
    assert all(torch.equal(kept[i], k) for i, k in _plain_fill(scores, costs, budget).items())
    slots, masks = placement(kept, "layer", {10: "tanh"})
    assert masks == {} and slots[10] == "tanh"
    assert {i for i, act in slots.items() if act == "identity"} == {i for i, k in kept.items() if not k.any()}
    built = build_model(ModelSpec("seed-cnn", slots=slots), CIFAR, 10)
    assert built.relu_count() == _kept_cost(kept, costs) <= budget


@pytest.mark.parametrize("seed", range(6))
def test_the_fill_is_the_plain_rule_best_score_first_ties_by_slot_then_index(seed):
    generator = torch.Generator().manual_seed(seed)
    shapes = {1: (3, 2), 2: (4,), 5: (2, 2, 2)}
    costs = {1: 5, 2: 3, 5: 2}
    # scores of a few values only, so that ties are many
    scores = {i: torch.randint(0, 4, shape, generator=generator).float() for i, shape in shapes.items()}
    total = sum(math.prod(shape) * costs[i] for i, shape in shapes.items())
    for budget in (0, 4, 11, 23, total - 1, total, total + 5):
        kept = fill_budget(scores, costs, budget)
        plain = _plain_fill(scores, costs, budget)
        assert all(torch.equal(kept[i], plain[i]) for i in shapes), (seed, budget)


def test_the_fill_skips_what_does_not_fit_and_goes_on():
    kept = fill_budget({1: torch.tensor([0.9, 0.1]), 2: torch.tensor([0.5, 0.5])}, {1: 3, 2: 2}, 5)
    # 1[0] (3) fits; 2[0] (2) fits: 5; nothing more fits
    assert kept[1].tolist() == [True, False] and kept[2].tolist() == [True, False]
    kept = fill_budget({1: torch.tensor([0.9, 0.8]), 2: torch.tensor([0.5])}, {1: 4, 2: 1}, 5)
    assert kept[1].tolist() == [True, False] and kept[2].tolist() == [True]  # 1[1] skipped, 2[0] still fits


def test_every_gated_slot_gets_a_mask_even_all_or_nothing_so_placements_share_one_layout(resnet):
    layout = gate_layout(resnet, "channel")
    everything = {index: torch.ones(shape, dtype=torch.bool) for index, (shape, _) in layout.items()}
    nothing = {index: torch.zeros(shape, dtype=torch.bool) for index, (shape, _) in layout.items()}
    some = fill_budget(_scores(layout, 4), layout_costs(layout), 40_000)
    placements = [placement(kept, "channel")[1] for kept in (everything, nothing, some)]
    for masks in placements:
        assert sorted(masks) == sorted(layout)
        assert {i: tuple(parse_mask(t).keep.shape) for i, t in masks.items()} == \
            {i: shape for i, (shape, _) in layout.items()}
    assert build_model(ModelSpec("resnet20", masks=placements[0]), CIFAR, 10).relu_count() == resnet.relu_count()
    assert build_model(ModelSpec("resnet20", masks=placements[1]), CIFAR, 10).relu_count() == 0


# ------------------------------------------------------------------------------------------ random placements


@pytest.mark.parametrize("granularity,budget", [("unit", 30_000), ("channel", 30_000), ("layer", 90_000)])
def test_random_placements_repeat_by_seed_and_differ_across_seeds(resnet, granularity, budget):
    costs = layout_costs(gate_layout(resnet, granularity))
    first, again, other = (random_kept(resnet, granularity, budget, seed) for seed in (0, 0, 1))
    assert all(torch.equal(first[i], again[i]) for i in first)
    assert any(not torch.equal(first[i], other[i]) for i in first)
    assert _kept_cost(first, costs) <= budget and _kept_cost(other, costs) <= budget
    if granularity == "unit":
        assert _kept_cost(first, costs) == _kept_cost(other, costs) == budget


# ------------------------------------------------------------------------------------------ learned gates


def _digits_run(**train):
    return RunSpec(data=DataSpec("digits"), model=MLP, train=TrainSpec(epochs=2, **train))


def _learn(digits, granularity, budget, training, seed=0, **train):
    spec = _digits_run(**train)
    torch.manual_seed(0)
    model = build_model(spec.model, digits.input_shape, digits.num_classes)
    trace = []
    gates = learn_gates(model, digits, spec, granularity, budget, training, seed, "cpu", trace)
    return model, gates, trace


def test_the_lasso_drives_the_soft_relu_count_toward_the_budget(digits):
    full = 32  # two slots of 16
    strong = GateTraining(epochs=2, lasso=1.0, gate_lr=0.05)
    model, gates, trace = _learn(digits, "unit", 8, strong)
    costs = layout_costs(gate_layout(model, "unit"))
    soft = sum(costs[i] * float(a.sum()) for i, a in gates.items())
    assert soft == pytest.approx(trace[-1]["soft_count"]) and soft <= 8 < 0.5 * full  # within the budget
    assert all(a.dtype == torch.float32 and a.device.type == "cpu" and a.min() >= 0 and a.max() <= 1
               for a in gates.values())
    assert {i: tuple(a.shape) for i, a in gates.items()} == {1: (16,), 2: (16,)}
    _, _, weak_trace = _learn(digits, "unit", 8, GateTraining(epochs=2, lasso=1e-6, gate_lr=0.05))
    # it is the lasso that closes the gates (cross-entropy alone closes some on a model this young, not as many)
    assert all(w["soft_count"] > s["soft_count"] + 4 for w, s in zip(weak_trace, trace))
    assert weak_trace[1]["lasso"] == pytest.approx(2e-6)  # still above the budget after epoch 1: it grew


def test_gate_training_repeats_for_a_seed_leaves_the_model_as_it_was_built_and_trains_its_weights(digits):
    training = GateTraining(epochs=2, lasso=0.5, gate_lr=0.05)
    first_model, first, _ = _learn(digits, "channel", 10, training, seed=3)
    again_model, again, _ = _learn(digits, "channel", 10, training, seed=3)
    _, other, _ = _learn(digits, "channel", 10, training, seed=4)
    assert all(torch.equal(first[i], again[i]) for i in first)
    assert any(not torch.equal(first[i], other[i]) for i in first)
    for (name, w), (_, w_again) in zip(first_model.state_dict().items(), again_model.state_dict().items()):
        assert torch.equal(w, w_again), name
    untrained = build_model(MLP, digits.input_shape, digits.num_classes)
    assert type(first_model) is type(untrained) and first_model.state_dict().keys() == untrained.state_dict().keys()
    assert all(not slot._forward_hooks for slot in first_model.slots)  # gates removed
    torch.manual_seed(0)
    built = build_model(MLP, digits.input_shape, digits.num_classes)
    assert not torch.equal(built.state_dict()["body.1.weight"], first_model.state_dict()["body.1.weight"])


def test_gate_training_takes_the_recipe_augmentation_and_smoothing(digits):
    from relulab.training.augment import AugmentSpec
    training = GateTraining(epochs=1, lasso=0.01, gate_lr=0.01)
    plain_model, plain, plain_trace = _learn(digits, "layer", 16, training)
    model, recipe, trace = _learn(digits, "layer", 16, training, augment=AugmentSpec(crop_padding=1, flip=True),
                                  label_smoothing=0.1)
    assert set(recipe) == {1, 2} and all(a.shape == (1,) for a in recipe.values()) and len(trace) == 1
    assert trace[0]["loss"] != pytest.approx(plain_trace[0]["loss"], rel=1e-3)
    assert not torch.equal(model.state_dict()["body.1.weight"], plain_model.state_dict()["body.1.weight"])
    with pytest.raises(UserError, match=r"^train\.augment: crop and flip need images"):
        flat = copy.copy(digits)
        flat.x_train = digits.x_train.flatten(1)
        _learn(flat, "layer", 16, training, augment=AugmentSpec(flip=True))


def test_a_streamed_training_set_gives_the_gates_of_the_same_set_held_on_the_device(digits):
    parts = [(digits.x_train, digits.y_train), (digits.x_val, digits.y_val), (digits.x_test, digits.y_test)]
    spec, training = _digits_run(), GateTraining(epochs=1, lasso=0.5, gate_lr=0.05)
    gates = []
    for stream in (False, True):
        splits = Splits.from_datasets(*parts, stream=stream)
        assert splits.streamed == stream
        torch.manual_seed(0)
        model = build_model(MLP, splits.input_shape, 10)
        gates.append(learn_gates(model, splits, spec, "unit", 8, training, 0, "cpu"))
    assert all(torch.equal(gates[0][i], gates[1][i]) for i in gates[0])


def test_learned_gates_refuse_a_masked_model_and_a_budget_beyond_the_model(digits):
    spec = _digits_run()
    masked = build_model(ModelSpec("deep-mlp", widths=[16, 16], masks={1: Mask("channel", torch.ones(16, dtype=bool))
                                                                       .text()}), digits.input_shape, 10)
    with pytest.raises(UserError, match=r"^model\.masks: learned gates start from a model without masks"):
        learn_gates(masked, digits, spec, "unit", 8, GateTraining(), 0, "cpu")
    model = build_model(MLP, digits.input_shape, 10)
    with pytest.raises(UserError, match=r"^search\.budgets: expected a ReLU count from 0 to 32"):
        learn_gates(copy.deepcopy(model), digits, spec, "unit", 33, GateTraining(), 0, "cpu")
    with pytest.raises(UserError, match=r"^search\.granularity: unknown value 'units'"):
        gate_layout(model, "units")
    with pytest.raises(UserError, match=r"^search\.budgets: expected a ReLU count from 0 to 32"):
        random_kept(model, "unit", -1, 0)


@pytest.mark.parametrize("change,field", [
    (dict(epochs=0), "search.learned.epochs"), (dict(epochs=1.5), "search.learned.epochs"),
    (dict(lasso=0), "search.learned.lasso"), (dict(lasso=float("inf")), "search.learned.lasso"),
    (dict(growth=0.5), "search.learned.growth"), (dict(growth=True), "search.learned.growth"),
    (dict(gate_lr=-1.0), "search.learned.gate_lr"), (dict(gate_lr="fast"), "search.learned.gate_lr"),
])
def test_gate_training_errors_name_the_field(change, field):
    with pytest.raises(UserError) as error:
        GateTraining(**change).validate()
    assert str(error.value).startswith(f"{field}: expected") and "\n" not in str(error.value)
    assert GateTraining().validate() == GateTraining()
