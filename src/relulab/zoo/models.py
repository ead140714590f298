"""The sources' models, built from a `ModelSpec`, with every activation a named, switchable slot.

- `deep-mlp` (seed 001): Dense 300, 49 x Dense 100, Dense 10; each hidden Dense is
  followed by its slot.
- `bn-mlp` (seed 002): Dense 512 + slot, then 50 x [BatchNorm, Dense 256 + slot],
  BatchNorm, Dense 10; the batch norms are optional.
- `seed-cnn` (seed 000): nine 3x3 valid convs and a 1x1 conv to the classes, each
  followed by its slot and then BatchNorm, max-pools after convs 6 and 8.
- `resnet20`, `resnet18-cifar`, `vgg16-bn`: the literature's CIFAR networks (relulab.zoo.cifar_nets), each
  activation a slot; built with the literature's initialization and batch norm unless the spec says otherwise
  (`build_cifar_net`).
- `python`: the user's own network by reference (`target: "nets.py:build"`), built by the user's code and
  slotified (relulab.zoo.reference registers it).

`MODELS` is the registry: name -> `ModelEntry`, which holds the builder and what the rest of
relulab decides by model (how it packs with others, whether it is convolutional). Adding a model
is writing its builder and adding its entry.

Slots are numbered from 1 in the order the data meets them, as in the seed's tables.
`SlottedModel` is what the rest of relulab needs of a model with slots (the slots in order, one by number or
name, the placement, the input shape): SlotNet is one, and relulab.zoo.slotify makes one of any nn.Module.
Models return logits; the loss applies the softmax (same maths as Keras' softmax
layer + cross-entropy). `keras_param_count` counts what Keras' summary counts
(BatchNorm's running mean and variance included).
"""
from __future__ import annotations

import copy
import json
import math
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from typing import Callable, Optional

import torch
from torch import nn

import relulab.zoo.cifar_nets as cifar_nets
from relulab.zoo.activations import canonical_name, get_activation, parse_activation
from relulab.core.errors import UserError, unknown_choice
from relulab.core.registry import Registry
from relulab.zoo.init import canonical_name as canonical_init
from relulab.zoo.init import init_layer, initialize
from relulab.zoo.masks import Mask, broadcast_keep, parse_mask
from relulab.core.ranges import INT64_MAX, MAX_ITEMS, show_int
from relulab.core.util import check_fits

OFF = "identity"  # a slot switched off computes nothing
KEEP = "keep"  # model.activation of a model by reference: every slot keeps the model's own activation
BN_FLAVOURS = {
    # Keras' momentum 0.99 weights the old running value; PyTorch's momentum weights the new one.
    "keras": dict(momentum=0.01, eps=1e-3),
    "torch": dict(momentum=0.1, eps=1e-5),
}


