"""Folding what is linear: where a slot is off (identity), the layers it joins become one layer.

    folded, report = fold(model)                    # model: a SlotNet (deep-mlp, bn-mlp, seed-cnn, resnet20, ...)
    print("\\n".join(report.lines()))                # what merged, layers and parameters before/after, the difference

What folds, each fold exact unless it says otherwise (eval mode: a batch norm is its running statistics):

- a batch norm into the dense or convolution layer before it (the standard fold), through off slots between;
- a batch norm into the dense layer after it (after a live slot too: BN(x) is an affine map of x and the dense
  layer is linear), or into a convolution after it that does not pad;
- two dense layers with nothing but off slots between them: one dense layer (W2 W1, W2 b1 + b2), chains of any
  length;
- two convolutions with nothing but off slots between them (batch norms having folded in): one convolution with
  the composed kernel (size k1 + k2 - 1, the second's stride). Exact where the second convolution does not pad
  and the first has stride 1 (the first's own padding becomes the merged one's). Where the second pads with
  zeros ('same' convolutions, resnet's 3x3), it is NOT exact: the second convolution sees zeros around the
  intermediate map, which the merged one computes from the padded input instead (bias and border pixels), so
  the merged output differs in its outermost p2 rows and columns (p2: the second's padding) and the layers after
  spread that. Such pairs are left alone unless `approximate=True`; the report then gives the difference.

What is left alone: anything between the layers that is not an off slot (pooling, flatten, a live slot), a
residual block's skip connection (the sum is not a layer in a sequence: folds happen inside a block's own
chain of layers, never across it), grouped or dilated convolutions, and models whose forward is the user's code
(models by reference). The layers read in order are an nn.Sequential's (relulab's own models are built of them)
and, in the blocks of relulab.zoo.cifar_nets, the chains listed in BLOCK_CHAINS.

The result is an ordinary module of the same class (a SlotNet with fewer layers in its body), in eval mode. Folding
depends only on the structure and the placement, never on the weights: `fold_structure` does the same folds to a
freshly built model, which is how a folded checkpoint is read back (relulab.training.checkpoints).
"""
from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from relulab.core.errors import UserError
from relulab.zoo import cifar_nets
from relulab.zoo.models import MODELS, Slot, SlotNet

# The modules that compute y = A x + b and can take a neighbour in.
LINEAR_LAYERS = (nn.Linear, nn.Conv2d)
BATCH_NORMS = {nn.BatchNorm1d: nn.Linear, nn.BatchNorm2d: nn.Conv2d}  # a batch norm -> the layer it folds into
# Inside these blocks, the attributes that `forward` applies one after the other (cifar_nets' forward methods).
BLOCK_CHAINS: dict[type, tuple[tuple[str, ...], ...]] = {
    cifar_nets.ConvBN: (("conv", "bn", "relu"),),
    cifar_nets.BasicBlock: (("conv1", "bn1", "relu1", "conv2", "bn2"),),
}
PROBE_EXAMPLES = 32
PROBE_SEED = 0


@dataclass
class Merge:
    """Layers of the original model (their module paths) that became one layer."""

    layers: list[str]
    into: str  # what they became, e.g. "Linear(300 -> 100)"
    exact: bool = True


@dataclass
class FoldReport:
    merges: list[Merge]
    left_alone: list[str]  # off slots that did not fold, and why
    layers_before: int  # dense, convolution and batch norm layers
    layers_after: int
    params_before: int
    params_after: int
    approximate: bool  # whether approximate merges were allowed
    max_abs_diff: float = float("nan")  # folded vs original on the probe batch, in the model's dtype
    max_abs_diff_float64: float = float("nan")  # the same with both models in float64: the fold's own error
    max_abs_output: float = float("nan")  # the original's largest output on the probe batch, for scale
    probe: str = ""

    @property
    def exact(self) -> bool:
        return all(m.exact for m in self.merges)

    def to_dict(self) -> dict:
        return {**asdict(self), "exact": self.exact}

    def lines(self) -> list[str]:
        out = [f"layers {self.layers_before} -> {self.layers_after} (dense, convolution and batch norm), "
               f"parameters {self.params_before:,} -> {self.params_after:,}"]
        out += [f"merged {' + '.join(m.layers)} -> {m.into}" + ("" if m.exact else " (approximate)")
                for m in self.merges]
        out += [f"left alone: {note}" for note in self.left_alone]
        out.append(f"max |folded - original| on {self.probe}: {self.max_abs_diff:.3g} "
                   f"({self.max_abs_diff_float64:.3g} in float64; outputs up to {self.max_abs_output:.3g})")
        return out


