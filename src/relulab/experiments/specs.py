"""Experiments: a YAML spec (or a built-in preset) -> configurations x seeds -> runs in the store.

    exp = load_experiment("quickstart", Overrides(seeds=[0, 1]))   # a preset, or a path to a .yaml
    summary = run_experiment(exp)          # re-run after any interruption: finished runs are skipped

A spec has a base `data` / `model` / `train` (the fields of DataSpec, ModelSpec,
TrainSpec and OptimizerSpec), `configs` (named patches over the base), an optional
`grid` (dotted keys -> lists of values; cartesian product, applied to every config),
`seeds`, and a `baseline` configuration the others are compared with. A spec with
`parts` holds several such experiments that share one store and one report (the
quickstart); top-level part fields are then defaults for every part. README.md
documents the format with a complete example.

Validation happens before anything is written: unknown keys and bad values are
`UserError`s naming the field (`configs.relu-he.model.activaton: unknown field`),
every dataset is loaded and every model built once. Each run is keyed by a hash of
its resolved config plus its seed (`run_key`); the sweep trains only keys the store
does not have, and claims each key first, so two processes on one store share the work
(store.py explains the guarantees). Where runs train is an executor's business
(relulab.executors: in this process through `train.train_many`, or on a Ray cluster);
this process alone writes the store, whichever executor trained the runs, and keeps each run's
weights beside it (relulab.weights; the spec's `keep_weights`).
"""
from __future__ import annotations

import copy
import hashlib
import itertools
import json
import math
import os
import re
import sys
import time
from collections import Counter
from collections.abc import Hashable
from dataclasses import MISSING, asdict, dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

import torch
import yaml

from relulab.experiments import analyses as analyses_mod
from relulab.probes import statistics as probes_mod
from relulab.zoo.activations import canonical_name as canonical_activation
from relulab.data import DataSpec, Splits, data_key, load_data
from relulab.core.env import device_name, provenance
from relulab.core.errors import UserError, unknown_choice
from relulab.experiments.executors import Executor, InProcessExecutor, SlotProbe
from relulab.zoo.models import ModelSpec, build_model
from relulab.zoo.optim import OptimizerSpec
from relulab.core.ranges import INT64_MAX, MAX_ITEMS, parse_ranges, show_int
from relulab.training.resume import Resume, discard_finished
from relulab.store import Finished, Store, timing_key
from relulab.training.loop import time_alone
from relulab.core.mapping import check_keys, check_mapping
from relulab.training.specs import Job, RunSpec, TrainSpec, build_run_spec
from relulab.store.weights import Keeper, check_keep_weights
from relulab.core.util import human_bytes

SECTIONS = {"data": DataSpec, "model": ModelSpec, "train": TrainSpec}
PART_FIELDS = ("description", "data", "model", "train", "seeds", "configs", "grid", "baseline", "probes",
               "probe_size", "analyses")
TOP_FIELDS = ("name", "description", "device", "threads", "pack", "time_alone", "store", "checkpoint_every",
              "keep_weights", "parts") + PART_FIELDS[1:]
CHECKPOINT_EVERY_S = 60.0  # the default period of saving training in progress (relulab.resume)
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")  # safe in file names, tables and URLs


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


def preset_names() -> list[str]:
    folder = resources.files("relulab") / "presets"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def preset_text(name: str) -> str:
    return (resources.files("relulab") / "presets" / f"{name}.yaml").read_text(encoding="utf-8")


def read_spec(source: str) -> tuple[dict, Path, str]:
    """(raw mapping, folder that relative paths are relative to, origin) of a YAML file or a preset name."""
    path = Path(source).expanduser()
    if path.is_file():
        return _as_mapping(parse_yaml(read_spec_text(path), str(path)), str(path)), path.resolve().parent, \
            str(path.resolve())
    if source in preset_names():
        return _as_mapping(parse_yaml(preset_text(source), f"preset {source}"), source), Path.cwd(), \
            f"preset:{source}"
    if path.suffix in (".yaml", ".yml") or "/" in source:
        raise UserError(f"spec: {path} does not exist")
    raise unknown_choice("spec", source, preset_names())


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
            _set_dotted(raw, key, value)
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


