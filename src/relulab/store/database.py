"""The results store: one SQLite file per experiment, crash-safe, safe to share.

Tables (the SQL is `SCHEMA` below):

- `runs`: one row per finished run, keyed by a hash of its resolved config and seed
  (`experiments.run_key`), with its summary numbers, status (`done` or `diverged`),
  resolved spec, data summary and provenance (relulab code version, torch, python,
  device, host).
- `epochs`: per-epoch metrics and seconds of each run; `slot_stats`: per-epoch,
  per-slot probe statistics (`relulab.probes`).
- `experiments` and `plan`: the last spec run against the store under each
  experiment name, and its expansion (part, variant, seed -> run key). Reports read
  these, so a report never re-parses a spec with newer code.
- `claims`: which process is running which run key, with a heartbeat.
- `artifacts`: one-off measurements of an experiment (relulab.analyses).
- `run_weights` (additive, below): the files in `<store stem>.weights/` that hold a run's final and best-epoch
  weights, with their size and sha256 (relulab.weights).

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
(`_Connection`), which turns SQLite's damage, full-disk, read-only and I/O errors into
such a line wherever they surface. Stores opened only to be read (`create=False`: reports)
are opened read-only, and leave no `-wal`/`-shm` files behind that were not there before.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import shlex
import socket
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Sequence

from relulab.core.errors import UserError

SCHEMA_VERSION = 1
HEARTBEAT_S = 10.0
STALE_S = 60.0
BUSY_TIMEOUT_MS = 120_000
SQLITE_HEADER = b"SQLite format 3\x00"  # the first 16 bytes of every SQLite database file

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


def _real(value) -> Optional[float]:
    # SQLite has no NaN (it would store NULL anyway); say so explicitly. inf is kept.
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else value


def _num(value) -> float:
    return math.nan if value is None else value


# ---------------------------------------------------------------- what SQLite's errors mean for a store


class StoreError(UserError):
    """A store that cannot be used as it is (damaged, full, read-only, not a store): one line naming its file."""


@dataclass(frozen=True)
class _Trouble:
    codes: tuple[int, ...]  # SQLite's primary result codes (sqlite3 gives them as `sqlite_errorcode`, Python 3.11+)
    words: tuple[str, ...]  # in SQLite's message: how older Pythons, which lack the code, tell them apart
    line: str  # the error's one line; {path}, {detail} (SQLite's words) and {check} (the command to check it)


# Locked and busy are not here: busy_timeout waits those out. Nor are plain SQL errors (code 1: no such column,
# a syntax error) or constraint failures: those are relulab's own bugs, and keep their traceback.
TROUBLES = {
    "damaged": _Trouble((11, 26), ("malformed", "file is not a database", "unsupported file format"),  # CORRUPT, NOTADB
                        "{path} is damaged ({detail}); check it with: {check}"),
    "damaged-text": _Trouble((), ("Could not decode to UTF-8",),  # sqlite3 itself, decoding a TEXT value
                             "{path} is damaged ({detail}: a stored text is not UTF-8, which PRAGMA integrity_check "
                             "does not look for); restore it from a copy, or move it aside and run again"),
    "full": _Trouble((13,), ("database or disk is full",),  # FULL; SQLite rolled the failed change back
                     "{path}: the disk is full ({detail}); the store keeps what was committed before: free some "
                     "space and run the command again"),
    "read-only": _Trouble((8,), ("readonly database",),  # READONLY
                          "{path} is read-only ({detail}); relulab writes its results there: copy it somewhere "
                          "writable"),
    "cannot-open": _Trouble((14, 3), ("unable to open database file", "access permission denied"),  # CANTOPEN, PERM
                            "cannot open {path} ({detail}); is it readable, on a local disk, and its folder "
                            "writable?"),
    "disk-failed": _Trouble((10,), ("disk I/O error",),  # IOERR
                            "{path}: the disk failed to read or write it ({detail}); check the disk, then the store "
                            "with: {check}"),
}


def trouble_of(error: BaseException) -> Optional[str]:
    """The name of what `error` says about a store file (a key of TROUBLES), or None: not about the file."""
    message = str(error)
    if isinstance(error, UnicodeDecodeError) or any(w in message for w in TROUBLES["damaged-text"].words):
        return "damaged-text"  # raised by sqlite3, not SQLite: it has no result code
    code = getattr(error, "sqlite_errorcode", None)
    for name, trouble in TROUBLES.items():
        # SQLite gives some damage only as a generic error (code 1: "unsupported file format" from a damaged
        # header), so the words count even where the code does not match.
        if (code is not None and (code & 0xFF) in trouble.codes) or any(w in message for w in trouble.words):
            return name
    return None


def _detail(error: BaseException) -> str:
    """SQLite's words (a decoding error quotes the damaged bytes: not those)."""
    return str(error).split(" with text ", 1)[0]


