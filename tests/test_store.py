"""The results store: records, claims, and what survives kill -9 and a second process."""
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from relulab import store as store_mod
from relulab.data import DataSpec
from relulab.errors import UserError
from relulab.experiments import Overrides, load_experiment
from relulab.models import ModelSpec
from relulab.store import Finished, Store
from relulab.train import RunSpec, TrainSpec, run
from specs import stored_runs, write_spec


@pytest.fixture(scope="module")
def result():
    spec = RunSpec(DataSpec("synthetic", options={"n": 120, "classes": 3, "size": 4}),
                   ModelSpec(widths=[8]), TrainSpec(epochs=2))
    return run(spec, seed=0, device="cpu")


def test_record_once_and_read_back(tmp_path, result):
    with Store(tmp_path / "s.sqlite") as s:
        assert s.record(Finished("k1", "exp", "part", "relu", result, {1: {"sparsity": {1: 0.5}}}))
        assert not s.record(Finished("k1", "exp", "part", "relu", result, {}))  # never twice
        assert s.done_keys(["k1", "k2"]) == {"k1"}
        row = s.runs(["k1"])["k1"]
        assert row["status"] == "done" and row["epochs"] == 2 and row["torch_version"] and row["code_version"]
        assert [e["epoch"] for e in s.epochs(["k1"])["k1"]] == [1, 2]
        assert s.slot_stats(["k1"]) == {"k1": {"sparsity": {1: {1: 0.5}}}}
        assert s.integrity_check() == "ok"
        assert s.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_claims_are_exclusive_until_stale(tmp_path):
    a, b = Store(tmp_path / "s.sqlite"), Store(tmp_path / "s.sqlite")  # two owners, as two processes would be
    try:
        assert a.claim(["k1", "k2"]) == ["k1", "k2"]
        assert b.claim(["k1", "k2", "k3"]) == ["k3"]
        assert b.claimed_by_others(["k1", "k2", "k3"]) == {"k1", "k2"}
        assert a.claim(["k1", "k3", "k4"], limit=1) == ["k1"]  # its own claim, renewed; limit honoured
        # A silent owner: its heartbeat is older than STALE_S.
        a.db.execute("UPDATE claims SET heartbeat = ? WHERE key = 'k2'", (time.time() - store_mod.STALE_S - 1,))
        assert b.claim(["k2"]) == ["k2"]
        a.release()
        assert b.claim(["k1"]) == ["k1"]
    finally:
        a.close()
        b.close()


def test_claims_of_dead_processes_on_this_host_are_stale(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    with Store(tmp_path / "s.sqlite") as s:
        now = time.time()
        s.db.execute("INSERT INTO claims VALUES ('k1', 'x', ?, ?, ?, ?)", (dead.pid, s.host, now, now))
        s.db.execute("INSERT INTO claims VALUES ('k2', 'y', ?, 'elsewhere', ?, ?)", (dead.pid, now, now))
        # k1's owner is gone; k2's owner is on another machine with a fresh heartbeat: only time tells.
        assert s.claim(["k1", "k2"]) == ["k1"]


def test_heartbeat_keeps_claims_fresh(tmp_path):
    with Store(tmp_path / "s.sqlite") as s:
        s.claim(["k1"])
        s.db.execute("UPDATE claims SET heartbeat = 0")
        s.start_heartbeat(interval=0.05)
        time.sleep(0.5)
        s.stop_heartbeat()
        assert time.time() - s.db.execute("SELECT heartbeat FROM claims").fetchone()[0] < 5


def test_bad_store_files(tmp_path):
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"not a database" * 100)
    with pytest.raises(UserError, match="is not a relulab store"):
        Store(junk)
    with pytest.raises(UserError, match="does not exist"):
        Store(tmp_path / "missing.sqlite", create=False)


# ---------------------------------------------------------------- processes

# `pack: false`: runs are trained and committed one by one, so that a kill lands between commits however fast the
# machine is (packed, a whole sweep this small can finish between two looks at the store).
SLOW = """\
name: slow
device: cpu
threads: 1
pack: false
seeds: [0, 1, 2, 3, 4]
data: {name: synthetic, options: {n: 3000, classes: 4, size: 8}}
model: {name: deep-mlp, widths: [128, 128, 128], init: he_normal}
train: {epochs: 6, batch_size: 32, optimizer: {name: sgd, lr: 0.05}}
configs:
  relu: {}
  tanh: {model: {activation: tanh}}
  elu: {model: {activation: elu}}
"""


def _relulab(*argv) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "from relulab.cli import main; main()", *argv],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)



def _kill_after(path, runs: int, proc: subprocess.Popen, deadline_s: float = 120) -> int:
    start = time.time()
    while stored_runs(path) < runs:
        assert proc.poll() is None, proc.communicate()
        assert time.time() - start < deadline_s, "the sweep made no progress"
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    return stored_runs(path)


def _check_complete(path, expected_keys: set[str], epochs: int) -> None:
    db = sqlite3.connect(path)
    keys = [r[0] for r in db.execute("SELECT key FROM runs")]
    assert sorted(keys) == sorted(expected_keys)  # every run, none twice
    assert db.execute("SELECT count(*) FROM epochs").fetchone()[0] == epochs * len(expected_keys)
    assert db.execute("SELECT count(*) FROM claims").fetchone()[0] == 0
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_kill_9_mid_sweep_then_rerun_finishes_every_run_exactly_once(tmp_path):
    spec, store = write_spec(tmp_path, SLOW), tmp_path / "slow.sqlite"
    expected = {p.key for p in load_experiment(str(spec), Overrides(store=str(store))).planned()}
    argv = ("run", str(spec), "--store", str(store), "--no-report")
    # Runs may be committed one by one or a pack at a time (train_many decides): kill after any progress.
    first = _kill_after(store, 1, _relulab(*argv))
    second = _kill_after(store, first + 1, _relulab(*argv))  # killed again, after taking over stale claims
    assert 0 < first < second < len(expected), "kill -9 should land mid-sweep"
    db = sqlite3.connect(store)
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"  # readable right after the kill
    db.close()
    out, err = _relulab(*argv).communicate(timeout=300)
    assert f"{len(expected) - second} runs trained, {second} already done" in err, err
    _check_complete(store, expected, epochs=6)


def test_two_processes_on_one_store_run_each_config_once(tmp_path):
    spec, store = write_spec(tmp_path, SLOW), tmp_path / "slow.sqlite"
    expected = {p.key for p in load_experiment(str(spec), Overrides(store=str(store), seeds=[0, 1])).planned()}
    argv = ("run", str(spec), "--store", str(store), "--no-report", "--seeds", "0,1")
    procs = [_relulab(*argv) for _ in range(2)]
    trained = 0
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        trained += int(re.search(r"done: (\d+) runs trained", err).group(1))
    assert trained == len(expected)
    _check_complete(store, expected, epochs=6)
