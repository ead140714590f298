"""Each probe statistic against a plain numpy computation of its definition (micrograd style), per class and
over all images; probe sets; tables."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from relulab.data import DataSpec, load_data
from relulab.core.errors import UserError
from relulab.zoo.models import ModelSpec, Slot, build_model
from relulab.probes.statistics import (STATS, ProbeSet, class_table, measure, parse_probe_set, parse_stats, probe,
                            select_probe_set, slot_output_sizes)


def _slot_tensors(model, x):
    """(input, output) of every slot, recorded the plain way: one forward pass, layer by layer."""
    seen = {}
    h = x
    with torch.no_grad():
        for layer in model.body:
            out = layer(h)
            if isinstance(layer, Slot):
                seen[layer.index] = (h.numpy().astype(np.float64), out.numpy().astype(np.float64), layer.spec)
            h = out
    return seen


def _slot_grads(model, x, y):
    """Per image, per slot: d loss_i / d output and d loss_i / d input, each image alone (batch of one),
    with the slot's tensor made a leaf so autograd computes exactly that gradient."""
    model.eval()
    grads = {}
    for s in model.slots:
        outs, ins = [], []
        for i in range(len(x)):
            for where in ("out", "in"):
                h = x[i:i + 1]
                leaf = None
                for layer in model.body:
                    if layer is s and where == "in":
                        leaf = h.detach().requires_grad_(True)
                        h = leaf
                    h = layer(h)
                    if layer is s and where == "out":
                        leaf = h.detach().requires_grad_(True)
                        h = leaf
                loss = F.cross_entropy(h, y[i:i + 1])
                (g,) = torch.autograd.grad(loss, leaf)
                (outs if where == "out" else ins).append(g.numpy().astype(np.float64)[0])
        grads[s.index] = (np.stack(outs), np.stack(ins))
    return grads


def _ratio(num, den):
    values = [n / d for n, d in zip(num, den) if d != 0]
    return float(np.mean(values)) if values else math.nan


def _entropy(p):
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -(np.where(p > 0, p * np.log2(p), 0) + np.where(p < 1, (1 - p) * np.log2(1 - p), 0))
    return float(np.mean(h))


def _units(t):
    return t.reshape(t.shape[0], t.shape[1], -1)


def _saturation(y, act):
    if act == "sigmoid":
        return float(np.mean((y < 0.01) | (y > 0.99)))
    if act == "tanh":
        return float(np.mean(np.abs(y) > 0.99))
    return math.nan


# Each definition written out in numpy: (slot input x, output y, activation, grad wrt output, grad wrt input),
# arrays of shape (images, ...) for one group of images (a class, or all of them).
REFERENCE = {
    "ratio_num": lambda x, y, a, go, gi: _ratio([np.sum(i < 0) for i in x], [np.sum(i >= 0) for i in x]),
    "ratio_sum": lambda x, y, a, go, gi: _ratio([np.sum(i[i < 0]) for i in x], [np.sum(i[i >= 0]) for i in x]),
    "negative_fraction": lambda x, y, a, go, gi: np.mean(x < 0),
    "mean": lambda x, y, a, go, gi: np.mean(x),
    "std": lambda x, y, a, go, gi: np.std(x),
    "mean_out": lambda x, y, a, go, gi: np.mean(y),
    "std_out": lambda x, y, a, go, gi: np.std(y),
    "sparsity": lambda x, y, a, go, gi: np.mean(y == 0),
    "saturation": lambda x, y, a, go, gi: _saturation(y, a),
    "dead_fraction": lambda x, y, a, go, gi: np.mean(np.max(_units(x), axis=(0, 2)) <= 0),
    "sign_entropy": lambda x, y, a, go, gi: _entropy(np.mean(x >= 0, axis=0)),
    "sign_entropy_channel": lambda x, y, a, go, gi: _entropy(np.mean(_units(x) >= 0, axis=(0, 2))),
    "grad_norm": lambda x, y, a, go, gi: np.mean([np.linalg.norm(g) for g in go]),
    "grad_norm_in": lambda x, y, a, go, gi: np.mean([np.linalg.norm(g) for g in gi]),
    "max_abs": lambda x, y, a, go, gi: np.max(np.abs(y)),
}


