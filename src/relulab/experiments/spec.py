"""Experiment specs as written: YAML read safely (YAML 1.2's core schema, no duplicate keys, bounded in size,
depth and alias expansion), the built-in presets, and the command line's overrides.

    raw, base_dir, origin = read_spec("quickstart")   # a preset, or a path to a .yaml
    raw, run_sets = apply_overrides(raw, Overrides(seeds=[0, 1]))

relulab.experiments.plan turns the raw mapping into an `Experiment` (validated and expanded); this module only
reads. README.md documents the format with a complete example.
"""
from __future__ import annotations

import copy
import re
from collections import Counter
from collections.abc import Hashable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Optional, Sequence

import yaml

from relulab.core.errors import UserError, unknown_choice
from relulab.core.ranges import INT64_MAX, MAX_ITEMS, parse_ranges, show_int
from relulab.core.util import human_bytes
from relulab.data import DataSpec
from relulab.training.specs import TrainSpec
from relulab.zoo.models import ModelSpec

SECTIONS = {"data": DataSpec, "model": ModelSpec, "train": TrainSpec}

# ---------------------------------------------------------------- reading specs

# A spec is a page of YAML. These bounds refuse, with one line and before anything is built, what is not one:
MAX_SPEC_BYTES = 1 << 20  # a data file named by mistake
MAX_DEPTH = 64  # relulab's own fields nest five deep; PyYAML's composer recurses, and 5000 levels would overflow it
MAX_VALUES = 100_000  # values with the aliases expanded: ten nested anchors of ten make ten billion (an alias bomb)


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2's core schema that refuses duplicate keys (YAML would silently keep the last)."""


_MERGE = "tag:yaml.org,2002:merge"


def _construct_mapping(loader: _UniqueKeyLoader, node, deep=False):
    seen = set()
    for key_node, _ in node.value:
        if key_node.tag == _MERGE:  # `<<: *base`: the keys written beside it override the merged ones
            continue
        key = loader.construct_object(key_node, deep=deep)
        if not isinstance(key, Hashable):
            break  # construct_mapping says so, with its line
        if key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)

# YAML 1.1 (PyYAML's) reads `off`, `on`, `yes`, `no` as booleans (so `off: [7, 10]` or `slots: {7: off}` would
# break), `1e-3` as text, `010` as 8, `1:30` as 90, `0b101` as 5, `1_000` as 1000 and `2024-01-01` as a date.
# Use YAML 1.2's core schema instead (int is tried before float, which would also match `10`), keeping 1.1's
# null and merge keys (`<<: *base`, widely used).
_INT_1_2 = r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$"
_CORE_SCHEMA = {  # tag -> (pattern, the characters such a scalar may start with)
    "tag:yaml.org,2002:bool": (r"^(?:true|True|TRUE|false|False|FALSE)$", "tTfF"),
    "tag:yaml.org,2002:int": (_INT_1_2, "-+0123456789"),
    "tag:yaml.org,2002:float": (r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
                                r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$", "-+0123456789."),
}
_KEPT_FROM_1_1 = ("tag:yaml.org,2002:null", _MERGE)
_UniqueKeyLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag in _KEPT_FROM_1_1]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
for _tag, (_pattern, _first) in _CORE_SCHEMA.items():
    _UniqueKeyLoader.add_implicit_resolver(_tag, re.compile(_pattern), list(_first))


def _construct_int(loader: _UniqueKeyLoader, node) -> int:
    """YAML 1.2's integers: decimal (`010` is 10), 0o octal, 0x hexadecimal."""
    text = loader.construct_scalar(node)
    base = {"0o": 8, "0x": 16}.get(text[:2], 10)
    try:
        return int(text[2:] if base != 10 else text, base)
    except ValueError:  # `!!int 0b101`, or more digits than Python converts (4300)
        problem = f"an integer of {len(text)} digits is more than relulab reads" if re.match(_INT_1_2, text) \
            else f"expected an integer such as 10, 0o17 or 0x1F, got {text!r}"
        raise yaml.constructor.ConstructorError(None, None, problem, node.start_mark) from None


_UniqueKeyLoader.add_constructor("tag:yaml.org,2002:int", _construct_int)


def parse_yaml(text: str, origin: str):
    """The value of a YAML text (a spec file, a --set value), refused with one line naming `origin` when it is
    not YAML, too big, nested too deep, or its aliases expand past MAX_VALUES."""
    if len(text) > MAX_SPEC_BYTES:
        raise UserError(f"{origin}: {human_bytes(len(text))} of YAML; relulab specs are at most "
                        f"{human_bytes(MAX_SPEC_BYTES)}")
    try:
        _check_events(text, origin)
        loader = _UniqueKeyLoader(text)  # noqa: S506 - a SafeLoader subclass
        try:
            node = loader.get_single_node()
            if node is None:
                return None
            _check_expansion(node, origin)
            return _as_tree(loader.construct_document(node))
        finally:
            loader.dispose()
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise UserError(f"{origin}: invalid YAML{where}: {getattr(e, 'problem', None) or e}") from None


