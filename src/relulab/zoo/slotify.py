"""Slots in any nn.Module: `slotify` turns every use of an activation into a named, switchable `Slot`.

    model = slotify(ResNet(), torch.zeros(1, 3, 32, 32))
    [s.name for s in model.slots]      # ['relu', 'layer1.0.relu', 'layer1.0.relu#2', 'layer1.0:F.gelu', ...]
    model.slot("layer1.0.relu#2").set("identity")    # or model.slot(3): slots are numbered from 1 as well
    describe(model, torch.zeros(1, 3, 32, 32))       # slots, output shapes, ReLU count, parameters, MACs

What is an activation is the activation registry's business (relulab.zoo.activations: `TORCH_MODULES`,
`TORCH_FUNCTIONS`, `TORCH_METHODS`): the modules nn.ReLU, nn.LeakyReLU, nn.GELU, ... and the calls F.relu,
torch.relu, x.relu(), F.leaky_relu(x, 0.2), ... that compute one of its activations.

With `trace=True` (the default) the model is traced with torch.fx, activation modules kept as leaves, and each
activation in the traced graph, module call or functional call, becomes a call of its own Slot: a module used
at two places in `forward` (torchvision's BasicBlock uses `self.relu` twice) is two slots. The slots' names:

- a module's use: the module's path, `layer2.0.relu`; its second use `layer2.0.relu#2`, and so on;
- a call: the path of the module whose `forward` makes it, a colon, and the call as written, `layer1.0:F.relu`,
  `layer1.0:torch.relu`, `layer1.0:.relu()` (a Tensor method); calls in the model's own `forward` have no path
  (`F.relu`); again `#2` for the second such call in the same module.

torch.fx decides Python control flow once, when it traces: `if self.training:` is fixed then, and a decision on
the data (`if x.sum() > 0:`) cannot be traced at all; that is a UserError naming the module and the line, and
offering `trace=False`. Layers of torch.nn are not looked into (the activation inside nn.TransformerEncoderLayer
stays there).

With `trace=False` the activation modules are replaced where they sit in the model, one slot per module object,
numbered in the order the example input first meets them (then any it does not meet, in the order of the
model's modules): a module used twice then stays ONE slot (switching it
switches both uses, and probes see its last use in a forward pass), and functional calls are not slots.

Either way the model given is left as it was: the result is a copy of it, an instance of a subclass of its class
and of `SlottedModel`, with the same state_dict keys (the slots hold no weights), so the original's weights load
into it. It computes what the original does: `slotify` checks that on the example input. Save it by its
state_dict (its class is made for it, so the whole object does not pickle).
"""
from __future__ import annotations

import copy
import math
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional

import torch
from torch import fx, nn

from relulab.core.errors import UserError
from relulab.zoo.activations import FUNCTION_NAMES, call_activation, module_activation
from relulab.zoo.models import Slot, SlotNet, SlottedModel

# Where a traced model keeps the slots that have no module of their own to replace (a module's second use, a
# functional call). Slots hold no weights (PReLU aside), so this adds no state_dict key.
SLOTS_ATTRIBUTE = "relulab_slots"
TORCH_DIR = str(Path(torch.__file__).parent)


def slotify(model: nn.Module, example_input, *, trace: bool = True) -> SlottedModel:
    """A copy of `model` whose every activation is a `Slot`, numbered from 1 in forward order and named after
    the code (see the module's docstring). `example_input`: a batch the model takes (a tensor, or a tuple of the
    forward's arguments), e.g. `torch.zeros(1, 3, 32, 32)`; it is run through the model in eval mode to check the
    result and to read the shapes. Raises UserError where the model has no activation, cannot be traced (then
    `trace=False` slots its activation modules only: a shared module stays one slot), or fails on the input."""
    if any(isinstance(m, Slot) for m in model.modules()):
        raise UserError(f"slotify: {type(model).__name__} has relulab slots already")
    args = example_input if isinstance(example_input, tuple) else (example_input,)
    reference = _run(model, args)
    result = copy.deepcopy(model)
    if trace:
        _slot_traced(result, _trace(result))
    else:
        _slot_modules(result, args)
    result.__class__ = _slotted_class(type(model), getattr(result, "_slotted_forward", None))
    if not result.slots:
        raise UserError(f"slotify: {type(model).__name__} has no activation relulab can slot (modules such as "
                        "nn.ReLU or nn.GELU, calls such as F.relu, torch.sigmoid or x.relu())")
    _check_same(reference, _run(result, args), type(model).__name__, trace)
    _set_shapes(result, args, reference)
    return result


# ---------------------------------------------------------------- tracing