@dataclass
class ModelSpec:
    """Which model, and what goes in each activation slot. A plain record for configs and the CLI."""

    name: str = "deep-mlp"
    activation: str = "relu"  # every slot, unless `slots` says otherwise
    # per-slot overrides, e.g. {7: "identity", 10: "identity"}; a model by reference's slots by name too
    slots: dict[int | str, str] = field(default_factory=dict)
    init: str = "glorot_uniform"  # kernels of the hidden layers; "auto": the activation's recommended one
    bias_init: str = "zeros"
    output_init: str = "glorot_uniform"  # the classifier layer (the sources left it at Keras' default)
    widths: Optional[list[int]] = None  # None: the source's widths
    batchnorm: Optional[bool] = None  # None: the model's default (bn-mlp, seed-cnn: on; deep-mlp: off)
    bn_flavour: str = "keras"
    # name: python (a model by reference, relulab.zoo.reference): the builder, its arguments, and the SHA-256 of
    # its source, which validate() fills in (the run key holds it: an edited builder is a new configuration)
    target: Optional[str] = None
    kwargs: dict = field(default_factory=dict)
    source_sha256: Optional[str] = None
    # per-slot masks of the elements that stay nonlinear, {slot: "channel:16:<bits>"} (relulab.zoo.masks): a
    # channel or unit placement, as a learned or random search at those granularities makes them
    masks: dict[int | str, str] = field(default_factory=dict)

    def validate(self, prefix: str = "model") -> "ModelSpec":
        entry = MODELS.entry(self.name, f"{prefix}.name")
        if entry.by_reference:
            entry.validate(self, prefix)
        else:
            self._refuse_reference_fields(prefix)
        if self.activation != KEEP:
            parse_activation(self.activation, f"{prefix}.activation")
        elif not entry.by_reference:
            raise UserError(f"{prefix}.activation: {KEEP} (the model's own activations) is for models by reference "
                            "(name: python); give an activation")
        if not isinstance(self.slots, dict):
            raise UserError(f"{prefix}.slots: expected a mapping of slot number to activation, got {self.slots!r}")
        for index, act in self.slots.items():
            _check_slot_key(index, entry.by_reference, f"{prefix}.slots")
            parse_activation(act, f"{prefix}.slots.{index}")
        self._validate_masks(entry.by_reference, f"{prefix}.masks")
        canonical_init(self.kernel_init(), f"{prefix}.init")
        canonical_init(self.bias_init, f"{prefix}.bias_init")
        canonical_init(self.output_init, f"{prefix}.output_init")
        if self.widths is not None:
            self._validate_widths(f"{prefix}.widths")
        if self.bn_flavour not in BN_FLAVOURS:
            raise unknown_choice(f"{prefix}.bn_flavour", self.bn_flavour, BN_FLAVOURS)
        if self.batchnorm is not None and not isinstance(self.batchnorm, bool):
            raise UserError(f"{prefix}.batchnorm: expected true or false, got {self.batchnorm!r}")
        return self

    def _validate_widths(self, field: str) -> None:
        if not isinstance(self.widths, list) or not self.widths or not all(
                isinstance(w, int) and not isinstance(w, bool) and w > 0 for w in self.widths):
            raise UserError(f"{field}: expected a non-empty list of positive integers, got {self.widths!r}")
        if len(self.widths) > MAX_ITEMS:
            raise UserError(f"{field}: {len(self.widths)} layers; at most {MAX_ITEMS}")
        too_wide = [w for w in self.widths if w > INT64_MAX]
        if too_wide:
            raise UserError(f"{field}: {show_int(too_wide[0])} is beyond a 64-bit integer")

    def _validate_masks(self, by_reference: bool, field: str) -> None:
        if not isinstance(self.masks, dict):
            raise UserError(f"{field}: expected a mapping of slot number to mask, got {self.masks!r}")
        for index, text in self.masks.items():
            _check_slot_key(index, by_reference, field)
            parse_mask(text, f"{field}.{index}")

    def _refuse_reference_fields(self, prefix: str) -> None:
        for key in ("target", "source_sha256"):
            if getattr(self, key) is not None:
                raise UserError(f"{prefix}.{key}: only a model by reference (name: python) has a {key}")
        if self.kwargs:
            raise UserError(f"{prefix}.kwargs: only a model by reference (name: python) takes kwargs")

    def kernel_init(self) -> str:
        """The hidden layers' initializer, with "auto" resolved (He for ReLU, LeCun for SELU, ...)."""
        if self.init == "auto":
            return parse_activation(self.activation, "model.activation")[0].recommended_init
        return self.init

    def slot_activation(self, index: int) -> str:
        return canonical_name(self.slots.get(index, self.activation))

    def to_dict(self) -> dict:
        return asdict(self)


def _check_slot_key(index, by_reference: bool, field: str) -> None:
    """A key of model.slots or model.masks: a slot number from 1, or a slotified model's slot name."""
    named = by_reference and isinstance(index, str) and bool(index)
    if not named and (not isinstance(index, int) or isinstance(index, bool) or index < 1):
        raise UserError(f"{field}: slot numbers start at 1, got {index!r}")


