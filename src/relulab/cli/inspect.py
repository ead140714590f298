"""`relulab inspect`: a model's slots (name, activation, output shape, activations per example), parameters and
multiply-accumulates, for the input shape of a dataset."""
from __future__ import annotations

import json
import sys
from typing import Optional

import torch
import typer
from rich.console import Console
from rich.table import Table
from torch import nn

from relulab import data as data_mod
from relulab.cli.app import app, option_names
from relulab.data import DataSpec
from relulab.cli.reference import KWARGS_HELP, MODEL_HELP, model_fields
from relulab.cli.reference import OPTION_NAMES as REFERENCE_OPTION_NAMES
from relulab.zoo.models import KEEP, ModelSpec, build_model
from relulab.zoo.reference import PYTHON
from relulab.zoo.slotify import ModelReport, describe

OPTION_NAMES = {"model.name": "--model", "model": "--model", "data.name": "--dataset", "data.path": "--data-path",
                "data.image_size": "--image-size"}


@app.command("inspect")
def inspect_command(
    model: str = typer.Option(..., "--model", "-m", help=MODEL_HELP),
    model_kwargs: Optional[str] = typer.Option(None, "--model-kwargs", help=KWARGS_HELP),
    dataset: str = typer.Option("digits", "--dataset", "-d", help="The dataset whose examples the model takes "
                                "(its input shape and classes): digits, mnist, fashion-mnist, cifar10, "
                                "image-folder, synthetic."),
    data_path: Optional[str] = typer.Option(None, help="File or folder to load the dataset from."),
    image_size: Optional[int] = typer.Option(None, help="Resize or pad the dataset's images to this square size."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON on stdout."),
):
    """List a model's activation slots, with each one's output shape and activations per example (the ReLU count
    private inference pays for), and the model's parameters and multiply-accumulates per example."""
    with option_names({**OPTION_NAMES, **REFERENCE_OPTION_NAMES}):
        splits = data_mod.load_data(DataSpec(dataset, data_path, image_size=image_size))
        built = model_for(model, splits.input_shape, splits.num_classes, model_kwargs)
        report = describe(built, torch.zeros(1, *splits.input_shape), name=model)
    if as_json:
        print(json.dumps({**report.to_dict(), "dataset": dataset}, indent=2))
    else:
        print_report(report, dataset)


def model_for(name: str, input_shape: tuple, num_classes: int, kwargs: Optional[str] = None) -> nn.Module:
    """The model `--model` names, for inputs of `input_shape` and `num_classes` outputs: a built-in model
    (relulab.zoo.models.MODELS) by name, or your own by reference (MODULE:FUNCTION or FILE.py:FUNCTION, called with
    `kwargs`, a JSON object), with its own activations."""
    fields = model_fields(name, kwargs)
    activation = {"activation": KEEP} if fields["name"] == PYTHON else {}
    return build_model(ModelSpec(**fields, **activation), input_shape, num_classes)


def print_report(report: ModelReport, dataset: str) -> None:
    out = Console(width=None if sys.stdout.isatty() else 160)
    table = Table(title=f"{report.model} on {dataset} {report.input_shape}: {len(report.slots)} slots",
                  title_justify="left")
    for column, justify in (("slot", "right"), ("name", "left"), ("activation", "left"), ("output shape", "left"),
                            ("activations / example", "right")):
        table.add_column(column, justify=justify)
    for s in report.slots:
        shape = "x".join(str(d) for d in s.shape) if s.shape is not None else "not reached"
        uses = f" ({s.uses} uses)" if s.uses > 1 else ""
        table.add_row(str(s.index), s.name, s.activation, shape + uses, f"{s.elements:,}")
    out.print(table)
    out.print(f"activations per example: {report.activation_elements:,}; parameters: {report.parameters:,} "
              f"({report.trainable_parameters:,} trainable); {report.macs:,} MACs = {report.flops:,} FLOPs per "
              f"example ({report.counted})")