def fold(model: nn.Module, approximate: bool = False, example_input: Optional[torch.Tensor] = None
         ) -> tuple[nn.Module, FoldReport]:
    """A copy of `model` with its linear stretches folded (see the module docstring), and what was done.
    `example_input`: the probe batch the outputs are compared on; by default PROBE_EXAMPLES standard normal
    examples of the model's input shape. The model given is left as it was."""
    folded, report = _fold_copy(model, approximate)
    probe = _probe_batch(model, example_input)
    report.probe = f"{len(probe)} examples of shape {list(probe.shape[1:])}"
    report.max_abs_diff, report.max_abs_output = _difference(model, folded, probe)
    report.max_abs_diff_float64, _ = _difference(copy.deepcopy(model).double(), copy.deepcopy(folded).double(),
                                                 probe.double())
    return folded, report


def fold_structure(model: nn.Module, approximate: bool = False) -> nn.Module:
    """The folds `fold` does, without the comparison: a freshly built model becomes one that a folded
    checkpoint's weights load into."""
    return _fold_copy(model, approximate)[0]


def _fold_copy(model: nn.Module, approximate: bool) -> tuple[nn.Module, FoldReport]:
    _check_foldable(model)
    folded = copy.deepcopy(model).eval()
    merges: list[Merge] = []
    kept_off: dict[int, Optional[str]] = {}  # id of an off slot still there -> why (None: a refusal says)
    refused: list[str] = []  # layer pairs that could have merged, and why they did not
    for parent, names, paths in _chains(folded):
        _fold_chain(parent, names, paths, approximate, merges, kept_off, refused)
    report = FoldReport(merges, refused + _left_alone(folded, kept_off), layer_count(model), layer_count(folded),
                        _params(model), _params(folded), approximate)
    if not merges:
        raise UserError(f"{_what(model)}: nothing to fold: expected an off (identity) slot between two dense or "
                        f"two convolution layers, or a batch norm beside one{_hint(report)}")
    return folded, report


def _check_foldable(model: nn.Module) -> None:
    if isinstance(model, SlotNet) and not isinstance(model.body, nn.Sequential):
        raise UserError(f"{_what(model)}: expected a SlotNet whose body is an nn.Sequential of layers")
    spec = getattr(model, "spec", None)
    by_reference = getattr(spec, "name", None) in MODELS and MODELS[spec.name].by_reference
    # an nn.Sequential subclass (a slotified one too) may run a forward of its own
    if by_reference or not (isinstance(model, SlotNet) or type(model) is nn.Sequential):
        raise UserError(f"{_what(model)}: fold takes relulab's own models (a SlotNet whose body is a sequence of "
                        "layers: deep-mlp, bn-mlp, seed-cnn, resnet20, ...) or a plain nn.Sequential; a model by "
                        "reference runs the user's own forward, which fold cannot read")


def _what(model: nn.Module) -> str:
    spec = getattr(model, "spec", None)
    return f"model {spec.name}" if getattr(spec, "name", None) else f"model {type(model).__name__}"


def _hint(report: FoldReport) -> str:
    notes = [n for n in report.left_alone if "approximate" in n]
    return f" ({notes[0]})" if notes else ""


# ---------------------------------------------------------------- the chains of layers applied in order


def _chains(root: nn.Module):
    """(parent, child names, their paths) for every run of layers that forward applies one after another:
    an nn.Sequential's children, and BLOCK_CHAINS' attributes. Listed before any is changed."""
    found = []
    for path, module in root.named_modules():
        prefix = f"{path}." if path else ""
        if isinstance(module, nn.Sequential):
            names = list(module._modules)
            found.append((module, names, [prefix + n for n in names]))
        for names in BLOCK_CHAINS.get(type(module), ()):
            found.append((module, list(names), [prefix + n for n in names]))
    return found