class Slot(nn.Module):
    """A named place for an activation function; probes hook it, searches switch it.

    `index` numbers the slots of a model from 1 in the order the data meets them; `name`, where the model has
    one for it (relulab.zoo.slotify: `layer2.0.relu`), says where it sits in the model's code."""

    def __init__(self, index: int, spec: str, name: Optional[str] = None):
        super().__init__()
        self.index = index
        self.name = name
        self.set(spec)
        # Which elements stay nonlinear where the slot has a mask (relulab.zoo.masks), broadcastable over a batch of
        # its outputs; a buffer, so it is saved with the weights and stacked per model in a functional stack.
        self.register_buffer("keep", None)

    @property
    def label(self) -> str:
        """How messages name the slot: its number, and its name where it has one."""
        return f"slot {self.index}" + (f" ({self.name})" if self.name else "")

    def set(self, spec: str) -> None:
        self.spec = canonical_name(spec, self.label)
        self.act = get_activation(self.spec, self.label)

    @property
    def off(self) -> bool:
        """Whether the slot computes the identity: switched off, or masked with no element kept."""
        return self.spec == "identity" or (self.keep is not None and not bool(self.keep.any()))

    def set_keep(self, keep: Optional[torch.Tensor]) -> None:
        """Keep only these elements nonlinear (a bool tensor broadcastable over the batch), or all (None)."""
        self.keep = None if keep is None else keep.to(torch.bool)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.keep is None:
            return self.act(x)
        return torch.where(self.keep, self.act(x), x)  # a masked-off element is the identity, value and gradient

    def extra_repr(self) -> str:
        masked = f", keeps {int(self.keep.sum())} of {self.keep.numel()}" if self.keep is not None else ""
        return f"index={self.index}, spec={self.spec!r}" + (f", name={self.name!r}" if self.name else "") + masked


class SlottedModel(nn.Module):
    """What the rest of relulab (training, probes, searches) needs of a model whose activations are `Slot`s: the
    slots in forward order, one by number or name, the placement, and the shapes it takes and gives. SlotNet
    (relulab's own models) and the models `relulab.zoo.slotify` makes from any nn.Module are ones.

    `input_shape`: one example's shape (no batch dimension); `num_classes`: the width of the output, where the
    model gives one row of logits per example (else None)."""

    input_shape: tuple[int, ...] = ()
    num_classes: Optional[int] = None

    @property
    def slots(self) -> list[Slot]:
        return sorted((m for m in self.modules() if isinstance(m, Slot)), key=lambda s: s.index)

    def slot(self, key: int | str) -> Slot:
        """The slot numbered `key` (from 1), or named `key`."""
        slots = self.slots
        for s in slots:
            if s.index == key or (s.name is not None and s.name == key):
                return s
        if isinstance(key, str):
            raise unknown_choice("slot", key, [s.name for s in slots if s.name])
        raise UserError(f"slot {key}: the model has slots 1..{len(slots)}")

    def placement(self) -> list[str]:
        """The activation in each slot, slot 1 first."""
        return [s.spec for s in self.slots]

    def set_slots(self, slots: dict, field: str = "model.slots") -> None:
        """Put activations in slots: {slot number or name: activation}, e.g. {7: 'identity', 'fc.relu': 'tanh'}."""
        for key, spec in slots.items():
            try:
                slot = self.slot(key)
            except UserError as e:
                raise UserError(f"{field}: {e}") from None
            slot.set(canonical_name(spec, f"{field}.{key}"))

    def slot_shapes(self) -> dict[int, tuple[int, ...]]:
        """Each slot's output shape for one example (from a forward pass of one zero example); a slot the
        example meets more than once (relulab.zoo.slotify's module-only fallback) is left out, one the example
        never meets too."""
        outputs = slot_outputs(self, self.input_shape)
        return {index: shapes[0] for index, shapes in outputs.items() if len(shapes) == 1}

    def set_masks(self, masks: dict, field: str = "model.masks") -> None:
        """Keep only some elements of slots nonlinear: {slot number or name: Mask or its text}."""
        shapes = self.slot_shapes()
        param = next(self.parameters(), None)
        for key, mask in masks.items():
            try:
                slot = self.slot(key)
            except UserError as e:
                raise UserError(f"{field}: {e}") from None
            if slot.index not in shapes:
                raise UserError(f"{field}.{key}: {slot.label} is called more than once, or never, per example; "
                                "only a slot with one output per example can be masked")
            mask = mask if isinstance(mask, Mask) else parse_mask(mask, f"{field}.{key}")
            keep = broadcast_keep(mask, shapes[slot.index], f"{field}.{key}")
            slot.set_keep(keep if param is None else keep.to(param.device))

    def relu_counts(self) -> dict[int, int]:
        """Each slot's ReLU count: the activation elements per example that stay nonlinear (0 where the slot is
        off; its output's elements where it has no mask; the kept ones where it has)."""
        counts = {}
        by_index = {s.index: s for s in self.slots}  # self.slot(index) in the loop would walk the modules each time
        for index, shape in self.slot_shapes().items():
            slot = by_index[index]
            if slot.off:
                counts[index] = 0
            elif slot.keep is None:
                counts[index] = math.prod(shape)
            else:
                counts[index] = int(slot.keep.expand(shape).sum())  # a channel mask counts each position
        return counts

    def relu_count(self) -> int:
        """The model's ReLU count: its slots' (relu_counts), summed."""
        return sum(self.relu_counts().values())