def _check_against_numpy(model, x, y, classes, batch_size):
    got = measure(model, x, y, stats=list(STATS), classes=classes, batch_size=batch_size)
    tensors, grads = _slot_tensors(model, x), _slot_grads(model, x, y)
    labels = y.numpy()
    assert set(REFERENCE) == set(STATS), "every registered statistic needs a numpy reference here"
    assert got.counts == [int(np.sum(labels == c)) for c in range(len(classes))]
    for name, ref in REFERENCE.items():
        assert sorted(got.overall[name]) == sorted(tensors)
        for index, (xin, yout, act) in tensors.items():
            gout, gin = grads[index]
            groups = [np.arange(len(labels))] + [np.flatnonzero(labels == c) for c in range(len(classes))]
            values = [got.overall[name][index]] + got.by_class[name][index]
            for members, value in zip(groups, values):
                if len(members) == 0:
                    assert math.isnan(value), (name, index)
                    continue
                expected = ref(xin[members], yout[members], act, gout[members], gin[members])
                assert value == pytest.approx(expected, rel=1e-5, abs=1e-6, nan_ok=True), (name, index, members)


@pytest.mark.parametrize("activation", ["relu", "tanh", "sigmoid"])
def test_every_stat_matches_numpy_dense_per_class_over_uneven_batches(activation):
    torch.manual_seed(0)
    model = build_model(ModelSpec("deep-mlp", activation=activation, widths=[16, 12, 8], init="he_normal",
                                  slots={2: "identity", 3: "leaky_relu"}), (1, 4, 4), 4).eval()
    x = torch.randn(23, 1, 4, 4) * 3  # large inputs: tanh and sigmoid saturate somewhere
    y = torch.tensor([0, 1, 2] * 7 + [0, 1])  # class 3 has no image: its column is NaN
    _check_against_numpy(model, x, y, ["a", "b", "c", "d"], batch_size=5)  # 5 batches, the last one of 3


def test_every_stat_matches_numpy_conv_units_are_channels():
    torch.manual_seed(1)
    model = build_model(ModelSpec("seed-cnn", widths=[3, 3, 4, 4, 4, 4, 5, 5, 5], bn_flavour="torch",
                                  slots={7: "identity", 4: "tanh"}), (1, 32, 32), 3).eval()
    for m in model.modules():  # non-trivial batch-norm statistics, so that eval mode matters
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    x = torch.rand(7, 1, 32, 32)
    y = torch.tensor([0, 1, 2, 0, 1, 2, 2])
    _check_against_numpy(model, x, y, ["x", "y", "z"], batch_size=4)


def _one_slot(act="relu"):
    return nn.Sequential(Slot(1, act))  # the slot's input is the tensor we give it


def test_ratio_denominators_of_zero_are_left_out_and_nan_when_none():
    x = torch.tensor([[-1.0, -2.0, -3.0, -4.0],  # no non-negative entry: neither ratio is defined
                      [0.0, 0.0, -1.0, -1.0],  # ratio_num = 2 / 2; ratio_sum undefined (sum of x >= 0 is 0)
                      [1.0, 3.0, -2.0, 0.0]])  # ratio_num = 1 / 3; ratio_sum = -2 / 4
    y = torch.tensor([0, 1, 1])
    r = measure(_one_slot(), x, y, ["ratio_num", "ratio_sum"])
    assert r.overall["ratio_num"][1] == pytest.approx((1.0 + 1 / 3) / 2)
    assert r.overall["ratio_sum"][1] == pytest.approx(-0.5)
    assert math.isnan(r.by_class["ratio_num"][1][0]) and math.isnan(r.by_class["ratio_sum"][1][0])
    assert r.by_class["ratio_num"][1][1] == pytest.approx((1.0 + 1 / 3) / 2)