@dataclass
class _Item:
    name: str  # the attribute in the parent
    module: nn.Module
    sources: list[str] = field(default_factory=list)  # paths in the original model that are in it
    exact: bool = True  # whether the layers in it compute exactly what they did apart


def _transparent(module: nn.Module) -> bool:
    return isinstance(module, nn.Identity) or (isinstance(module, Slot) and module.off)


def _fold_chain(parent: nn.Module, names: list[str], paths: list[str], approximate: bool, merges: list[Merge],
                kept_off: dict[int, Optional[str]], refused: list[str]) -> None:
    items = [_Item(n, parent._modules[n], [p]) for n, p in zip(names, paths)]
    order = {p: i for i, p in enumerate(paths)}
    notes: list[tuple[_Item, str]] = []
    items = _pass(items, _bn_backward, order)
    items = _pass(items[::-1], _bn_forward, order)[::-1]
    items = _pass(items, lambda a, b: _merge_layers(a, b, approximate, notes), order)
    for item in items:
        if isinstance(item.module, Slot) and item.module.off:
            kept_off[id(item.module)] = _why_kept(items, item, {id(i) for i, _ in notes})
    refused += [note for _, note in notes]
    joined = [Merge(i.sources, _describe(i.module), i.exact) for i in items if len(i.sources) > 1]
    if joined:
        merges += joined
        _put_back(parent, names, items)


def _pass(items: list[_Item], join: Callable, order: dict[str, int]) -> list[_Item]:
    """Walk the chain, joining each layer to the last layer kept before it (past off slots) where `join`
    (kept, item) gives a module. Off slots between joined layers go, as they compute nothing."""
    out: list[_Item] = []
    for item in items:
        last = next((i for i in range(len(out) - 1, -1, -1) if not _transparent(out[i].module)), None)
        joined = None if last is None or _transparent(item.module) else join(out[last], item)
        if joined is None:
            out.append(item)
            continue
        module, exact = joined
        kept, between = out[last], out[last + 1:]
        sources = sorted(kept.sources + [s for b in between for s in b.sources] + item.sources, key=order.get)
        # The joined layer sits where the kept layer did: a batch norm folded forward goes to the layer after it,
        # past any live slot between, and everything left between them computes nothing.
        out[last:] = [_Item(kept.name, module, sources, kept.exact and item.exact and exact)]
    return out


def _put_back(parent: nn.Module, names: list[str], items: list[_Item]) -> None:
    """The folded chain in the model: a Sequential holds the layers that are left (numbered afresh where it was
    numbered); a block's attributes that went become nn.Identity, so that its forward still runs."""
    if isinstance(parent, nn.Sequential):
        numbered = all(n.isdigit() for n in names)
        parent._modules.clear()
        for index, item in enumerate(items):
            parent.add_module(str(index) if numbered else item.name, item.module)
        return
    kept = {item.name: item.module for item in items}
    for name in names:
        setattr(parent, name, kept.get(name, nn.Identity()))


def _left_alone(folded: nn.Module, kept_off: dict[int, str]) -> list[str]:
    notes = []
    for module in folded.modules():
        if isinstance(module, Slot) and module.off:
            why = kept_off.get(id(module), "not between layers that fold reads in order (e.g. after a residual sum)")
            if why is not None:
                notes.append(f"{module.label}: {why}")
    return notes


def _why_kept(items: list[_Item], slot: _Item, refused: set[int]) -> Optional[str]:
    """Why an off slot is still there; None where the layers around it were refused a merge (that note says)."""
    at = items.index(slot)
    before = next((i for i in items[:at][::-1] if not _transparent(i.module)), None)
    after = next((i for i in items[at + 1:] if not _transparent(i.module)), None)
    if after is not None and id(after) in refused:
        return None
    names = [f"{type(i.module).__name__} {i.sources[0]}" if i else "nothing" for i in (before, after)]
    return f"between {names[0]} and {names[1]}: not two dense or two convolution layers"


def _describe(module: nn.Module) -> str:
    if isinstance(module, nn.Linear):
        return f"Linear({module.in_features} -> {module.out_features})"
    return (f"Conv2d({module.in_channels} -> {module.out_channels}, kernel {tuple(module.kernel_size)}, "
            f"stride {tuple(module.stride)}, padding {tuple(module.padding)})")


