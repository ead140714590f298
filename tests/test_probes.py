"""Each probe statistic against a plain numpy computation of its definition."""
import numpy as np
import pytest
import torch

from relulab.errors import UserError
from relulab.models import ModelSpec, Slot, build_model
from relulab.probes import STATS, probe


def _slot_tensors(model, x):
    """(input, output) of every slot, recorded the plain way: one forward pass, layer by layer."""
    seen = {}
    h = x
    with torch.no_grad():
        for layer in model.body:
            out = layer(h)
            if isinstance(layer, Slot):
                seen[layer.index] = (h.numpy().astype(np.float64), out.numpy().astype(np.float64))
            h = out
    return seen


REFERENCE = {
    "sparsity": lambda x, y: np.mean(y == 0),
    "negative_fraction": lambda x, y: np.mean(x < 0),
    "mean": lambda x, y: np.mean(y),
    "max_abs": lambda x, y: np.max(np.abs(y)),
}


@pytest.mark.parametrize("activation", ["relu", "tanh", "leaky_relu"])
def test_every_stat_matches_numpy_over_uneven_batches(activation):
    torch.manual_seed(0)
    model = build_model(ModelSpec("deep-mlp", activation=activation, widths=[16, 12, 8], init="he_normal",
                                  slots={2: "identity"}), (1, 4, 4), 3).eval()
    x = torch.randn(53, 1, 4, 4)
    got = probe(model, x, stats=list(STATS), batch_size=10)  # 6 batches, the last one of 3
    expected = _slot_tensors(model, x)
    assert set(REFERENCE) == set(STATS), "every registered statistic needs a numpy reference here"
    for name, ref in REFERENCE.items():
        assert sorted(got[name]) == [1, 2, 3]
        for index, (xin, yout) in expected.items():
            assert got[name][index] == pytest.approx(ref(xin, yout), abs=1e-6), (name, index)


def test_relu_sparsity_is_exact_zeros_and_tanh_has_none():
    torch.manual_seed(1)
    relu = build_model(ModelSpec("deep-mlp", widths=[32, 32]), (1, 8, 8), 10)
    tanh = build_model(ModelSpec("deep-mlp", activation="tanh", widths=[32, 32]), (1, 8, 8), 10)
    x = torch.randn(64, 1, 8, 8)
    assert 0.2 < probe(relu, x)["sparsity"][1] < 0.8
    assert probe(tanh, x)["sparsity"] == {1: 0.0, 2: 0.0}


def test_probe_removes_its_hooks_and_restores_the_mode():
    model = build_model(ModelSpec("deep-mlp", widths=[8]), (1, 4, 4), 2).train()
    probe(model, torch.randn(5, 1, 4, 4))
    assert model.training
    assert all(not s._forward_hooks for s in model.slots)


def test_unknown_stat_names_the_field():
    model = build_model(ModelSpec("deep-mlp", widths=[8]), (1, 4, 4), 2)
    with pytest.raises(UserError, match="probes: unknown value 'sparsty'.*did you mean 'sparsity'"):
        probe(model, torch.randn(2, 1, 4, 4), stats=["sparsty"])