def test_dead_units_entropy_and_saturation_on_known_tensors():
    # channel 0 never positive (dead), channel 1 always >= 0, channel 2 positive at one position of one image
    x = torch.zeros(2, 3, 2)
    x[:, 0] = -1.0
    x[:, 1] = 2.0
    x[:, 2] = -1.0
    x[1, 2, 0] = 5.0
    r = measure(_one_slot(), x, None, ["dead_fraction", "sign_entropy", "sign_entropy_channel", "ratio_num"])
    assert r.overall["dead_fraction"][1] == pytest.approx(1 / 3)
    # per position: p = 0, 0 | 1, 1 | 0.5, 0 -> H = 0, 0, 0, 0, 1, 0
    assert r.overall["sign_entropy"][1] == pytest.approx(1 / 6)
    # per channel: p = 0, 1, 0.25
    h = -(0.25 * math.log2(0.25) + 0.75 * math.log2(0.75))
    assert r.overall["sign_entropy_channel"][1] == pytest.approx(h / 3)
    assert r.overall["ratio_num"][1] == pytest.approx((4 / 2 + 3 / 3) / 2)  # near 1, yet entropy near 0
    t = torch.tensor([[-10.0, 0.0, 10.0, 2.0]])
    assert measure(_one_slot("tanh"), t, None, ["saturation"]).overall["saturation"][1] == pytest.approx(0.5)
    assert measure(_one_slot("sigmoid"), t, None, ["saturation"]).overall["saturation"][1] == pytest.approx(0.5)
    assert math.isnan(measure(_one_slot("relu"), t, None, ["saturation"]).overall["saturation"][1])


def test_relu_sparsity_is_exact_zeros_and_tanh_has_none():
    torch.manual_seed(1)
    relu = build_model(ModelSpec("deep-mlp", widths=[32, 32]), (1, 8, 8), 10)
    tanh = build_model(ModelSpec("deep-mlp", activation="tanh", widths=[32, 32]), (1, 8, 8), 10)
    x = torch.randn(64, 1, 8, 8)
    assert 0.2 < probe(relu, x)["sparsity"][1] < 0.8
    assert probe(tanh, x)["sparsity"] == {1: 0.0, 2: 0.0}


def test_probe_removes_its_hooks_restores_the_mode_and_leaves_gradients_alone():
    model = build_model(ModelSpec("deep-mlp", widths=[8]), (1, 4, 4), 2).train()
    probe(model, torch.randn(5, 1, 4, 4), torch.tensor([0, 1, 0, 1, 1]), stats=["grad_norm", "sparsity"])
    assert model.training
    assert all(not s._forward_hooks for s in model.slots)
    assert all(p.grad is None for p in model.parameters())


def test_unknown_stat_names_the_field_and_gradients_need_labels():
    model = build_model(ModelSpec("deep-mlp", widths=[8]), (1, 4, 4), 2)
    with pytest.raises(UserError, match="probes: unknown value 'sparsty'.*did you mean 'sparsity'"):
        probe(model, torch.randn(2, 1, 4, 4), stats=["sparsty"])
    with pytest.raises(UserError, match="probes: grad_norm needs the probe images' labels"):
        measure(model, torch.randn(2, 1, 4, 4), stats=["grad_norm"])
    # the per-epoch entry point must not stop a training run: without labels the gradient statistics are NaN
    lenient = probe(model, torch.randn(2, 1, 4, 4), stats=["grad_norm", "sparsity"])
    assert math.isnan(lenient["grad_norm"][1]) and 0 <= lenient["sparsity"][1] <= 1
    with pytest.raises(UserError, match="probe.stats: unknown value 'ratio'"):
        parse_stats("ratio_num,ratio")
    assert parse_stats("all") == list(STATS) and parse_stats("std, mean") == ["std", "mean"]


def test_probe_sets():
    splits = load_data(DataSpec("digits"))
    x, y = select_probe_set(splits, parse_probe_set("first"))
    assert y.tolist() == list(range(10))
    first = [int(torch.nonzero(splits.y_train == c)[0]) for c in range(10)]
    assert torch.equal(x, splits.x_train[first])
    x, y = select_probe_set(splits, parse_probe_set("per-class:3"))
    assert y.tolist() == sorted(list(range(10)) * 3)
    x, y = select_probe_set(splits, parse_probe_set("val:50"))
    assert torch.equal(x, splits.x_val[:50]) and torch.equal(y, splits.y_val[:50])
    assert parse_probe_set("per-class:2").name == "per-class:2" and ProbeSet("first").name == "first"
    for bad in ("all", "val:0", "per-class", "val:x", ""):
        with pytest.raises(UserError, match="probe.probe_set: expected first, per-class:N or val:N"):
            parse_probe_set(bad)