def _check_events(text: str, origin: str) -> None:
    """Refuse nesting deeper than MAX_DEPTH and more than MAX_VALUES values as written, from the event stream:
    PyYAML parses without recursing (its composer would overflow the stack), though in time that grows with the
    square of the depth, so the reading stops at the first level too deep."""
    depth = values = 0
    for event in yaml.parse(text, Loader=_UniqueKeyLoader):
        values += isinstance(event, (yaml.ScalarEvent, yaml.CollectionStartEvent, yaml.AliasEvent))
        if values > MAX_VALUES:
            raise UserError(f"{origin}: more than {MAX_VALUES} values; relulab specs are smaller")
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_DEPTH:
                raise UserError(f"{origin}: nested more than {MAX_DEPTH} levels deep at line "
                                f"{event.start_mark.line + 1}; relulab specs nest at most {MAX_DEPTH}")
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1


def _children(node) -> list:
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return list(node.value) if isinstance(node, yaml.SequenceNode) else []


def _check_expansion(root, origin: str) -> None:
    """Refuse a composed document whose aliases would expand it past MAX_VALUES values or MAX_DEPTH levels, or
    make it contain itself. Each node is counted once (an alias is the node it names, so the count is memoised
    per node): a billion laughs costs a few dozen steps here, and would never finish being copied later."""
    size: dict[int, int] = {}  # id(node) -> values in it, aliases expanded
    depth: dict[int, int] = {}  # id(node) -> levels of collections in it, aliases expanded
    unfinished: set[int] = set()  # the path from the root to the node being counted
    stack = [(root, False)]
    while stack:  # depth first, without recursion: aliases can chain far deeper than the text nests
        node, counted_children = stack.pop()
        children = _children(node)
        if counted_children:
            unfinished.discard(id(node))
            size[id(node)] = 1 + sum(size[id(c)] for c in children)
            own_level = 1 if isinstance(node, yaml.CollectionNode) else 0
            depth[id(node)] = own_level + max((depth[id(c)] for c in children), default=0)
        elif id(node) in unfinished:
            raise UserError(f"{origin}: the value at line {node.start_mark.line + 1} contains itself through an "
                            "alias; write the values out")
        elif id(node) not in size:
            unfinished.add(id(node))
            stack.append((node, True))
            stack.extend((c, False) for c in children)
    if size[id(root)] > MAX_VALUES:
        raise UserError(f"{origin}: YAML aliases expand to more than {MAX_VALUES} values (an alias bomb?); write "
                        "the values out")
    if depth[id(root)] > MAX_DEPTH:
        raise UserError(f"{origin}: YAML aliases nest the values {depth[id(root)]} levels deep; relulab specs nest "
                        f"at most {MAX_DEPTH}")


