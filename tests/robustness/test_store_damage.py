"""Stores damaged the way disks damage files, and stores on read-only media, through the CLI.

A store is built once by `relulab run` on a tiny spec; each test damages a copy of it: garbage
over the cells of a table page or of the index page of `runs` (found from `sqlite_master`'s
root pages and the page size), an index whose keys were altered without breaking its pages (only
`PRAGMA integrity_check` sees that), invalid UTF-8 in a TEXT value. `relulab report` and
`relulab run` must refuse with one line naming the file and the check to run, exit 2, train
nothing, and leave the folder as it was: no -wal or -shm file, no byte changed.
"""
from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import tempfile
from pathlib import Path

import pytest

from relulab.packing import pack
from relulab.training import loop as train
from relulab.store import Store, StoreError
from specs import TINY, relulab, write_spec


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """(store bytes, run keys) of TINY after `relulab run`."""
    folder = tmp_path_factory.mktemp("built")
    spec = write_spec(folder, TINY)
    store = folder / "runs.sqlite"
    from relulab.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["run", str(spec), "--store", str(store), "--no-report"])
    assert exit_info.value.code == 0
    db = sqlite3.connect(store)
    keys = sorted(r[0] for r in db.execute("SELECT key FROM runs"))
    db.close()
    return store.read_bytes(), keys


# ---------------------------------------------------------------- damaging pages


def _pages(blob: bytes):
    """(page size, {table or index name: root page}) read the way the tests are told to: from sqlite_master."""
    with tempfile.TemporaryDirectory() as folder:
        copy = Path(folder) / "copy.sqlite"
        copy.write_bytes(blob[:18] + b"\x01\x01" + blob[20:])  # as a rollback-journal file: no -wal beside it
        db = sqlite3.connect(copy)
        size = db.execute("PRAGMA page_size").fetchone()[0]
        roots = dict(db.execute("SELECT name, rootpage FROM sqlite_master WHERE rootpage > 0"))
        db.close()
    return size, roots


def _page(blob, number: int, size: int) -> tuple[int, int]:
    """(offset of page `number`'s b-tree header in the file, its page type)."""
    start = (number - 1) * size + (100 if number == 1 else 0)
    return start, blob[start]


def _leaf(blob, root: int, size: int, last: bool = False) -> int:
    """The first (or last) leaf page of the b-tree at `root`, following interior pages (types 2 and 5)."""
    number = root
    while True:
        header, kind = _page(blob, number, size)
        if kind in (10, 13):  # leaf pages
            return number
        if last:  # the right-most child: in the interior page's header
            number = int.from_bytes(blob[header + 8:header + 12], "big")
        else:  # the first cell's left child
            first_cell = int.from_bytes(blob[header + 12:header + 14], "big")
            number = int.from_bytes(blob[(number - 1) * size + first_cell:][:4], "big")


def garbage_over_cells(blob: bytes, name: str, last: bool = False) -> bytes:
    """64 bytes of garbage over the cells of the first (last) leaf page of table or index `name`."""
    size, roots = _pages(blob)
    number = _leaf(blob, roots[name], size, last)
    header, _ = _page(blob, number, size)
    cells = (number - 1) * size + int.from_bytes(blob[header + 5:header + 7], "big")  # where cell content starts
    end = min(cells + 64, number * size)
    return blob[:cells] + bytes((i * 37 + 11) % 256 for i in range(end - cells)) + blob[end:]


def altered_index_keys(blob: bytes, keys: list[str]) -> bytes:
    """Two keys of the runs index changed by a character: the pages stay well-formed (quick_check: ok), but
    the index no longer finds those runs."""
    size, roots = _pages(blob)
    start = (roots["sqlite_autoindex_runs_1"] - 1) * size
    page = bytearray(blob[start:start + size])
    for key in keys[:2]:
        at = page.find(key.encode())
        page[at + 5] = ord("x") if page[at + 5] != ord("x") else ord("y")
    return blob[:start] + bytes(page) + blob[start + size:]


