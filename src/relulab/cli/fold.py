"""`relulab fold`: a checkpoint with its linear stretches folded into fewer layers (relulab.zoo.fold)."""
from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from relulab.cli.app import app
from relulab.core.errors import UserError

console = Console(stderr=True, soft_wrap=True, highlight=False)


@app.command("fold")
def fold_command(
    checkpoint: Path = typer.Argument(..., help="A checkpoint (relulab train --save, relulab export-model)."),
    out: Path = typer.Option(..., "--out", "-o", help="The folded checkpoint to write."),
    approximate: bool = typer.Option(False, "--approximate", help="Also merge convolutions whose second one pads "
                                     "(not exact at the borders; the difference is reported)."),
):
    """Merge the layers an off (identity) slot joins into one, and fold batch norms into their layers; the
    folded checkpoint computes the same outputs (`relulab evaluate` reads it)."""
    from relulab.training.checkpoints import fold_file

    try:
        report = fold_file(checkpoint, out, approximate)
    except UserError as e:
        raise UserError(str(e).replace("approximate=True", "--approximate")) from None
    for line in report.lines():
        console.print(line)
    print(out)