def _deep_merge(base: dict, patch: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):  # mappings merge; lists replace
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _set_dotted(mapping: dict, dotted: str, value) -> dict:
    keys = dotted.split(".")
    node = mapping
    for key in keys[:-1]:
        if not isinstance(node.get(key), dict):
            node[key] = {}
        node = node[key]
    node[keys[-1]] = value
    return mapping


# Bump when a field's default changes meaning: keys leave defaults out (see canonical_spec).
KEY_VERSION = 1


def _without_defaults(values: dict, cls) -> dict:
    defaults = {f.name: f.default if f.default is not MISSING else f.default_factory()
                for f in fields(cls) if f.default is not MISSING or f.default_factory is not MISSING}
    return {k: v for k, v in values.items() if k not in defaults or v != defaults[k]}


def canonical_spec(spec: RunSpec) -> dict:
    """The resolved config that identifies a run: spellings resolved, fields at their default left out (so a
    new option with a neutral default does not orphan the runs already stored), nothing cosmetic."""
    d = spec.to_dict()
    d["data"].pop("download", None)  # where files come from does not change the run
    d["model"]["activation"] = canonical_activation(spec.model.activation)
    d["model"]["init"] = spec.model.kernel_init()
    d["model"]["slots"] = {str(k): canonical_activation(v) for k, v in sorted(spec.model.slots.items())}
    d["train"]["optimizer"] = _without_defaults({**d["train"]["optimizer"],
                                                 "lr": spec.train.optimizer.resolved_lr()}, OptimizerSpec)
    return {"data": _without_defaults(d["data"], DataSpec), "model": _without_defaults(d["model"], ModelSpec),
            "train": _without_defaults(d["train"], TrainSpec)}


def run_key(spec: RunSpec, seed: int, probes: tuple = (), probe_size: int = 0) -> str:
    """Hash of the resolved config plus the seed: the run's identity in the store."""
    payload = {"spec": canonical_spec(spec), "seed": seed, "version": KEY_VERSION}
    if probes:  # what is measured during training is part of what the run produced
        payload["probes"] = {"stats": sorted(probes), "size": probe_size}
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


# ---------------------------------------------------------------- the expanded experiment


@dataclass
class Variant:
    """One configuration: a config patch at one grid point."""

    name: str
    config: str
    grid: dict
    spec: RunSpec


@dataclass
class PlannedRun:
    part: "Part"
    variant: Variant
    seed: int
    key: str


@dataclass
class Part:
    name: str
    description: str
    seeds: list[int]
    variants: list[Variant]
    baseline: Optional[str]
    probes: list[str]
    probe_size: int
    analyses: dict[str, dict]

    @property
    def val_is_test(self) -> bool:
        return any(v.spec.data.split == "test" for v in self.variants)

    def baseline_of(self, variant: Variant) -> Optional[Variant]:
        """The variant `variant` is compared with: the named one, or the baseline config at the same grid point."""
        if self.baseline is None:
            return None
        for v in self.variants:
            if v.name == self.baseline or (v.config == self.baseline and v.grid == variant.grid):
                return None if v is variant else v
        return None

    def planned(self) -> list[PlannedRun]:
        key = lambda v, s: run_key(v.spec, s, tuple(self.probes), self.probe_size)  # noqa: E731
        return [PlannedRun(self, v, s, key(v, s)) for v in self.variants for s in self.seeds]

    def meta(self) -> dict:
        return {"name": self.name, "description": self.description, "seeds": self.seeds,
                "baseline": self.baseline, "probes": self.probes, "probe_size": self.probe_size,
                "analyses": self.analyses, "val_is_test": self.val_is_test,
                "variants": [{"name": v.name, "config": v.config, "grid": v.grid} for v in self.variants]}


