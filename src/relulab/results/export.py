"""The tables written to a folder, one file per table that has rows (`relulab export`).

    done = export_tables("runs/quickstart.sqlite", "csv", "runs/quickstart-tables")
    done.written["runs"]                     # (.../runs.csv, its rows); done.empty: the tables with no row

Everything is checked (the format, its package, the store, the experiment, the folder) and every table is made
before the first file is written, so bad input writes nothing; each file is written whole (a temporary name,
then a rename).
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import pandas as pd

from relulab.core.errors import UserError, unknown_choice
from relulab.core.stats import check_correction
from relulab.core.util import check_output_dir, write_bytes_atomic
from relulab.results.source import experiment_names, opened
from relulab.results.tables import summary


def _csv(df: pd.DataFrame) -> bytes:
    return df.to_csv(index=False).encode("utf-8")


def _json(df: pd.DataFrame) -> bytes:
    return (df.to_json(orient="records", date_format="iso") + "\n").encode("utf-8")


def _parquet(df: pd.DataFrame) -> bytes:
    buf = io.BytesIO()
    _plain_columns(df).to_parquet(buf, index=False, engine="pyarrow")
    return buf.getvalue()


def _plain_columns(df: pd.DataFrame) -> pd.DataFrame:
    """Parquet wants one type per column: a spec field that is a number in one run and text in another (a grid
    over `data.split`, say) is written as text."""
    mixed = [c for c in df.columns if df[c].dtype == object
             and len({type(v) for v in df[c] if v is not None and not (isinstance(v, float) and v != v)}) > 1]
    return df.astype({c: "string" for c in mixed}) if mixed else df


@dataclass(frozen=True)
class Format:
    suffix: str
    write: Callable[[pd.DataFrame], bytes]
    needs: Optional[str] = None  # the package it needs, installed by the extra of the same name


FORMATS = {"csv": Format("csv", _csv), "parquet": Format("parquet", _parquet, needs="pyarrow"),
           "json": Format("json", _json)}
EXTRAS = {"pyarrow": "parquet"}  # package -> the relulab extra that installs it


def check_format(name: str) -> Format:
    """The format called `name`, with the package it needs importable; else a UserError naming export.format."""
    if name not in FORMATS:
        raise unknown_choice("export.format", name, FORMATS)
    fmt = FORMATS[name]
    if fmt.needs is not None:
        try:
            __import__(fmt.needs)
        except ImportError:
            raise UserError(f"export.format: {name} needs the {fmt.needs} package, which is not installed; "
                            f"pip install relulab[{EXTRAS[fmt.needs]}]") from None
    return fmt


@dataclass(frozen=True)
class Exported:
    written: dict[str, tuple[Path, int]]  # table -> (its file, its rows), in TABLES' order
    empty: list[str]  # the tables with no row, which get no file


def export_tables(store, format: str, out_dir: str | Path, experiment: Optional[str] = None,
                  correction: Optional[str] = None) -> Exported:
    """Write the store's tables (relulab.results.TABLES) that have rows into `out_dir`, as `<table>.<format>`."""
    from relulab.results import TABLES

    fmt = check_format(format)
    check_correction(correction, "results.correction")
    out = check_output_dir(out_dir, "export.out")
    with opened(store) as s:
        experiment_names(s, experiment)  # an unknown experiment is refused before any table is made
        tables = {name: (summary(s, experiment, correction) if name == "summary" else table(s, experiment))
                  for name, table in TABLES.items()}
    blobs = {name: fmt.write(df) for name, df in tables.items() if len(df)}
    written = {name: (write_bytes_atomic(out / f"{name}.{fmt.suffix}", blob), len(tables[name]))
               for name, blob in blobs.items()}
    return Exported(written, [name for name in tables if name not in written])