def slot_outputs(model: nn.Module, input_shape) -> dict[int, list[tuple[int, ...]]]:
    """The output shape of every call of each of the model's slots (by slot number; per example, without the batch
    dimension) as one zero example of `input_shape` passes through it in eval mode; [] for a slot it never meets.
    The model's mode is put back after."""
    slots = [m for m in model.modules() if isinstance(m, Slot)]
    seen: dict[int, list[tuple[int, ...]]] = {s.index: [] for s in slots}

    def hook(slot, inputs, output):
        seen[slot.index].append(tuple(output.shape[1:]))

    handles = [s.register_forward_hook(hook) for s in slots]
    was_training = model.training
    model.eval()
    try:
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
        with torch.no_grad():
            model(torch.zeros(1, *input_shape, device=device, dtype=dtype))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return seen


class SlotNet(SlottedModel):
    """A sequential model whose activations are `Slot`s."""

    def __init__(self, layers: list[nn.Module], spec: ModelSpec, input_shape: tuple[int, ...], num_classes: int):
        super().__init__()
        self.body = nn.Sequential(*layers)
        self.spec = spec
        self.input_shape = tuple(input_shape)
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def _batchnorm(kind: Callable[..., nn.Module], features: int, spec: ModelSpec) -> nn.Module:
    return kind(features, **BN_FLAVOURS[spec.bn_flavour])


def _check_slots(spec: ModelSpec, count: int) -> None:
    bad = sorted(i for i in spec.slots if i > count)
    if bad:
        raise UserError(f"model.slots: {spec.name} has slots 1..{count}, got {bad}")


def _dense(fan_in: int, width: int, kernel_init: str, spec: ModelSpec) -> nn.Linear:
    layer = nn.Linear(fan_in, width)
    init_layer(layer, kernel_init, spec.bias_init)
    return layer


def _classifier(fan_in: int, num_classes: int, spec: ModelSpec) -> nn.Linear:
    # The sources' output layers keep Keras' defaults: glorot_uniform kernel, zero bias.
    layer = nn.Linear(fan_in, num_classes)
    init_layer(layer, spec.output_init, "zeros")
    return layer


def build_deep_mlp(spec: ModelSpec, input_shape, num_classes: int) -> SlotNet:
    widths = spec.widths or [300] + [100] * 49
    _check_slots(spec, len(widths))
    layers: list[nn.Module] = [nn.Flatten()]
    fan_in = math.prod(input_shape)
    for index, width in enumerate(widths, start=1):
        layers += [_dense(fan_in, width, spec.kernel_init(), spec), Slot(index, spec.slot_activation(index))]
        if spec.batchnorm:
            layers.append(_batchnorm(nn.BatchNorm1d, width, spec))
        fan_in = width
    layers.append(_classifier(fan_in, num_classes, spec))
    return SlotNet(layers, spec, input_shape, num_classes)


