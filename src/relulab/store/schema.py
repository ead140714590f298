"""The store's tables: the SQL that makes them, their columns, and the keys rows are stored under.

The core tables (`SCHEMA`) are made when a store is made; the additive ones (probes and searches, weights,
timings) on first use, with CREATE TABLE IF NOT EXISTS, so stores written before they existed keep working
and keep schema version 1. `relulab.store.database.Store` reads and writes every one of them.
"""
from __future__ import annotations

import hashlib
import re

SCHEMA_VERSION = 1

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    key TEXT PRIMARY KEY,
    experiment TEXT NOT NULL, part TEXT NOT NULL, variant TEXT NOT NULL, seed INTEGER NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('done', 'diverged')),
    best_val_acc REAL, best_epoch INTEGER, final_val_acc REAL, test_acc REAL, test_loss REAL,
    diverged_at INTEGER, epochs INTEGER NOT NULL, seconds REAL NOT NULL, params INTEGER,
    val_is_test INTEGER NOT NULL,
    spec_json TEXT NOT NULL, data_json TEXT NOT NULL,
    code_version TEXT, torch_version TEXT, python_version TEXT, device TEXT, host TEXT,
    finished REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS epochs (
    run_key TEXT NOT NULL REFERENCES runs(key), epoch INTEGER NOT NULL,
    train_loss REAL, train_acc REAL, val_loss REAL, val_acc REAL, seconds REAL,
    PRIMARY KEY (run_key, epoch)
);
CREATE TABLE IF NOT EXISTS slot_stats (
    run_key TEXT NOT NULL REFERENCES runs(key), epoch INTEGER NOT NULL, stat TEXT NOT NULL,
    slot INTEGER NOT NULL, value REAL,
    PRIMARY KEY (run_key, epoch, stat, slot)
);
CREATE TABLE IF NOT EXISTS experiments (
    name TEXT PRIMARY KEY, origin TEXT, spec_json TEXT NOT NULL, overrides_json TEXT NOT NULL,
    parts_json TEXT NOT NULL, updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS plan (
    experiment TEXT NOT NULL, part TEXT NOT NULL, variant TEXT NOT NULL, seed INTEGER NOT NULL,
    run_key TEXT NOT NULL, position INTEGER NOT NULL, config TEXT NOT NULL, baseline TEXT,
    spec_json TEXT NOT NULL,
    PRIMARY KEY (experiment, part, variant, seed)
);
CREATE TABLE IF NOT EXISTS claims (
    key TEXT PRIMARY KEY, owner TEXT NOT NULL, pid INTEGER NOT NULL, host TEXT NOT NULL,
    claimed REAL NOT NULL, heartbeat REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS artifacts (
    key TEXT PRIMARY KEY, experiment TEXT NOT NULL, part TEXT NOT NULL, name TEXT NOT NULL,
    value_json TEXT NOT NULL, provenance_json TEXT, created REAL NOT NULL
);
"""

RUN_COLUMNS = ("key", "experiment", "part", "variant", "seed", "status", "best_val_acc", "best_epoch",
               "final_val_acc", "test_acc", "test_loss", "diverged_at", "epochs", "seconds", "params", "val_is_test",
               "spec_json", "data_json", "code_version", "torch_version", "python_version", "device", "host",
               "finished")
EPOCH_COLUMNS = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "seconds")
STORE_TABLES = tuple(re.findall(r"CREATE TABLE IF NOT EXISTS (\w+)", SCHEMA))


# ---------------------------------------------------------------- probes and searches (additive tables)
#
# Created on first use by `relulab probe` / `relulab search` (CREATE TABLE IF NOT EXISTS, so stores written
# before they existed keep working and keep schema version 1); readers check that they exist first.
#
# - `run_probes`: probe statistics of a run's model at an epoch (usually its last), on a named probe set
#   (`first`, `per-class:N`, `val:N`), per slot and per class (class -1: all probe images, the average).
#   Written before the run's own row: a kill in between leaves probes without a run, which the next attempt
#   overwrites; a run row without probes is probed again.
# - `searches`: one row per search (strategy, options, base configuration, seeds, epochs, status).
# - `search_steps`: each step's current placement and decision; `search_candidates`: the placements a step
#   measured (accuracy over seeds with its 95% interval, the Welch comparison with the step's reference, the
#   heuristic value that proposed it); `search_correlations`: for a step's single-slot candidates, the rank
#   correlation of each statistic with the measured change in accuracy; `search_placements`: the placements a
#   strategy found from one seed's runs (learned: the binarised gates trained from that seed's base model; its
#   `model_json` the slots and masks), written as each is found, so that a killed search resumes with the same
#   placements instead of training its gates again to different ones.
# A search's steps are recomputed from the cached runs when it is run again, and rewritten identically.

PROBE_SEARCH_SCHEMA = """
CREATE TABLE IF NOT EXISTS run_probes (
    run_key TEXT NOT NULL, probe_set TEXT NOT NULL, epoch INTEGER NOT NULL, stat TEXT NOT NULL,
    slot INTEGER NOT NULL, class INTEGER NOT NULL, class_name TEXT NOT NULL, images INTEGER NOT NULL, value REAL,
    PRIMARY KEY (run_key, probe_set, epoch, stat, slot, class)
);
CREATE TABLE IF NOT EXISTS searches (
    id TEXT PRIMARY KEY, experiment TEXT NOT NULL, part TEXT NOT NULL, base TEXT NOT NULL, strategy TEXT NOT NULL,
    options_json TEXT NOT NULL, seeds_json TEXT NOT NULL, epochs INTEGER NOT NULL, metric TEXT NOT NULL,
    probe_set TEXT NOT NULL, val_is_test INTEGER NOT NULL, spec_json TEXT NOT NULL, slot_sizes_json TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('running', 'done')), result_json TEXT,
    created REAL NOT NULL, updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS search_steps (
    search_id TEXT NOT NULL, step INTEGER NOT NULL, kind TEXT NOT NULL, current TEXT NOT NULL,
    decision TEXT NOT NULL, chosen TEXT, note TEXT,
    PRIMARY KEY (search_id, step)
);
CREATE TABLE IF NOT EXISTS search_candidates (
    search_id TEXT NOT NULL, step INTEGER NOT NULL, position INTEGER NOT NULL, placement TEXT NOT NULL,
    off_json TEXT NOT NULL, slot INTEGER, relu_count INTEGER, seeds INTEGER, runs INTEGER, diverged INTEGER,
    mean REAL, std REAL, ci_low REAL, ci_high REAL, reference TEXT, diff REAL, diff_low REAL, diff_high REAL,
    p REAL, verdict TEXT, heuristic REAL, accs_json TEXT NOT NULL, run_keys_json TEXT NOT NULL,
    PRIMARY KEY (search_id, step, placement)
);
CREATE TABLE IF NOT EXISTS search_placements (
    search_id TEXT NOT NULL, name TEXT NOT NULL, seed INTEGER NOT NULL, model_json TEXT NOT NULL,
    relu_count INTEGER NOT NULL, seconds REAL,
    PRIMARY KEY (search_id, name, seed)
);
CREATE TABLE IF NOT EXISTS search_correlations (
    search_id TEXT NOT NULL, step INTEGER NOT NULL, stat TEXT NOT NULL, n INTEGER NOT NULL,
    spearman REAL, spearman_p REAL, kendall REAL, kendall_p REAL,
    highest_pick_diff REAL, lowest_pick_diff REAL, best_diff REAL,
    PRIMARY KEY (search_id, step, stat)
);
"""
# - `run_weights` (relulab.store.weights): the files of a run's final and best-epoch weights, in
#   `<store stem>.weights/`, with their size and sha256, so that a reader can tell a file is the one written
#   with the run. Created by the first run that keeps weights, in the transaction that stores that run
#   (Store.record).
WEIGHTS_SCHEMA = """
CREATE TABLE IF NOT EXISTS run_weights (
    run_key TEXT NOT NULL, kind TEXT NOT NULL CHECK (kind IN ('final', 'best')), file TEXT NOT NULL,
    sha256 TEXT NOT NULL, bytes INTEGER NOT NULL, epoch INTEGER,
    PRIMARY KEY (run_key, kind)
);
"""
# A run trained again only to be probed (its store row has no weights to probe) is stored as its own record
# under this key, marked in its data (`RETRAINED_FOR_PROBING`: the key of the run it copies), with its own
# accuracy: a retrained model is another model (packed and alone, floating point sums in another order, and
# training amplifies the difference), so its statistics never go under the stored run's key.
RETRAINED_FOR_PROBING = "retrained_for_probing"


def retrained_key(key: str) -> str:
    """The key of the copy of run `key` retrained for probing: stable, so a second probe finds it."""
    return f"{key}-retrained"


PROBE_SEARCH_TABLES = ("run_probes", "searches", "search_steps", "search_candidates", "search_correlations")
CANDIDATE_COLUMNS = ("search_id", "step", "position", "placement", "off_json", "slot", "relu_count", "seeds", "runs",
                     "diverged", "mean", "std", "ci_low", "ci_high", "reference", "diff", "diff_low", "diff_high",
                     "p", "verdict", "heuristic", "accs_json", "run_keys_json")
CORRELATION_COLUMNS = ("search_id", "step", "stat", "n", "spearman", "spearman_p", "kendall", "kendall_p",
                       "highest_pick_diff", "lowest_pick_diff", "best_diff")



# ---------------------------------------------------------------- timings (an additive table)
#
# `timings`: each configuration's own time per epoch on a device, where a sweep trained it packed (its runs'
# seconds are then shares of a joint wall time): a short timed pass of one model alone
# (relulab.packing.time_alone), measured once per configuration and device and kept, with its
# provenance. A configuration is its spec without the seed, as the plan stores it (`timing_key`); the device
# is `relulab.core.env.device_name`'s, as runs record it.
# Created on first use, like the probe and search tables; readers check that it exists first.

TIMINGS_SCHEMA = """
CREATE TABLE IF NOT EXISTS timings (
    config_key TEXT NOT NULL, device TEXT NOT NULL, spec_json TEXT NOT NULL, method TEXT NOT NULL,
    steps INTEGER NOT NULL, warmup INTEGER NOT NULL, steps_per_epoch INTEGER NOT NULL,
    step_seconds REAL NOT NULL, eval_seconds REAL NOT NULL, epoch_seconds REAL NOT NULL,
    provenance_json TEXT NOT NULL, created REAL NOT NULL,
    PRIMARY KEY (config_key, device)
);
"""
TIMING_COLUMNS = ("config_key", "device", "spec_json", "method", "steps", "warmup", "steps_per_epoch",
                  "step_seconds", "eval_seconds", "epoch_seconds", "provenance_json", "created")


def timing_key(spec_json: str) -> str:
    """The configuration a timing belongs to: a hash of its spec as the plan stores it (sorted JSON, no seed)."""
    return hashlib.sha256(spec_json.encode()).hexdigest()[:24]

