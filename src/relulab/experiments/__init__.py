"""Experiments: specs -> plans -> runs in the store.

    from relulab.experiments import Overrides, RayExecutor, load_experiment, run_experiment
    exp = load_experiment("quickstart", Overrides(seeds=[0, 1]))   # a preset, or a path to a .yaml
    summary = run_experiment(exp)          # re-run after any interruption: finished runs are skipped
    run_experiment(exp, executor=RayExecutor(address="head:6379"))   # or train them on a Ray cluster

- `spec`: reading a spec as written (YAML, safely and bounded; presets; the command line's `Overrides`;
  seeds as lists or ranges).
- `plan`: a spec validated and expanded into an `Experiment` (parts, configurations x seeds) and each run's
  identity (`run_key`, `canonical_spec`); `load_experiment`.
- `sweep`: the one driver that trains runs into a store (claim, train through an executor, record with
  weights, release), used by sweeps, searches and probes.
- `executors`: where runs train (in this process, or on a Ray cluster).
- `run`: `run_experiment`: the sweep of an experiment, its analyses and timings.
- `analyses`: what an experiment computes once, beside its runs (relulab.experiments.analyses).
- `tracking`: the `Tracker` interface the driver logs each recorded run to; `trackers`: TensorBoard and MLflow
  (`TRACKERS`, `open_trackers`), optional extras imported only when asked for.
"""
from relulab.experiments.executors import InProcessExecutor, RayExecutor, make_executor
from relulab.experiments.plan import PLAN_LIMIT, Experiment, Part, PlannedRun, Variant, load_experiment, run_key
from relulab.experiments.run import SweepSummary, run_experiment
from relulab.experiments.spec import (MAX_VALUES, PRESET_ALIASES, Overrides, parse_seeds, parse_yaml, preset_aliases,
                                      preset_names, read_spec)

__all__ = ["MAX_VALUES", "PLAN_LIMIT", "PRESET_ALIASES", "Experiment", "InProcessExecutor", "Overrides", "Part",
           "PlannedRun", "RayExecutor", "SweepSummary", "Variant", "load_experiment", "make_executor", "parse_seeds",
           "parse_yaml", "preset_aliases", "preset_names", "read_spec", "run_experiment", "run_key"]
