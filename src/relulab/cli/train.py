"""`relulab train` (one model, one or more seeds) and `relulab datasets`."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from relulab.training import checkpoints
from relulab import data as data_mod
from relulab.data import DataSpec
from relulab.core.env import resolve_device
from relulab.core.errors import UserError
from relulab.experiments.tracking import TrackedRun, Trackers
from relulab.zoo.models import KEEP, ModelSpec, combine_slots, parse_off, parse_slots, parse_widths
from relulab.zoo.reference import PYTHON
from relulab.zoo.optim import OptimizerSpec
from relulab.packing.pack import train_many
from relulab.training.callbacks import ProgressBar
from relulab.training.loop import evaluate, run
from relulab.training.augment import AugmentSpec
from relulab.training.schedules import SCHEDULES, ScheduleSpec
from relulab.training.specs import Job, RunSpec, TrainSpec
from relulab.core.util import check_output_file, write_json_atomic
from relulab.cli.app import SeedAlias, Seeds, app, option_names, read_seeds
from relulab.cli.run import MlflowUri, TensorBoardDir, open_tracking, print_tracking
from relulab.cli.reference import KWARGS_HELP, MODEL_HELP, model_fields
from relulab.cli.reference import OPTION_NAMES as REFERENCE_OPTION_NAMES

console = Console(stderr=True)

# What bare `relulab train` trains: deep-mlp with two hidden layers and He init, which learns digits in seconds on
# the CPU. deep-mlp's own defaults are source 001's 50 layers with Glorot init, which with ReLU stays at chance
# (that source's point, not a model to start from): `--widths 300,100x49 --init glorot_uniform` trains it.
QUICK_DEFAULTS = {"deep-mlp": {"widths": "128,64", "init": "he_normal"}}


@app.command()
def train(
    dataset: str = typer.Option("digits", "--dataset", "-d", help="digits, mnist, fashion-mnist, cifar10, "
                                "image-folder, synthetic"),
    data_path: Optional[str] = typer.Option(None, help="File or folder to load the dataset from (searched first)."),
    split: str = typer.Option("stratified:0.1", help="Validation split: first:N, stratified:N|FRACTION, or test "
                              "(the test set as validation, flagged)."),
    scaling: str = typer.Option("255", help="255 (pixels / 255) or standardize."),
    image_size: Optional[int] = typer.Option(None, help="Resize or pad images to this square size."),
    fit: str = typer.Option("resize", help="How --image-size is reached: resize or pad."),
    train_size: Optional[int] = typer.Option(None, help="Train on a stratified subset of this many images."),
    download: bool = typer.Option(True, help="Download missing datasets from their canonical source."),
    model: str = typer.Option("deep-mlp", "--model", "-m", help=MODEL_HELP),
    model_kwargs: Optional[str] = typer.Option(None, "--model-kwargs", help=KWARGS_HELP),
    activation: Optional[str] = typer.Option(None, "--activation", "-a", help="Activation of every slot "
                                             "(default: relu; your own --model keeps its own)."),
    slot: list[str] = typer.Option([], help="Per-slot activation, e.g. --slot 7=identity (repeatable)."),
    off: Optional[str] = typer.Option(None, help="Slots switched off, e.g. 7,10."),
    init: Optional[str] = typer.Option(None, help="Kernel initializer (Keras names), or auto: the activation's "
                                       "recommended one (default: he_normal for deep-mlp, else glorot_uniform)."),
    bias_init: str = typer.Option("zeros", help="Bias initializer, e.g. constant:0.1."),
    output_init: str = typer.Option("glorot_uniform", help="Initializer of the classifier layer."),
    widths: Optional[str] = typer.Option(None, help="Layer widths, e.g. 300,100x49, source 001's 50 layers "
                                         "(default: 128,64 for deep-mlp, else the model's own)."),
    batchnorm: Optional[bool] = typer.Option(None, help="Force batch norm on or off (default: the model's)."),
    bn_flavour: str = typer.Option("keras", help="keras (momentum 0.99, eps 1e-3) or torch."),
    epochs: int = typer.Option(10, "--epochs", "-e"),
    batch_size: int = typer.Option(32, "--batch-size", "-b"),
    optimizer: str = typer.Option("adam", help="sgd, momentum, nesterov, adam, adamw or rmsprop."),
    lr: Optional[float] = typer.Option(None, help="Learning rate (default: the optimizer's usual one)."),
    flavour: str = typer.Option("torch", help="Optimizer defaults: torch or keras (Keras 3's exact update rules)."),
    momentum: float = typer.Option(0.9, help="Momentum of --optimizer momentum and nesterov."),
    weight_decay: Optional[float] = typer.Option(None, help="Weight decay of every parameter (default: adamw 0.01, "
                                                 "else none)."),
    weight_decay_kind: Optional[str] = typer.Option(None, help="l2 (added to the gradient, as PyTorch's SGD "
                                                    "weight_decay) or decoupled (AdamW's). Default: decoupled for "
                                                    "adamw, else l2."),
    schedule: Optional[str] = typer.Option(None, help=f"Learning-rate schedule, per batch: {', '.join(SCHEDULES)} "
                                           "(default constant)."),
    milestones: Optional[str] = typer.Option(None, help="--schedule step: the epochs after which the rate is "
                                             "multiplied by --gamma, e.g. 30,60."),
    gamma: Optional[float] = typer.Option(None, help="--schedule step: the factor at each milestone (default 0.1)."),
    warmup_epochs: int = typer.Option(0, help="Linear learning-rate warm-up over this many epochs (any schedule)."),
    label_smoothing: float = typer.Option(0.0, help="Label smoothing of the training cross-entropy, e.g. 0.1 (the "
                                          "train loss shown is then the smoothed one)."),
    crop_padding: int = typer.Option(0, help="Augment training images: random crops after padding by this many "
                                     "zeros, e.g. 4 (on the device)."),
    flip: bool = typer.Option(False, "--flip", help="Augment training images: random horizontal flips."),
    l1: float = typer.Option(0.0, help="L1 kernel penalty (Keras-style, added to the loss)."),
    l2: float = typer.Option(0.0, help="L2 kernel penalty (Keras-style, added to the loss)."),
    precision: str = typer.Option("auto", help="auto (on CUDA: bf16 for convolutions, else TensorFloat-32 matrix "
                                  "products, as JAX/Keras 3 use; on the CPU: fp32), fp32, tf32 or bf16."),
    seeds: Seeds = None,
    seed: SeedAlias = [],
    pack: Optional[bool] = typer.Option(None, "--pack/--no-pack", help="Train the seeds together, as `relulab run` "
                                        "does (stacked weights, CUDA graphs, compiled steps; no per-epoch progress "
                                        "bar). Default: on CUDA, where it is the fast path; on the CPU, one by one."),
    compile: Optional[bool] = typer.Option(None, "--compile/--no-compile", help="torch.compile a packed run's "
                                           "step, and pack (default: where enough model-epochs share the step to pay "
                                           "for compiling it)."),
    device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:N."),
    as_json: bool = typer.Option(False, "--json", help="Print the results as JSON on stdout."),
    out: Optional[Path] = typer.Option(None, help="Write the results (with per-epoch history) to this JSON file."),
    save: Optional[Path] = typer.Option(None, help="Save the trained model to this checkpoint file (with several "
                                        "seeds: NAME-seedN.pt); `relulab evaluate` reads it."),
    tensorboard: TensorBoardDir = None,
    mlflow: MlflowUri = None,
):
    """Train one model configuration (per seed) and print its history."""
    run_seeds = read_seeds(seeds, seed) or [0]
    fields = model_fields(model, model_kwargs)
    by_reference = fields["name"] == PYTHON
    slots = combine_slots(parse_slots(",".join(slot), "--slot", by_reference), parse_off(off, "--off", by_reference),
                          "--slot/--off")
    if activation is None:  # your own model keeps its activations unless --activation says otherwise
        activation = KEEP if by_reference else "relu"
    quick = QUICK_DEFAULTS.get(fields["name"], {})
    widths = widths if widths is not None else quick.get("widths")
    init = init if init is not None else quick.get("init", "glorot_uniform")
    spec = RunSpec(
        data=DataSpec(dataset, data_path, split, scaling, image_size, fit, train_size, download=download),
        model=ModelSpec(activation=activation, slots=slots, init=init, bias_init=bias_init, output_init=output_init,
                        widths=parse_widths(widths, "--widths"), batchnorm=batchnorm, bn_flavour=bn_flavour, **fields),
        train=TrainSpec(epochs, batch_size, OptimizerSpec(optimizer, lr, flavour, momentum, weight_decay,
                                                          weight_decay_kind), l1, l2, precision=precision,
                        compile=compile, label_smoothing=label_smoothing),
    )
    with option_names({**OPTION_NAMES, **REFERENCE_OPTION_NAMES}):
        spec.train.schedule = _schedule(schedule, milestones, gamma, warmup_epochs)
        if crop_padding or flip:
            spec.train.augment = AugmentSpec(crop_padding, flip)
        spec.validate()
        target = resolve_device(device)
        if compile and pack is False:
            raise UserError("--compile: only packed runs compile their step; drop --no-pack")
        together = pack if pack is not None else (target.type == "cuda" or bool(compile))
        for path, option in ((out, "--out"), (save, "--save")):
            if path is not None:
                check_output_file(path, option)  # before training: an hour's work must not end in "is a folder"
        splits = data_mod.load_data(spec.data)
        with open_tracking(tensorboard, mlflow) as trackers:
            _train_seeds(spec, splits, run_seeds, target, together, as_json, out, save, trackers)
            print_tracking(tensorboard, mlflow)


def _schedule(name: Optional[str], milestones: Optional[str], gamma: Optional[float], warmup_epochs: int
              ) -> Optional[ScheduleSpec]:
    """The schedule the options ask for; None when none of them is given (a constant rate)."""
    if name is None and milestones is None and gamma is None and not warmup_epochs:
        return None
    spec = ScheduleSpec(name or "constant", warmup_epochs=warmup_epochs)
    if milestones is not None:
        try:
            spec.milestones = [int(m) for m in milestones.split(",")]
        except ValueError:
            raise UserError(f"--milestones: expected epochs such as 30,60, got {milestones!r}") from None
    if gamma is not None:
        spec.gamma = gamma
    return spec


def _trained(spec: RunSpec, splits, seeds: list[int], device, together: bool):
    """Each seed's RunResult as it finishes: packed (all at once, the fast path) or one by one with a progress bar."""
    if together:
        console.print(f"packed: {len(seeds)} seed(s) train at once on {device}; their results come when all finish")
        for _, result in train_many([Job(spec, s) for s in seeds], splits, device):
            yield result
    else:
        for s in seeds:
            yield run(spec, s, device, splits=splits, callbacks=[ProgressBar(f"seed {s}")])


