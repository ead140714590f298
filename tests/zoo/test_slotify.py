"""slotify: slots in models written the way users write them, checked against hand-edited copies of the models;
describe's counts against counts by hand; probes on a slotified model against numpy."""
import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import relulab
from relulab.core.errors import UserError
from relulab.data import DataSpec, load_data
from relulab.probes.statistics import measure, slot_output_sizes
from relulab.training.loop import train_model
from relulab.training.specs import TrainSpec
from relulab.zoo.activations import (ACTIVATIONS, TORCH_FUNCTIONS, TORCH_METHODS, TORCH_MODULES, get_activation,
                                     module_activation)
from relulab.zoo.models import SlottedModel
from relulab.zoo.optim import OptimizerSpec
from relulab.zoo.slotify import describe, slotify


class BasicBlock(nn.Module):
    """torchvision's BasicBlock: one `self.relu`, used twice."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + x)


class TinyResNet(nn.Module):
    def __init__(self, channels: int = 4, classes: int = 3, block=BasicBlock):
        super().__init__()
        self.conv1 = nn.Conv2d(3, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = nn.Sequential(block(channels), block(channels))
        self.fc = nn.Linear(channels, classes)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer1(x)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class BlockWithoutItsSecondReLU(BasicBlock):
    """BasicBlock by hand with the ReLU after the addition removed."""

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        return self.bn2(self.conv2(out)) + x


class Head(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        return self.fc(F.gelu(x))


class FunctionalNet(nn.Module):
    """Activations as calls: F.relu, torch.relu, x.relu(), F.leaky_relu with its slope, and one in a submodule."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.fc3, self.fc4 = nn.Linear(5, 6), nn.Linear(6, 6), nn.Linear(6, 6), nn.Linear(6, 6)
        self.head = Head()

    def forward(self, x):
        x = F.relu(self.fc1(x))
        x = torch.relu(self.fc2(x))
        x = self.fc3(x).relu()
        x = F.leaky_relu(self.fc4(x), 0.2)
        return self.head(x)


class FunctionalNetWithTanh(FunctionalNet):
    """FunctionalNet by hand with x.relu() made torch.tanh."""

    def forward(self, x):
        x = F.relu(self.fc1(x))
        x = torch.relu(self.fc2(x))
        x = torch.tanh(self.fc3(x))
        x = F.leaky_relu(self.fc4(x), 0.2)
        return self.head(x)


class GeluMLP(nn.Module):
    def __init__(self, widths=(5, 8, 8, 4)):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths, widths[1:]))
        self.acts = nn.ModuleList(nn.GELU() for _ in widths[2:])

    def forward(self, x):
        for layer, act in zip(self.layers, self.acts):
            x = act(layer(x))
        return self.layers[-1](x)


