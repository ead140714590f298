"""What defines a run and what a run gives back: plain dataclasses (TrainSpec, RunSpec, Job, History,
RunResult), and `build_run_spec`, which makes a validated RunSpec from a spec's mapping."""
from __future__ import annotations

import math
from dataclasses import asdict, astuple, dataclass, field
from pathlib import Path
from typing import Optional

import torch

from relulab.core.errors import UserError, is_number
from relulab.core.mapping import check_mapping, from_mapping
from relulab.core.ranges import INT64_MAX, show_int
from relulab.data import DataSpec
from relulab.core.reference import resolve_target
from relulab.training.augment import AugmentSpec
from relulab.training.schedules import ScheduleSpec
from relulab.zoo.models import (KEEP, MODEL_EXTRAS, MODELS, ModelSpec, SlotNet, combine_slots, model_entry, parse_off,
                               parse_slots, parse_widths)
from relulab.zoo.optim import OptimizerSpec

PRECISIONS = ("auto", "fp32", "tf32", "bf16")


@dataclass
class TrainSpec:
    """How to train. A plain record for configs and the CLI."""

    epochs: int = 10
    batch_size: int = 32
    optimizer: OptimizerSpec = field(default_factory=OptimizerSpec)
    l1: float = 0.0  # Keras-style kernel penalties, added to the loss
    l2: float = 0.0
    eval_batch_size: int = 2048
    # fp32 | tf32 (float32 values, TensorFloat-32 matrix products: what JAX and Keras 3 do on A100/H100 by
    # default) | bf16 (autocast) | auto: bf16 for conv models on CUDA, else tf32 (on the CPU both mean fp32)
    precision: str = "auto"
    # torch.compile the training step of unstacked models (the conv models): true | false | None (auto:
    # where enough model-epochs share one compiled graph to pay for compiling it; see packing.rules.compiles)
    compile: Optional[bool] = None
    # The recipes of the ResNet papers. Unset (None, 0) they change nothing, and keys leave them out.
    schedule: Optional[ScheduleSpec] = None  # learning-rate schedule, stepped per batch (training.schedules)
    label_smoothing: float = 0.0  # into the training cross-entropy: the train loss reported is the smoothed one
    augment: Optional[AugmentSpec] = None  # crop and flip of training batches on the device (training.augment)

    def validate(self, prefix: str = "train") -> "TrainSpec":
        for key in ("epochs", "batch_size", "eval_batch_size"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= INT64_MAX:
                raise UserError(f"{prefix}.{key}: expected a positive integer (at most {INT64_MAX}), got "
                                f"{show_int(value)}")
        for key in ("l1", "l2"):
            value = getattr(self, key)
            if not (is_number(value) and 0 <= value < math.inf):
                raise UserError(f"{prefix}.{key}: expected a number >= 0, got {value!r}")
        if self.precision not in PRECISIONS:
            raise UserError(f"{prefix}.precision: expected one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.compile is not None and not isinstance(self.compile, bool):
            raise UserError(f"{prefix}.compile: expected true, false or null (auto), got {self.compile!r}")
        if not (is_number(self.label_smoothing) and 0 <= self.label_smoothing < 1):
            raise UserError(f"{prefix}.label_smoothing: expected a number in [0, 1), got {self.label_smoothing!r}")
        self.optimizer.validate(f"{prefix}.optimizer")
        if self.schedule is not None:
            self.schedule.validate(self.epochs, f"{prefix}.schedule")
        if self.augment is not None:
            self.augment.validate(f"{prefix}.augment")
        return self


def autocast_dtype(spec: "RunSpec", device: torch.device) -> Optional[torch.dtype]:
    """bf16 where it was asked for, or by default for conv models on CUDA (where it keeps accuracy and
    doubles the convolutions' speed); None means full fp32."""
    precision = spec.train.precision
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" and model_entry(spec.model.name).conv else "fp32"
    return torch.bfloat16 if precision == "bf16" else None


def float32_products(spec: "RunSpec") -> str:
    """How float32 matrix products are computed on CUDA: "tf32" (TensorFloat-32 tensor cores: inputs rounded
    to 10 mantissa bits, fp32 sums) for tf32 and auto, else "ieee" (full fp32). auto follows JAX, whose
    default this is on A100/H100, so the Keras peers train this way too; on seed 001 it kept accuracy within
    seed noise of fp32 (BENCHMARKS.md). CPU products are full fp32 whatever this says."""
    return "tf32" if spec.train.precision in ("tf32", "auto") else "ieee"


def arithmetic(spec: "RunSpec", device: torch.device) -> str:
    """What a run's arithmetic actually was on `device` (bf16, tf32 or fp32), recorded in its result's data."""
    if autocast_dtype(spec, device) is not None:
        return "bf16"
    return "tf32" if device.type == "cuda" and float32_products(spec) == "tf32" else "fp32"


@dataclass
class RunSpec:
    """Everything that defines one training run except the seed."""

    data: DataSpec = field(default_factory=DataSpec)
    model: ModelSpec = field(default_factory=ModelSpec)
    train: TrainSpec = field(default_factory=TrainSpec)

    def validate(self) -> "RunSpec":
        self.data.validate("data")
        self.model.validate("model")
        self.train.validate("train")
        return self

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class EpochRecord:
    epoch: int
    train_loss: float
    train_acc: float
    val_loss: float
    val_acc: float
    seconds: float


@dataclass
class History:
    epochs: list[EpochRecord] = field(default_factory=list)
    diverged_at: Optional[int] = None  # first epoch whose training loss was NaN or inf
    test_loss: Optional[float] = None  # after the last epoch
    test_acc: Optional[float] = None

    @property
    def best(self) -> Optional[EpochRecord]:
        finite = [e for e in self.epochs if math.isfinite(e.val_acc)]
        return max(finite, key=lambda e: e.val_acc) if finite else None

    @property
    def best_val_acc(self) -> float:
        return self.best.val_acc if self.best else float("nan")

    @property
    def best_epoch(self) -> Optional[int]:
        return self.best.epoch if self.best else None

    @property
    def final_val_acc(self) -> float:
        return self.epochs[-1].val_acc if self.epochs else float("nan")

    @property
    def seconds(self) -> float:
        return sum(e.seconds for e in self.epochs)

    def state(self) -> dict:
        """As plain data (relulab.resume saves it with a run in progress)."""
        return {"epochs": [list(astuple(e)) for e in self.epochs], "diverged_at": self.diverged_at}

    def restore(self, state: dict) -> None:
        self.epochs = [EpochRecord(int(e[0]), *map(float, e[1:])) for e in state["epochs"]]
        self.diverged_at = state["diverged_at"]

    def summary(self) -> dict:
        return {"best_val_acc": self.best_val_acc, "best_epoch": self.best_epoch, "final_val_acc": self.final_val_acc,
                "test_acc": self.test_acc, "seconds": round(self.seconds, 3), "diverged_at": self.diverged_at}


@dataclass
class RunResult:
    spec: RunSpec
    seed: int
    history: History
    params: int
    data: dict
    provenance: dict
    model: Optional[SlotNet] = None  # the final model
    # The weights at the best epoch (by validation accuracy), on the CPU, where that is not the last epoch.
    best_state: Optional[dict[str, torch.Tensor]] = None

    def __post_init__(self):
        self.provenance = {**self.provenance, **code_by_reference(self.spec)}

    def to_dict(self) -> dict:
        return {"spec": self.spec.to_dict(), "seed": self.seed, "params": self.params, "data": self.data,
                "provenance": self.provenance, **self.history.summary(),
                "history": [asdict(e) for e in self.history.epochs]}


def code_by_reference(spec: RunSpec) -> dict:
    """The user's code a run was built from, for its provenance: {"model_source" / "data_source": {"target",
    "sha256"}} for a model or data by reference (name: python), else nothing."""
    return {f"{section}_source": {"target": part.target, "sha256": part.source_sha256}
            for section, part in (("model", spec.model), ("data", spec.data)) if part.target is not None}


@dataclass
class Job:
    """One run to do: a spec and a seed, plus the caller's key for it (the store's run key)."""

    spec: RunSpec
    seed: int
    key: str = ""


def build_run_spec(sections: dict, prefix: str = "", base_dir: Optional[Path] = None) -> RunSpec:
    """A validated RunSpec from {'data': {...}, 'model': {...}, 'train': {...}}; errors name `prefix` + field."""
    data = from_mapping(DataSpec, sections.get("data"), f"{prefix}data")
    if data.path:
        data.path = str((base_dir or Path.cwd()).joinpath(Path(data.path).expanduser()).resolve())
    if data.target is not None:  # a file target is relative to the spec's folder, as data.path is
        data.target = resolve_target(data.target, base_dir, f"{prefix}data.target")
    model_map = dict(check_mapping(sections.get("model"), f"{prefix}model"))
    entry = MODELS.get(model_map.get("name", ModelSpec.name))
    by_reference = entry is not None and entry.by_reference
    model_map["slots"] = combine_slots(parse_slots(model_map.get("slots"), f"{prefix}model.slots", by_reference),
                                       parse_off(model_map.get("off"), f"{prefix}model.off", by_reference),
                                       f"{prefix}model.off")
    if "widths" in model_map:
        model_map["widths"] = parse_widths(model_map["widths"], f"{prefix}model.widths")
    if by_reference:
        model_map.setdefault("activation", KEEP)  # a model by reference keeps its own activations unless told
        if model_map.get("target") is not None:
            model_map["target"] = resolve_target(model_map["target"], base_dir, f"{prefix}model.target")
    model = from_mapping(ModelSpec, model_map, f"{prefix}model", MODEL_EXTRAS)
    train_map = dict(check_mapping(sections.get("train"), f"{prefix}train"))
    nested = {key: train_map.pop(key, None) for key in ("optimizer", "schedule", "augment")}
    for key in ("optimizer", "schedule"):
        if isinstance(nested[key], str):
            nested[key] = {"name": nested[key]}  # `optimizer: sgd`, `schedule: cosine`
    train = from_mapping(TrainSpec, train_map, f"{prefix}train")
    train.optimizer = from_mapping(OptimizerSpec, nested["optimizer"], f"{prefix}train.optimizer")
    if nested["schedule"] is not None:
        train.schedule = from_mapping(ScheduleSpec, nested["schedule"], f"{prefix}train.schedule")
    if nested["augment"] is not None:
        train.augment = from_mapping(AugmentSpec, nested["augment"], f"{prefix}train.augment")
    data.validate(f"{prefix}data")
    model.validate(f"{prefix}model")
    train.validate(f"{prefix}train")
    return RunSpec(data, model, train)