# ---------------------------------------------------------------- the folds, in float64


def _bn_affine(bn: nn.Module) -> Optional[tuple[torch.Tensor, torch.Tensor]]:
    """BN(x) = scale * x + shift per channel, from the running statistics; None if it has none."""
    if not bn.track_running_stats or bn.running_mean is None:
        return None
    var, mean = bn.running_var.double(), bn.running_mean.double()
    weight = bn.weight.double() if bn.weight is not None else torch.ones_like(var)
    bias = bn.bias.double() if bn.bias is not None else torch.zeros_like(var)
    scale = weight / torch.sqrt(var + bn.eps)
    return scale, bias - mean * scale


def _bn_backward(kept: _Item, item: _Item):
    """A batch norm after a dense or convolution layer: scale its rows, shift its bias."""
    layer, bn = kept.module, item.module
    if BATCH_NORMS.get(type(bn)) is not type(layer) or _out_width(layer) != bn.num_features:
        return None
    affine = _bn_affine(bn)
    if affine is None:
        return None
    scale, shift = affine
    weight = layer.weight.double() * scale.view(-1, *[1] * (layer.weight.dim() - 1))
    bias = _bias(layer) * scale + shift
    return _like(layer, weight, bias), True


def _bn_forward(kept: _Item, item: _Item):
    """Walking backwards: `kept` is the layer after the batch norm `item`; it takes the batch norm in where its
    input is not padded (a padded convolution sees zeros, not the batch norm's shift)."""
    layer, bn = kept.module, item.module
    if BATCH_NORMS.get(type(bn)) is not type(layer) or _in_width(layer) != bn.num_features:
        return None
    if isinstance(layer, nn.Conv2d) and (_padding(layer) != (0, 0) or layer.groups != 1):
        return None
    affine = _bn_affine(bn)
    if affine is None:
        return None
    scale, shift = affine
    weight = layer.weight.double()
    shape = (1, -1) + (1,) * (weight.dim() - 2)
    bias = _bias(layer) + weight.flatten(2).sum(2) @ shift if weight.dim() > 2 else _bias(layer) + weight @ shift
    return _like(layer, weight * scale.view(shape), bias), True


def _merge_layers(kept: _Item, item: _Item, approximate: bool, notes: list):
    first, second = kept.module, item.module
    if isinstance(first, nn.Linear) and isinstance(second, nn.Linear):
        return _merge_dense(first, second)
    if isinstance(first, nn.Conv2d) and isinstance(second, nn.Conv2d):
        problem, exact = _conv_problem(first, second)
        if problem is None and (exact or approximate):
            return _merge_convs(first, second, exact), exact
        pair = f"Conv2d {kept.sources[0]} and Conv2d {item.sources[0]}"
        notes.append((item, f"{pair}: {problem}" if problem else f"{pair}: the second pads by {_padding(second)}, "
                      "so one convolution for both differs at the borders; merged only with approximate=True"))
    return None


def _merge_dense(first: nn.Linear, second: nn.Linear):
    if first.out_features != second.in_features:
        return None
    w2 = second.weight.double()
    weight = w2 @ first.weight.double()
    bias = w2 @ _bias(first) + _bias(second) if first.bias is not None or second.bias is not None else None
    return _linear(first.in_features, second.out_features, weight, bias, first.weight), True


def _conv_problem(first: nn.Conv2d, second: nn.Conv2d) -> tuple[Optional[str], bool]:
    """(why the two cannot merge, or None; whether merging is exact)."""
    if isinstance(first.padding, str) or isinstance(second.padding, str):
        return "a convolution with padding given by name ('same'): not merged", False
    if first.groups != 1 or second.groups != 1 or tuple(first.dilation) != (1, 1) or tuple(second.dilation) != (1, 1):
        return "grouped or dilated convolutions: not merged", False
    if tuple(first.stride) != (1, 1):
        return f"the first convolution strides {tuple(first.stride)}: not merged", False
    if first.out_channels != second.in_channels:
        return "the convolutions' channels do not match", False
    if _padding(second) == (0, 0):
        return None, True
    if second.padding_mode != "zeros" or (_padding(first) != (0, 0) and first.padding_mode != "zeros"):
        return "a padded convolution that does not pad with zeros: not merged", False
    return None, False