class Gated(nn.Module):
    """A decision on the data: torch.fx cannot trace it."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.act = nn.ReLU()

    def forward(self, x):
        if x.sum() > 0:
            return self.act(self.fc(x))
        return self.fc(x)


class Untraceable(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(4, 4)
        self.relu = nn.ReLU()
        self.gate = Gated()
        self.out = nn.Linear(4, 2)

    def forward(self, x):
        return self.out(self.gate(self.relu(self.inp(x))))


def _image(n=4):
    return torch.randn(n, 3, 6, 6, generator=torch.Generator().manual_seed(1))


def _vector(n=4, width=5):
    return torch.randn(n, width, generator=torch.Generator().manual_seed(2))


def _trained_bn(model):
    """Batch norm statistics that are not the initial ones, so that eval mode computes something particular."""
    model.train()
    with torch.no_grad():
        model(_image(16))
    return model.eval()


SEQUENTIAL = nn.Sequential(nn.Linear(5, 6), nn.ReLU(), nn.Linear(6, 6), nn.Tanh(), nn.Linear(6, 2))
CASES = [
    (TinyResNet, _image, ["relu", "layer1.0.relu", "layer1.0.relu#2", "layer1.1.relu", "layer1.1.relu#2"]),
    (FunctionalNet, _vector, ["F.relu", "torch.relu", ".relu()", "F.leaky_relu", "head:F.gelu"]),
    (lambda: copy.deepcopy(SEQUENTIAL), _vector, ["1", "3"]),
    (GeluMLP, _vector, ["acts.0", "acts.1"]),
]


@pytest.mark.parametrize("build,example,names", CASES)
def test_the_slots_are_the_activation_uses_in_forward_order(build, example, names):
    torch.manual_seed(0)
    model = build().eval()
    slotted = slotify(model, example())
    assert [s.name for s in slotted.slots] == names
    assert [s.index for s in slotted.slots] == list(range(1, len(names) + 1))
    assert isinstance(slotted, SlottedModel) and isinstance(slotted, type(model))
    with torch.no_grad():
        torch.testing.assert_close(slotted(example(7)), model(example(7)))


def test_slots_say_what_each_use_computes():
    torch.manual_seed(0)
    slotted = slotify(FunctionalNet(), _vector())
    assert slotted.placement() == ["relu", "relu", "relu", "leaky_relu:0.2", "gelu"]
    mixed = nn.Sequential(nn.Linear(5, 5), nn.GELU(approximate="tanh"), nn.ELU(0.5), nn.Sigmoid())
    # tanh-approximate GELU is not the registry's gelu: it stays the model's own layer, not a slot
    assert [(s.name, s.spec) for s in slotify(mixed, _vector()).slots] == [("2", "elu:0.5"), ("3", "sigmoid")]


def test_the_model_given_is_left_as_it_was():
    model = TinyResNet()
    before = copy.deepcopy(model.state_dict())
    slotify(model, _image())
    assert not any(type(m).__name__ == "Slot" for m in model.modules()) and type(model) is TinyResNet
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_state_dict_keys_are_the_originals_so_weights_load():
    torch.manual_seed(0)
    trained = _trained_bn(TinyResNet())
    torch.manual_seed(1)
    other = slotify(TinyResNet(), _image())
    assert list(other.state_dict()) == list(trained.state_dict())
    other.load_state_dict(trained.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(other.eval()(_image(5)), trained(_image(5)))


def test_switching_a_shared_modules_second_use_off_changes_exactly_that_use():
    torch.manual_seed(0)
    model = _trained_bn(TinyResNet())
    slotted = slotify(model, _image())
    edited = TinyResNet()
    edited.layer1[0] = BlockWithoutItsSecondReLU(4)
    edited.load_state_dict(model.state_dict())
    slotted.slot("layer1.0.relu#2").set("identity")
    assert slotted.slot(3).off and [s.off for s in slotted.slots] == [False, False, True, False, False]
    x = _image(6)
    with torch.no_grad():
        out, want, before = slotted.eval()(x), edited.eval()(x), model(x)
    torch.testing.assert_close(out, want)
    assert not torch.allclose(out, before)  # the edit changes the output: the comparison can fail


def test_setting_a_slot_to_tanh_equals_the_model_edited_by_hand():
    torch.manual_seed(0)
    model = FunctionalNet()
    slotted = slotify(model, _vector())
    edited = FunctionalNetWithTanh()
    edited.load_state_dict(model.state_dict())
    slotted.set_slots({".relu()": "tanh"})
    assert slotted.placement()[2] == "tanh"
    with torch.no_grad():
        out, want = slotted(_vector(9)), edited(_vector(9))
    torch.testing.assert_close(out, want)
    assert not torch.allclose(out, model(_vector(9)))


def test_train_mode_computes_what_the_model_computes():
    torch.manual_seed(0)
    model = TinyResNet().train()
    slotted = slotify(model, _image()).train()
    x = _image(8)
    torch.testing.assert_close(slotted(x), model(x))  # batch statistics of this batch, dropout-free


class InPlace(nn.Module):
    """Activations that overwrite their input, which the code then reads under the input's name."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(5, 5), nn.Linear(5, 5)

    def forward(self, x):
        y = self.fc1(x)
        y.relu_()
        z = self.fc2(y)
        w = F.relu(z, inplace=True)
        return w + z