def _train_seeds(spec: RunSpec, splits, seeds: list[int], device, together: bool, as_json: bool,
                 out: Optional[Path], save: Optional[Path], trackers: Trackers) -> None:
    results = []
    for result in _trained(spec, splits, seeds, device, together):
        results.append(result.to_dict())
        if trackers:  # as `relulab run` files it: experiment train, part the dataset, configuration the model
            run_ = TrackedRun(f"train-seed{result.seed}", "train", spec.data.name, spec.model.name, result.seed,
                              result.spec.to_dict(), result.data)
            trackers.log_result(run_, result, {}, result.model.state_dict())
        if save:
            where = save if len(seeds) == 1 else save.with_name(f"{save.stem}-seed{result.seed}{save.suffix}")
            checkpoints.save(result, where, splits.classes)
            console.print(f"saved {where}")
        if not as_json:
            _print_result(result)
        if out:  # rewritten after every seed: a killed multi-seed run keeps what finished
            write_json_atomic(out, results)
    if as_json:
        print(json.dumps(results if len(results) > 1 else results[0], indent=2))


# Library field names -> this command's option names, so errors name what the user typed.
OPTION_NAMES = {
    "data.name": "--dataset", "data.path": "--data-path", "data.split": "--split", "data.scaling": "--scaling",
    "data.image_size": "--image-size", "data.fit": "--fit", "data.train_size": "--train-size",
    "model.name": "--model", "model.activation": "--activation", "model.init": "--init",
    "model.bias_init": "--bias-init", "model.output_init": "--output-init", "model.widths": "--widths",
    "model.bn_flavour": "--bn-flavour", "model.slots": "--slot/--off", "train.epochs": "--epochs",
    "train.batch_size": "--batch-size", "train.l1": "--l1", "train.l2": "--l2", "train.precision": "--precision",
    "train.compile": "--compile",
    "train.optimizer.name": "--optimizer", "train.optimizer.lr": "--lr", "train.optimizer.flavour": "--flavour",
    "train.optimizer.momentum": "--momentum", "train.optimizer.weight_decay": "--weight-decay",
    "train.optimizer.weight_decay_kind": "--weight-decay-kind", "train.schedule.name": "--schedule",
    "train.schedule.milestones": "--milestones", "train.schedule.gamma": "--gamma",
    "train.schedule.warmup_epochs": "--warmup-epochs", "train.label_smoothing": "--label-smoothing",
    "train.augment.crop_padding": "--crop-padding", "train.augment": "--crop-padding/--flip",
}