def _merge_convs(first: nn.Conv2d, second: nn.Conv2d, exact: bool) -> nn.Conv2d:
    w1, w2 = first.weight.double(), second.weight.double()
    kh, kw = w2.shape[-2:]
    # K[o, i] = sum over m of W2[o, m] convolved (full) with W1[m, i]
    weight = F.conv2d(w1.transpose(0, 1), w2.flip(-1, -2), padding=(kh - 1, kw - 1)).transpose(0, 1)
    has_bias = first.bias is not None or second.bias is not None
    bias = w2.sum((2, 3)) @ _bias(first) + _bias(second) if has_bias else None
    padding = _padding(first) if exact else tuple(a + b for a, b in zip(_padding(first), _padding(second)))
    mode = first.padding_mode if _padding(first) != (0, 0) else second.padding_mode
    conv = nn.Conv2d(first.in_channels, second.out_channels, tuple(weight.shape[-2:]), stride=second.stride,
                     padding=padding, padding_mode=mode, bias=has_bias,
                     device=first.weight.device, dtype=first.weight.dtype)
    return _load(conv, weight, bias)


def _padding(conv: nn.Conv2d) -> tuple:
    return tuple(conv.padding)


def _out_width(layer: nn.Module) -> int:
    return layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels


def _in_width(layer: nn.Module) -> int:
    return layer.in_features if isinstance(layer, nn.Linear) else layer.in_channels


def _bias(layer: nn.Module) -> torch.Tensor:
    if layer.bias is not None:
        return layer.bias.double()
    return torch.zeros(_out_width(layer), dtype=torch.float64, device=layer.weight.device)


def _like(layer: nn.Module, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> nn.Module:
    """A layer of `layer`'s kind and shape holding `weight` and `bias` (a bias added where it had none)."""
    if isinstance(layer, nn.Linear):
        return _linear(layer.in_features, layer.out_features, weight, bias, layer.weight)
    conv = nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride, layer.padding,
                     layer.dilation, layer.groups, bias=bias is not None, padding_mode=layer.padding_mode,
                     device=layer.weight.device, dtype=layer.weight.dtype)
    return _load(conv, weight, bias)


def _linear(fan_in: int, width: int, weight: torch.Tensor, bias: Optional[torch.Tensor], like: torch.Tensor):
    layer = nn.Linear(fan_in, width, bias=bias is not None, device=like.device, dtype=like.dtype)
    return _load(layer, weight, bias)


@torch.no_grad()
def _load(layer: nn.Module, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> nn.Module:
    layer.weight.copy_(weight)
    if bias is not None:
        layer.bias.copy_(bias)
    return layer.eval()


# ---------------------------------------------------------------- counting and comparing


def layer_count(model: nn.Module) -> int:
    """Dense, convolution and batch norm layers: what folding takes away."""
    return sum(isinstance(m, LINEAR_LAYERS + tuple(BATCH_NORMS)) for m in model.modules())


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _probe_batch(model: nn.Module, example_input: Optional[torch.Tensor]) -> torch.Tensor:
    if example_input is not None:
        return example_input.detach()
    shape = tuple(getattr(model, "input_shape", ()) or ())
    if not shape:
        raise UserError(f"{_what(model)}: give example_input (a batch the model takes): the model does not say "
                        "its input shape")
    param = next(model.parameters())
    generator = torch.Generator().manual_seed(PROBE_SEED)
    return torch.randn((PROBE_EXAMPLES, *shape), generator=generator).to(param.device, param.dtype)


@torch.no_grad()
def _difference(model: nn.Module, folded: nn.Module, probe: torch.Tensor) -> tuple[float, float]:
    """(max |folded - original|, max |original|) on `probe`, both in eval mode (the model's mode is restored)."""
    was_training = model.training
    try:
        reference = model.eval()(probe)
        out = folded.eval()(probe)
    finally:
        model.train(was_training)
    return float((out - reference).abs().max()), float(reference.abs().max())