def _check_command(path: Path) -> str:
    return f'sqlite3 {shlex.quote(str(path))} "PRAGMA integrity_check"'


def store_error(path: Path, trouble: str, detail: str) -> StoreError:
    """The one line for `trouble` (a key of TROUBLES) about `path`, with `detail` shortened to one short line."""
    detail = " ".join(detail.split())
    detail = detail if len(detail) <= 160 else detail[:157] + "..."
    line = TROUBLES[trouble].line.format(path=path, detail=detail, check=_check_command(path))
    return StoreError(f"store: {line}")


def loads(text: Optional[str], path: Path, what: str):
    """A JSON value the store holds (a run's spec or data, a plan, a search's options), decoded; damage that left
    the text UTF-8 but no longer JSON is one StoreError line, like SQLite's own damage."""
    try:
        return json.loads(text)
    except (json.JSONDecodeError, TypeError) as e:
        raise damaged_value(path, f"{what} is not valid JSON: {e}") from None


def damaged_value(path: Path, what: str) -> StoreError:
    """A value SQLite reads back fine but that cannot be what relulab wrote (no integrity check looks for it)."""
    return StoreError(f"store: {path} is damaged ({what}); restore it from a copy, or move it aside and run again")


@contextlib.contextmanager
def _translating(path: Path):
    """Turn SQLite's errors about the file at `path` into one StoreError line; others pass through."""
    try:
        yield
    except (sqlite3.DatabaseError, UnicodeDecodeError) as e:
        trouble = trouble_of(e)
        if trouble is None:
            raise
        raise store_error(path, trouble, _detail(e)) from None


class _Rows(list):
    """A query's rows, every one fetched: a list that also answers a cursor's fetchone and fetchall."""

    def fetchone(self):
        return self[0] if self else None

    def fetchall(self) -> list:
        return list(self)


class _Connection:
    """A store's sqlite3 connection; every query of the store goes through `execute` or `executemany`.

    Each fetches all its rows inside `_translating`: a cursor fetches lazily, so damage deep in a table
    surfaces while iterating, not at `execute`, and would escape a try around the call alone."""

    def __init__(self, raw: sqlite3.Connection, path: Path, made_sidecars: bool = False):
        self.raw, self.path, self._made_sidecars = raw, path, made_sidecars

    def execute(self, sql: str, args: Sequence | dict = ()) -> _Rows:
        with _translating(self.path):
            return _Rows(self.raw.execute(sql, args).fetchall())

    def executemany(self, sql: str, rows: Iterable) -> None:
        with _translating(self.path):
            self.raw.executemany(sql, rows)

    @property
    def in_transaction(self) -> bool:
        return self.raw.in_transaction

    def close(self) -> None:
        self.raw.close()
        if self._made_sidecars:
            _drop_sidecars(self.path)


# ---------------------------------------------------------------- opening a store file


def _sqlite_connect(target: str, uri: bool = False) -> sqlite3.Connection:
    db = sqlite3.connect(target, uri=uri, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None,
                         check_same_thread=False)
    db.row_factory = sqlite3.Row
    return db


def _sidecars(path: Path) -> set[Path]:
    """The -wal and -shm files beside a store that exist now."""
    return {p for p in (Path(f"{path}-wal"), Path(f"{path}-shm")) if p.exists()}


