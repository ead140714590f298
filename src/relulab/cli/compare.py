"""`relulab compare`: two experiments (or two configurations of one) side by side (relulab.compare)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from relulab.report import compare as comparing
from relulab.core.util import check_output_file, write_atomic
from relulab.cli.app import app, option_names


@app.command("compare")
def compare_command(
    store_a: Path = typer.Argument(..., help="Side A: a store (.sqlite)."),
    store_b: Optional[Path] = typer.Argument(None, help="Side B: another store (default: STORE_A, comparing two "
                                             "configurations of it, --config A --config B)."),
    config: list[str] = typer.Option([], "--config", "-c", help="A configuration to compare (repeatable; default: "
                                     "every one both sides have). With one store: exactly two, A then B."),
    experiment_a: Optional[str] = typer.Option(None, help="Which experiment of STORE_A (when it holds several)."),
    experiment_b: Optional[str] = typer.Option(None, help="Which experiment of STORE_B (default: the same name as "
                                               "A's where STORE_B has it, else its only one)."),
    metric: str = typer.Option("best_val_acc", help="best_val_acc, final_val_acc or test_acc."),
    correction: str = typer.Option("none", help="Adjust the rows' p-values together: none, holm (Holm) or bh "
                                   "(Benjamini-Hochberg)."),
    as_json: bool = typer.Option(False, "--json", help="Print the comparison as JSON on stdout."),
    csv: Optional[Path] = typer.Option(None, "--csv", help="Also write the table to this CSV file."),
):
    """Compare two experiments, configuration by configuration: each side's mean ± 95% interval over seeds,
    the difference B - A with its interval, Welch's p and the verdict; and what differs between the sides."""
    if csv is not None:
        check_output_file(csv, "--csv")  # before the stores are read: nothing is written on an error
    with option_names({"compare.correction": "--correction"}):
        result = comparing.compare_stores(store_a, store_b, config, experiment_a, experiment_b, metric, correction)
    if csv is not None:
        write_atomic(csv, comparing.to_csv(result))
    if as_json:
        print(json.dumps(comparing.to_json(result), indent=2))
        return
    _print_text(result)


def _print_text(result: comparing.StoreComparison) -> None:
    for line in comparing.sides_text(result):
        print(line)
    print()
    header, rows = comparing.table(result)
    print(_aligned(header, rows))
    differences = comparing.differences_text(result)
    if differences:
        print()
        print("The sides differ in what makes them comparable:")
        for line in differences:
            print(f"  {line}")


def _aligned(header: list[str], rows: list[list[str]]) -> str:
    """A plain text table (it is read in terminals and logs, and pasted: no box drawing)."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