def invalid_utf8_text(blob: bytes) -> bytes:
    """A run's TEXT value ('tanh', its configuration) overwritten by as many bytes that are not UTF-8."""
    size, roots = _pages(blob)
    start = (_leaf(blob, roots["runs"], size) - 1) * size
    at = blob.index(b"tanh", start, start + size)
    return blob[:at] + b"\xff\xfe\xfd\xfc" + blob[at + 4:]


def _files(folder: Path) -> dict:
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.rglob("*"))
            if p.is_file()}


@pytest.fixture
def nothing_trained(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a run was trained")

    monkeypatch.setattr(train, "run", refuse)
    monkeypatch.setattr(pack, "train_together", refuse)


def _refused(capsys, folder: Path, argv: list[str], *names: str) -> str:
    before = _files(folder)
    code, out, err = relulab(capsys, *argv)
    assert code == 2, err
    assert err.startswith("error: store: ") and err.count("\n") == 1 and "Traceback" not in err, err
    for name in names:
        assert name in err, err
    assert _files(folder) == before  # nothing written: no -wal, no -shm, no report, not a byte of the store
    return err


DAMAGE = {
    "a table page of runs": (lambda blob, keys: garbage_over_cells(blob, "runs"), ("report", "run")),
    "the index page of runs": (lambda blob, keys: garbage_over_cells(blob, "sqlite_autoindex_runs_1"),
                               ("report", "run")),
    "a table page of epochs": (lambda blob, keys: garbage_over_cells(blob, "epochs"), ("report", "run")),
    # well-formed pages: a reader sees no error (the report misses two runs); a writer must not train them again
    "altered keys in the runs index": (altered_index_keys, ("run",)),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_pages_are_refused_in_one_line_and_nothing_is_retrained(built, tmp_path, capsys, monkeypatch,
                                                                        nothing_trained, damage):
    blob, keys = built
    make, commands = DAMAGE[damage]
    store = tmp_path / "runs.sqlite"
    store.write_bytes(make(blob, keys))
    write_spec(tmp_path, TINY)
    monkeypatch.chdir(tmp_path)
    argv = {"report": ["report", "runs.sqlite", "--out", "report"],
            "run": ["run", "spec.yaml", "--store", "runs.sqlite", "--no-report"]}
    for command in commands:
        err = _refused(capsys, tmp_path, argv[command], f"{store} is damaged", "integrity_check")
        assert f'check it with: sqlite3 {store} "PRAGMA integrity_check"' in err


def test_invalid_utf8_in_a_stored_text_is_one_line_in_the_report(built, tmp_path, capsys, monkeypatch):
    blob, _ = built
    store = tmp_path / "runs.sqlite"
    store.write_bytes(invalid_utf8_text(blob))
    monkeypatch.chdir(tmp_path)
    err = _refused(capsys, tmp_path, ["report", "runs.sqlite", "--out", "report"], f"{store} is damaged",
                   "Could not decode to UTF-8 column 'variant': a stored text is not UTF-8")
    assert "\\xff" not in err and len(err) < 400  # SQLite's message quotes the damaged bytes: not those


def test_damage_met_while_iterating_rows_is_one_line_too(built, tmp_path):
    # Cursors fetch lazily: a damaged page late in a table fails during iteration, not at execute.
    blob, keys = built
    store = tmp_path / "runs.sqlite"
    store.write_bytes(blob)
    with Store(store) as s:  # many probe rows: the table spans many pages
        s.ensure_probe_search_tables()
        for key in keys:
            s.save_run_probes(key, "first", 2, [("mean", slot, -1, "all", 10, 0.5) for slot in range(300)])
    store.write_bytes(garbage_over_cells(store.read_bytes(), "run_probes", last=True))
    with Store(store, create=False) as s:
        with pytest.raises(StoreError, match=f"{store} is damaged"):
            s.run_probes(keys)


# ---------------------------------------------------------------- files that are no store


def _sqlite_without_relulab_tables(path: Path) -> None:
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE mine (x)")
    db.commit()
    db.close()


def _other_schema_version(path: Path, blob: bytes) -> None:
    path.write_bytes(blob)
    db = sqlite3.connect(path)
    db.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")
    db.commit()
    db.close()


NOT_STORES = {
    "one byte": (lambda path, blob: path.write_bytes(b"x"), "is not a SQLite file (it starts with b'x')"),
    "a text file": (lambda path, blob: path.write_text("results\n"), "is not a SQLite file"),
    "half a header": (lambda path, blob: path.write_bytes(blob[:9]), "is not a SQLite file"),
    "an SQLite file of something else": (lambda path, blob: _sqlite_without_relulab_tables(path),
                                         "is not a relulab store"),
    "another schema version": (_other_schema_version, "has schema version 2, this relulab reads 1"),
}


@pytest.mark.parametrize("kind", list(NOT_STORES))
def test_files_that_are_no_store_of_ours_are_refused_untouched(built, tmp_path, capsys, monkeypatch, kind):
    make, message = NOT_STORES[kind]
    make(tmp_path / "x.sqlite", built[0])
    write_spec(tmp_path, TINY)
    monkeypatch.chdir(tmp_path)
    for argv in (["run", "spec.yaml", "--store", "x.sqlite", "--no-report"], ["report", "x.sqlite"],
                 ["compare", "x.sqlite", "--config", "relu", "--config", "tanh"]):
        _refused(capsys, tmp_path, argv, str(tmp_path / "x.sqlite"), message)


# ---------------------------------------------------------------- read-only media


def test_a_report_writes_nothing_beside_the_store(built, tmp_path, capsys):
    # Works as root too: the report opens the store read-only and leaves its folder as it found it.
    folder = tmp_path / "stores"
    folder.mkdir()
    (folder / "runs.sqlite").write_bytes(built[0])
    before = _files(folder)
    code, out, err = relulab(capsys, "report", str(folder / "runs.sqlite"), "--out", str(tmp_path / "report"))
    assert code == 0, err
    assert (tmp_path / "report" / "report.html").is_file()
    assert _files(folder) == before


@pytest.fixture
def read_only():
    """Makes a folder and its files read-only as read-only media are: chmod where it binds (not root), else
    the immutable attribute (root, where the file system and capabilities allow); skips where neither does."""
    undo = []

    def make(folder: Path) -> None:
        paths = [*folder.iterdir(), folder]
        for p in paths:
            mode = p.stat().st_mode & 0o777
            p.chmod(mode & 0o555)
            undo.append(lambda p=p, mode=mode: p.chmod(mode))
        if not os.access(folder, os.W_OK):
            return
        if shutil.which("chattr") is None or \
                subprocess.run(["chattr", "+i", *map(str, paths)], capture_output=True).returncode != 0:
            pytest.skip("chmod does not bind for this user, and chattr +i is not available")
        undo.append(lambda: subprocess.run(["chattr", "-i", *map(str, paths)], check=True))
        assert not os.access(folder, os.W_OK)

    yield make
    for step in reversed(undo):
        step()


def test_a_store_on_read_only_media_gives_a_report_and_refuses_writers(built, tmp_path, capsys, read_only):
    folder = tmp_path / "media"
    folder.mkdir()
    (folder / "runs.sqlite").write_bytes(built[0])
    spec = write_spec(tmp_path, TINY)
    read_only(folder)
    before = _files(folder)
    code, out, err = relulab(capsys, "report", str(folder / "runs.sqlite"), "--out", str(tmp_path / "report"))
    assert code == 0, err
    assert "tiny" in (tmp_path / "report" / "report.md").read_text()
    for store in ("runs.sqlite", "new.sqlite"):  # the command checks where it will write before anything else
        _refused(capsys, folder, ["run", str(spec), "--store", str(folder / store), "--no-report"],
                 f"cannot write in {folder}")
    assert _files(folder) == before