def _print_result(result) -> None:
    out = Console()
    table = Table(title=f"{result.spec.model.name} / {result.spec.data.name} / seed {result.seed}")
    for column in ("epoch", "train loss", "train acc", "val loss", "val acc", "seconds"):
        table.add_column(column, justify="right")
    for e in result.history.epochs:
        table.add_row(str(e.epoch), f"{e.train_loss:.4f}", f"{e.train_acc:.4f}", f"{e.val_loss:.4f}",
                      f"{e.val_acc:.4f}", f"{e.seconds:.2f}")
    out.print(table)
    h = result.history
    flag = " (validation = test set)" if result.data["val_is_test"] else ""
    line = f"best val acc {h.best_val_acc:.4f} at epoch {h.best_epoch}{flag}; final {h.final_val_acc:.4f}"
    if h.test_acc is not None:
        line += f"; test acc {h.test_acc:.4f}"
    if h.diverged_at:
        line += f"; DIVERGED at epoch {h.diverged_at}"
    out.print(line + f"; {h.seconds:.1f} s; {result.params:,} parameters; {result.provenance['device']}")


@app.command()
def datasets(data_path: Optional[str] = typer.Option(None, help="Also look here.")):
    """Which datasets are found, and where."""
    table = Table("dataset", "found", "where")
    for row in data_mod.describe_datasets(data_path):
        found = {True: "yes", False: "no", None: "-"}[row["found"]]
        table.add_row(row["dataset"], found, row["where"])
    Console().print(table)


