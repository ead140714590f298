"""`relulab export-model`: the kept weights of one stored run, as a checkpoint (relulab.weights.export_run)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from relulab.cli.app import OneSeed, SeedAlias, app, read_one_seed

console = Console(stderr=True, soft_wrap=True)


@app.command("export-model")
def export_model_command(
    store: Path = typer.Argument(..., help="The store (.sqlite) holding the run."),
    config: str = typer.Option(..., help="The configuration, or a search's placement (e.g. off-7)."),
    seeds: OneSeed = None,
    seed: SeedAlias = [],
    out: Path = typer.Option(..., "--out", "-o", help="The checkpoint file to write."),
    best: bool = typer.Option(False, "--best", help="The best epoch's weights (by validation accuracy) instead of "
                              "the final model's."),
    part: Optional[str] = typer.Option(None, help="The part of a multi-part experiment."),
    experiment: Optional[str] = typer.Option(None, help="The experiment, when the store holds several."),
    epochs: Optional[int] = typer.Option(None, "--epochs", "-e", min=1, help="The run trained for this many "
                                         "epochs, when runs of several lengths are stored (a search's --epochs)."),
):
    """Write the stored weights of a run as a checkpoint: `relulab evaluate` and plain PyTorch
    (torch.load(..., weights_only=True), relulab.checkpoints.load) read it."""
    from relulab.store.weights import export_run

    seed_number = read_one_seed(seeds, seed, "relulab export-model writes one run's model")
    done = export_run(store, out, config, seed_number, part, experiment, best, epochs)
    epoch = f", epoch {done.epoch}" if done.epoch else ""
    console.print(f"wrote the {done.weights} weights{epoch} of {done.variant} seed {done.seed} (run {done.key}, "
                  f"{done.experiment}/{done.part}); read it with: relulab evaluate {done.path}")
    print(done.path)
