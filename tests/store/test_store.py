"""The results store: records, claims, and what survives kill -9 and a second process."""
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from relulab.store import connection, database as store_mod
from relulab.training import loop as train_mod
from relulab.data import DataSpec, load_data
from relulab.core.errors import UserError
from relulab.experiments import Overrides, load_experiment, run_experiment
from relulab.zoo.models import ModelSpec
from relulab.store import Finished, Store
from relulab.packing.pack import train_many
from relulab.training.loop import run
from relulab.training.specs import Job, RunSpec, TrainSpec
from specs import TINY, quiet, stored_runs, write_spec


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
    with pytest.raises(UserError, match=r"junk\.sqlite is not a SQLite file \(it starts with b'not a databaseno'\)"):
        Store(junk)
    with pytest.raises(UserError, match="does not exist"):
        Store(tmp_path / "missing.sqlite", create=False)
    with pytest.raises(UserError, match="is a folder"):
        Store(tmp_path)


@pytest.mark.parametrize("blob", [b"x", b"SQLite", b"SQLite format 2\x00" + bytes(100), bytes(4096)])
def test_a_short_or_foreign_file_is_refused_not_overwritten(tmp_path, blob):
    # SQLite takes a file shorter than its header for an empty database, and would write a store over it.
    path = tmp_path / "x.sqlite"
    path.write_bytes(blob)
    for create in (True, False):
        with pytest.raises(UserError, match=r"x\.sqlite is not a SQLite file .*expected a relulab store"):
            Store(path, create=create)
    assert path.read_bytes() == blob and sorted(os.listdir(tmp_path)) == ["x.sqlite"]


def test_an_empty_file_becomes_a_store_and_is_no_store_to_read(tmp_path):
    (tmp_path / "new.sqlite").write_bytes(b"")
    with pytest.raises(UserError, match=r"new\.sqlite holds no relulab tables yet"):
        Store(tmp_path / "new.sqlite", create=False)
    with Store(tmp_path / "new.sqlite") as s:
        assert s.done_keys(["k"]) == set()
    with Store(tmp_path / "new.sqlite", create=False) as s:
        assert s.experiment_names() == []


def test_a_full_disk_is_one_line_and_leaves_the_store_consistent(tmp_path, result):
    big = {epoch: {"sparsity": {slot: 0.5 for slot in range(400)}} for epoch in (1, 2)}
    with Store(tmp_path / "s.sqlite") as s:
        assert s.record(Finished("k0", "exp", "part", "relu", result, {}))
        pages = s.db.execute("PRAGMA page_count").fetchone()[0]
        s.db.execute(f"PRAGMA max_page_count = {pages + 1}")  # SQLite's real SQLITE_FULL, as on a full disk
        with pytest.raises(UserError, match=r"s\.sqlite: the disk is full \(database or disk is full\)") as e:
            s.record(Finished("k1", "exp", "part", "relu", result, big))
        assert "\n" not in str(e.value)
        assert not s.db.in_transaction  # rolled back: no half run
        assert s.done_keys(["k0", "k1"]) == {"k0"}
        assert s.db.execute("SELECT count(*) FROM epochs WHERE run_key = 'k1'").fetchone()[0] == 0
        assert s.integrity_check() == "ok"
        s.db.execute("PRAGMA max_page_count = 1000000")  # space again: the same run goes in whole
        assert s.record(Finished("k1", "exp", "part", "relu", result, big))
        assert len(s.slot_stats(["k1"])["k1"]["sparsity"][1]) == 400


def _files(folder):
    """Every file under `folder` with its bytes and modification time."""
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.rglob("*"))
            if p.is_file()}


@pytest.mark.parametrize("journal", ["wal", "delete"])
def test_a_read_only_open_writes_nothing_and_leaves_no_wal_files(tmp_path, result, journal):
    path = tmp_path / "s.sqlite"
    with Store(path) as s:
        s.record(Finished("k1", "exp", "part", "relu", result, {}))
    if journal == "delete":  # a store copied from elsewhere may come in another journal mode: a reader keeps it
        db = sqlite3.connect(path)
        db.execute("PRAGMA journal_mode=DELETE")
        db.close()
    before = _files(tmp_path)
    time.sleep(0.01)  # a write would show in the modification times
    with Store(path, create=False) as s:
        assert s.read_only and s.done_keys(["k1", "k2"]) == {"k1"}
        with pytest.raises(UserError, match="is read-only"):
            s.claim(["k2"])  # no writes through a reader
    assert _files(tmp_path) == before