def _as_tree(value):
    """The constructed value without shared parts: an alias becomes a copy, so that a --set on one use of an
    anchored mapping leaves the others as written (small: the expansion was bounded above)."""
    if isinstance(value, dict):
        return {key: _as_tree(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_as_tree(item) for item in value]
    return value


# A preset's former name -> its name. The presets were first named after the source each reproduces (seed000:
# source 000's protocol), which read as random seeds. The former names still work everywhere a preset is named
# (and as quickstart's part names), and a store made under one is still found (plan.load_experiment).
PRESET_ALIASES = {
    "seed000": "greedy-relu-cifar10",
    "seed001": "why-relu-fmnist",
    "seed002": "selu-vs-batchnorm",
    "seed004": "relu-explained",
}


def preset_names() -> list[str]:
    folder = resources.files("relulab") / "presets"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def preset_aliases(name: str) -> list[str]:
    """The former names of preset `name` (PRESET_ALIASES), oldest first."""
    return [former for former, current in PRESET_ALIASES.items() if current == name]


def resolve_part(name: str, names: Sequence[str]) -> str:
    """The part `name` names among `names`: itself, or the part a preset's former name stands for (quickstart's
    seed000 is its greedy-relu-cifar10 now); unknown names are returned as given, for the caller to refuse."""
    if name in names:
        return name
    current = PRESET_ALIASES.get(name)
    return current if current in names else name


def preset_text(name: str) -> str:
    return (resources.files("relulab") / "presets" / f"{name}.yaml").read_text(encoding="utf-8")


def read_spec(source: str) -> tuple[dict, Path, str]:
    """(raw mapping, folder that relative paths are relative to, origin) of a YAML file or a preset name."""
    path = Path(source).expanduser()
    if path.is_file():
        return _as_mapping(parse_yaml(read_spec_text(path), str(path)), str(path)), path.resolve().parent, \
            str(path.resolve())
    name = PRESET_ALIASES.get(source, source)
    if name in preset_names():
        return _as_mapping(parse_yaml(preset_text(name), f"preset {name}"), name), Path.cwd(), f"preset:{name}"
    if path.suffix in (".yaml", ".yml") or "/" in source:
        raise UserError(f"spec: {path} does not exist")
    raise unknown_choice("spec", source, [*preset_names(), *PRESET_ALIASES])


def read_spec_text(path: Path) -> str:
    """A spec file's text; a file too big to be a spec, a binary one or one not in UTF-8 is refused by name."""
    size = path.stat().st_size
    if size > MAX_SPEC_BYTES:  # before reading it: it may be a dataset
        raise UserError(f"{path}: {human_bytes(size)}, too big for a spec (at most {human_bytes(MAX_SPEC_BYTES)}); "
                        "is it a data file?")
    blob = path.read_bytes()
    if b"\0" in blob:
        raise UserError(f"{path}: a binary file, not a YAML spec")
    try:
        return blob.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not a UTF-8 text file (byte 0x{blob[e.start]:02x} at offset {e.start})") from None


def _as_mapping(raw, origin: str) -> dict:
    if not isinstance(raw, dict):
        raise UserError(f"{origin}: expected a YAML mapping (name:, data:, model:, ...), got {type(raw).__name__}")
    return raw


# ---------------------------------------------------------------- overrides


@dataclass
class Overrides:
    """What the command line changes in a spec. `sets` are 'dotted.key=value' (value parsed as YAML)."""

    seeds: Optional[list[int]] = None  # every part's seeds
    epochs: Optional[int] = None
    device: Optional[str] = None
    data_path: Optional[str] = None  # relative to the current directory
    store: Optional[str] = None
    sets: list[str] = field(default_factory=list)
    parts: list[str] = field(default_factory=list)  # run only these parts
    yes: bool = False  # plan more than PLAN_LIMIT runs
    keep_weights: Optional[bool] = None  # the spec's keep_weights (--keep-weights/--no-keep-weights)


def _split_set(item: str) -> tuple[str, object]:
    key, eq, text = item.partition("=")
    if not eq or not key.strip():
        raise UserError(f"--set: expected KEY=VALUE such as model.widths=[64,64], got {item!r}")
    if not text.strip():  # `--set model.widths=` reads as a default by accident; null says so on purpose
        raise UserError(f"--set {key.strip()}: expected a value after '=' (null resets a field to its default)")
    return key.strip(), parse_yaml(text, f"--set {key.strip()}")


def apply_overrides(raw: dict, o: Overrides) -> tuple[dict, dict]:
    """(raw spec with spec-level overrides, run-level overrides {dotted key: value} applied to every run)."""
    raw = copy.deepcopy(raw)
    run_sets: dict[str, object] = {}
    for item in o.sets:
        key, value = _split_set(item)
        if key == "data.path" and isinstance(value, str):
            value = str(Path(value).expanduser().resolve())  # typed at the prompt: relative to the current dir
        if key.split(".", 1)[0] in SECTIONS:
            run_sets[key] = value  # applied after configs and grid: the command line wins
        else:
            set_dotted(raw, key, value)
    if o.epochs is not None:
        run_sets["train.epochs"] = o.epochs
    if o.data_path is not None:
        run_sets["data.path"] = str(Path(o.data_path).expanduser().resolve())
    if o.device is not None:
        raw["device"] = o.device
    if o.keep_weights is not None:
        raw["keep_weights"] = o.keep_weights
    if o.seeds is not None:
        raw["seeds"] = list(o.seeds)
        for part in (raw.get("parts") or {}).values():
            if isinstance(part, dict):
                part["seeds"] = list(o.seeds)
    return raw, run_sets


# ---------------------------------------------------------------- mappings -> specs


def deep_merge(base: dict, patch: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):  # mappings merge; lists replace
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def set_dotted(mapping: dict, dotted: str, value) -> dict:
    keys = dotted.split(".")
    node = mapping
    for key in keys[:-1]:
        if not isinstance(node.get(key), dict):
            node[key] = {}
        node = node[key]
    node[keys[-1]] = value
    return mapping



SEED_BOUNDS = " (the store keeps them as 64-bit integers)"


def parse_seeds(value, path: str = "seeds") -> list[int]:
    """[0, 1, 2], 3 (= 0, 1, 2), '0,1,2', '0-4' or '0,5-9': at most MAX_ITEMS distinct seeds from 0 to INT64_MAX."""
    if isinstance(value, int) and not isinstance(value, bool):
        if not 1 <= value <= MAX_ITEMS:
            raise UserError(f"{path}: a number of seeds runs from 1 to {MAX_ITEMS}, got {show_int(value)}")
        return list(range(value))
    if isinstance(value, str):
        value = parse_ranges(value, path, noun="seeds", expected="seeds like 0,1,2 or 0-4", bounds=SEED_BOUNDS)
    if not isinstance(value, list) or not value or not all(
            isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in value):
        raise UserError(f"{path}: expected a non-empty list of integers >= 0, got {value!r}")
    too_big = [s for s in value if s > INT64_MAX]
    if too_big:
        raise UserError(f"{path}: seeds run from 0 to {INT64_MAX}{SEED_BOUNDS}, got {show_int(too_big[0])}")
    if len(value) > MAX_ITEMS:
        raise UserError(f"{path}: {len(value)} seeds; at most {MAX_ITEMS}")
    twice = [s for s, n in Counter(value).items() if n > 1]
    if twice:
        raise UserError(f"{path}: seeds repeat: {twice[0]} is given twice")
    return list(value)

