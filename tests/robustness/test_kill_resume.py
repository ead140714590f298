"""SIGKILL at random moments of a sweep, alone and beside a second process on the same store.

Seeded random delays (deterministic across runs of the suite) spread the kills over start-up,
store creation, training and commits. benchmarks/robustness_campaign.py runs the same trials
many more times and records the counts in BENCHMARKS.md.
"""
from __future__ import annotations

import random
import time

import chaos
from specs import store_value, stored_runs


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

    def until_runs_are_claimed():  # then the survivor must take the victim's runs over, not skip or repeat them
        deadline = time.monotonic() + 120
        while not store_value(store, "SELECT count(*) FROM claims") and time.monotonic() < deadline:
            time.sleep(0.01)

    campaign = chaos.Campaign()
    chaos.kill_one_of_two(spec, store, campaign, until_runs_are_claimed)
    assert campaign.integrity_failures == 0


def test_a_pack_killed_mid_way_goes_on_from_its_last_epoch_to_the_same_results(tmp_path):
    spec = tmp_path / "pack.yaml"
    spec.write_text(chaos.PACK_SWEEP)
    unbroken, broken = tmp_path / "unbroken.sqlite", tmp_path / "broken.sqlite"
    proc = chaos.start(spec, unbroken)
    assert proc.communicate(timeout=600) and proc.returncode == 0
    saved = chaos.kill_mid_pack(spec, broken, after_epoch=10)
    assert 10 <= saved < 40 and stored_runs(broken) == 0  # killed mid-pack: nothing committed yet
    proc = chaos.start(spec, broken)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    assert f"relulab: 6 runs go on from epoch {saved}," in err
    assert chaos.histories(broken) == chaos.histories(unbroken)  # every epoch's numbers, to the bit
    assert list(broken.with_name("broken.progress").iterdir()) == []  # nothing left to resume
