"""The results store: one SQLite file per experiment, crash-safe, safe to share.

Tables (the SQL is in `relulab.store.schema`; `Store` has a method for every one):

- `runs`: one row per finished run, keyed by a hash of its resolved config and seed
  (`experiments.run_key`), with its summary numbers, status (`done` or `diverged`),
  resolved spec, data summary and provenance (relulab code version, torch, python,
  device, host).
- `epochs`: per-epoch metrics and seconds of each run; `slot_stats`: per-epoch,
  per-slot probe statistics (`relulab.probes.statistics`).
- `experiments` and `plan`: the last spec run against the store under each
  experiment name, and its expansion (part, variant, seed -> run key). Reports read
  these, so a report never re-parses a spec with newer code.
- `claims`: which process is running which run key, with a heartbeat.
- `artifacts`: one-off measurements of an experiment (relulab.experiments.analyses).
- additive tables, made on first use: `run_weights` (the files in `<store stem>.weights/` that hold a run's
  final and best-epoch weights, with their size and sha256: relulab.store.weights), `run_probes` and the
  search tables (`relulab probe`, `relulab search`), `timings` (configurations timed alone).

Why it survives `kill -9`: a run counts as done only when its `runs` row is
committed, and that row, its epochs, its slot statistics and its weights' rows are written in
one transaction together with dropping its claim (the weight files themselves take their names inside that
transaction, just before the commit). A kill at any moment loses at most the
runs in progress; they have no row, so the next `relulab run` runs them again. WAL
journaling keeps the file readable by others throughout (and `PRAGMA
integrity_check` passes after kills); `synchronous=FULL` makes each commit durable.

Why two `relulab run` processes on one store neither corrupt it nor run a config
twice: every change happens in a `BEGIN IMMEDIATE` transaction (one writer at a
time, others wait on `busy_timeout`), and a process trains a run only after claiming
its key. A claim is honoured while its owner is alive: a heartbeat thread refreshes
it every `HEARTBEAT_S`; a claim whose heartbeat is older than `STALE_S`, or whose
process is gone from this host, is stale and can be taken over. If a stalled owner
wakes up and finishes a run someone else also finished, its result is dropped: the
primary key on `runs.key` makes "twice" impossible. A process also asks the store again
just before each pack of runs starts (`claim` on its keys): one that was paused past
`STALE_S` skips what another process stored or took over meanwhile, instead of training it
again for nothing.

What it refuses, and how (each a one-line `StoreError` naming the file, before anything
is written): a file that does not start with SQLite's header (SQLite would take a short
file for an empty database and overwrite it); an SQLite file with tables but no relulab
`meta` table; another schema version; and, when the store is opened to be written, one
that fails `PRAGMA integrity_check` (a damaged index would make `done_keys` miss runs the
store holds, and the sweep train them again). Every query goes through one wrapper
(`Connection`), which turns SQLite's damage, full-disk, read-only and I/O errors into
such a line wherever they surface. Stores opened only to be read (`create=False`: reports)
are opened read-only, and leave no `-wal`/`-shm` files behind that were not there before.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import socket
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Sequence

from relulab.core.errors import UserError
from relulab.store.connection import (Connection, StoreError, check_header, check_writable, damaged_value,
                                      inspect_store, integrity_verdict, loads, open_reader, open_writer)
from relulab.store.rows import SearchCandidate, SearchCorrelation, SearchStep, StoredSearch, StoredTiming
from relulab.store.schema import (CANDIDATE_COLUMNS, CORRELATION_COLUMNS, EPOCH_COLUMNS, PROBE_SEARCH_SCHEMA,
                                  RUN_COLUMNS, SCHEMA, SCHEMA_VERSION, TIMING_COLUMNS, TIMINGS_SCHEMA,
                                  WEIGHTS_SCHEMA, retrained_key)

HEARTBEAT_S = 10.0
STALE_S = 60.0


def _real(value) -> Optional[float]:
    # SQLite has no NaN (it would store NULL anyway); say so explicitly. inf is kept.
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else value


def _num(value) -> float:
    return math.nan if value is None else value



def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


@dataclass
class Finished:
    """A finished run as the driver hands it to `Store.record`."""

    key: str
    experiment: str
    part: str
    variant: str
    result: "object"  # train.RunResult
    slot_stats: dict  # {epoch: {stat: {slot: value}}}
    # The run's weight files, written to temporary names (relulab.store.weights.StagedWeights: `rows`,
    # `put_in_place()`, `discard()`), or None: no weights kept.
    weights: "object" = None


class Store:
    """One connection to a store file. The driver process is the only writer of results.

    create=True (the default) opens it to write, making it if needed: refused when it is not a relulab
    store, damaged, or on read-only storage. create=False opens an existing store read-only, to read."""

    def __init__(self, path: str | Path, create: bool = True):
        self.path = Path(path).expanduser().resolve()
        self.read_only = not create
        check_header(self.path)
        if self.read_only and not self.path.is_file():
            raise StoreError(f"store: {self.path} does not exist (run the experiment first: relulab run ...)")
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self.owner = f"{self.host}:{self.pid}:{uuid.uuid4().hex[:8]}"
        self._heartbeat: Optional[_Heartbeat] = None
        if self.read_only:
            self.db = open_reader(self.path)
            self._closing_on_error(lambda: inspect_store(self.db, self.path, writing=False))
            return
        check_writable(self.path)
        if self.path.is_file() and self.path.stat().st_size:  # check a store through a reader before writing
            reader = open_reader(self.path)
            try:
                inspect_store(reader, self.path, writing=True)
            finally:
                reader.close()
        self.db = open_writer(self.path)
        self._closing_on_error(self._init_schema)

    def _closing_on_error(self, step) -> None:
        """Run `step`; if it raises, close the connection first (no -wal or -shm left by a refused store)."""
        try:
            step()
        except BaseException:
            self.db.close()
            raise

    def _init_schema(self) -> None:
        with self.transaction():
            for statement in SCHEMA.strip().split(";"):
                if statement.strip():
                    self.db.execute(statement)
            row = self.db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            if row is None:
                self.db.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            elif row["value"] != str(SCHEMA_VERSION):
                raise StoreError(f"store: {self.path} has schema version {row['value']}, this relulab reads "
                                 f"{SCHEMA_VERSION}")

    # ---------------------------------------------------------------- transactions

    class _Txn:
        def __init__(self, db: Connection):
            self.db = db

        def __enter__(self) -> Connection:
            # IMMEDIATE takes the write lock now, so check-then-write sequences cannot interleave.
            self.db.execute("BEGIN IMMEDIATE")
            return self.db

        def __exit__(self, kind, value, tb):
            if kind is None:
                try:
                    self.db.execute("COMMIT")
                except BaseException:
                    self._rollback()
                    raise
            else:
                self._rollback()
            return False

        def _rollback(self) -> None:
            # SQLite rolls back by itself after some errors (a full disk); and a failing ROLLBACK must not
            # replace the error that brought us here.
            if self.db.in_transaction:
                with contextlib.suppress(StoreError, sqlite3.Error):
                    self.db.execute("ROLLBACK")

    def transaction(self) -> "_Txn":
        return Store._Txn(self.db)

    def close(self) -> None:
        self.stop_heartbeat()
        self.db.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        try:
            if not self.read_only:
                self.release()
        finally:
            self.close()

    # ---------------------------------------------------------------- the plan

    def save_plan(self, name: str, origin: str, spec: dict, parts: list[dict], rows: Sequence[dict],
                  overrides: Optional[dict] = None) -> None:
        """Replace the experiment's spec and expansion (runs already in the store are kept)."""
        with self.transaction() as db:
            db.execute("INSERT OR REPLACE INTO experiments VALUES (?, ?, ?, ?, ?, ?)",
                       (name, origin, json.dumps(spec, default=str), json.dumps(overrides or {}, default=str),
                        json.dumps(parts), time.time()))
            db.execute("DELETE FROM plan WHERE experiment = ?", (name,))
            db.executemany(
                "INSERT INTO plan VALUES (:experiment, :part, :variant, :seed, :run_key, :position, :config,"
                " :baseline, :spec_json)", rows)

    def experiment_names(self) -> list[str]:
        names = [r["name"] for r in self.db.execute("SELECT name FROM experiments ORDER BY updated DESC")]
        if not all(isinstance(name, str) for name in names):  # NOT NULL TEXT, unless the page was damaged
            raise damaged_value(self.path, "an experiment's name is not text")
        return names

    def load_experiment(self, name: str) -> dict:
        row = self.db.execute("SELECT * FROM experiments WHERE name = ?", (name,)).fetchone()
        if row is None:
            known = ", ".join(self.experiment_names()) or "none"
            raise UserError(f"experiment: no experiment named '{name}' in {self.path} (it has: {known})")
        plan = [dict(r) for r in self.db.execute(
            "SELECT * FROM plan WHERE experiment = ? ORDER BY position, seed", (name,))]
        what = f"the plan of experiment {name}"
        return {"name": name, "origin": row["origin"], "spec": loads(row["spec_json"], self.path, what),
                "overrides": loads(row["overrides_json"], self.path, what),
                "parts": loads(row["parts_json"], self.path, what), "plan": plan}

    # ---------------------------------------------------------------- runs

    def done_keys(self, keys: Iterable[str]) -> set[str]:
        keys = list(keys)
        found: set[str] = set()
        for start in range(0, len(keys), 500):  # stay under SQLite's bound-parameter limit
            chunk = keys[start:start + 500]
            marks = ",".join("?" * len(chunk))
            found |= {r[0] for r in self.db.execute(f"SELECT key FROM runs WHERE key IN ({marks})", chunk)}
        return found

    def record(self, run: Finished) -> bool:
        """Write a finished run with all its epochs in one transaction; False if it was already there."""
        r, h = run.result, run.result.history
        status = "diverged" if h.diverged_at is not None else "done"
        prov = r.provenance
        row = (run.key, run.experiment, run.part, run.variant, r.seed, status, _real(h.best_val_acc), h.best_epoch,
               _real(h.final_val_acc), h.test_acc, h.test_loss, h.diverged_at, len(h.epochs), h.seconds, r.params,
               int(bool(r.data.get("val_is_test"))), json.dumps(r.spec.to_dict(), sort_keys=True),
               json.dumps(r.data, sort_keys=True), prov.get("relulab"), prov.get("torch"), prov.get("python"),
               prov.get("device"), prov.get("host"), time.time())
        epochs = [(run.key, e.epoch, _real(e.train_loss), _real(e.train_acc), _real(e.val_loss), _real(e.val_acc),
                   e.seconds) for e in h.epochs]
        slot_rows = [(run.key, epoch, stat, slot, _real(value))
                     for epoch, by_stat in run.slot_stats.items()
                     for stat, by_slot in by_stat.items() for slot, value in by_slot.items()]
        try:
            with self.transaction() as db:
                if db.execute("SELECT 1 FROM runs WHERE key = ?", (run.key,)).fetchone():
                    db.execute("DELETE FROM claims WHERE key = ? AND owner = ?", (run.key, self.owner))
                    return False
                if run.weights is not None:
                    self._record_weights(db, run.key, run.weights)
                db.execute(f"INSERT INTO runs VALUES ({','.join('?' * len(RUN_COLUMNS))})", row)
                db.executemany("INSERT INTO epochs VALUES (?, ?, ?, ?, ?, ?, ?)", epochs)
                db.executemany("INSERT INTO slot_stats VALUES (?, ?, ?, ?, ?)", slot_rows)
                db.execute("DELETE FROM claims WHERE key = ?", (run.key,))
        finally:
            if run.weights is not None:
                run.weights.discard()  # what was not put in place: the row was there already, or an error
        return True

    def _record_weights(self, db: Connection, key: str, weights) -> None:
        """Inside record's transaction, which holds the store's write lock: the files take their final names
        (another process storing the same run first would be refused above, so it never sees its files
        replaced), then their rows go in with the run's. A kill after the renames leaves files without rows,
        which the next attempt overwrites; a reader trusts only files that match their row."""
        for statement in WEIGHTS_SCHEMA.strip().split(";"):
            if statement.strip():
                db.execute(statement)
        weights.put_in_place()
        db.executemany("INSERT INTO run_weights VALUES (?, ?, ?, ?, ?, ?)", [(key, *r) for r in weights.rows])

    def run_weights(self, keys: Iterable[str]) -> dict[str, dict[str, dict]]:
        """{run key: {kind ('final', 'best'): {file, sha256, bytes, epoch}}} of the runs `keys` that kept
        weights; {} for a store written before weights were kept."""
        if not self.has_table("run_weights"):
            return {}
        out: dict[str, dict[str, dict]] = {}
        for row in self._select_in("SELECT * FROM run_weights WHERE run_key IN ({})", keys):
            out.setdefault(row.pop("run_key"), {})[row.pop("kind")] = row
        return out

    @property
    def weights_folder(self) -> Path:
        """Where the runs' weights are kept: `<store stem>.weights/` beside the store."""
        return self.path.with_name(f"{self.path.stem}.weights")

    def runs(self, keys: Iterable[str]) -> dict[str, dict]:
        """The runs' rows, each also with its spec and data decoded (`spec`, `data`)."""
        rows = {row["key"]: row for row in self._select_in("SELECT * FROM runs WHERE key IN ({})", keys)}
        for key, row in rows.items():
            row["spec"] = loads(row["spec_json"], self.path, f"the spec of run {key}")
            row["data"] = loads(row["data_json"], self.path, f"the data summary of run {key}")
        return rows

    def experiment_runs(self, experiment: str) -> list[dict]:
        """Every stored run row of an experiment (a search's runs too), each with its spec and data decoded."""
        rows = [dict(r) for r in self.db.execute("SELECT * FROM runs WHERE experiment = ?", (experiment,))]
        for row in rows:
            row["spec"] = loads(row["spec_json"], self.path, f"the spec of run {row['key']}")
            row["data"] = loads(row["data_json"] or "{}", self.path, f"the data of run {row['key']}")
        return rows

    def epochs(self, keys: Iterable[str]) -> dict[str, list[dict]]:
        out: dict[str, list[dict]] = {}
        for row in self._select_in("SELECT * FROM epochs WHERE run_key IN ({}) ORDER BY run_key, epoch", keys):
            out.setdefault(row["run_key"], []).append(
                {c: (_num(row[c]) if c != "epoch" else row[c]) for c in EPOCH_COLUMNS})
        return out

    def slot_stats(self, keys: Iterable[str]) -> dict[str, dict[str, dict[int, dict[int, float]]]]:
        """{run key: {stat: {epoch: {slot: value}}}}"""
        out: dict = {}
        for row in self._select_in("SELECT * FROM slot_stats WHERE run_key IN ({})", keys):
            out.setdefault(row["run_key"], {}).setdefault(row["stat"], {}).setdefault(row["epoch"], {})[
                row["slot"]] = _num(row["value"])
        return out

    def _select_in(self, sql: str, keys: Iterable[str]) -> list[dict]:
        keys, rows = list(keys), []
        for start in range(0, len(keys), 500):
            chunk = keys[start:start + 500]
            rows += [dict(r) for r in self.db.execute(sql.format(",".join("?" * len(chunk))), chunk)]
        return rows

    # ---------------------------------------------------------------- artifacts

    def save_artifact(self, key: str, experiment: str, part: str, name: str, value, provenance: dict) -> None:
        with self.transaction() as db:
            db.execute("INSERT OR REPLACE INTO artifacts VALUES (?, ?, ?, ?, ?, ?, ?)",
                       (key, experiment, part, name, json.dumps(value), json.dumps(provenance), time.time()))

    def artifact(self, key: str) -> Optional[dict]:
        row = self.db.execute("SELECT * FROM artifacts WHERE key = ?", (key,)).fetchone()
        if row is None:
            return None
        what = f"the analysis {row['name']}"
        return {"name": row["name"], "part": row["part"], "value": loads(row["value_json"], self.path, what),
                "provenance": loads(row["provenance_json"] or "{}", self.path, what)}

    # ---------------------------------------------------------------- claims

    def claim(self, keys: Sequence[str], limit: Optional[int] = None) -> list[str]:
        """Claim up to `limit` of `keys` that are neither done nor claimed by a live process; in order."""
        now = time.time()
        taken: list[str] = []
        with self.transaction() as db:
            for key in keys:
                if limit is not None and len(taken) >= limit:
                    break
                if db.execute("SELECT 1 FROM runs WHERE key = ?", (key,)).fetchone():
                    continue
                held = db.execute("SELECT * FROM claims WHERE key = ?", (key,)).fetchone()
                if held is not None and held["owner"] != self.owner and not self._stale(held, now):
                    continue
                db.execute("INSERT OR REPLACE INTO claims VALUES (?, ?, ?, ?, ?, ?)",
                           (key, self.owner, self.pid, self.host, now, now))
                taken.append(key)
        return taken

    def _stale(self, claim: sqlite3.Row, now: float) -> bool:
        if now - claim["heartbeat"] > STALE_S:
            return True
        return claim["host"] == self.host and not _pid_alive(claim["pid"])

    def claimed_by_others(self, keys: Iterable[str]) -> set[str]:
        """Keys that a live process other than this one is running now."""
        now, busy = time.time(), set()
        for row in self._select_in("SELECT * FROM claims WHERE key IN ({})", keys):
            if row["owner"] != self.owner and not self._stale(row, now):
                busy.add(row["key"])
        return busy

    def release(self, keys: Optional[Iterable[str]] = None) -> None:
        """Drop this process's claims (all of them by default): on a clean exit or an error."""
        try:
            with self.transaction() as db:
                if keys is None:
                    db.execute("DELETE FROM claims WHERE owner = ?", (self.owner,))
                else:
                    db.executemany("DELETE FROM claims WHERE key = ? AND owner = ?",
                                   [(k, self.owner) for k in keys])
        except (StoreError, sqlite3.Error):
            pass  # the claims go stale on their own

    def touch(self) -> None:
        with self.transaction() as db:
            db.execute("UPDATE claims SET heartbeat = ? WHERE owner = ?", (time.time(), self.owner))

    def start_heartbeat(self, interval: float = HEARTBEAT_S) -> None:
        if self._heartbeat is None:
            self._heartbeat = _Heartbeat(self.path, self.owner, interval)
            self._heartbeat.start()

    def stop_heartbeat(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.stop()
            self._heartbeat = None

    # ---------------------------------------------------------------- probes and searches (schema.PROBE_SEARCH_SCHEMA)

    def ensure_probe_search_tables(self) -> None:
        with self.transaction() as db:
            for statement in PROBE_SEARCH_SCHEMA.strip().split(";"):
                if statement.strip():
                    db.execute(statement)

    def save_run_probes(self, run_key: str, probe_set: str, epoch: int, rows: Iterable[tuple]) -> None:
        """rows: (stat, slot, class (-1: all images), class name, images, value); replaces what was there."""
        data = [(run_key, probe_set, epoch, stat, slot, cls, name, images, _real(value))
                for stat, slot, cls, name, images, value in rows]
        with self.transaction() as db:
            db.executemany("INSERT OR REPLACE INTO run_probes VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", data)

    def run_probes(self, keys: Iterable[str], probe_set: Optional[str] = None) -> list[dict]:
        """Every stored probe row of the runs `keys` (of one probe set, if given); [] when none was ever stored."""
        if not self.has_table("run_probes"):
            return []
        rows = self._select_in("SELECT * FROM run_probes WHERE run_key IN ({}) ORDER BY run_key, epoch, stat, slot, "
                               "class", keys)
        for row in rows:
            row["value"] = _num(row["value"])
        return [r for r in rows if probe_set is None or r["probe_set"] == probe_set]

    def probes_or_copies(self, keys: Iterable[str], probe_set: Optional[str] = None) -> list[dict]:
        """The stored probe rows of each run of `keys`, or, for a run with none, those of its copy retrained for
        probing (rows under the copy's own key). Every row says whose statistics stand in for: `of`, a key of
        `keys`."""
        keys = list(keys)
        rows = self.run_probes(keys, probe_set)
        own = {r["run_key"] for r in rows}
        copies = {retrained_key(k): k for k in keys if k not in own}
        rows += self.run_probes(copies, probe_set)
        for r in rows:
            r["of"] = copies.get(r["run_key"], r["run_key"])
        return rows

    def begin_search(self, row: dict) -> None:
        """Insert or restart a search: its row (status running) and no steps yet (they are recomputed)."""
        with self.transaction() as db:
            old = db.execute("SELECT created FROM searches WHERE id = ?", (row["id"],)).fetchone()
            created = old["created"] if old else time.time()
            db.execute("INSERT OR REPLACE INTO searches VALUES (:id, :experiment, :part, :base, :strategy,"
                       " :options_json, :seeds_json, :epochs, :metric, :probe_set, :val_is_test, :spec_json,"
                       " :slot_sizes_json, 'running', NULL, :created, :updated)",
                       {**row, "created": created, "updated": time.time()})
            for table in ("search_steps", "search_candidates", "search_correlations"):
                db.execute(f"DELETE FROM {table} WHERE search_id = ?", (row["id"],))

    def save_search_step(self, search_id: str, step: dict, candidates: Sequence[dict],
                         correlations: Sequence[dict] = ()) -> None:
        """One step with its candidates and correlations, in one transaction."""
        with self.transaction() as db:
            db.execute("INSERT OR REPLACE INTO search_steps VALUES (?, ?, ?, ?, ?, ?, ?)",
                       (search_id, step["step"], step["kind"], step["current"], step["decision"], step.get("chosen"),
                        step.get("note", "")))
            db.executemany(
                f"INSERT OR REPLACE INTO search_candidates VALUES ({','.join('?' * len(CANDIDATE_COLUMNS))})",
                [tuple(_real(c.get(k)) if k != "search_id" else search_id for k in CANDIDATE_COLUMNS)
                 for c in candidates])
            db.executemany(
                f"INSERT OR REPLACE INTO search_correlations VALUES ({','.join('?' * len(CORRELATION_COLUMNS))})",
                [tuple(_real(c.get(k)) if k != "search_id" else search_id for k in CORRELATION_COLUMNS)
                 for c in correlations])
            db.execute("UPDATE searches SET updated = ? WHERE id = ?", (time.time(), search_id))

    def finish_search(self, search_id: str, result: dict) -> None:
        with self.transaction() as db:
            db.execute("UPDATE searches SET status = 'done', result_json = ?, updated = ? WHERE id = ?",
                       (json.dumps(result, default=str), time.time(), search_id))

    def save_search_placement(self, search_id: str, name: str, seed: int, model: dict, relu_count: int,
                              seconds: float) -> None:
        """A placement a search found from one seed's runs: model is {"slots": ..., "masks": ...}."""
        with self.transaction() as db:
            db.execute("INSERT OR REPLACE INTO search_placements VALUES (?, ?, ?, ?, ?, ?)",
                       (search_id, name, seed, json.dumps(model, sort_keys=True), relu_count, seconds))

    def search_placements(self, search_id: str) -> dict[tuple[str, int], dict]:
        """{(name, seed): {"model": {"slots", "masks"}, "relu_count", "seconds"}} of a search's found placements."""
        if not self.has_table("search_placements"):
            return {}
        rows = self.db.execute("SELECT * FROM search_placements WHERE search_id = ?", (search_id,)).fetchall()
        return {(r["name"], r["seed"]): {"model": loads(r["model_json"], self.path, f"a placement of search "
                                                                                  f"{search_id}"),
                                         "relu_count": r["relu_count"], "seconds": r["seconds"]} for r in rows}

    def searches(self, experiment: Optional[str] = None) -> list[StoredSearch]:
        """Every search of the store (of one experiment, if given), oldest first, each with its steps, candidates
        and correlations; [] when none was ever stored."""
        if not self.has_table("searches"):
            return []
        sql, args = "SELECT * FROM searches", ()
        if experiment is not None:
            sql, args = sql + " WHERE experiment = ?", (experiment,)
        out = []
        for row in self.db.execute(sql + " ORDER BY created, id", args):
            s = dict(row)
            for key in ("options_json", "seeds_json", "spec_json", "slot_sizes_json", "result_json"):
                text = s.pop(key)
                s[key[:-5]] = loads(text, self.path, f"search {s['id']}") if text else None
            s["slot_sizes"] = {int(k): v for k, v in (s["slot_sizes"] or {}).items()}
            out.append(StoredSearch(**s, steps=self._search_steps(s["id"]), candidates=self._candidates(s["id"]),
                                    correlations=self._correlations(s["id"])))
        return out

    def _search_steps(self, search_id: str) -> list[SearchStep]:
        return [SearchStep(**r) for r in self.db.execute(
            "SELECT * FROM search_steps WHERE search_id = ? ORDER BY step", (search_id,))]

    def _candidates(self, search_id: str) -> list[SearchCandidate]:
        out, what = [], f"a candidate of search {search_id}"
        for r in self.db.execute("SELECT * FROM search_candidates WHERE search_id = ? ORDER BY step, position",
                                 (search_id,)):
            c = {k: r[k] for k in r.keys() if not k.endswith("_json")}
            for k in ("mean", "std", "ci_low", "ci_high", "diff", "diff_low", "diff_high", "p", "heuristic"):
                c[k] = _num(c[k])  # REAL columns: NULL -> NaN
            out.append(SearchCandidate(**c, off=loads(r["off_json"], self.path, what),
                                       accs=loads(r["accs_json"], self.path, what),
                                       run_keys=loads(r["run_keys_json"], self.path, what)))
        return out

    def _correlations(self, search_id: str) -> list[SearchCorrelation]:
        return [SearchCorrelation(**{k: (_num(r[k]) if k not in ("search_id", "stat", "step", "n") else r[k])
                                     for k in r.keys()}) for r in self.db.execute(
            "SELECT * FROM search_correlations WHERE search_id = ? ORDER BY step, stat", (search_id,))]

    # ---------------------------------------------------------------- timings (schema.TIMINGS_SCHEMA)

    def save_timing(self, row: dict) -> bool:
        """Keep a timing (TIMING_COLUMNS but `created`; `provenance` a dict); False where one of this configuration
        and device was there already (another process measured it first): the first measurement stays."""
        with self.transaction() as db:
            db.execute(TIMINGS_SCHEMA)
            if db.execute("SELECT 1 FROM timings WHERE config_key = ? AND device = ?",
                          (row["config_key"], row["device"])).fetchone():
                return False
            values = {**row, "provenance_json": json.dumps(row["provenance"]), "created": time.time()}
            db.execute(f"INSERT INTO timings VALUES ({','.join('?' * len(TIMING_COLUMNS))})",
                       [values[c] for c in TIMING_COLUMNS])
            return True

    def timings(self, keys: Iterable[str]) -> dict[tuple[str, str], StoredTiming]:
        """{(config key, device): its timing} of the configurations `keys`; {} when none was ever stored."""
        if not self.has_table("timings"):
            return {}
        out = {}
        for row in self._select_in("SELECT * FROM timings WHERE config_key IN ({})", keys):
            row["provenance"] = json.loads(row.pop("provenance_json"))
            out[(row["config_key"], row["device"])] = StoredTiming(**row)
        return out

    # ---------------------------------------------------------------- checks

    def has_table(self, name: str) -> bool:
        """Whether the store has the table `name` (the additive ones are made on first use)."""
        return self.db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)).fetchone() \
            is not None

    def integrity_check(self) -> str:
        """ok, or the first thing PRAGMA integrity_check found, on one line."""
        return integrity_verdict(self.db)


class _Heartbeat(threading.Thread):
    """Refreshes this process's claims while it trains (training holds the main thread)."""

    def __init__(self, path: Path, owner: str, interval: float):
        super().__init__(name="relulab-store-heartbeat", daemon=True)
        self.path, self.owner, self.interval = path, owner, interval
        self._stop_event = threading.Event()

    def run(self) -> None:
        try:
            db = open_writer(self.path)  # a connection of its own: sqlite3 connections are per thread
        except (StoreError, sqlite3.Error):
            return  # the store's own connection says what is wrong; unrefreshed claims go stale, and are re-taken
        try:
            while not self._stop_event.wait(self.interval):
                try:
                    db.execute("UPDATE claims SET heartbeat = ? WHERE owner = ?", (time.time(), self.owner))
                except (StoreError, sqlite3.Error):
                    pass  # a busy store: try again next beat; STALE_S leaves room for several misses
        finally:
            db.close()

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=5)



