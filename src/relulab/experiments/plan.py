"""Experiments: a spec (relulab.experiments.spec) validated and expanded into configurations x seeds, each run
keyed by what identifies it.

    exp = load_experiment("quickstart", Overrides(seeds=[0, 1]))   # a preset, or a path to a .yaml
    exp.planned()                          # every (part, configuration, seed) with its run key

A spec has a base `data` / `model` / `train` (the fields of DataSpec, ModelSpec,
TrainSpec and OptimizerSpec), `configs` (named patches over the base), an optional
`grid` (dotted keys -> lists of values; cartesian product, applied to every config),
`seeds`, and a `baseline` configuration the others are compared with. A spec with
`parts` holds several such experiments that share one store and one report (the
quickstart); top-level part fields are then defaults for every part.

Validation happens before anything is written: unknown keys and bad values are
`UserError`s naming the field (`configs.relu-he.model.activaton: unknown field`),
and a plan is counted before it is expanded (PLAN_LIMIT). Each run is keyed by a hash of
its resolved config plus its seed (`run_key`): the store's identity of a run, shared by
sweeps, searches and probes.
"""
from __future__ import annotations

import copy
import hashlib
import itertools
import json
import math
import os
import sys
from collections import Counter
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Iterator, Optional

from relulab.core.errors import UserError, unknown_choice
from relulab.core.mapping import check_keys, check_mapping
from relulab.core.ranges import INT64_MAX, show_int
from relulab.core.util import check_name
from relulab.data import DataSpec
from relulab.experiments.analyses import parse_analyses
from relulab.experiments.spec import (SECTIONS, Overrides, apply_overrides, deep_merge, parse_seeds,
                                      preset_aliases, read_spec, resolve_part, set_dotted)
from relulab.probes.statistics import check_stats
from relulab.store import Store, StoreError
from relulab.store.weights import check_keep_weights
from relulab.training.resume import Resume
from relulab.training.specs import RunSpec, TrainSpec, build_run_spec
from relulab.zoo.activations import canonical_name as canonical_activation
from relulab.zoo.models import KEEP, ModelSpec
from relulab.zoo.optim import OptimizerSpec

PART_FIELDS = ("description", "data", "model", "train", "seeds", "configs", "grid", "baseline", "probes",
               "probe_size", "analyses")
TOP_FIELDS = ("name", "description", "device", "threads", "pack", "time_alone", "store", "checkpoint_every",
              "keep_weights", "parts") + PART_FIELDS[1:]
CHECKPOINT_EVERY_S = 60.0  # the default period of saving training in progress (relulab.resume)



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
    if spec.model.activation != KEEP:
        d["model"]["activation"] = canonical_activation(spec.model.activation)
    d["model"]["init"] = spec.model.kernel_init()
    d["model"]["slots"] = {str(k): canonical_activation(v) for k, v in spec.model.slots.items()}
    # A model or data by reference: its target and kwargs are fields, and so is its source's hash (`source_sha256`,
    # filled in by validation): an edited builder is a new configuration, not the old one's runs.
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
        set_dotted(out, key, value)
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
                check_stats(probes, f"{prefix}probes"), probe_size,
                parse_analyses(raw.get("analyses"), f"{prefix}analyses"))


def _expand(base: dict, configs: dict, grid: dict, run_sets: dict, prefix: str, base_dir: Path) -> list[Variant]:
    """Every config at every grid point, the command line's fields applied last."""
    for key, values in grid.items():
        for value in values:
            build_run_spec(_with_dotted(base, {key: value}), f"{prefix}grid.", base_dir)
    variants = []
    for config, patch in (configs or {"base": {}}).items():
        cpath = f"{prefix}configs.{check_name(config, f'{prefix}configs.{config}')}"
        patch = check_mapping(patch, cpath)
        check_keys(patch, list(SECTIONS), cpath)
        merged = deep_merge(base, patch)
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
    name = check_name(raw.get("name"), "name")
    run_sets = run_sets or {}
    for key in run_sets:
        section, _, rest = key.partition(".")
        if not rest:
            raise UserError(f"--set {key}: expected a field such as {section}.<field>")
    raw_parts = _raw_parts(raw, name)
    _check_plan_size(name, raw_parts, yes)
    parts = [parse_part(part_name, part_raw, prefix, base_dir, run_sets) for part_name, part_raw, prefix in raw_parts]
    if only_parts:
        only_parts = tuple(resolve_part(p, [q.name for q in parts]) for p in only_parts)
        unknown = [p for p in only_parts if p not in [q.name for q in parts]]
        if unknown:
            raise unknown_choice("overrides.parts", unknown[0], [q.name for q in parts])
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
        prefix = f"parts.{check_name(part_name, f'parts.{part_name}')}."
        part_raw = check_mapping(part_raw, prefix[:-1])
        check_keys(part_raw, PART_FIELDS, prefix[:-1])
        parts.append((part_name, deep_merge(defaults, part_raw), prefix))
    return parts


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


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
        raise UserError(f"{field}: the plan has {total} runs (more than {PLAN_LIMIT}); pass overrides.yes to run it "
                        "anyway")
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


def _stored_name(raw: dict, base_dir: Path, store: Optional[str]) -> object:
    """A renamed preset's name, or its former name where its store was made under that one (PRESET_ALIASES):
    the store's records (plan, runs, searches) carry the experiment's name, and its default file is named after
    it, so a store made before the rename goes on under the name it knows."""
    name = raw.get("name")
    if not isinstance(name, str) or _holds(_store_path(raw, name, base_dir, store), name):
        return name
    for former in preset_aliases(name):
        path = _store_path(raw, former, base_dir, store)
        if _holds(path, former):
            _log(f"{name}: the store {path} holds it under its former name {former}; going on under that name")
            return former
    return name


def _holds(path: Path, name: str) -> bool:
    """Whether the store at `path` exists and holds an experiment `name` (a store it cannot read: no)."""
    if not path.is_file():
        return False
    try:
        with Store(path, create=False) as store:
            return name in store.experiment_names()
    except StoreError:
        return False


def load_experiment(source: str, overrides: Optional[Overrides] = None) -> Experiment:
    """Read a spec file or preset, apply command-line overrides, validate and expand it."""
    overrides = overrides or Overrides()
    raw, base_dir, origin = read_spec(source)
    raw, run_sets = apply_overrides(raw, overrides)
    if origin.startswith("preset:"):
        raw["name"] = _stored_name(raw, base_dir, overrides.store)
    return parse_experiment(raw, base_dir, origin, run_sets, tuple(overrides.parts), overrides.store, overrides.yes)