@app.command("evaluate")
def evaluate_command(
    checkpoint: Path = typer.Argument(..., help="A checkpoint written by relulab train --save."),
    data_path: Optional[str] = typer.Option(None, help="Load the checkpoint's dataset from this file or folder."),
    device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:N."),
    as_json: bool = typer.Option(False, "--json", help="Print the results as JSON on stdout."),
):
    """Evaluate a saved model on its dataset's validation and test sets."""
    ckpt = checkpoints.load(checkpoint)
    data_spec = ckpt.spec.data
    if data_path is not None:
        data_spec.path = data_path
    with option_names({"data.path": "--data-path"}):
        splits = data_mod.load_data(data_spec)
    if tuple(splits.input_shape) != ckpt.input_shape or len(splits.classes) != len(ckpt.classes):
        raise UserError(f"{checkpoint}: the model takes {list(ckpt.input_shape)} inputs in {len(ckpt.classes)} "
                        f"classes; the data has {list(splits.input_shape)} in {len(splits.classes)}")
    target = resolve_device(device)
    model, splits = ckpt.model.to(target), splits.to(target)
    rows = []
    for name, x, y in (("validation", splits.x_val, splits.y_val), ("test", splits.x_test, splits.y_test)):
        loss, acc = evaluate(model, x, y, ckpt.spec.train.eval_batch_size)
        rows.append({"split": name, "examples": len(y), "loss": loss, "accuracy": acc})
    if as_json:
        print(json.dumps({"checkpoint": str(checkpoint), "seed": ckpt.seed, "results": rows}, indent=2))
        return
    table = Table(title=f"{checkpoint} ({ckpt.spec.model.name}, {ckpt.spec.data.name}, seed {ckpt.seed})")
    for column in ("split", "examples", "loss", "accuracy"):
        table.add_column(column, justify="right")
    for r in rows:
        table.add_row(r["split"], str(r["examples"]), f"{r['loss']:.4f}", f"{r['accuracy']:.4f}")
    Console().print(table)