class ActivationTracer(fx.Tracer):
    """torch.fx's tracer with the activation modules as leaves, remembering where tracing failed."""

    def __init__(self):
        super().__init__()
        self.failed_in: Optional[str] = None  # the innermost module whose forward the tracing failed in

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return module_activation(m) is not None or super().is_leaf_module(m, module_qualified_name)

    def call_module(self, m, forward, args, kwargs):
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception:
            if self.failed_in is None:
                self.failed_in = self.path_of_module(m)
            raise


def _trace(model: nn.Module) -> fx.Graph:
    tracer = ActivationTracer()
    try:
        return tracer.trace(model)
    except Exception as e:  # TraceError (control flow on the data), TypeError (len() or range() of a traced value)
        where = f"module '{tracer.failed_in}'" if tracer.failed_in else f"{type(model).__name__}.forward"
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"slotify: cannot trace {type(model).__name__} with torch.fx: {where}{_user_line(e)}: "
                        f"{reason}; slotify(..., trace=False) slots its activation modules without tracing "
                        "(a module used twice is then one slot, and functional calls are not slots)") from None


def _user_line(error: Exception) -> str:
    """' at file:line `code`' for the last line of the traceback outside torch: the construct that failed."""
    frames = [f for f in traceback.extract_tb(error.__traceback__) if not f.filename.startswith(TORCH_DIR)
              and f.filename != __file__]
    if not frames:
        return ""
    f = frames[-1]
    return f" at {f.filename}:{f.lineno} `{(f.line or '').strip()}`"


@dataclass
class _Use:
    """One activation in the traced graph: the node, what it computes, its slot's name."""

    node: fx.Node
    spec: str
    name: str


def _activation_uses(graph: fx.Graph, model: nn.Module) -> list[_Use]:
    modules = dict(model.named_modules())
    uses: list[_Use] = []
    seen: dict[str, int] = {}
    for node in graph.nodes:
        spec, where = _node_activation(node, modules)
        if spec is None or not isinstance(_input_of(node), fx.Node):
            continue
        seen[where] = seen.get(where, 0) + 1
        uses.append(_Use(node, spec, where if seen[where] == 1 else f"{where}#{seen[where]}"))
    return uses


def _input_of(node: fx.Node):
    """The tensor an activation node applies to: its first argument (`input=` for modules and functions alike)."""
    return node.args[0] if node.args else node.kwargs.get("input")


def _node_activation(node: fx.Node, modules: dict[str, nn.Module]) -> tuple[Optional[str], str]:
    """(the registry spec the node computes or None, the base of its slot's name)."""
    if node.op == "call_module":
        return module_activation(modules[node.target]), node.target
    if node.op not in ("call_function", "call_method"):
        return None, ""
    kind = "method" if node.op == "call_method" else "function"
    spec = call_activation(kind, node.target, node.args, node.kwargs)
    if spec is None:
        return None, ""
    stack = node.meta.get("nn_module_stack") or {}
    enclosing = next(reversed(stack.values()))[0] if stack else ""
    call = f".{node.target}()" if kind == "method" else FUNCTION_NAMES[node.target]
    return spec, f"{enclosing}:{call}" if enclosing else call


def _slot_traced(model: nn.Module, graph: fx.Graph) -> None:
    """Make each activation of `graph` a call of its own slot, and `model`'s forward the graph's code. A module's
    first use takes the module's place in the model (so `print(model)` shows it there); its other uses, and the
    functional calls, live in the list `relulab_slots`."""
    homeless = nn.ModuleList()
    position = {node: i for i, node in enumerate(graph.nodes)}
    modules = dict(model.named_modules())
    for index, use in enumerate(_activation_uses(graph, model), start=1):
        slot, node, source = Slot(index, use.spec, use.name), use.node, _input_of(use.node)
        in_place = _in_place(node, modules)
        if node.op == "call_module" and use.name == node.target:
            parent, _, attribute = use.name.rpartition(".")
            setattr(model.get_submodule(parent), attribute, slot)
            node.args, node.kwargs = (source,), {}
            result = node
        else:
            with graph.inserting_after(node):
                result = graph.call_module(f"{SLOTS_ATTRIBUTE}.{len(homeless)}", (source,))
            homeless.append(slot)
            node.replace_all_uses_with(result)
            graph.erase_node(node)
        if in_place:  # slots compute out of place: what reads the tensor after the call reads the slot's output
            for user in [u for u in source.users if position.get(u, -1) > position[node]]:
                user.replace_input_with(source, result)
    if len(homeless):
        model.add_module(SLOTS_ATTRIBUTE, homeless)
    graph.lint()
    _keep_constants(model, graph)
    code = graph.python_code(root_module="self")
    namespace = dict(code.globals)
    exec(compile(code.src, f"<relulab.slotify {type(model).__name__}>", "exec"), namespace)
    model._slotted_forward = namespace["forward"]
    model._slotted_code = code.src  # for a reader: print(model._slotted_code)


