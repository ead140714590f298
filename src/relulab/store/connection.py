"""The store's SQLite connection: opening a store file (read-only or to write), checking that it is a relulab
store, and turning SQLite's errors about the file into one `StoreError` line wherever they surface.

Every query of a store goes through one wrapper (`Connection`), which fetches all its rows inside the
translation: a cursor fetches lazily, so damage deep in a table would otherwise surface while iterating.
"""
from __future__ import annotations

import contextlib
import json
import os
import shlex
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Sequence

from relulab.core.errors import UserError
from relulab.store.schema import SCHEMA_VERSION, STORE_TABLES

BUSY_TIMEOUT_MS = 120_000
SQLITE_HEADER = b"SQLite format 3\x00"  # the first 16 bytes of every SQLite database file


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


class Connection:
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


def check_header(path: Path) -> None:
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


def check_writable(path: Path) -> None:
    """A writer needs the file and its folder writable (WAL journaling makes -wal and -shm files beside it)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise StoreError(f"store: cannot make the folder {path.parent} for {path.name} ({e.strerror or e})") from None
    if not os.access(path.parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        what = path if path.exists() and not os.access(path, os.W_OK) else f"its folder {path.parent}"
        raise StoreError(f"store: {path} is on read-only storage ({what} is not writable); relulab writes its "
                         f"results there: copy the store somewhere writable")


def open_reader(path: Path) -> Connection:
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
    return Connection(raw, path, made_sidecars=bool(_sidecars(path) - before))


def _read_connection(path: Path, option: str) -> sqlite3.Connection:
    raw = _sqlite_connect(f"{path.as_uri()}?{option}", uri=True)
    try:
        raw.execute("PRAGMA schema_version").fetchone()  # SQLite opens the file (and its WAL) lazily: now
    except BaseException:
        raw.close()
        raise
    return raw


def open_writer(path: Path) -> Connection:
    db = Connection(_sqlite_connect(str(path)), path)
    try:
        db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        _set_wal(db)
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA foreign_keys=ON")
    except BaseException:
        db.close()
        raise
    return db


def _set_wal(db: Connection, wait_s: float = 30.0) -> None:
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


def integrity_verdict(db: Connection) -> str:
    """PRAGMA integrity_check's verdict on one line: ok, or its first finding."""
    first = db.execute("PRAGMA integrity_check").fetchone()[0]
    findings = [line.strip() for line in first.splitlines() if line.strip() and not line.startswith("***")]
    return findings[0] if findings else first


def inspect_store(db: Connection, path: Path, writing: bool) -> None:
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
        verdict = integrity_verdict(db)
        if verdict != "ok":
            raise store_error(path, "damaged", verdict)