def _drop_sidecars(path: Path) -> None:
    """Remove the -wal and -shm files a read-only connection made (it cannot remove them itself) unless
    another connection uses them: a read-write connection that reads and closes removes them when it is the
    last one on the store (SQLite decides, with its locks), and writes nothing else when the WAL is empty."""
    if not os.access(path, os.W_OK) or not os.access(path.parent, os.W_OK):
        return
    with contextlib.suppress(sqlite3.Error):
        db = sqlite3.connect(path)
        try:
            db.execute("PRAGMA schema_version").fetchone()
        finally:
            db.close()


def _check_header(path: Path) -> None:
    """An existing file must be an SQLite database (or empty: a new store). SQLite itself would take a
    short file of anything for an empty database, and overwrite it."""
    if path.is_dir():
        raise StoreError(f"store: {path} is a folder; expected a relulab store (an SQLite file)")
    if not path.is_file():
        return
    try:
        with open(path, "rb") as f:
            head = f.read(len(SQLITE_HEADER))
    except OSError as e:
        raise StoreError(f"store: cannot read {path} ({e.strerror or e})") from None
    if head and head != SQLITE_HEADER:
        raise StoreError(f"store: {path} is not a SQLite file (it starts with {head!r}); expected a relulab store")


def _check_writable(path: Path) -> None:
    """A writer needs the file and its folder writable (WAL journaling makes -wal and -shm files beside it)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise StoreError(f"store: cannot make the folder {path.parent} for {path.name} ({e.strerror or e})") from None
    if not os.access(path.parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        what = path if path.exists() and not os.access(path, os.W_OK) else f"its folder {path.parent}"
        raise StoreError(f"store: {path} is on read-only storage ({what} is not writable); relulab writes its "
                         f"results there: copy the store somewhere writable")


def _open_reader(path: Path) -> _Connection:
    """A read-only connection (`mode=ro`). Where even that fails because the folder is not writable (a WAL
    reader needs a -shm file), `immutable=1`: SQLite then reads the file without locks or WAL, which is safe
    because no writer can be at work where a -shm cannot be made."""
    before = _sidecars(path)
    try:
        with _translating(path):
            try:
                raw = _read_connection(path, "mode=ro")
            except sqlite3.OperationalError as e:
                if trouble_of(e) not in ("cannot-open", "read-only"):
                    raise
                raw = _read_connection(path, "immutable=1")
    except BaseException:
        if _sidecars(path) - before:
            _drop_sidecars(path)
        raise
    return _Connection(raw, path, made_sidecars=bool(_sidecars(path) - before))


def _read_connection(path: Path, option: str) -> sqlite3.Connection:
    raw = _sqlite_connect(f"{path.as_uri()}?{option}", uri=True)
    try:
        raw.execute("PRAGMA schema_version").fetchone()  # SQLite opens the file (and its WAL) lazily: now
    except BaseException:
        raw.close()
        raise
    return raw


def _open_writer(path: Path) -> _Connection:
    db = _Connection(_sqlite_connect(str(path)), path)
    try:
        db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        _set_wal(db)
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA foreign_keys=ON")
    except BaseException:
        db.close()
        raise
    return db


def _set_wal(db: _Connection, wait_s: float = 30.0) -> None:
    """Switch a store to WAL (it stays so). Changing the journal mode does not wait on the busy timeout,
    so when two processes open a new store at once, the loser retries here."""
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        try:
            if db.execute("PRAGMA journal_mode").fetchone()[0] == "wal" or \
                    db.execute("PRAGMA journal_mode=WAL").fetchone()[0] == "wal":
                return
        except sqlite3.OperationalError as e:
            if "locked" not in str(e):
                raise
        time.sleep(0.05)
    raise StoreError(f"store: could not switch {db.path} to WAL journaling (a network file system? keep stores "
                     f"on a local disk)")


def _integrity(db: _Connection) -> str:
    """PRAGMA integrity_check's verdict on one line: ok, or its first finding."""
    first = db.execute("PRAGMA integrity_check").fetchone()[0]
    findings = [line.strip() for line in first.splitlines() if line.strip() and not line.startswith("***")]
    return findings[0] if findings else first