def build_bn_mlp(spec: ModelSpec, input_shape, num_classes: int) -> SlotNet:
    widths = spec.widths or [512] + [256] * 50
    _check_slots(spec, len(widths))
    use_bn = True if spec.batchnorm is None else spec.batchnorm
    fan_in = math.prod(input_shape)
    layers: list[nn.Module] = [nn.Flatten(), _dense(fan_in, widths[0], spec.kernel_init(), spec), Slot(1, spec.slot_activation(1))]
    for index, width in enumerate(widths[1:], start=2):
        if use_bn:
            layers.append(_batchnorm(nn.BatchNorm1d, widths[index - 2], spec))
        layers += [_dense(widths[index - 2], width, spec.kernel_init(), spec), Slot(index, spec.slot_activation(index))]
    if use_bn:
        layers.append(_batchnorm(nn.BatchNorm1d, widths[-1], spec))
    layers.append(_classifier(widths[-1], num_classes, spec))
    return SlotNet(layers, spec, input_shape, num_classes)


SEED_CNN_WIDTHS = [48, 48, 96, 96, 96, 96, 192, 192, 192]
SEED_CNN_POOL_AFTER = (6, 8)  # max-pool 2 after these convs


def seed_cnn_output_size(size: int) -> int:
    for index in range(1, 10):
        size -= 2
        if index in SEED_CNN_POOL_AFTER:
            size //= 2
    return size


def build_seed_cnn(spec: ModelSpec, input_shape, num_classes: int) -> SlotNet:
    widths = spec.widths or SEED_CNN_WIDTHS
    if len(widths) != len(SEED_CNN_WIDTHS):
        raise UserError(f"model.widths: seed-cnn takes {len(SEED_CNN_WIDTHS)} conv widths, got {len(widths)}")
    if len(input_shape) != 3:
        raise UserError(f"model: seed-cnn needs image input (channels, height, width), got shape {input_shape}")
    channels, height, width = input_shape
    if seed_cnn_output_size(min(height, width)) < 1:
        raise UserError(f"data.image_size: seed-cnn needs images of at least 32x32, got {height}x{width}"
                        "; resize or pad them to 32 (image_size)")
    _check_slots(spec, 10)
    use_bn = True if spec.batchnorm is None else spec.batchnorm
    layers: list[nn.Module] = []
    for index, out_channels in enumerate(widths + [num_classes], start=1):
        kernel = 1 if index == 10 else 3
        conv = nn.Conv2d(channels, out_channels, kernel)
        init_layer(conv, spec.kernel_init() if index < 10 else spec.output_init, spec.bias_init if index < 10 else "zeros")
        layers += [conv, Slot(index, spec.slot_activation(index))]
        if use_bn:
            layers.append(_batchnorm(nn.BatchNorm2d, out_channels, spec))
        if index in SEED_CNN_POOL_AFTER:
            layers.append(nn.MaxPool2d(2))
        channels = out_channels
    # 32x32 input ends at 1x1; larger inputs are averaged down to it so the head stays 10-way.
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    return SlotNet(layers, spec, input_shape, num_classes)


CIFAR_NETS = {"resnet20": cifar_nets.resnet20, "resnet18-cifar": cifar_nets.resnet18_cifar,
              "vgg16-bn": cifar_nets.vgg16_bn}
_DEFAULTS = ModelSpec()


