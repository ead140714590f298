"""Probes: per-slot statistics of a model, and the callbacks that measure them while it trains.

- `relulab.probes.statistics`: the statistics (ratio_num, sparsity, grad_norm, ...), measured per slot and
  per class through forward hooks (`measure`, `probe`), probe sets (`parse_probe_set`, `select_probe_set`)
  and the layer x class tables.
- `relulab.probes.callbacks`: `SlotProbe` (a spec's `probes:`, after every epoch) and `EpochProbe` (every
  statistic at chosen epochs: `relulab probe`), and their requests as plain data for executors.
"""
from relulab.probes.callbacks import EpochProbe, EpochProbeRequest, SlotProbe
from relulab.probes.statistics import (ProbeResult, ProbeSet, measure, parse_probe_set, probe, select_probe_set,
                                       stat_names)

__all__ = ["EpochProbe", "EpochProbeRequest", "ProbeResult", "ProbeSet", "SlotProbe", "measure", "parse_probe_set",
           "probe", "select_probe_set", "stat_names"]