def _inspect(db: _Connection, path: Path, writing: bool) -> None:
    """Refuse (StoreError) what is not a relulab store of this schema version; before writing, a damaged one too.
    An SQLite file without tables is a new store (a writer makes the tables)."""
    tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if not tables and writing:
        return
    if not tables:
        raise StoreError(f"store: {path} holds no relulab tables yet (run the experiment first: relulab run ...)")
    version = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() \
        if "meta" in tables else None
    if version is None:
        raise StoreError(f"store: {path} is not a relulab store (an SQLite file with tables "
                         f"{', '.join(sorted(tables)[:5])}, but no schema_version in a meta table)")
    if version["value"] != str(SCHEMA_VERSION):
        raise StoreError(f"store: {path} has schema version {version['value']}, this relulab reads {SCHEMA_VERSION}")
    missing = sorted(set(STORE_TABLES) - tables)
    if missing and not writing:  # a writer makes them (CREATE TABLE IF NOT EXISTS)
        raise StoreError(f"store: {path} is not a complete relulab store (no table {missing[0]})")
    if writing:  # a damaged index would hide stored runs from done_keys: they would be trained again
        verdict = _integrity(db)
        if verdict != "ok":
            raise store_error(path, "damaged", verdict)


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
    # The run's weight files, written to temporary names (relulab.weights.StagedWeights: `rows`,
    # `put_in_place()`, `discard()`), or None: no weights kept.
    weights: "object" = None


class Store:
    """One connection to a store file. The driver process is the only writer of results.

    create=True (the default) opens it to write, making it if needed: refused when it is not a relulab
    store, damaged, or on read-only storage. create=False opens an existing store read-only, to read."""

    def __init__(self, path: str | Path, create: bool = True):
        self.path = Path(path).expanduser().resolve()
        self.read_only = not create
        _check_header(self.path)
        if self.read_only and not self.path.is_file():
            raise StoreError(f"store: {self.path} does not exist (run the experiment first: relulab run ...)")
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self.owner = f"{self.host}:{self.pid}:{uuid.uuid4().hex[:8]}"
        self._heartbeat: Optional[_Heartbeat] = None
        if self.read_only:
            self.db = _open_reader(self.path)
            self._closing_on_error(lambda: _inspect(self.db, self.path, writing=False))
            return
        _check_writable(self.path)
        if self.path.is_file() and self.path.stat().st_size:  # check a store through a reader before writing
            reader = _open_reader(self.path)
            try:
                _inspect(reader, self.path, writing=True)
            finally:
                reader.close()
        self.db = _open_writer(self.path)
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
        def __init__(self, db: _Connection):
            self.db = db

        def __enter__(self) -> _Connection:
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

    def _record_weights(self, db: _Connection, key: str, weights) -> None:
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
        if not has_table(self, "run_weights"):
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

    # ---------------------------------------------------------------- checks

    def integrity_check(self) -> str:
        """ok, or the first thing PRAGMA integrity_check found, on one line."""
        return _integrity(self.db)