def build_cifar_net(spec: ModelSpec, input_shape, num_classes: int) -> SlotNet:
    """One of CIFAR_NETS, its slots from `spec`. Where the spec leaves a field at relulab's default, the net
    takes the literature's: `init` (convs He normal on fan_out, zero biases), `output_init` (PyTorch's default
    Linear), `bn_flavour` (PyTorch's batch norm, momentum 0.1, eps 1e-5; BN weights 1, biases 0). Any other value
    applies as for seed-cnn: `init` and `bias_init` to every conv, `output_init` to the classifier."""
    channels = cifar_nets.image_channels(spec.name, input_shape)
    _check_slots(spec, cifar_nets.SLOT_COUNTS[spec.name])
    if spec.batchnorm is False:
        raise UserError(f"model.batchnorm: {spec.name} is built with batch norm, as in the literature; leave "
                        "model.batchnorm out")
    flavour = "torch" if spec.bn_flavour == _DEFAULTS.bn_flavour else spec.bn_flavour
    net = CIFAR_NETS[spec.name](channels, num_classes, lambda index: Slot(index, spec.slot_activation(index)),
                                lambda features: nn.BatchNorm2d(features, **BN_FLAVOURS[flavour]), spec.widths)
    for path, module in net.named_modules():  # named by where each sits in the code: stem.relu, layer1.0.relu2
        if isinstance(module, Slot):
            module.name = path
    cifar_nets.literature_init(net)
    for module in net.modules():
        if isinstance(module, nn.Conv2d):
            if spec.init != _DEFAULTS.init:
                initialize(module.weight, spec.kernel_init(), "model.init")
            if module.bias is not None and spec.bias_init != _DEFAULTS.bias_init:
                initialize(module.bias, spec.bias_init, "model.bias_init")
        elif isinstance(module, nn.Linear) and spec.output_init != _DEFAULTS.output_init:
            init_layer(module, spec.output_init, "zeros")
    return SlotNet([net], spec, input_shape, num_classes)


# How a model trains beside others (relulab.packing.rules reads it):
# - "stack": models of one shape run as one stacked model, each layer one batched kernel (StackedMLP);
# - "fuse": as "stack", and through the fused hand-written step where the job allows (relulab.packing.fused);
# - "conv-stack": seed-cnn-like convolution stacks (StackedCNN), on CUDA in bf16;
# - "alone": never stacked: a unit of its own (on CUDA still beside others in a pack, its step a CUDA graph).
PACKS = ("stack", "fuse", "conv-stack", "vmap", "alone")


@dataclass(frozen=True)
class ModelEntry:
    """What relulab knows about one model: its builder, and the decisions others make by model."""

    build: Callable[[ModelSpec, tuple, int], SlotNet]  # (spec, input shape, classes) -> the model
    packs: str = "alone"  # one of PACKS
    # Convolutional: by default bf16 on CUDA (training.specs.autocast_dtype), its step compiled where that pays.
    conv: bool = False
    # Built from the user's code (relulab.zoo.reference): `validate(spec, prefix)` checks the spec's target and
    # fills in its source's hash, and the size is not checked on the meta device first (the user's code decides
    # what it allocates, and slotify runs the model).
    by_reference: bool = False
    validate: Optional[Callable[[ModelSpec, str], None]] = None

    def __post_init__(self):
        if self.packs not in PACKS:
            raise ValueError(f"ModelEntry.packs: expected one of {PACKS}, got {self.packs!r}")


MODELS: Registry[ModelEntry] = Registry({
    "deep-mlp": ModelEntry(build_deep_mlp, packs="fuse"),
    "bn-mlp": ModelEntry(build_bn_mlp, packs="stack"),
    "seed-cnn": ModelEntry(build_seed_cnn, packs="conv-stack", conv=True),
    **{name: ModelEntry(build_cifar_net, packs="vmap", conv=True) for name in CIFAR_NETS},
})


def model_entry(name: str, field: str = "model.name") -> ModelEntry:
    """The registry's entry for a model name; an unknown name is a UserError naming `field`."""
    return MODELS.entry(name, field)


def build_model(spec: ModelSpec, input_shape, num_classes: int) -> SlotNet:
    """Build the model `spec` names for inputs of `input_shape` (C, H, W) and `num_classes` outputs."""
    spec.validate()
    if not MODELS[spec.name].by_reference:
        check_model_fits(spec, tuple(input_shape), num_classes)
    model = MODELS[spec.name].build(spec, tuple(input_shape), num_classes)
    if spec.masks:
        model.set_masks(spec.masks)
    return model


def check_model(spec: ModelSpec, input_shape, num_classes: int) -> None:
    """Build the model `spec` names as `build_model` does, to have a bad spec refused before anything trains:
    relulab's own models on the meta device (shapes and checks without values to draw: milliseconds, against
    about 0.1 s on the CPU for seed 001's 50-layer MLP); a model by reference, the user's code, on the CPU. An
    operation the meta device lacks builds the model on the CPU instead."""
    if not MODELS[spec.name].by_reference:
        try:
            with torch.device("meta"):
                build_model(spec, input_shape, num_classes)
            return
        except (NotImplementedError, RuntimeError):
            pass
    build_model(spec, input_shape, num_classes)