@dataclass
class Experiment:
    name: str
    description: str
    device: str
    threads: Optional[int]
    pack: bool  # let train_many train same-shape models together (False: one by one, e.g. for timings)
    store: Path
    parts: list[Part]
    raw: dict  # the spec after command-line overrides, kept with the results
    origin: str
    run_overrides: dict = field(default_factory=dict)  # --set data/model/train fields, applied to every run
    checkpoint_every: Optional[float] = CHECKPOINT_EVERY_S  # seconds between saves of training in progress
    keep_weights: object = "auto"  # auto | True | False: keep finished runs' weights (relulab.weights)
    time_alone: bool = True  # time each configuration that trained packed by itself too (time_packed_configs)

    @property
    def resume(self) -> Optional[Resume]:
        """Where runs and packs in progress are saved (`<store>.progress/` beside the store), or None (off)."""
        if self.checkpoint_every is None:
            return None
        return Resume(str(self.store.with_name(f"{self.store.stem}.progress")), self.checkpoint_every)

    def planned(self) -> list[PlannedRun]:
        return [p for part in self.parts for p in part.planned()]

    def plan_rows(self) -> list[dict]:
        rows = []
        for position, p in enumerate(self.planned()):
            base = p.part.baseline_of(p.variant)
            rows.append({"experiment": self.name, "part": p.part.name, "variant": p.variant.name, "seed": p.seed,
                         "run_key": p.key, "position": position, "config": p.variant.config,
                         "baseline": base.name if base else None,
                         "spec_json": config_json(p.variant.spec)})
        return rows


def config_json(spec: RunSpec) -> str:
    """A configuration (a spec without its seed) as the plan stores it; timings are keyed by it."""
    return json.dumps(spec.to_dict(), sort_keys=True)


def _check_name(value, path: str) -> str:
    if not isinstance(value, str) or not NAME_RE.match(value):
        raise UserError(f"{path}: expected a name of letters, digits and . _ + - (starting with a letter or digit),"
                        f" got {value!r}")
    return value


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


def seeds_from_options(seeds: Optional[str], seed: Sequence[str] = ()) -> Optional[list[int]]:
    """The command line's seeds: `--seeds 0-4` and each `--seed N` (a list or range too), merged, read by
    parse_seeds; a seed given twice is refused. None when neither option is given."""
    given = ([("--seeds", seeds)] if seeds is not None else []) + [("--seed", text) for text in seed]
    if not given:
        return None
    merged = [s for option, text in given for s in parse_seeds(text, option)]
    return parse_seeds(merged, "/".join(dict.fromkeys(option for option, _ in given)))


def _parse_grid(value, path: str) -> dict[str, list]:
    grid = check_mapping(value, path)
    for key, values in grid.items():
        if not isinstance(key, str) or key.split(".", 1)[0] not in SECTIONS or "." not in key:
            raise UserError(f"{path}.{key}: grid keys are dotted fields such as train.optimizer.lr or "
                            "model.activation")
        if not isinstance(values, list) or not values:
            raise UserError(f"{path}.{key}: expected a non-empty list of values, got {values!r}")
    return grid


def _grid_points(grid: dict[str, list]) -> Iterator[dict]:
    keys = list(grid)
    return (dict(zip(keys, combo)) for combo in itertools.product(*(grid[k] for k in keys)))


def _variant_name(config: str, point: dict, has_configs: bool) -> str:
    if not point:
        return config
    last = [k.rsplit(".", 1)[-1] for k in point]
    short = {k: (s if last.count(s) == 1 else k) for k, s in zip(point, last)}
    fmt = lambda v: ",".join(map(str, v)) if isinstance(v, list) else str(v)  # noqa: E731
    inner = ",".join(f"{short[k]}={fmt(v)}" for k, v in point.items())
    return f"{config}[{inner}]" if has_configs else inner


def _with_dotted(sections: dict, sets: dict) -> dict:
    out = copy.deepcopy(sections)
    for key, value in sets.items():
        _set_dotted(out, key, value)
    return out


