"""Probes: per-slot statistics of a model, and the callbacks that measure them while it trains.

- `relulab.probes.statistics`: the statistics (ratio_num, sparsity, grad_norm, ...), measured per slot and
  per class through forward hooks (`measure`, `probe`), probe sets (`parse_probe_set`, `select_probe_set`)
  and the layer x class tables.
- `relulab.probes.callbacks`: `SlotProbe` (a spec's `probes:`, after every epoch) and `EpochProbe` (every
  statistic at chosen epochs: `relulab probe`), and their requests as plain data for executors.
- `relulab.probes.watch`: `watch` (`relulab.watch`), the statistics in the user's own training loop (hooks on
  the slots, a sampled schedule), their records and DataFrame, and writing them to a store for the report.
"""
from relulab.probes.callbacks import EpochProbe, EpochProbeRequest, SlotProbe
from relulab.probes.statistics import (ProbeResult, ProbeSet, measure, parse_probe_set, probe, select_probe_set,
                                       stat_names)
from relulab.probes.watch import SlotWatch, watch

__all__ = ["EpochProbe", "EpochProbeRequest", "ProbeResult", "ProbeSet", "SlotProbe", "SlotWatch", "measure",
           "parse_probe_set", "probe", "select_probe_set", "stat_names", "watch"]