# Training holds each parameter four times over: the weight, its gradient and (Adam, RMSprop) up to two moments.
TRAINING_COPIES = 4


def check_model_fits(spec: ModelSpec, input_shape: tuple, num_classes: int) -> None:
    """Refuse a model whose weights and training state cannot fit in memory (`widths: [100000000, 100000000]`),
    before any of it is allocated: the model is first built on PyTorch's meta device, which has shapes but no
    storage, so the count costs milliseconds whatever the size."""
    params = parameter_count(spec, input_shape, num_classes)
    field = "model.widths" if spec.widths is not None else "model"
    check_fits(params * 4 * TRAINING_COPIES, field, f"a {spec.name} of {params:,} parameters (weights, gradients and "
               "optimizer state)")


def _spec_key(spec: ModelSpec) -> str:
    """The spec as canonical JSON: the key of the caches of what a model's shape alone decides."""
    return json.dumps(spec.to_dict(), sort_keys=True, default=str)


def parameter_count(spec: ModelSpec, input_shape: tuple, num_classes: int) -> int:
    """The model's trainable parameters: counted on the meta device for relulab's models; a model by reference
    is the user's code, which may not run on the meta device, so it is built on the CPU."""
    spec_json = _spec_key(spec)
    if MODELS[spec.name].by_reference:
        return _parameter_count_on_cpu(spec_json, tuple(input_shape), num_classes)
    return _parameter_count(spec_json, tuple(input_shape), num_classes)


@lru_cache(maxsize=64)
def _parameter_count_on_cpu(spec_json: str, input_shape: tuple, num_classes: int) -> int:
    model = build_model(ModelSpec(**json.loads(spec_json)), input_shape, num_classes)
    return sum(p.numel() for p in model.parameters())


@lru_cache(maxsize=256)
def _parameter_count(spec_json: str, input_shape: tuple, num_classes: int) -> int:
    spec = ModelSpec(**json.loads(spec_json))
    spec.slots = {int(k): v for k, v in spec.slots.items()}
    with torch.device("meta"):
        model = MODELS[spec.name].build(spec, input_shape, num_classes)
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def largest_output(model: nn.Module, input_shape: tuple) -> int:
    """The most values any module of `model` gives for one input: the model run once, in eval mode (no batch norm
    statistics move), on a zero input on its own device, with hooks noting each module's output. Tensors made
    between modules (a residual sum) are as big as the module outputs they add."""
    sizes = [math.prod(input_shape)]

    def note(module, inputs, output):
        if torch.is_tensor(output):
            sizes.append(output.numel())

    hooks = [m.register_forward_hook(note) for m in model.modules()]
    device = next(iter(model.parameters()), torch.empty(0)).device
    was_training = model.training
    try:
        model.eval()
        model(torch.zeros(1, *input_shape, device=device))
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    return max(sizes)


def largest_activation(spec: ModelSpec, input_shape: tuple, num_classes: int) -> int:
    """largest_output of the model `spec` names, built on the CPU with the global random state put back after
    (on the meta device batch norm runs torch's Python decompositions, whose first call imports torch._dynamo:
    seconds). Only models small enough to stack ask (packing.rules.most_to_a_stack): milliseconds."""
    key = (_spec_key(spec), tuple(input_shape), num_classes)
    if key not in _LARGEST_ACTIVATIONS:
        with torch.random.fork_rng(devices=[]):
            model = build_model(copy.deepcopy(spec), input_shape, num_classes)
        _LARGEST_ACTIVATIONS[key] = largest_output(model, tuple(input_shape))
    return _LARGEST_ACTIVATIONS[key]


_LARGEST_ACTIVATIONS: dict[tuple, int] = {}


def keras_param_count(model: nn.Module) -> int:
    """Parameters as Keras' summary counts them: weights plus BatchNorm's moving mean and variance."""
    params = sum(p.numel() for p in model.parameters())
    stats = sum(b.numel() for name, b in model.named_buffers() if name.endswith(("running_mean", "running_var")))
    return params + stats


