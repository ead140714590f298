"""The built-in CIFAR networks: the published parameter counts, slots in forward order, switching one off, the
literature's initialization, and the errors for input they cannot take."""
import math

import pytest
import torch
from torch import nn

from relulab.core.errors import UserError
from relulab.data import DataSpec, Splits
from relulab.probes.statistics import probe
from relulab.training.loop import train_model
from relulab.training.specs import Job, RunSpec, TrainSpec
from relulab.packing.rules import cnn_stack_key, functional_stack_key, pack_key, stack_key
from relulab.zoo import cifar_nets
from relulab.zoo.models import MODELS, ModelSpec, Slot, build_model

# Parameters for 32x32x3 input and 10 classes, counted as sum(p.numel()) (trainable parameters, no BN statistics).
# resnet20: He et al. 2016, Table 6, "0.27M". With option A shortcuts (no parameters) it is 269,722; the
#   272,474 sometimes quoted is option B's: the two 1x1 projections and their batch norms add 2,752
#   (test_option_b_is_the_other_published_count).
# resnet18-cifar: kuangliu/pytorch-cifar's ResNet18, "11.17M" (11,173,962).
# vgg16-bn: kuangliu/pytorch-cifar's VGG('VGG16'), a single Linear(512, 10) head: 14,728,266.
PUBLISHED = {"resnet20": 269_722, "resnet18-cifar": 11_173_962, "vgg16-bn": 14_728_266}
SLOTS = {"resnet20": 19, "resnet18-cifar": 17, "vgg16-bn": 13}
NETS = sorted(PUBLISHED)


def params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def build(name: str, shape=(3, 32, 32), classes: int = 10, seed: int = 0, **spec) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(ModelSpec(name, **spec), shape, classes).eval()


@pytest.mark.parametrize("name", NETS)
def test_parameter_counts_are_the_published_ones(name):
    assert params(build(name)) == PUBLISHED[name]


def test_option_b_is_the_other_published_count():
    net = cifar_nets.CifarResNet(3, 10, cifar_nets.RESNET20_WIDTHS, cifar_nets.RESNET20_BLOCKS,
                                 lambda i: nn.ReLU(), nn.BatchNorm2d, shortcut="conv")
    assert params(net) == 272_474
    assert params(cifar_nets.PadShortcut(16, 32, 2)) == 0


@pytest.mark.parametrize("name", NETS)
def test_slots_are_numbered_in_the_order_forward_meets_them(name):
    model = build(name)
    assert [s.index for s in model.slots] == list(range(1, SLOTS[name] + 1))
    met = []
    handles = [s.register_forward_hook(lambda slot, i, o: met.append(slot.index)) for s in model.slots]
    model(torch.zeros(2, 3, 32, 32))
    for h in handles:
        h.remove()
    assert met == list(range(1, SLOTS[name] + 1))
    assert model.placement() == ["relu"] * SLOTS[name]


RESNET20_NAMES = ["stem.relu"] + [f"layer{stage}.{block}.relu{k}" for stage in (1, 2, 3) for block in (0, 1, 2)
                                    for k in (1, 2)]


def test_slot_names_are_the_module_paths_in_forward_order():
    names = {name: [s.name for s in build(name).slots] for name in NETS}
    assert names["resnet20"] == RESNET20_NAMES
    assert names["resnet18-cifar"][:3] == ["stem.relu", "layer1.0.relu1", "layer1.0.relu2"]
    assert names["resnet18-cifar"][-1] == "layer4.1.relu2"
    assert names["vgg16-bn"] == [f"features.conv{n}.relu" for n in range(1, 14)]
    for name in NETS:  # each name is where the slot sits in the net's code, and finds it
        model = build(name)
        net = model.body[0]
        for s in model.slots:
            assert net.get_submodule(s.name) is s and model.slot(s.name) is s
    assert dict(build("vgg16-bn").body[0].features.named_children())["pool2"].kernel_size == 2


@pytest.mark.parametrize("name, channels, classes", [("resnet20", 1, 7), ("resnet18-cifar", 3, 10),
                                                     ("vgg16-bn", 1, 3)])
def test_a_forward_pass_gives_one_row_of_logits_per_image(name, channels, classes):
    model = build(name, (channels, 32, 32), classes)
    assert model(torch.randn(4, channels, 32, 32)).shape == (4, classes)
    assert build(name, (channels, 40, 48), classes)(torch.randn(2, channels, 40, 48)).shape == (2, classes)


# (slot, the module that holds it in the net): slot 4 of resnet20 is stage 1, block 2's first activation;
# slot 17 of resnet18-cifar is the last block's activation after the sum; slot 6 of vgg16-bn is the sixth conv's.
BY_HAND = {"resnet20": (4, lambda net: (net.layer1[1], "relu1")),
           "resnet18-cifar": (17, lambda net: (net.layer4[1], "relu2")),
           "vgg16-bn": (6, lambda net: (net.features.conv6, "relu"))}