class _Heartbeat(threading.Thread):
    """Refreshes this process's claims while it trains (training holds the main thread)."""

    def __init__(self, path: Path, owner: str, interval: float):
        super().__init__(name="relulab-store-heartbeat", daemon=True)
        self.path, self.owner, self.interval = path, owner, interval
        self._stop_event = threading.Event()

    def run(self) -> None:
        try:
            db = _open_writer(self.path)  # a connection of its own: sqlite3 connections are per thread
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
#   correlation of each statistic with the measured change in accuracy.
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
CREATE TABLE IF NOT EXISTS search_correlations (
    search_id TEXT NOT NULL, step INTEGER NOT NULL, stat TEXT NOT NULL, n INTEGER NOT NULL,
    spearman REAL, spearman_p REAL, kendall REAL, kendall_p REAL,
    highest_pick_diff REAL, lowest_pick_diff REAL, best_diff REAL,
    PRIMARY KEY (search_id, step, stat)
);
"""
# - `run_weights` (relulab.weights): the files of a run's final and best-epoch weights, in `<store stem>.weights/`,
#   with their size and sha256, so that a reader can tell a file is the one written with the run. Created by
#   the first run that keeps weights, in the transaction that stores that run (Store.record).
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


def ensure_probe_search_tables(store: Store) -> None:
    with store.transaction() as db:
        for statement in PROBE_SEARCH_SCHEMA.strip().split(";"):
            if statement.strip():
                db.execute(statement)


def has_table(store: Store, name: str) -> bool:
    return store.db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)).fetchone() \
        is not None


def save_run_probes(store: Store, run_key: str, probe_set: str, epoch: int, rows: Iterable[tuple]) -> None:
    """rows: (stat, slot, class (-1: all images), class name, images, value); replaces what was there."""
    data = [(run_key, probe_set, epoch, stat, slot, cls, name, images, _real(value))
            for stat, slot, cls, name, images, value in rows]
    with store.transaction() as db:
        db.executemany("INSERT OR REPLACE INTO run_probes VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", data)


def load_run_probes(store: Store, keys: Iterable[str], probe_set: Optional[str] = None) -> list[dict]:
    """Every stored probe row of the runs `keys` (of one probe set, if given); [] when none was ever stored."""
    if not has_table(store, "run_probes"):
        return []
    rows = store._select_in("SELECT * FROM run_probes WHERE run_key IN ({}) ORDER BY run_key, epoch, stat, slot, "
                            "class", keys)
    for row in rows:
        row["value"] = _num(row["value"])
    return [r for r in rows if probe_set is None or r["probe_set"] == probe_set]


def load_probes_or_copies(store: Store, keys: Iterable[str], probe_set: Optional[str] = None) -> list[dict]:
    """The stored probe rows of each run of `keys`, or, for a run with none, those of its copy retrained for
    probing (rows under the copy's own key). Every row says whose statistics stand in for: `of`, a key of
    `keys`."""
    keys = list(keys)
    rows = load_run_probes(store, keys, probe_set)
    own = {r["run_key"] for r in rows}
    copies = {retrained_key(k): k for k in keys if k not in own}
    rows += load_run_probes(store, copies, probe_set)
    for r in rows:
        r["of"] = copies.get(r["run_key"], r["run_key"])
    return rows


def begin_search(store: Store, row: dict) -> None:
    """Insert or restart a search: its row (status running) and no steps yet (they are recomputed)."""
    with store.transaction() as db:
        old = db.execute("SELECT created FROM searches WHERE id = ?", (row["id"],)).fetchone()
        created = old["created"] if old else time.time()
        db.execute("INSERT OR REPLACE INTO searches VALUES (:id, :experiment, :part, :base, :strategy, :options_json,"
                   " :seeds_json, :epochs, :metric, :probe_set, :val_is_test, :spec_json, :slot_sizes_json,"
                   " 'running', NULL, :created, :updated)", {**row, "created": created, "updated": time.time()})
        for table in ("search_steps", "search_candidates", "search_correlations"):
            db.execute(f"DELETE FROM {table} WHERE search_id = ?", (row["id"],))


def save_search_step(store: Store, search_id: str, step: dict, candidates: Sequence[dict],
                     correlations: Sequence[dict] = ()) -> None:
    """One step with its candidates and correlations, in one transaction."""
    with store.transaction() as db:
        db.execute("INSERT OR REPLACE INTO search_steps VALUES (?, ?, ?, ?, ?, ?, ?)",
                   (search_id, step["step"], step["kind"], step["current"], step["decision"], step.get("chosen"),
                    step.get("note", "")))
        db.executemany(f"INSERT OR REPLACE INTO search_candidates VALUES ({','.join('?' * len(CANDIDATE_COLUMNS))})",
                       [tuple(_real(c.get(k)) if k != "search_id" else search_id for k in CANDIDATE_COLUMNS)
                        for c in candidates])
        db.executemany(
            f"INSERT OR REPLACE INTO search_correlations VALUES ({','.join('?' * len(CORRELATION_COLUMNS))})",
            [tuple(_real(c.get(k)) if k != "search_id" else search_id for k in CORRELATION_COLUMNS)
             for c in correlations])
        db.execute("UPDATE searches SET updated = ? WHERE id = ?", (time.time(), search_id))


def finish_search(store: Store, search_id: str, result: dict) -> None:
    with store.transaction() as db:
        db.execute("UPDATE searches SET status = 'done', result_json = ?, updated = ? WHERE id = ?",
                   (json.dumps(result, default=str), time.time(), search_id))


def load_searches(store: Store, experiment: Optional[str] = None) -> list[dict]:
    """Every search of the store (of one experiment, if given), oldest first, each with its steps, candidates
    and correlations (numbers as stored; NULL -> NaN)."""
    if not has_table(store, "searches"):
        return []
    sql, args = "SELECT * FROM searches", ()
    if experiment is not None:
        sql, args = sql + " WHERE experiment = ?", (experiment,)
    out = []
    for row in store.db.execute(sql + " ORDER BY created, id", args).fetchall():
        s = dict(row)
        for key in ("options_json", "seeds_json", "spec_json", "slot_sizes_json", "result_json"):
            s[key[:-5]] = loads(s.pop(key), store.path, f"search {s['id']}") if s.get(key) else None
        s["slot_sizes"] = {int(k): v for k, v in (s["slot_sizes"] or {}).items()}
        s["steps"] = [dict(r) for r in store.db.execute(
            "SELECT * FROM search_steps WHERE search_id = ? ORDER BY step", (s["id"],))]
        s["candidates"] = []
        for r in store.db.execute("SELECT * FROM search_candidates WHERE search_id = ? ORDER BY step, position",
                                  (s["id"],)):
            c = {k: (_num(r[k]) if isinstance(r[k], float) or r[k] is None else r[k]) for k in r.keys()}
            what = f"a candidate of search {s['id']}"
            c["off"], c["accs"], c["run_keys"] = (loads(r["off_json"], store.path, what),
                                                 loads(r["accs_json"], store.path, what),
                                                 loads(r["run_keys_json"], store.path, what))
            for k in ("slot", "relu_count", "seeds", "runs", "diverged", "reference", "verdict"):
                c[k] = r[k]
            s["candidates"].append(c)
        s["correlations"] = [{k: (_num(r[k]) if k not in ("search_id", "stat", "step", "n") else r[k])
                              for k in r.keys()} for r in store.db.execute(
            "SELECT * FROM search_correlations WHERE search_id = ? ORDER BY step, stat", (s["id"],))]
        out.append(s)
    return out


# ---------------------------------------------------------------- timings (an additive table)
#
# `timings`: each configuration's own time per epoch on a device, where a sweep trained it packed (its runs'
# seconds are then shares of a joint wall time): a short timed pass of one model alone (train.time_alone),
# measured once per configuration and device and kept, with its provenance. A configuration is its spec
# without the seed, as the plan stores it (`timing_key`); the device is `env.device_name`'s, as runs record it.
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


def save_timing(store: Store, row: dict) -> bool:
    """Keep a timing (TIMING_COLUMNS but `created`; `provenance` a dict); False where one of this configuration
    and device was there already (another process measured it first): the first measurement stays."""
    with store.transaction() as db:
        db.execute(TIMINGS_SCHEMA)
        if db.execute("SELECT 1 FROM timings WHERE config_key = ? AND device = ?",
                      (row["config_key"], row["device"])).fetchone():
            return False
        values = {**row, "provenance_json": json.dumps(row["provenance"]), "created": time.time()}
        db.execute(f"INSERT INTO timings VALUES ({','.join('?' * len(TIMING_COLUMNS))})",
                   [values[c] for c in TIMING_COLUMNS])
        return True


def load_timings(store: Store, keys: Iterable[str]) -> dict[tuple[str, str], dict]:
    """{(config key, device): timing row (provenance as a dict)} of the configurations `keys`; {} when none was
    ever stored."""
    if not has_table(store, "timings"):
        return {}
    out = {}
    for row in store._select_in("SELECT * FROM timings WHERE config_key IN ({})", keys):
        row["provenance"] = json.loads(row.pop("provenance_json"))
        out[(row["config_key"], row["device"])] = row
    return out
