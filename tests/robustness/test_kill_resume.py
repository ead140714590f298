"""SIGKILL at random moments of a sweep, alone and beside a second process on the same store.

Seeded random delays (deterministic across runs of the suite) spread the kills over start-up,
store creation, training and commits. benchmarks/robustness_campaign.py runs the same trials
many more times and records the counts in BENCHMARKS.md.
"""
from __future__ import annotations

import os
import random
import signal
import time

import chaos


def test_random_kills_then_resume_lose_nothing_and_repeat_nothing(tmp_path):
    spec, store = tmp_path / "spec.yaml", tmp_path / "chaos.sqlite"
    spec.write_text(chaos.SWEEP)
    timing = chaos.measure(spec, tmp_path / "timing.sqlite")
    expected = chaos.expected_keys(spec, store)
    rng, campaign = random.Random(7), chaos.Campaign()
    for _ in range(5):
        chaos.kill_at_random(spec, store, rng, campaign, timing)
    assert campaign.integrity_failures == 0
    assert campaign.kills >= 4, "kills should land before the sweep ends"
    assert len(set(campaign.runs_seen_at_kills)) >= 2, "kills should land at different points of the sweep"
    chaos.finish_and_check(spec, store, expected, campaign)
    assert (campaign.runs_lost, campaign.runs_twice) == (0, 0)


def test_two_processes_one_killed_the_other_finishes_everything(tmp_path):
    spec, store = tmp_path / "spec.yaml", tmp_path / "chaos.sqlite"
    spec.write_text(chaos.SWEEP)
    expected = chaos.expected_keys(spec, store)
    survivor, victim = chaos.start(spec, store), chaos.start(spec, store)
    campaign = chaos.Campaign()
    # Kill the victim once it holds claims: the survivor must take its runs over, not skip or repeat them.
    deadline = time.monotonic() + 120
    while not chaos.query(store, "SELECT count(*) FROM claims") and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(victim.pid, signal.SIGKILL)
    victim.communicate()
    _, err = survivor.communicate(timeout=600)
    assert survivor.returncode == 0, err
    chaos.check_complete(store, expected, campaign)