@pytest.mark.parametrize("name", NETS)
def test_switching_a_slot_off_changes_exactly_that_activation(name):
    index, where = BY_HAND[name]
    x = torch.randn(3, 3, 32, 32)
    off = build(name, seed=1, slots={index: "identity"})
    by_hand = build(name, seed=1)
    parent, attr = where(by_hand.body[0])
    assert isinstance(getattr(parent, attr), Slot) and getattr(parent, attr).index == index
    setattr(parent, attr, nn.Identity())
    torch.testing.assert_close(off(x), by_hand(x), rtol=0, atol=0)
    assert off.slot(index).off and not off.slot(index - 1).off
    assert not torch.allclose(build(name, seed=1)(x), off(x))  # the slot mattered


def test_literature_initialization_by_default():
    model = build("resnet18-cifar")
    conv = model.body[0].layer4[1].conv2  # 512 x 512 x 3 x 3
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / (512 * 9)), rel=0.01)  # He normal, fan_out
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(bool((b.weight == 1).all() and (b.bias == 0).all()) for b in bns)
    assert all(b.momentum == pytest.approx(0.1) and b.eps == pytest.approx(1e-5) for b in bns)  # PyTorch's
    fc = model.body[0].fc  # PyTorch's default Linear: U(-1/sqrt(512), 1/sqrt(512)) for weight and bias
    assert fc.weight.abs().max().item() <= 1 / math.sqrt(512) and fc.bias.abs().max().item() > 0
    vgg_convs = [m for m in build("vgg16-bn").modules() if isinstance(m, nn.Conv2d)]
    assert all(bool((c.bias == 0).all()) for c in vgg_convs)


def test_init_fields_apply_as_for_seed_cnn_when_given():
    model = build("resnet18-cifar", init="he_uniform", output_init="zeros")
    conv = model.body[0].layer4[1].conv2
    assert conv.weight.var().item() == pytest.approx(2 / (512 * 9), rel=0.02)  # he_uniform: var 2 / fan_in
    assert conv.weight.abs().max().item() <= math.sqrt(6 / (512 * 9))
    fc = model.body[0].fc
    assert bool((fc.weight == 0).all() and (fc.bias == 0).all())
    vgg = build("vgg16-bn", bias_init="constant:0.1")
    first = vgg.body[0].features.conv1.conv
    assert bool((first.bias == 0.1).all()) and first.weight.std().item() == pytest.approx(
        math.sqrt(2 / (64 * 9)), rel=0.1)  # bias given, kernels still the literature's


@pytest.mark.parametrize("name", NETS)
def test_input_they_cannot_take_is_a_user_error(name):
    with pytest.raises(UserError, match=r"data.image_size: .* at least 32x32, got 8x8"):
        build_model(ModelSpec(name), (1, 8, 8), 10)
    with pytest.raises(UserError, match="needs image input"):
        build_model(ModelSpec(name), (64,), 10)
    with pytest.raises(UserError, match=rf"model.slots: {name} has slots 1..{SLOTS[name]}"):
        build_model(ModelSpec(name, slots={SLOTS[name] + 1: "identity"}), (3, 32, 32), 10)
    with pytest.raises(UserError, match="model.batchnorm"):
        build_model(ModelSpec(name, batchnorm=False), (3, 32, 32), 10)
    with pytest.raises(UserError, match=f"model.widths: {name} takes"):
        build_model(ModelSpec(name, widths=[8, 8]), (3, 32, 32), 10)


def test_widths_set_the_stage_widths():
    model = build("resnet20", widths=[8, 16, 32])
    assert model.body[0].fc.in_features == 32 and len(model.slots) == 19
    with pytest.raises(UserError, match="option A shortcuts can only add channels"):
        build_model(ModelSpec("resnet20", widths=[16, 8, 32]), (3, 32, 32), 10)


def test_registered_to_train_alone_in_bf16_on_cuda():
    for name in NETS:
        assert MODELS[name].packs == "vmap" and MODELS[name].conv
        job = Job(RunSpec(model=ModelSpec(name)), 0)
        assert stack_key(job) is None and cnn_stack_key(job) is None
        assert pack_key(job, torch.device("cpu")) is None  # on the CPU: each run through training.loop alone


def test_resnet20_trains_and_probes():
    torch.manual_seed(0)
    x, y = torch.randn(32, 1, 32, 32), torch.arange(32) % 4
    splits = Splits(x, y, x[:8], y[:8], x[:8], y[:8], [str(i) for i in range(4)], False, "test", DataSpec())
    model = build_model(ModelSpec("resnet20", slots={3: "identity"}), splits.input_shape, 4)
    history = train_model(model, splits, TrainSpec(epochs=1, batch_size=16))
    assert len(history.epochs) == 1 and math.isfinite(history.epochs[0].train_loss)
    sparsity = probe(model, x[:8], stats=["sparsity"])["sparsity"]
    assert sorted(sparsity) == list(range(1, 20)) and sparsity[3] == 0.0  # an identity slot has no zeros
