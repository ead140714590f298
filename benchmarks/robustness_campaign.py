"""A long run of the robustness suite, with the counts BENCHMARKS.md reports.

1. The property-based tests of tests/robustness (malformed specs and CLI values, YAML alias
   bombs, deep nesting and integers beyond the store's range, damaged and hostile data files,
   loader options, damaged and hostile checkpoints, random damage inside a store's pages,
   output locations that cannot be written) with RELULAB_FUZZ_SCALE times their usual number of
   examples; Hypothesis' statistics give the cases tried, per test.
2. Kill trials: sweeps of `relulab run` SIGKILLed at random moments (seeded), resumed, and
   checked: every run exactly once, every epoch once, no claim left, `PRAGMA integrity_check`
   after every kill.
3. Concurrent trials: two `relulab run` processes on one store, one of them killed at a random
   moment; the survivor must finish every run.

    python benchmarks/robustness_campaign.py --scale 10 --sweeps 10 --kills 5 --concurrent 5 \
        --out results/robustness/campaign.json

Exit code 1 if anything was lost, repeated or damaged.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "robustness")]
import chaos  # noqa: E402  (tests/robustness/chaos.py: the same kill trials the test suite runs)

FUZZ_FILES = ["tests/robustness/test_config_fuzz.py", "tests/robustness/test_spec_limits.py",
              "tests/robustness/test_hostile_files.py", "tests/robustness/test_data_inputs.py",
              "tests/robustness/test_checkpoints.py", "tests/robustness/test_fuzz_damage_and_outputs.py"]
# One block per property test in `pytest --hypothesis-show-statistics`: its node id, then its counts.
STATS_BLOCK = re.compile(r"^(tests/[^\n]+?::[^\n]+):\n(.*?)(?=^tests/[^\n]+?::[^\n]+:\n|\Z)", re.S | re.M)
COUNTS = re.compile(r"(\d+) passing, (\d+) failing, and (\d+) invalid test cases")


def fuzz_campaign(scale: float) -> dict:
    """Run the property tests `scale` times longer; count the cases Hypothesis tried."""
    env = {**os.environ, "RELULAB_FUZZ_SCALE": str(scale)}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider",
                           "--hypothesis-show-statistics", *FUZZ_FILES], cwd=ROOT, env=env,
                          capture_output=True, text=True)
    cases = COUNTS.findall(proc.stdout)
    passed, failed = (re.search(rf"(\d+) {word}", proc.stdout) for word in ("passed", "failed"))
    per_test = {}
    for test, block in STATS_BLOCK.findall(proc.stdout):
        counts = COUNTS.findall(block)
        per_test[test] = {"passing": sum(int(p) for p, _, _ in counts), "failing": sum(int(f) for _, f, _ in counts),
                          "invalid": sum(int(i) for _, _, i in counts)}
    return {
        "scale": scale,
        "pytest_exit_code": proc.returncode,
        "tests_passed": int(passed.group(1)) if passed else 0,
        "tests_failed": int(failed.group(1)) if failed else 0,
        "property_cases_passing": sum(int(p) for p, _, _ in cases),
        "property_cases_failing": sum(int(f) for _, f, _ in cases),
        "property_cases_invalid": sum(int(i) for _, _, i in cases),
        "per_test": per_test,
        "per_file": _per_file(per_test),
    }


def _per_file(per_test: dict) -> dict:
    files: dict[str, dict] = {}
    for test, counts in per_test.items():
        into = files.setdefault(test.split("::")[0], {"tests": 0, "passing": 0, "failing": 0, "invalid": 0})
        into["tests"] += 1
        for key, value in counts.items():
            into[key] += value
    return files


def sweep_timing(folder: Path) -> chaos.Timing:
    spec = folder / "timing.yaml"
    spec.write_text(chaos.SWEEP)
    return chaos.measure(spec, folder / "timing.sqlite")


def kill_campaign(folder: Path, sweeps: int, kills: int, timing: chaos.Timing) -> chaos.Campaign:
    campaign = chaos.Campaign()
    for trial in range(sweeps):
        spec, store = folder / f"kill{trial}.yaml", folder / f"kill{trial}.sqlite"
        spec.write_text(chaos.SWEEP)
        rng = random.Random(1000 + trial)
        for _ in range(kills):
            chaos.kill_at_random(spec, store, rng, campaign, timing)
        chaos.finish_and_check(spec, store, chaos.expected_keys(spec, store), campaign)
        print(f"kill sweep {trial + 1}/{sweeps}: runs stored at each kill {campaign.runs_seen_at_kills[-kills:]}",
              file=sys.stderr)
    return campaign


def concurrent_campaign(folder: Path, trials: int, timing: chaos.Timing) -> chaos.Campaign:
    campaign = chaos.Campaign()
    for trial in range(trials):
        spec, store = folder / f"pair{trial}.yaml", folder / f"pair{trial}.sqlite"
        spec.write_text(chaos.SWEEP)
        delay = random.Random(2000 + trial).uniform(0.0, timing.startup_s + timing.runs * timing.per_run_s / 2)
        chaos.kill_one_of_two(spec, store, campaign, lambda: time.sleep(delay))
        print(f"concurrent trial {trial + 1}/{trials}: victim killed with {campaign.runs_seen_at_kills[-1]} runs "
              "stored", file=sys.stderr)
    return campaign


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=float, default=10.0, help="Times the suite's number of property examples.")
    parser.add_argument("--sweeps", type=int, default=10, help="Sweeps to kill repeatedly.")
    parser.add_argument("--kills", type=int, default=5, help="Random kills per sweep before it is let finish.")
    parser.add_argument("--concurrent", type=int, default=5, help="Two-process trials with one process killed.")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "robustness" / "campaign.json")
    args = parser.parse_args()

    started = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        fuzz = fuzz_campaign(args.scale)
        print(f"fuzz: {fuzz}", file=sys.stderr)
        timing = sweep_timing(folder)
        kills = kill_campaign(folder, args.sweeps, args.kills, timing)
        pairs = concurrent_campaign(folder, args.concurrent, timing)
    report = {
        "date": time.strftime("%Y-%m-%d"), "machine": f"{platform.node()} {platform.processor() or platform.machine()}"
        f", {os.cpu_count()} cores", "python": platform.python_version(), "command": " ".join(sys.argv),
        "minutes": round((time.time() - started) / 60, 1), "sweep_timing": asdict(timing),
        "fuzz": fuzz, "kill_trials": asdict(kills), "concurrent_trials": asdict(pairs),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    bad = (fuzz["pytest_exit_code"] != 0 or fuzz["property_cases_failing"]
           or any(c.runs_lost or c.runs_twice or c.integrity_failures for c in (kills, pairs)))
    print(json.dumps(report, indent=2))
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
