"""Small experiment specs, and helpers for running relulab and reading its store, that the tests share."""
import sqlite3
from pathlib import Path

import pytest

from relulab.cli import main

TINY = """\
name: tiny
description: A tiny experiment for the tests.
device: cpu
seeds: [0, 1]
data: {name: synthetic, options: {n: 240, classes: 3, size: 4}}
model: {name: deep-mlp, widths: [8, 8], init: he_normal}
train: {epochs: 2, batch_size: 32, optimizer: {name: sgd, lr: 0.05}}
configs:
  relu: {}
  tanh: {model: {activation: tanh}}
baseline: relu
"""


def write_spec(folder: Path, text: str = TINY, name: str = "spec.yaml") -> Path:
    path = folder / name
    path.write_text(text)
    return path


def relulab(capsys, *argv):
    """Run the `relulab` command in-process: (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as exit_info:
        main(list(argv))
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


def quiet(_message):
    pass


def store_value(store: Path, sql: str):
    """One value from a store, or None while it does not exist yet (a killed sweep may not have created it)."""
    if not store.exists():
        return None
    db = sqlite3.connect(store, timeout=30)
    try:
        return db.execute(sql).fetchone()[0]
    except sqlite3.OperationalError:  # the schema is not there yet
        return None
    finally:
        db.close()


def store_rows(store: Path, sql: str, args=()) -> list[dict]:
    """The rows of a query on a store file, as dicts."""
    db = sqlite3.connect(store)
    db.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in db.execute(sql, args)]
    finally:
        db.close()


def stored_runs(store: Path) -> int:
    return store_value(store, "SELECT count(*) FROM runs") or 0
