import torch

from relulab.training.checkpoints import state_to_cpu


def test_a_state_dict_comes_to_the_cpu_whole_and_unshared():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4)).to(torch.float64)
    state = model.state_dict()  # float64 weights and statistics, an int64 0-d counter
    copied = state_to_cpu(state)
    assert list(copied) == list(state)
    for name, tensor in state.items():
        assert copied[name].dtype == tensor.dtype and torch.equal(copied[name], tensor)
    copied["0.weight"].add_(1.0)  # a copy, not the model's own tensor, nor a view of a shared buffer
    assert not torch.equal(copied["0.weight"], state["0.weight"])
    assert torch.equal(copied["0.bias"], state["0.bias"])