def _in_place(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    """Whether the activation overwrites its input (`x.relu_()`, `F.relu(x, inplace=True)`, nn.ReLU(inplace=True))."""
    if node.op == "call_module":
        return bool(getattr(modules[node.target], "inplace", False))
    name = node.target if node.op == "call_method" else FUNCTION_NAMES[node.target]
    return name.endswith("_") or bool(node.kwargs.get("inplace", False))


def _keep_constants(model: nn.Module, graph: fx.Graph) -> None:
    """Tensors the tracer met as plain attributes (not parameters or buffers) it stored on the model as
    `_tensor_constant0`...: make them buffers that move with the model but add no state_dict key."""
    for node in graph.nodes:
        if node.op != "get_attr" or "." in node.target:
            continue
        value = model.__dict__.get(node.target)
        if isinstance(value, torch.Tensor) and not isinstance(value, nn.Parameter):
            del model.__dict__[node.target]
            model.register_buffer(node.target, value, persistent=False)


# ---------------------------------------------------------------- the module-only fallback


def _slot_modules(model: nn.Module, args: tuple) -> None:
    """Replace each activation module object by a slot where it sits (at every place it is registered)."""
    places: dict[int, list[tuple[nn.Module, str, str]]] = {}  # id(module) -> (parent, attribute, path)
    specs: dict[int, str] = {}
    for path, parent in model.named_modules(remove_duplicate=False):
        for attribute, child in parent.named_children():
            spec = module_activation(child)
            if spec is not None:
                specs[id(child)] = spec
                places.setdefault(id(child), []).append((parent, attribute, f"{path}.{attribute}".lstrip(".")))
    called = _call_order(model, args)
    order = called + [key for key in specs if key not in called]
    for index, key in enumerate(order, start=1):
        slot = Slot(index, specs[key], places[key][0][2])
        for parent, attribute, _ in places[key]:
            setattr(parent, attribute, slot)


def _call_order(model: nn.Module, args: tuple) -> list[int]:
    """The ids of the activation modules `model` calls on `args`, in the order of their first call."""
    order: dict[int, None] = {}
    handles = [m.register_forward_pre_hook(lambda module, _inputs: order.setdefault(id(module)))
               for m in model.modules() if module_activation(m) is not None]
    try:
        _run(model, args)
    finally:
        for h in handles:
            h.remove()
    return list(order)


# ---------------------------------------------------------------- the result


def _slotted_class(cls: type, forward: Optional[Callable]) -> type:
    """`cls` with SlottedModel's interface first in line (and the traced forward, where there is one)."""
    namespace = {"__module__": cls.__module__, "__doc__": f"{cls.__name__} with its activations as relulab slots."}
    if forward is not None:
        namespace["forward"] = lambda self, *args, **kwargs: self._slotted_forward(self, *args, **kwargs)
    return type(f"Slotted{cls.__name__}", (SlottedModel, cls), namespace)


def _run(model: nn.Module, args: tuple):
    """The model's output on `args`, in eval mode without gradients (the mode put back after)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return model(*args)
    except Exception as e:
        shapes = ", ".join(str(list(a.shape)) if isinstance(a, torch.Tensor) else type(a).__name__ for a in args)
        raise UserError(f"slotify: {type(model).__name__} fails on the example input ({shapes}): "
                        f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
    finally:
        model.train(was_training)


def _tensors(value) -> Iterator[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _tensors(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _tensors(v)


def _check_same(reference, output, name: str, trace: bool) -> None:
    """The slotified model must compute what the model did (a traced copy might not where the code reads a
    tensor an in-place activation overwrote through another name, a view of it)."""
    ref, out = list(_tensors(reference)), list(_tensors(output))
    if any(t.is_meta for t in ref + out):  # built on the meta device (relulab counting parameters): no values
        return
    same = len(ref) == len(out) and all(
        r.shape == o.shape and torch.allclose(r.float(), o.float(), rtol=1e-4, atol=1e-5, equal_nan=True)
        for r, o in zip(ref, out))
    if not same:
        hint = ("; an activation applied in place to a view of a tensor? slotify(..., trace=False) keeps the "
                "model's own forward") if trace else ""
        raise UserError(f"slotify: the slotted {name} does not compute what {name} does on the example input{hint}")


def _set_shapes(model: SlottedModel, args: tuple, output) -> None:
    first = args[0] if args else None
    if "input_shape" not in model.__dict__:
        model.input_shape = tuple(first.shape[1:]) if isinstance(first, torch.Tensor) else ()
    if "num_classes" not in model.__dict__:
        model.num_classes = int(output.shape[1]) if isinstance(output, torch.Tensor) and output.dim() == 2 else None


# ---------------------------------------------------------------- describe


@dataclass
class SlotReport:
    """One slot as `relulab inspect` shows it."""

    index: int
    name: str
    activation: str
    shape: Optional[list[int]]  # the slot's output for one example (its last use); None: not reached
    elements: int  # activations computed per example, every use of the slot together: what private inference pays
    uses: int  # calls in one forward pass


@dataclass
class ModelReport:
    """A model's slots, parameters and multiply-accumulates, for one example.

    `macs`: multiply-accumulates of the nn.Linear, nn.Conv1d/2d/3d and nn.ConvTranspose1d/2d/3d layers (each
    call, shared layers at each use), biases not included; batch norm, pooling, activations, elementwise
    arithmetic and functional F.linear / F.conv calls are not counted. `flops` = 2 x `macs` (a multiply and an
    add each)."""

    model: str
    input_shape: list[int]
    slots: list[SlotReport]
    parameters: int
    trainable_parameters: int
    macs: int
    counted: str = "multiply-accumulates of Linear, Conv and ConvTranspose layers, biases excluded"

    @property
    def activation_elements(self) -> int:
        return sum(s.elements for s in self.slots)

    @property
    def flops(self) -> int:
        return 2 * self.macs

    def to_dict(self) -> dict:
        return {**asdict(self), "activation_elements": self.activation_elements, "flops": self.flops}


def describe(model: nn.Module, example_input, name: Optional[str] = None) -> ModelReport:
    """The slots of `model` (slotified first unless it has slots already), with each one's output shape and
    activations per example, and the model's parameters and MACs, measured by one forward pass of the first
    example of `example_input` in eval mode."""
    if not isinstance(model, SlottedModel):
        model = slotify(model, example_input)
    args = tuple(a[:1] if isinstance(a, torch.Tensor) else a
                 for a in (example_input if isinstance(example_input, tuple) else (example_input,)))
    seen: dict[int, list[torch.Size]] = {}
    macs = [0]

    def on_slot(slot, _inputs, output):
        seen.setdefault(slot.index, []).append(output.shape)

    def on_layer(layer, inputs, output):
        macs[0] += LAYER_MACS[_counted_type(layer)](layer, inputs[0], output)

    handles = [s.register_forward_hook(on_slot) for s in model.slots]
    handles += [m.register_forward_hook(on_layer) for m in model.modules() if _counted_type(m) is not None]
    try:
        _run(model, args)
    finally:
        for h in handles:
            h.remove()
    return ModelReport(name or _model_name(model), list(model.input_shape), _slot_reports(model, seen),
                       sum(p.numel() for p in model.parameters()),
                       sum(p.numel() for p in model.parameters() if p.requires_grad), macs[0])


def _slot_reports(model: SlottedModel, seen: dict[int, list[torch.Size]]) -> list[SlotReport]:
    paths = {id(m): path for path, m in model.named_modules()}
    reports = []
    for s in model.slots:
        shapes = seen.get(s.index, [])
        reports.append(SlotReport(s.index, s.name or paths[id(s)], s.spec, list(shapes[-1][1:]) if shapes else None,
                                  sum(math.prod(shape[1:]) for shape in shapes), len(shapes)))
    return reports


def _model_name(model: nn.Module) -> str:
    if isinstance(model, SlotNet):
        return model.spec.name
    return type(model).__name__.removeprefix("Slotted")


def _linear_macs(layer: nn.Linear, x: torch.Tensor, y: torch.Tensor) -> int:
    return y.numel() * layer.in_features


def _conv_macs(layer: nn.modules.conv._ConvNd, x: torch.Tensor, y: torch.Tensor) -> int:
    # Each output element of a convolution sums in_channels / groups x kernel products; a transposed one
    # scatters each INPUT element over out_channels / groups x kernel outputs.
    kernel = math.prod(layer.kernel_size)
    if layer.transposed:
        return x.numel() * layer.out_channels // layer.groups * kernel
    return y.numel() * layer.in_channels // layer.groups * kernel


LAYER_MACS: dict[type, Callable[[nn.Module, torch.Tensor, torch.Tensor], int]] = {
    nn.Linear: _linear_macs,
    **{cls: _conv_macs for cls in (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
                                   nn.ConvTranspose3d)},
}


def _counted_type(module: nn.Module) -> Optional[type]:
    return next((cls for cls in type(module).__mro__ if cls in LAYER_MACS), None)