def test_class_table_is_the_seeds_layout_and_relu_count_sizes():
    torch.manual_seed(0)
    model = build_model(ModelSpec("deep-mlp", widths=[8, 6]), (1, 4, 4), 3)
    r = measure(model, torch.randn(6, 1, 4, 4), torch.tensor([0, 1, 2, 0, 1, 2]), ["ratio_num"],
                classes=["a", "b", "c"])
    header, rows = class_table(r, "ratio_num")
    assert header == ["slot", "a", "b", "c", "average"]
    assert [row[0] for row in rows] == [1, 2] and rows[0][-1] == r.overall["ratio_num"][1]
    assert len(r.rows()) == 2 * 4
    cnn = build_model(ModelSpec("seed-cnn"), (3, 32, 32), 10)
    sizes = slot_output_sizes(cnn, (3, 32, 32))
    assert sizes == {1: 30 * 30 * 48, 2: 28 * 28 * 48, 3: 26 * 26 * 96, 4: 24 * 24 * 96, 5: 22 * 22 * 96,
                     6: 20 * 20 * 96, 7: 8 * 8 * 192, 8: 6 * 6 * 192, 9: 192, 10: 10}


def test_slot_probe_measures_the_initialised_model_as_epoch_0_and_resumes_with_it():
    """Seed 002's premise is about the network as initialised: the per-epoch probe measures before training too
    (epoch 0), on the very weights training starts from, and a resumed run keeps those numbers."""
    import copy

    from relulab.probes.callbacks import SlotProbe
    from relulab.training.loop import train_model
    from relulab.training.specs import TrainSpec

    torch.manual_seed(0)
    splits = load_data(DataSpec("digits"))
    model = build_model(ModelSpec("bn-mlp", widths=[16] * 8, activation="selu", init="lecun_uniform"),
                        splits.input_shape, splits.num_classes)
    before = copy.deepcopy(model)
    stats = ["mean_out", "std_out"]
    callback = SlotProbe(splits.x_val[:64], stats, splits.y_val[:64])
    history = train_model(model, splits, TrainSpec(epochs=2, batch_size=64), seed=0, callbacks=[callback])
    assert sorted(callback.by_epoch) == [0, 1, 2] and [e.epoch for e in history.epochs] == [1, 2]
    assert callback.by_epoch[0] == probe(before, splits.x_val[:64], splits.y_val[:64], stats=stats)
    assert callback.by_epoch[2] == probe(model, splits.x_val[:64], splits.y_val[:64], stats=stats)
    assert set(callback.by_epoch[0]["std_out"]) == set(range(1, 9))
    resumed = SlotProbe(splits.x_val[:64], stats, splits.y_val[:64])
    resumed.restore(callback.state())
    assert resumed.by_epoch == callback.by_epoch


def test_statistics_across_images_are_marked_degenerate_on_one_image_per_class():
    """On the `first` probe set (one image per class) sign entropy is 0 by its definition and dead_fraction
    means "not positive on this image": such cells are not data. Statistics of one image (std over its
    entries, ratios) are."""
    from relulab.probes.statistics import degenerate, degenerate_columns, degenerate_text

    splits = load_data(DataSpec("digits"))
    torch.manual_seed(0)
    model = build_model(ModelSpec("deep-mlp", widths=[16, 16]), splits.input_shape, splits.num_classes)
    x, y = select_probe_set(splits, parse_probe_set("first"))
    r = measure(model, x, y, ["sign_entropy", "dead_fraction", "std", "ratio_num"], classes=splits.classes)
    assert all(v == 0 for v in r.by_class["sign_entropy"][1])  # fixed by the definition: not a measurement
    assert r.overall["sign_entropy"][1] > 0  # over the ten images together it is one
    for stat in ("sign_entropy", "sign_entropy_channel", "dead_fraction"):
        assert degenerate_columns(r, stat) == [True] * 10 + [False] if stat in r.by_class else degenerate(stat, 1)
    for stat in ("std", "ratio_num", "mean_out", "max_abs"):
        assert not degenerate(stat, 1)
    assert not degenerate("sign_entropy", 0) and not degenerate("sign_entropy", 2)  # empty: NaN; two: data
    assert degenerate_text(1) == "n/a (1 image)"