def test_a_reader_falls_back_to_immutable_where_mode_ro_cannot_open(tmp_path, result, monkeypatch):
    path = tmp_path / "s.sqlite"
    with Store(path) as s:
        s.record(Finished("k1", "exp", "part", "relu", result, {}))
    opened, real = [], connection._read_connection

    def without_shm(path, option):  # as in a folder where the reader cannot make a -shm file (read-only media)
        opened.append(option)
        if option == "mode=ro":
            raise sqlite3.OperationalError("unable to open database file")
        return real(path, option)

    monkeypatch.setattr(connection, "_read_connection", without_shm)
    before = _files(tmp_path)
    with Store(path, create=False) as s:
        assert s.runs(["k1"])["k1"]["status"] == "done"
    assert opened == ["mode=ro", "immutable=1"]
    assert _files(tmp_path) == before


def test_a_valid_sqlite_file_that_is_no_store_is_refused_untouched(tmp_path):
    path = tmp_path / "mine.sqlite"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE notes (text TEXT)")
    db.commit()
    db.close()
    before = _files(tmp_path)
    for create in (True, False):
        with pytest.raises(UserError, match=r"mine\.sqlite is not a relulab store \(an SQLite file with tables notes"):
            Store(path, create=create)
    assert _files(tmp_path) == before  # no relulab tables added, not switched to WAL, no -wal or -shm


def test_another_schema_version_is_refused_and_leaves_no_wal_files(tmp_path):
    path = tmp_path / "s.sqlite"
    Store(path).close()
    db = sqlite3.connect(path)
    db.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    db.commit()
    db.close()
    before = _files(tmp_path)
    for create in (True, False):
        with pytest.raises(UserError, match="has schema version 99, this relulab reads 1"):
            Store(path, create=create)
    assert _files(tmp_path) == before


# ---------------------------------------------------------------- a paused process that resumes

PACKLESS = TINY.replace("device: cpu\n", "device: cpu\npack: false\n")  # every run alone: a check before each


def test_a_resumed_process_skips_what_another_process_stored_or_took_over_meanwhile(tmp_path, monkeypatch):
    # Process A claims all 4 runs and trains the first; then it is "paused" past STALE_S: process B (another
    # Store, another owner) takes its stale claims over, stores two runs and is still running the last one.
    path = tmp_path / "s.sqlite"
    exp = load_experiment(str(write_spec(tmp_path, PACKLESS)), Overrides(store=str(path)))
    planned = exp.planned()
    b = Store(path)
    trained, real_run = [], train_mod.run

    def train_then_pause(spec, seed, *args, **kwargs):
        result = real_run(spec, seed, *args, **kwargs)
        trained.append(seed)
        if len(trained) == 1:
            b.db.execute("UPDATE claims SET heartbeat = ?", (time.time() - store_mod.STALE_S - 1,))
            taken = b.claim([p.key for p in planned[1:]])
            assert len(taken) == 3
            for p in planned[1:3]:
                assert b.record(Finished(p.key, exp.name, p.part.name, p.variant.name, result, {}))
        return result

    def log(line):
        lines.append(line)
        if line.startswith("waiting for 1 runs"):  # A waits for B's last run instead of training it: B stores it
            p = planned[3]
            b.record(Finished(p.key, exp.name, p.part.name, p.variant.name, real_run(p.variant.spec, p.seed, "cpu"),
                              {}))

    lines: list = []
    monkeypatch.setattr(train_mod, "run", train_then_pause)
    try:
        summary = run_experiment(exp, log=log, echo=quiet, poll_s=0)
    finally:
        b.close()
    assert len(trained) == 1 and summary.trained == 1 and summary.finished_elsewhere == 0
    assert sum("stored or taken over by another process meanwhile" in line for line in lines) == 3
    db = sqlite3.connect(path)
    assert sorted(r[0] for r in db.execute("SELECT key FROM runs")) == sorted(p.key for p in planned)
    assert db.execute("SELECT count(*) FROM claims").fetchone()[0] == 0


def test_train_many_asks_before_each_pack_which_jobs_are_still_wanted():
    spec = RunSpec(DataSpec("synthetic", options={"n": 120, "classes": 3, "size": 4}), ModelSpec(widths=[8]),
                   TrainSpec(epochs=1))
    other = RunSpec(spec.data, spec.model, TrainSpec(epochs=1, batch_size=16))  # another pack
    jobs = [Job(spec, 0, "a0"), Job(spec, 1, "a1"), Job(other, 0, "b0"), Job(other, 1, "b1")]
    asked = []

    def still_wanted(pack):
        asked.append([j.key for j in pack])
        return [j for j in pack if j.key != "b1"]  # stored by another process since the claim

    splits = load_data(spec.data)
    done = [job.key for job, _ in train_many(jobs, splits, "cpu", still_wanted=still_wanted)]
    assert asked == [["a0", "a1"], ["b0", "b1"]] and done == ["a0", "a1", "b0"]


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