MODEL_EXTRAS = ("off",)  # spec-only conveniences: `off: [7, 10]` switches those slots to identity


def parse_slots(value, field: str = "model.slots", names: bool = False) -> dict:
    """Per-slot overrides from a mapping (YAML keys may be strings) or text like '7=identity,10=none'. A slot
    given twice must get the same activation both times. `names`: a key that is not a number may be a slot's
    name (`layer1.0.relu=identity`: slotified models name their slots)."""
    if value is None or value == "":
        return {}
    if isinstance(value, str):
        pairs = [item.split("=", 1) for item in value.split(",") if item.strip()]
        if any(len(p) != 2 for p in pairs):
            raise UserError(f"{field}: expected SLOT=ACTIVATION[,SLOT=ACTIVATION...], got {value!r}")
        items = [(k.strip(), v.strip()) for k, v in pairs]
    elif isinstance(value, dict):
        items = list(value.items())  # {3: tanh, "3": relu} names slot 3 twice
    else:
        raise UserError(f"{field}: expected a mapping of slot number to activation, got {value!r}")
    return _slots_from_pairs(items, field, names)


def _slots_from_pairs(items: list[tuple], field: str, names: bool = False) -> dict:
    slots: dict = {}
    for key, act in items:
        index = _slot_key(key, field, names)
        if not isinstance(act, str):
            raise UserError(f"{field}.{index}: expected an activation name, got {act!r}")
        act = canonical_name(act, f"{field}.{index}")
        if slots.setdefault(index, act) != act:
            raise UserError(f"{field}: slot {index} is both {slots[index]} and {act}")
    return slots


def _slot_key(key, field: str, names: bool):
    """A slot's number, or (with `names`) its name: a key that does not read as a number."""
    if names and isinstance(key, str) and key.strip() and not key.strip().lstrip("+-").isdigit():
        return key.strip()
    return _slot_number(key, field)


def _slot_number(key, field: str) -> int:
    try:
        index = int(key)
    except (TypeError, ValueError, OverflowError):  # OverflowError: a key of `.inf`
        raise UserError(f"{field}: slot numbers are integers from 1, got {key!r}") from None
    if index < 1 or isinstance(key, bool) or (isinstance(key, float) and key != index):
        raise UserError(f"{field}: slot numbers are integers from 1, got {key!r}")
    return index


def combine_slots(slots: dict, off: dict, field: str) -> dict:
    """`slots` with the `off` ones switched to identity; a slot both given an activation and off is refused."""
    for index in off:
        if slots.get(index, OFF) != OFF:
            raise UserError(f"{field}: slot {index} is both {slots[index]} and off")
    return {**slots, **off}


def parse_off(value, field: str = "off", names: bool = False) -> dict:
    """'7,10' (or [7, 10]) -> {7: 'identity', 10: 'identity'}: the slots switched off (`names`: as parse_slots)."""
    if value is None or value == "":
        return {}
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)):
        raise UserError(f"{field}: expected slot numbers like 7,10, got {value!r}")
    return _slots_from_pairs([(str(i).strip(), OFF) for i in items], field, names)


def parse_widths(value, field: str = "model.widths") -> Optional[list[int]]:
    """'300,100x49' -> [300] + [100] * 49; a list of integers passes through (validated later)."""
    if value is None or value == "":
        return None
    if isinstance(value, list):
        return value
    runs: list[tuple[int, int]] = []  # (width, times), counted before the list is built: 8x99999999999 is a typo
    try:
        for item in str(value).split(","):
            width, times, repeat = item.strip().partition("x")
            runs.append((int(width), int(repeat) if times else 1))  # "100x" has no count: int("") refuses it
    except ValueError:
        raise UserError(f"{field}: expected widths like 300,100x49, got {value!r}") from None
    layers = sum(max(0, times) for _, times in runs)
    if layers > MAX_ITEMS:
        raise UserError(f"{field}: {value} is {layers} layers; at most {MAX_ITEMS}")
    return [width for width, times in runs for _ in range(times)]
