"""Property-based tests: a store damaged anywhere inside its pages, and output locations of every wrong kind.

Page damage: a store built by `relulab run` gets random bytes over a random stretch of one random page.
Whatever was hit, `relulab report` and `relulab run` either work or refuse in one line (exit code 2, no
traceback), and `run` never trains a run the store held: a damaged index must not make it forget them.

Output locations: each option that names where a command writes, given a location that cannot be written
(a file where a folder must be, a folder where a file must be, a path under a file, a place that takes no
file, a folder of someone else's files for a report), is refused before anything trains, nothing written.
"""
from __future__ import annotations

import contextlib
import io
import sqlite3
import tempfile
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relulab.packing import pack
from relulab.training import loop as train
from relulab.cli import main
from runner import assert_refused, fuzz, run_cli
from specs import TINY, write_spec


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """(store bytes, page size, page count) of TINY after `relulab run`, as a rollback-journal file (no WAL)."""
    folder = tmp_path_factory.mktemp("built")
    store = folder / "runs.sqlite"
    with pytest.raises(SystemExit) as exit_info:
        main(["run", str(write_spec(folder, TINY)), "--store", str(store), "--no-report"])
    assert exit_info.value.code == 0
    db = sqlite3.connect(store)
    db.execute("PRAGMA journal_mode=DELETE")  # everything in the main file: the damage below is all there is
    size, count = db.execute("PRAGMA page_size").fetchone()[0], db.execute("PRAGMA page_count").fetchone()[0]
    db.close()
    return store.read_bytes(), size, count


def _refused_or_fine(code: int, err: str) -> None:
    assert code in (0, 2), err
    assert "Traceback" not in err, err
    if code == 2:
        assert err.startswith("error: ") and err.count("\n") == 1, err


def _cli(argv: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            main(argv)
            code = 0
        except SystemExit as exit_info:
            code = exit_info.code
    return code, err.getvalue()


def _refuse_training(*args, **kwargs):
    raise AssertionError("a run the store held was trained again")


@fuzz(30)
@given(data=st.data())
def test_damage_anywhere_in_a_store_is_named_or_harmless_and_nothing_is_retrained(built, data, monkeypatch):
    blob, size, count = built
    page = data.draw(st.integers(1, count), label="page")
    start = data.draw(st.integers(0, size - 1), label="offset")
    length = data.draw(st.integers(1, min(256, size - start)), label="length")
    garbage = data.draw(st.binary(min_size=length, max_size=length), label="bytes")
    at = (page - 1) * size + start
    damaged = blob[:at] + garbage + blob[at + length:]
    monkeypatch.setattr(train, "run", _refuse_training)
    monkeypatch.setattr(pack, "train_together", _refuse_training)
    with tempfile.TemporaryDirectory() as folder:
        store = Path(folder) / "runs.sqlite"
        store.write_bytes(damaged)
        spec = write_spec(Path(folder), TINY)
        _refused_or_fine(*_cli(["report", str(store), "--out", str(Path(folder) / "report")]))
        _refused_or_fine(*_cli(["run", str(spec), "--store", str(store), "--no-report"]))


# ------------------------------------------------------------------ output locations

FILES = {"a-file": b"x: 1\n", "others/notes.txt": b"mine", "folder/keep.txt": b"mine"}
# Where a folder is wanted: a file, a path under a file, a place that takes no file, someone else's folder.
BAD_FOLDERS = ["a-file", "a-file/sub", "/proc/relulab-nowhere/sub", "others"]
# Where a file is wanted: a folder, a path under a file, a place that takes no file.
BAD_FILES = ["folder", ".", "a-file/x", "/proc/relulab-nowhere/x"]
OUTPUTS = {  # command line -> (option, what it takes)
    ("run", "spec.yaml", "--out"): ("--out", BAD_FOLDERS),
    ("run", "spec.yaml", "--store"): ("store", BAD_FILES),
    ("run", "spec.yaml", "--tensorboard"): ("--tensorboard", BAD_FOLDERS[:3]),
    ("search", "spec.yaml", "--out"): ("--out", BAD_FOLDERS),
    ("search", "spec.yaml", "--store"): ("store", BAD_FILES),
    ("probe", "spec.yaml", "--out"): ("--out", BAD_FOLDERS[:3]),
    ("probe", "spec.yaml", "--store"): ("store", BAD_FILES),
    ("train", "-e", "1", "--widths", "8", "--out"): ("--out", BAD_FILES),
    ("train", "-e", "1", "--widths", "8", "--save"): ("--save", BAD_FILES),
    ("compare", "a.sqlite", "b.sqlite", "--csv"): ("--csv", BAD_FILES),
}


@fuzz(40)
@given(data=st.data())
def test_an_output_that_cannot_be_written_is_refused_before_the_work(data):
    command = data.draw(st.sampled_from(sorted(OUTPUTS)), label="command")
    option, locations = OUTPUTS[command]
    location = data.draw(st.sampled_from(locations), label="location")
    code, err, left = run_cli([*command, location], TINY, FILES)
    assert_refused(code, err, left, f"{option}: ")