def test_in_place_activations_keep_their_meaning():
    torch.manual_seed(0)
    model = InPlace()
    slotted = slotify(model, _vector())
    assert [s.name for s in slotted.slots] == [".relu_()", "F.relu"]
    with torch.no_grad():
        torch.testing.assert_close(slotted(_vector(9)), model(_vector(9)))
        slotted.slot(2).set("tanh")
        z = model.fc2(model.fc1(_vector(9)).relu())
        torch.testing.assert_close(slotted(_vector(9)), 2 * torch.tanh(z))


def test_a_model_without_activations_is_an_error():
    with pytest.raises(UserError, match="Sequential has no activation relulab can slot"):
        slotify(nn.Sequential(nn.Linear(5, 3), nn.Linear(3, 2)), _vector())


def test_an_untraceable_model_names_the_module_and_line_and_offers_the_fallback():
    with pytest.raises(UserError) as error:
        slotify(Untraceable(), _vector(width=4))
    message = str(error.value)
    assert "\n" not in message and "module 'gate'" in message and "if x.sum() > 0:" in message
    assert "trace=False" in message
    torch.manual_seed(0)
    model = Untraceable()
    fallback = slotify(model, _vector(width=4), trace=False)
    assert [s.name for s in fallback.slots] == ["relu", "gate.act"]
    x = _vector(5, 4)
    with torch.no_grad():
        torch.testing.assert_close(fallback(x), model(x))
        fallback.slot("relu").set("identity")
        assert not torch.allclose(fallback(x), model(x))


def test_the_fallback_keeps_a_shared_module_one_slot():
    torch.manual_seed(0)
    model = TinyResNet()
    fallback = slotify(model, _image(), trace=False)
    assert [s.name for s in fallback.slots] == ["relu", "layer1.0.relu", "layer1.1.relu"]
    assert list(fallback.state_dict()) == list(model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(fallback.eval()(_image()), model.eval()(_image()))
    # its ReLU count counts both uses
    assert slot_output_sizes(fallback, (3, 6, 6)) == {1: 144, 2: 288, 3: 288}


def test_slots_by_number_and_name_and_the_errors():
    slotted = slotify(GeluMLP(), _vector())
    assert slotted.slot(2) is slotted.slot("acts.1")
    with pytest.raises(UserError, match="slot: unknown value 'acts.2' \\(did you mean 'acts.1'\\?\\)"):
        slotted.slot("acts.2")
    with pytest.raises(UserError, match="slot 3: the model has slots 1..2"):
        slotted.slot(3)
    with pytest.raises(UserError, match="model.slots.acts.0: unknown value 'relux'"):
        slotted.set_slots({"acts.0": "relux"})


def test_a_copy_is_a_model_of_its_own():
    slotted = slotify(TinyResNet(), _image())
    twin = copy.deepcopy(slotted)
    twin.slot(1).set("tanh")
    assert slotted.slot(1).spec == "relu" and twin.slot(1).spec == "tanh"
    with torch.no_grad():
        assert not torch.allclose(twin.eval()(_image()), slotted.eval()(_image()))


def test_probe_statistics_of_a_slotified_model_match_numpy():
    """ratio_num and mean at the shared module's second use, against its input recorded on the original model."""
    torch.manual_seed(0)
    model = _trained_bn(TinyResNet())
    x, y = _image(12), torch.arange(12) % 3
    calls = []
    handle = model.layer1[0].relu.register_forward_pre_hook(lambda m, inputs: calls.append(inputs[0].clone()))
    with torch.no_grad():
        model(x)
    handle.remove()
    pre = calls[1].reshape(len(x), -1).numpy().astype(np.float64)  # the second use's input
    slotted = slotify(model, x)
    result = measure(slotted, x, y, stats=["ratio_num", "mean"], classes=["a", "b", "c"])
    index = slotted.slot("layer1.0.relu#2").index
    assert result.slots == [1, 2, 3, 4, 5]
    ratio = ((pre < 0).sum(1) / (pre >= 0).sum(1)).mean()
    assert result.overall["ratio_num"][index] == pytest.approx(ratio, rel=1e-6)
    assert result.overall["mean"][index] == pytest.approx(pre.mean(), rel=1e-5, abs=1e-7)
    for c in range(3):
        assert result.by_class["mean"][index][c] == pytest.approx(pre[y.numpy() == c].mean(), rel=1e-5, abs=1e-7)


def test_the_training_loop_trains_a_slotified_model():
    splits = load_data(DataSpec("synthetic", options={"n": 120, "classes": 3, "size": 4}))
    torch.manual_seed(0)
    model = slotify(nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3)),
                    torch.zeros(1, *splits.input_shape))
    model.slot(1).set("tanh")
    before = copy.deepcopy(model.state_dict())
    history = train_model(model, splits, TrainSpec(epochs=2, batch_size=32, optimizer=OptimizerSpec("sgd", 0.1)))
    assert len(history.epochs) == 2 and history.test_acc is not None
    assert not torch.equal(before["1.weight"], model.state_dict()["1.weight"])
    assert model.input_shape == tuple(splits.input_shape) and model.num_classes == 3