def parse_part(name: str, raw: dict, prefix: str, base_dir: Path, run_sets: dict) -> Part:
    """One part of a spec: its base, configs x grid (validated layer by layer, so that an error names the
    layer it comes from: the base, a config, the grid or --set), seeds, baseline, probes and analyses."""
    base = {s: check_mapping(raw.get(s), f"{prefix}{s}") for s in SECTIONS}
    build_run_spec(base, prefix, base_dir)
    if run_sets:
        build_run_spec(_with_dotted(base, run_sets), "--set ", base_dir)
    variants = _expand(base, check_mapping(raw.get("configs"), f"{prefix}configs"),
                       _parse_grid(raw.get("grid"), f"{prefix}grid"), run_sets, prefix, base_dir)
    baseline = raw.get("baseline")
    if baseline is not None:
        choices = sorted({v.config for v in variants} | {v.name for v in variants})
        if baseline not in choices:
            raise unknown_choice(f"{prefix}baseline", baseline, choices)
    probe_size = _positive_int(raw.get("probe_size", 512), f"{prefix}probe_size")
    probes = raw.get("probes") or []
    if not isinstance(probes, list):
        raise UserError(f"{prefix}probes: expected a list of statistic names, got {probes!r}")
    return Part(name, _text(raw.get("description"), f"{prefix}description"),
                parse_seeds(raw.get("seeds", [0]), f"{prefix}seeds"), variants, baseline,
                probes_mod.check_stats(probes, f"{prefix}probes"), probe_size,
                analyses_mod.parse_analyses(raw.get("analyses"), f"{prefix}analyses"))


def _expand(base: dict, configs: dict, grid: dict, run_sets: dict, prefix: str, base_dir: Path) -> list[Variant]:
    """Every config at every grid point, the command line's fields applied last."""
    for key, values in grid.items():
        for value in values:
            build_run_spec(_with_dotted(base, {key: value}), f"{prefix}grid.", base_dir)
    variants = []
    for config, patch in (configs or {"base": {}}).items():
        cpath = f"{prefix}configs.{_check_name(config, f'{prefix}configs.{config}')}"
        patch = check_mapping(patch, cpath)
        check_keys(patch, list(SECTIONS), cpath)
        merged = _deep_merge(base, patch)
        build_run_spec(merged, f"{cpath}.", base_dir)
        for point in _grid_points(grid):
            spec = build_run_spec(_with_dotted(_with_dotted(merged, point), run_sets), f"{cpath}.", base_dir)
            variants.append(Variant(_variant_name(config, point, bool(configs)), config, point, spec))
    twice = sorted(name for name, n in Counter(v.name for v in variants).items() if n > 1)
    if twice:
        raise UserError(f"{prefix}grid: two configurations would both be called {twice[0]!r}")
    return variants


