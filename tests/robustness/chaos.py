"""Fault injection for sweeps: run the real `relulab run` command, SIGKILL it at a random moment,
and check the store. Shared by tests/robustness/test_kill_resume.py and
benchmarks/robustness_campaign.py (which runs many more trials).

A kill can land anywhere: while Python imports torch, while the store is created, mid-epoch,
in the middle of a commit. After each one the SQLite file must pass `PRAGMA integrity_check`,
and the next `relulab run` must finish the sweep with every run stored exactly once.
"""
from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from specs import store_value, stored_runs

# 3 configurations x 4 seeds of a small MLP on synthetic data, each run committed on its own
# (pack: false), so that kills land between commits as well as inside them: about 10 s on one core.
SWEEP = """\
name: chaos
device: cpu
threads: 1
pack: false
seeds: [0, 1, 2, 3]
data: {name: synthetic, options: {n: 3000, classes: 3, size: 8}}
model: {name: deep-mlp, widths: [128, 128, 128], init: he_normal}
train: {epochs: 4, batch_size: 16, optimizer: {name: sgd, lr: 0.05}}
configs:
  relu: {}
  tanh: {model: {activation: tanh}}
  elu: {model: {activation: elu}}
"""
EPOCHS = 4


def start(spec: Path, store: Path, *extra: str) -> subprocess.Popen:
    argv = ["run", str(spec), "--store", str(store), "--no-report", *extra]
    return subprocess.Popen([sys.executable, "-c", "from relulab.cli import main; main()", *argv],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def integrity(store: Path) -> str:
    return store_value(store, "PRAGMA integrity_check") if store.exists() else "ok"


@dataclass
class Campaign:
    """What a series of kills did: counted, so BENCHMARKS.md can report it."""

    kills: int = 0
    runs_seen_at_kills: list[int] = field(default_factory=list)
    integrity_failures: int = 0
    sweeps_checked: int = 0
    runs_expected: int = 0
    runs_lost: int = 0
    runs_twice: int = 0


@dataclass
class Timing:
    """How long an uninterrupted sweep takes to start (import, data, plan) and to train one run."""

    startup_s: float
    per_run_s: float
    runs: int


def measure(spec: Path, store: Path) -> Timing:
    """Run the sweep once, uninterrupted, watching when runs land in the store."""
    started = time.monotonic()
    proc, first = start(spec, store), None
    while proc.poll() is None:
        if first is None and stored_runs(store) >= 1:
            first = time.monotonic() - started
        time.sleep(0.01)
    _, err = proc.communicate()
    assert proc.returncode == 0, err
    total, runs = time.monotonic() - started, stored_runs(store)
    first = first if first is not None else total
    per_run = max(0.05, (total - first) / max(1, runs - 1))
    return Timing(max(0.1, first - per_run), per_run, runs)


def kill_at_random(spec: Path, store: Path, rng: random.Random, campaign: Campaign, timing: Timing) -> None:
    """Start a sweep, SIGKILL it at a random moment, check the file is still sound.

    One kill in five lands during start-up (imports, data, writing the plan); the others wait
    for a random number of the remaining runs to be committed, then kill at a random point of
    the next run (training it, or committing it)."""
    proc = start(spec, store)
    done = stored_runs(store)
    if rng.random() < 0.2 or done >= timing.runs:
        deadline, target = time.monotonic() + rng.uniform(0.0, timing.startup_s), None
    else:
        deadline, target = None, rng.randrange(done, timing.runs)
    while proc.poll() is None:
        if target is not None and stored_runs(store) >= target:
            deadline, target = time.monotonic() + rng.uniform(0.0, timing.per_run_s), None
        if deadline is not None and time.monotonic() >= deadline:
            break
        time.sleep(0.005)
    _kill(proc, store, campaign)


def kill_one_of_two(spec: Path, store: Path, campaign: Campaign, wait: Callable[[], None]) -> None:
    """Two sweeps on one store; SIGKILL one of them once `wait()` returns. The survivor must take
    the victim's runs over and finish every run, none skipped, none twice."""
    survivor, victim = start(spec, store), start(spec, store)
    wait()
    _kill(victim, store, campaign)
    _, err = survivor.communicate(timeout=600)
    assert survivor.returncode == 0, err
    check_complete(store, expected_keys(spec, store), campaign)


def _kill(proc: subprocess.Popen, store: Path, campaign: Campaign) -> None:
    """SIGKILL `proc` unless it has finished; note how far the sweep got and whether the store is sound."""
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
        campaign.kills += 1
    proc.communicate()
    campaign.runs_seen_at_kills.append(stored_runs(store))
    campaign.integrity_failures += integrity(store) != "ok"


def finish_and_check(spec: Path, store: Path, expected_keys: set[str], campaign: Campaign) -> None:
    """Resume the sweep to the end; count runs lost and runs stored twice."""
    proc = start(spec, store)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    check_complete(store, expected_keys, campaign)


def check_complete(store: Path, expected_keys: set[str], campaign: Campaign) -> None:
    db = sqlite3.connect(store)
    try:
        keys = [row[0] for row in db.execute("SELECT key FROM runs")]
        epochs = db.execute("SELECT count(*) FROM epochs").fetchone()[0]
        claims = db.execute("SELECT count(*) FROM claims").fetchone()[0]
        ok = db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        db.close()
    campaign.sweeps_checked += 1
    campaign.runs_expected += len(expected_keys)
    campaign.runs_lost += len(expected_keys - set(keys))
    campaign.runs_twice += len(keys) - len(set(keys))
    campaign.integrity_failures += not ok
    assert sorted(keys) == sorted(expected_keys), "every run exactly once"
    assert epochs == EPOCHS * len(expected_keys), "every epoch of every run exactly once"
    assert claims == 0, "no claim left behind"
    assert ok


def expected_keys(spec: Path, store: Path) -> set[str]:
    from relulab.experiments import Overrides, load_experiment

    return {p.key for p in load_experiment(str(spec), Overrides(store=str(store))).planned()}


# ------------------------------------------------------------------ a pack killed mid-way, then resumed

# Six MLPs trained as one pack (pack: true), saved after every epoch (checkpoint_every: 0): a kill mid-pack
# loses at most the epoch in progress, and the resumed pack must end exactly where an unbroken one does.
PACK_SWEEP = """\
name: pack
device: cpu
threads: 1
checkpoint_every: 0
seeds: [0, 1, 2]
data: {name: synthetic, options: {n: 3000, classes: 3, size: 8}}
model: {name: deep-mlp, widths: [64, 64], init: he_normal}
train: {epochs: 40, batch_size: 16, optimizer: {name: adam, lr: 0.001}}
configs:
  relu: {}
  tanh: {model: {activation: tanh}}
"""


def saved_epoch(progress: Path) -> int:
    """The epoch of the one saved pack state in `progress`, 0 when there is none (yet)."""
    import torch

    files = sorted(progress.glob("*.pt"))
    if not files:
        return 0
    try:
        return int(torch.load(files[0], map_location="cpu", weights_only=True)["epoch"])
    except Exception:  # noqa: BLE001 - renamed away while read (the pack finished): as good as none
        return 0


def kill_mid_pack(spec: Path, store: Path, after_epoch: int) -> int:
    """Start the pack sweep, SIGKILL it once its saved state has reached `after_epoch`; the epoch saved then."""
    progress = store.with_name(f"{store.stem}.progress")
    proc = start(spec, store)
    deadline = time.monotonic() + 300
    while proc.poll() is None and saved_epoch(progress) < after_epoch and time.monotonic() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, "the pack finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()
    return saved_epoch(progress)


def histories(store: Path) -> dict[tuple, list[tuple]]:
    """(variant, seed) -> every epoch's losses and accuracies (not the seconds), from a store."""
    db = sqlite3.connect(store)
    try:
        rows = db.execute("SELECT r.variant, r.seed, e.epoch, e.train_loss, e.train_acc, e.val_loss, e.val_acc "
                          "FROM runs r JOIN epochs e ON e.run_key = r.key ORDER BY r.variant, r.seed, e.epoch")
        out: dict[tuple, list[tuple]] = {}
        for variant, seed, *numbers in rows:
            out.setdefault((variant, seed), []).append(tuple(numbers))
        return out
    finally:
        db.close()