def test_describe_counts_slots_parameters_and_macs():
    torch.manual_seed(0)
    report = describe(TinyResNet(channels=4, classes=3), _image(2))
    assert report.model == "TinyResNet" and report.input_shape == [3, 6, 6]
    assert [(s.name, s.shape, s.elements, s.uses) for s in report.slots] == [
        (name, [4, 6, 6], 144, 1) for name in CASES[0][2]]
    assert report.activation_elements == 5 * 144
    convs = 3 * 4 * 9 + 4 * (4 * 4 * 9)  # stem weights + four 3x3 convs, no biases
    assert report.parameters == convs + 5 * 2 * 4 + (4 * 3 + 3)  # convs, five batch norms (weight, bias), fc
    # every conv output element (4 x 6 x 6 of them) costs in_channels x 9 products; the fc 4 x 3
    assert report.macs == 144 * 3 * 9 + 4 * 144 * 4 * 9 + 4 * 3
    assert report.flops == 2 * report.macs
    assert report.to_dict()["activation_elements"] == 720


def test_describe_takes_a_slotnet_as_it_is():
    from relulab.zoo.models import ModelSpec, build_model

    model = build_model(ModelSpec("deep-mlp", widths=[8, 6]), (1, 4, 4), 3)
    report = describe(model, torch.zeros(1, 1, 4, 4))
    assert report.model == "deep-mlp" and [(s.index, s.elements) for s in report.slots] == [(1, 8), (2, 6)]
    assert report.parameters == 16 * 8 + 8 + 8 * 6 + 6 + 6 * 3 + 3 and report.macs == 16 * 8 + 8 * 6 + 6 * 3


def test_the_torch_spellings_compute_the_registry_activations():
    """Every module class and call that slotify takes for a registry activation computes that activation."""
    x = torch.linspace(-4, 4, 41)
    for cls, spelling in TORCH_MODULES.items():
        module = cls()
        torch.testing.assert_close(get_activation(module_activation(module))(x), module(x), msg=str(cls))
    for name, (fn, spelling) in TORCH_FUNCTIONS.items():
        torch.testing.assert_close(get_activation(spelling.name)(x), fn(x.clone()), msg=name)
    for method, spelling in TORCH_METHODS.items():
        torch.testing.assert_close(get_activation(spelling.name)(x), getattr(x.clone(), method)(), msg=method)
    assert {s.name for s in TORCH_MODULES.values()} == set(ACTIVATIONS) - {"prelu", "identity"}


def test_slotify_is_relulabs_api():
    assert relulab.slotify is slotify and relulab.describe is describe