def _positive_int(value, path: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= INT64_MAX:
        shown = show_int(value) if isinstance(value, int) else repr(value)
        raise UserError(f"{path}: expected a positive integer, got {shown}")
    return value


def _check_threads(threads) -> Optional[int]:
    """`threads:` for torch, no more than this machine has cores (torch and libgomp fail in odd ways past it)."""
    if threads is None:
        return None
    threads = _positive_int(threads, "threads")
    cores = os.cpu_count() or 1
    if threads > cores:
        raise UserError(f"threads: {show_int(threads)} asked for; this machine has {cores} CPU "
                        f"core{'s' if cores != 1 else ''}")
    return threads


def _text(value, path: str) -> str:
    if value is not None and not isinstance(value, str):
        raise UserError(f"{path}: expected text, got {value!r}")
    return (value or "").strip()


def parse_experiment(raw: dict, base_dir: Path, origin: str, run_sets: Optional[dict] = None,
                     only_parts: tuple = (), store: Optional[str] = None, yes: bool = False) -> Experiment:
    """Validate a raw spec and expand it. Nothing is loaded or written. A plan of more than PLAN_LIMIT runs is
    refused unless `yes`."""
    check_keys(raw, TOP_FIELDS, "")
    name = _check_name(raw.get("name"), "name")
    run_sets = run_sets or {}
    for key in run_sets:
        section, _, rest = key.partition(".")
        if not rest:
            raise UserError(f"--set {key}: expected a field such as {section}.<field>")
    raw_parts = _raw_parts(raw, name)
    _check_plan_size(name, raw_parts, yes)
    parts = [parse_part(part_name, part_raw, prefix, base_dir, run_sets) for part_name, part_raw, prefix in raw_parts]
    if only_parts:
        unknown = [p for p in only_parts if p not in [q.name for q in parts]]
        if unknown:
            raise unknown_choice("--part", unknown[0], [q.name for q in parts])
        parts = [p for p in parts if p.name in only_parts]
    device = raw.get("device", "auto")
    if not isinstance(device, str):
        raise UserError(f"device: expected auto, cpu, cuda or cuda:N, got {device!r}")
    threads = _check_threads(raw.get("threads"))
    pack, time_alone = (_check_bool(raw.get(key, True), key) for key in ("pack", "time_alone"))
    return Experiment(name, _text(raw.get("description"), "description"), device, threads, pack,
                      _store_path(raw, name, base_dir, store), parts, raw, origin, dict(run_sets),
                      _check_checkpoint_every(raw.get("checkpoint_every", CHECKPOINT_EVERY_S)),
                      check_keep_weights(raw.get("keep_weights", "auto")), time_alone)


def _check_bool(value, path: str) -> bool:
    if not isinstance(value, bool):
        raise UserError(f"{path}: expected true or false, got {value!r}")
    return value


def _check_checkpoint_every(value) -> Optional[float]:
    """Seconds between saves of training in progress: a number >= 0 (0: after every epoch), or null (never)."""
    if value is None:
        return None
    if not (isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < math.inf):
        raise UserError(f"checkpoint_every: expected seconds (a number >= 0; 0: after every epoch) or null (never), "
                        f"got {value!r}")
    return float(value)


def _raw_parts(raw: dict, name: str) -> list[tuple[str, dict, str]]:
    """(name, raw spec, field prefix) of each part: one named after the experiment, or the `parts:` with the
    top-level part fields as defaults."""
    if "parts" not in raw:
        return [(name, raw, "")]
    defaults = {k: raw[k] for k in PART_FIELDS[1:] if k in raw}
    part_specs = check_mapping(raw["parts"], "parts")
    if not part_specs:
        raise UserError("parts: expected at least one part")
    parts = []
    for part_name, part_raw in part_specs.items():
        prefix = f"parts.{_check_name(part_name, f'parts.{part_name}')}."
        part_raw = check_mapping(part_raw, prefix[:-1])
        check_keys(part_raw, PART_FIELDS, prefix[:-1])
        parts.append((part_name, _deep_merge(defaults, part_raw), prefix))
    return parts


# Runs from which validating a plan takes long enough to say so, and past which it is refused without --yes
# (validating 40^4 grid points would take hours before the first run: more likely a typo than a plan).
PLAN_NOTE = 500
PLAN_LIMIT = 20_000


def _plan_factors(raw: dict, prefix: str) -> dict[str, int]:
    """{field: how many} of a part's configs, grid points and seeds, counted without expanding them."""
    configs = check_mapping(raw.get("configs"), f"{prefix}configs")
    grid = _parse_grid(raw.get("grid"), f"{prefix}grid")
    return {f"{prefix}configs": max(1, len(configs)), f"{prefix}grid": math.prod(len(v) for v in grid.values()),
            f"{prefix}seeds": len(parse_seeds(raw.get("seeds", [0]), f"{prefix}seeds"))}


def _factors_text(configs: int, points: int, seeds: int) -> str:
    return f"{configs} configs x {points} grid points x {seeds} seeds"


def _check_plan_size(name: str, parts: list[tuple[str, dict, str]], yes: bool) -> None:
    """Count the runs of the plan (configs x grid points x seeds) before each is validated: say how many when
    that takes a while, and refuse past PLAN_LIMIT unless `yes`."""
    factors = {part_name: _plan_factors(raw, prefix) for part_name, raw, prefix in parts}
    runs = {part_name: math.prod(f.values()) for part_name, f in factors.items()}
    total = sum(runs.values())
    if total > PLAN_LIMIT and not yes:
        biggest = factors[max(runs, key=runs.get)]
        field = max(biggest, key=biggest.get)  # the factor most likely to be the typo
        raise UserError(f"{field}: the plan has {total} runs (more than {PLAN_LIMIT}); pass --yes to run it anyway")
    if total > PLAN_NOTE:
        said = "; ".join((f"{part_name}: " if len(parts) > 1 else "") + _factors_text(*f.values())
                         for part_name, f in factors.items())
        _log(f"{name}: {total} runs to plan ({said}); validating them")


def _store_path(raw: dict, name: str, base_dir: Path, store: Optional[str]) -> Path:
    """--store (relative to the current dir), else the spec's `store:` (relative to its folder), else runs/."""
    if store is not None:
        return Path(store).expanduser().resolve()
    if raw.get("store"):
        return base_dir.joinpath(Path(str(raw["store"])).expanduser()).resolve()
    return (Path.cwd() / "runs" / f"{name}.sqlite").resolve()


def load_experiment(source: str, overrides: Optional[Overrides] = None) -> Experiment:
    """Read a spec file or preset, apply command-line overrides, validate and expand it."""
    overrides = overrides or Overrides()
    raw, base_dir, origin = read_spec(source)
    raw, run_sets = apply_overrides(raw, overrides)
    return parse_experiment(raw, base_dir, origin, run_sets, tuple(overrides.parts), overrides.store, overrides.yes)


# ---------------------------------------------------------------- running it


def prepare(exp: Experiment) -> dict[str, Splits]:
    """Load every dataset the experiment uses and build every model once, so that a bad
    dataset or shape fails here, before the store is touched. Returns the splits by data key."""
    splits: dict[str, Splits] = {}
    built: set[str] = set()
    for part in exp.parts:
        for v in part.variants:
            key = data_key(v.spec.data)
            if key not in splits:
                splits[key] = load_data(v.spec.data)
            signature = key + json.dumps(v.spec.model.to_dict(), sort_keys=True, default=str)
            if signature in built:
                continue
            try:
                build_model(v.spec.model, splits[key].input_shape, splits[key].num_classes)
            except UserError as e:
                where = f"parts.{part.name}." if len(exp.parts) > 1 or part.name != exp.name else ""
                raise UserError(f"{where}configs.{v.config}: {e}") from None
            built.add(signature)
    return splits


_SlotProbe = SlotProbe  # moved to relulab.executors; the old name still works


@dataclass
class SweepSummary:
    store: Path
    planned: int = 0  # distinct runs in the plan
    already_done: int = 0
    trained: int = 0
    diverged: int = 0
    finished_elsewhere: int = 0  # a stale claim's owner came back and finished first


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def analysis_key(experiment: str, part: str, name: str, options: dict) -> str:
    """The store key of one analysis result of one part."""
    text = json.dumps([experiment, part, name, options], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def used_activations(part: Part) -> list[str]:
    """Every activation some slot of the part uses, in order of first appearance."""
    names: list[str] = []
    for v in part.variants:
        for act in [v.spec.model.activation, *v.spec.model.slots.values()]:
            name = canonical_activation(act)
            if name not in names:
                names.append(name)
    return names


def run_analyses(exp: Experiment, store: Store, device: torch.device, echo: Callable[[str], None]) -> None:
    for part in exp.parts:
        for name, options in part.analyses.items():
            analysis = analyses_mod.ANALYSES[name]
            key = analysis_key(exp.name, part.name, name, options)
            kept = store.artifact(key) if analysis.measured else None
            value = kept["value"] if kept else analysis.compute(options, used_activations(part), device)
            if not kept:
                store.save_artifact(key, exp.name, part.name, name, value, provenance(device))
            if value.get("lines"):
                echo(f"{part.name} / {name}:" + ("" if not kept else " (measured before, kept in the store)"))
                for line in value["lines"]:
                    echo(f"  {line}")


def run_experiment(exp: Experiment, log: Callable[[str], None] = _log, echo: Callable[[str], None] = print,
                   claim_size: Optional[int] = None, poll_s: float = 2.0,
                   executor: Optional[Executor] = None) -> SweepSummary:
    """Run every (configuration, seed) of `exp` that the store does not hold yet; results are committed as
    each run finishes. Safe to interrupt at any point and to run from several processes at once.

    `executor` says where runs train (relulab.executors): in this process (the default) or on a Ray
    cluster; either way this process alone writes the store. `claim_size`: run keys claimed at a time
    (default: the executor's choice, 64 in process, all for Ray)."""
    executor = executor if executor is not None else InProcessExecutor()
    splits_by_data = prepare(exp)
    try:
        where = executor.open(exp.device, splits_by_data)  # may refuse (no GPU, no cluster): nothing written yet
        keeper = Keeper(exp.store, exp.keep_weights, {key: s.classes for key, s in splits_by_data.items()}, log)
        timing_data = splits_by_data if exp.pack and exp.time_alone else {}  # for time_packed_configs
        del splits_by_data
        device = executor.driver_device
        if exp.threads:
            torch.set_num_threads(exp.threads)
        planned = _unique(exp.planned())
        summary = SweepSummary(exp.store, planned=len(planned))
        claim = claim_size if claim_size is not None else executor.claim_size
        with Store(exp.store) as store:
            store.save_plan(exp.name, exp.origin, exp.raw, [p.meta() for p in exp.parts], exp.plan_rows(),
                            exp.run_overrides)
            run_analyses(exp, store, device, echo)
            summary.already_done = len(store.done_keys(p.key for p in planned))
            log(f"{exp.name}: {len(planned)} runs ({summary.already_done} already in {exp.store}), {where}")
            store.start_heartbeat()
            groups = _by_data(planned).values() if executor.one_dataset_at_a_time else [planned]
            for group in groups:
                _sweep(store, exp, group, executor, summary, log, claim, poll_s, keeper)
            time_packed_configs(exp, store, device, timing_data, log)
            if exp.resume is not None:  # states of packs that formed otherwise, or that another process finished
                discard_finished(Path(exp.resume.folder), store.done_keys)
    finally:
        executor.close()
    return summary


def time_packed_configs(exp: Experiment, store: Store, device: torch.device, splits_by_data: dict[str, Splits],
                        log: Callable[[str], None]) -> None:
    """Each configuration's own time per epoch, beside its packed share: where the sweep trained a configuration's
    runs packed on this process's device, one model of it is timed alone (train.time_alone) and kept in the
    store's `timings` table, once per configuration and device. Runs that trained alone timed themselves, and
    runs trained on another device (a Ray worker's) cannot be timed from here."""
    if not (exp.pack and exp.time_alone):
        return
    where = device_name(device)
    on_device: tuple[str, Optional[Splits]] = ("", None)
    for spec_json, p in _packed_untimed(exp, store, where).items():
        key = data_key(p.variant.spec.data)
        if on_device[0] != key:  # one dataset on the device at a time
            on_device = ("", None)
            on_device = (key, splits_by_data[key].to(device))
        timing = time_alone(p.variant.spec, on_device[1], device, p.seed)
        store.save_timing({"config_key": timing_key(spec_json), "device": where, "spec_json": spec_json,
                           "method": TIMING_METHOD, **asdict(timing), "epoch_seconds": timing.epoch_seconds,
                           "provenance": provenance(device)})
        log(f"{p.part.name}/{p.variant.name} timed alone: {timing.epoch_seconds:.3g} s/epoch ({timing.steps} "
            f"steps and a validation pass on {where}; its packed runs' seconds are shares of a joint time)")


TIMING_METHOD = "train.time_alone: one model alone, train.run's step"


def _packed_untimed(exp: Experiment, store: Store, where: str) -> dict[str, PlannedRun]:
    """{configuration (config_json): a planned run of it} for the configurations with a run that trained packed
    on the device `where`, and no timing of theirs on it in the store yet."""
    planned = _unique(exp.planned())
    stored = store.runs(p.key for p in planned)
    packed: dict[str, PlannedRun] = {}
    for p in planned:
        row = stored.get(p.key)
        if row is not None and row["device"] == where and row["data"].get("trained_with", 1) > 1:
            packed.setdefault(config_json(p.variant.spec), p)
    timed = store.timings([timing_key(spec_json) for spec_json in packed])
    return {spec_json: p for spec_json, p in packed.items() if (timing_key(spec_json), where) not in timed}


def _unique(planned: list[PlannedRun]) -> list[PlannedRun]:
    seen, out = set(), []
    for p in planned:  # two variants may resolve to the same run: train it once
        if p.key not in seen:
            seen.add(p.key)
            out.append(p)
    return out


def _by_data(planned: list[PlannedRun]) -> dict[str, list[PlannedRun]]:
    groups: dict[str, list[PlannedRun]] = {}
    for p in planned:
        groups.setdefault(data_key(p.variant.spec.data), []).append(p)
    return groups


def _sweep(store: Store, exp: Experiment, group: list[PlannedRun], executor: Executor, summary: SweepSummary,
           log, claim_size: Optional[int], poll_s: float, keeper: Keeper) -> None:
    by_key = {p.key: p for p in group}
    pending = [p for p in group if p.key not in store.done_keys(by_key)]
    waiting_said = False
    while pending:
        keys = store.claim([p.key for p in pending], claim_size)
        if not keys:
            busy = store.claimed_by_others(p.key for p in pending)
            if busy and not waiting_said:
                log(f"waiting for {len(busy)} runs that another relulab process is running")
                waiting_said = True
            time.sleep(poll_s if busy else 0)
        else:
            _train_claimed(store, exp, [by_key[k] for k in keys], executor, summary, log, keeper)
        done = store.done_keys(p.key for p in pending)
        pending = [p for p in pending if p.key not in done]


def _train_claimed(store: Store, exp: Experiment, batch: list[PlannedRun], executor: Executor,
                   summary: SweepSummary, log, keeper: Keeper) -> None:
    """Train a claimed batch through the executor; commit each run as its outcome arrives, with its weights
    where `keeper` keeps them (here, and only here, results are written: whatever executor trained them)."""
    by_key = {p.key: p for p in batch}
    jobs = [Job(copy.deepcopy(p.variant.spec), p.seed, p.key) for p in batch]
    probes = {p.key: (tuple(p.part.probes), p.part.probe_size) for p in batch if p.part.probes}

    def still_wanted(pack: list[Job]) -> list[Job]:
        # Asked again as each pack starts: this process may have been paused past STALE_S since it claimed
        # them, and another one stored them or took them over. `claim` renews our claims, re-takes stale ones.
        keep = set(store.claim([job.key for job in pack]))
        if len(keep) < len(pack):
            log(f"{len(pack) - len(keep)} of this process's claimed runs were stored or taken over by another "
                f"process meanwhile: not training them here")
        return [job for job in pack if job.key in keep]

    try:
        tasks = executor.tasks(jobs, pack=exp.pack, probes=probes, threads=exp.threads, resume=exp.resume)
        for outcome in executor.submit(tasks, still_wanted=still_wanted):
            p, result = by_key[outcome.job.key], outcome.result
            staged = keeper.stage(p.key, result, outcome.final_weights())
            stored = store.record(Finished(p.key, exp.name, p.part.name, p.variant.name, result, outcome.slot_stats,
                                           staged))
            _count(summary, result, stored)
            log(_run_line(summary, p, result, stored))
    finally:
        store.release(by_key)  # claims of runs not finished (an error, Ctrl-C) go back at once


def _count(summary: SweepSummary, result, stored: bool) -> None:
    if not stored:
        summary.finished_elsewhere += 1
        return
    summary.trained += 1
    summary.diverged += result.history.diverged_at is not None


def _run_line(summary: SweepSummary, p: PlannedRun, result, stored: bool) -> str:
    h = result.history
    head = f"[{summary.already_done + summary.trained}/{summary.planned}] {p.part.name}/{p.variant.name} seed {p.seed}"
    if not stored:
        return f"{head}: another process stored this run first; result dropped"
    if h.diverged_at is not None:
        return f"{head}: DIVERGED at epoch {h.diverged_at} (loss not finite), {h.seconds:.1f} s"
    return f"{head}: best val acc {h.best_val_acc:.4f} (epoch {h.best_epoch}), final {h.final_val_acc:.4f}, " \
           f"{h.seconds:.1f} s"
