"""What trains with what: every packing decision, read from the registries' entries.

A model's entry (`relulab.zoo.models.MODELS`) says how it packs (`packs`: stack, fuse, conv-stack, vmap, alone) and
whether it is convolutional (`conv`); an activation's entry (`relulab.zoo.activations.ACTIVATIONS`) whether
the kernels have it (`kernel_code`) and whether it holds weights of its own (`learned`); the optimizers a
stack can run are `relulab.zoo.optim.STACKED_OPTIMIZERS`. From those, here: which jobs share a stack
(`stack_key`, `cnn_stack_key`, `functional_stack_key`, `fusable`), which share a pack (`pack_key`), which steps
are compiled (`compiles`, `compiles_stack`), and how many models go to a stack (`most_to_a_stack`,
`default_max_stack`, `stack_sizes`).
"""
from __future__ import annotations

import importlib.util
from typing import Optional, Sequence

import torch

from relulab.packing.functional import MOST_VALUES
from relulab.packing.fused import MAX_BATCH
from relulab.training.specs import Job, autocast_dtype, float32_products
from relulab.zoo.activations import KERNEL_CODES, canonical_name, parse_activation
from relulab.zoo.masks import parse_mask
from relulab.zoo.models import ModelSpec, largest_activation, model_entry
from relulab.zoo.optim import STACKED_OPTIMIZERS


def learns_activations(model: ModelSpec) -> bool:
    """Whether an activation of the model holds weights of its own (PReLU's slope). A stack cannot hold them:
    it runs one activation module for each run of models with one activation (the first one's,
    StackedWeights._add_activation) and trains only its stacked `params`, so such a model is never stacked."""
    return any(parse_activation(a)[0].learned for a in [model.activation, *model.slots.values()])


def mask_layout(model: ModelSpec) -> tuple:
    """Which slots of the model have masks, at what granularity and shape (relulab.zoo.masks): the masks are
    buffers of the slots, so models whose layouts match can share a functional stack (each its own masks); the
    MLP and CNN stacks and the fused step compute every element of a slot alike, so they take no masked model."""
    masks = {str(slot): parse_mask(text) for slot, text in model.masks.items()}
    return tuple(sorted((slot, m.granularity, tuple(m.keep.shape)) for slot, m in masks.items()))


def fusable(job: Job) -> bool:
    """Whether a job's model can train through the fused step (relulab.packing.fused): a model whose entry
    says "fuse", without batch norm, at most fused.MAX_BATCH a batch, not in bf16, every activation one
    the kernels have, and no label smoothing (the fused step's gradient is the plain cross-entropy's)."""
    model, train = job.spec.model, job.spec.train
    acts = {canonical_name(a) for a in [model.activation, *model.slots.values()]}
    return (model_entry(model.name).packs == "fuse" and not model.batchnorm and not model.masks
            and train.batch_size <= MAX_BATCH
            and train.precision != "bf16" and acts <= KERNEL_CODES.keys() and not train.label_smoothing)


def _recipe_key(job: Job) -> tuple:
    """What a stack's models must share of the training recipe: the optimizer's rule and weight decay kind,
    the penalties and label smoothing (and the precision, which each kind of stack keys in its own way).
    Learning rates, weight decay rates, schedules and augmentation may differ (each model has its own
    learning-rate row, generator and augmentation)."""
    train, opt = job.spec.train, job.spec.train.optimizer
    return (opt.name, opt.flavour, opt.momentum, opt.resolved_weight_decay_kind(), train.l1, train.l2,
            train.label_smoothing)


def stack_key(job: Job) -> Optional[tuple]:
    """MLP jobs with equal keys can share a stack: everything that shapes the computation
    matches (widths, activations, batch norm, optimizer rule and weight decay kind, penalties, precision);
    seeds, initializers, learning rates and weight decay rates may differ, and so may activations in a fused stack
    (`relulab.packing.fused`). None: not stackable (the model's entry says so, or `learns_activations`)."""
    spec, opt = job.spec, job.spec.train.optimizer
    if model_entry(spec.model.name).packs not in ("stack", "fuse") or opt.name not in STACKED_OPTIMIZERS:
        return None
    if fusable(job):
        return ("fused", tuple(spec.model.widths or ()), *_recipe_key(job), float32_products(spec))
    if learns_activations(spec.model) or spec.model.masks:
        return None
    return (spec.model.name, tuple(spec.model.widths or ()), spec.model.activation,
            tuple(sorted(spec.model.slots.items())), spec.model.batchnorm, spec.model.bn_flavour, *_recipe_key(job),
            spec.train.precision)


def cnn_stack_key(job: Job) -> Optional[tuple]:
    """Jobs of a "conv-stack" model (seed-cnn) with equal keys can share a `StackedCNN`: same shape, optimizer
    rule, penalties and precision; seeds, initializers, learning rates and the activation in each slot may
    differ."""
    spec, opt = job.spec, job.spec.train.optimizer
    if model_entry(spec.model.name).packs != "conv-stack" or opt.name not in STACKED_OPTIMIZERS:
        return None
    if learns_activations(spec.model) or spec.model.masks:
        return None
    return ("cnn", tuple(spec.model.widths or ()), spec.model.batchnorm, spec.model.bn_flavour, *_recipe_key(job),
            spec.train.precision, spec.train.compile)


def functional_stack_key(job: Job) -> Optional[tuple]:
    """Jobs of a "vmap" model (relulab's CIFAR nets; models by reference train alone, as their code may not run
    under vmap) with equal keys can share a `FunctionalStack`: one architecture (the model spec but for its activations and initializers) and recipe;
    seeds, initializers, learning rates, schedules, augmentation and the activation in each slot may differ."""
    spec, opt = job.spec, job.spec.train.optimizer
    if model_entry(spec.model.name).packs != "vmap" or opt.name not in STACKED_OPTIMIZERS:
        return None
    if learns_activations(spec.model):
        return None
    model = spec.model
    return ("vmap", model.name, tuple(model.widths or ()), model.batchnorm, model.bn_flavour, model.target,
            repr(sorted(model.kwargs.items())), model.source_sha256, mask_layout(model), *_recipe_key(job),
            spec.train.precision, spec.train.compile)


# Up to how many parameters a model trains faster in a functional stack than as units side by side (on an H200, 2
# epochs of the standard recipe, results/bench-h200-user-models): 16 resnet20s (270K parameters) ran 2.59
# model-epochs/s as a compiled stack against 2.45 as 16 units on streams; resnet20s of widths 32-64-128 (1.08M) ran
# 1.32 as a compiled stack of 8 against 1.45 as 8 units, and of widths 64-128-256 (4.3M) 0.68 against 0.79, the
# stack no faster than one model alone (0.68). Between 270K and 1.08M unmeasured: the threshold is near the middle
# of that range (on a log scale). A model above it trains in a unit of its own (CUDA graph, side by side).
FUNCTIONAL_STACK_MAX_PARAMS = 500_000


def functional_stack_pays(parameters: int) -> bool:
    """Whether a model of `parameters` trains faster stacked with others of its kind than alone (above)."""
    return parameters <= FUNCTIONAL_STACK_MAX_PARAMS


def stacks_functional(device: torch.device) -> bool:
    """Whether "vmap" models train in functional stacks by default: on CUDA, where K models' layers as one
    grouped kernel fill a GPU that one small model leaves idle. On the CPU one model already keeps the cores
    busy, and a stack only adds vmap's bookkeeping."""
    return device.type == "cuda"


def functional_stack_runs(members: Sequence[Job], device: torch.device) -> bool:
    """Whether jobs that share a functional stack key train as a stack: not on CUDA where the stack's step would
    not be compiled (compiles_stack), since there one-model units side by side, each a CUDA graph of its step on
    its own stream, are faster: 16 resnet20s ran 2.45 model-epochs/s as units, 1.36 as an eager stack and 2.59 as
    a compiled one (H200, results/bench-h200-user-models). Other stacks, any stack off CUDA (where a caller
    asks for one) and a stack whose train.compile is set (true, or false: the eager stack asked for) are not
    concerned."""
    if device.type != "cuda" or functional_stack_key(members[0]) is None or \
            members[0].spec.train.compile is not None:
        return True
    return compiles_stack(members, device)


def stacks_cnns(jobs: Sequence[Job], device: torch.device) -> bool:
    """Whether seed-cnns train in stacks by default: on CUDA, in bf16, where Triton is there for the kernels."""
    if device.type != "cuda" or any(autocast_dtype(job.spec, device) != torch.bfloat16 for job in jobs):
        return False
    return importlib.util.find_spec("triton") is not None  # CUDA builds of torch bring it


def data_packs(splits) -> bool:
    """Whether runs on `splits` can train packed. The packed steps cut batches from device-resident tensors
    (relulab.packing.units); a streamed training set (Splits.from_datasets' `stream`) is fetched a batch at a time
    through a DataLoader, which only the one-model loop does, so its runs train alone."""
    return not splits.streamed


def schedule_key(job: Job) -> tuple:
    train = job.spec.train
    return (train.batch_size, train.epochs, train.eval_batch_size)


def pack_key(job: Job, device: torch.device) -> Optional[tuple]:
    """Jobs with equal keys can train together (`relulab.packing.train_together`); None: this job trains alone.

    On CUDA any job whose optimizer the graphed step supports can join (its step becomes a
    CUDA graph); on the CPU only stackable MLPs gain from it."""
    if job.spec.train.optimizer.name not in STACKED_OPTIMIZERS:
        return None
    if device.type != "cuda" and stack_key(job) is None:
        return None
    return schedule_key(job)


# torch.compile (Inductor) fuses each conv model's batch norm, activation, pooling and bias-gradient kernels:
# on an H100, seed-cnn's graphed step went from 2.22 to 1.64 ms alone, and from 11.9 to 9.1 ms for 8 models
# side by side (BENCHMARKS.md). Compiling costs 12-25 s for each distinct model (slot placement; 25 s with a
# cold cache) and saves about 0.13 s a model-epoch in a pack, so by default (train.compile unset) it is used
# where at least this many model-epochs share one placement.
COMPILE_MIN_MODEL_EPOCHS = 200


def compiles(job: Job, group: Sequence[Job], device: torch.device) -> bool:
    """Whether `job`'s step (an unstacked model's) is compiled when it trains with `group`."""
    if job.spec.train.compile is not None:
        return job.spec.train.compile
    if device.type != "cuda" or not model_entry(job.spec.model.name).conv:
        return False
    same_graph = sum(1 for other in group if other.spec.model == job.spec.model)
    return same_graph * job.spec.train.epochs >= COMPILE_MIN_MODEL_EPOCHS


def compiles_stack(jobs: Sequence[Job], device: torch.device) -> bool:
    """Whether a stack's step is compiled: as train.compile says, else for conv stacks (seed-cnn, functional)
    on CUDA with at least COMPILE_MIN_MODEL_EPOCHS model-epochs (one compilation per stack). MLP stacks are not
    compiled."""
    if cnn_stack_key(jobs[0]) is None and functional_stack_key(jobs[0]) is None:
        return False
    if jobs[0].spec.train.compile is not None:  # equal across the stack (part of cnn_stack_key)
        return jobs[0].spec.train.compile
    return device.type == "cuda" and len(jobs) * jobs[0].spec.train.epochs >= COMPILE_MIN_MODEL_EPOCHS


# Models to a stack when the caller does not say. The fused step costs the same number of kernels
# however many models it stacks, so its stacks take everything (20 models: 19.1 s against 20.2 s
# in two stacks, BENCHMARKS.md); autograd stacks stop at 8, past which a bigger stack did not pay.
# seed-cnn stacks fill the GPU better up to 16 (a step of 11.1 ms for 16 against 5.9 for 8 on an H100); more
# run as stacks side by side (on an H200, 32 as two of 16: 2% more model-epochs/s than one of 16; one stack of
# 32, or 64 as four stacks of 16, ran no faster than two of 16).
DEFAULT_MAX_STACK = 8
DEFAULT_MAX_FUSED_STACK = 64
DEFAULT_MAX_CNN_STACK = 16
# resnet20, compiled, H200: 2.49, 2.47, 2.80, 2.92 model-epochs/s in one stack of 8, 16, 32, 64; 64 as two stacks
# of 32 side by side 2.95 against 2.85 as one (cuDNN benchmarking off, as relulab runs).
DEFAULT_MAX_FUNCTIONAL_STACK = 32
# The most models a functional stack holds whatever the caller asks (more form further stacks): the largest stack
# measured. (One of 64 resnet20s once failed in cuDNN's batch norm, in evaluation: FunctionalStack.largest_batch.)
MOST_FUNCTIONAL_STACK = 64


def stack_sizes(count: int, most: int) -> list[int]:
    """count models in as few stacks of at most `most` as can be, of near-equal sizes (18, 16 -> 9, 9):
    the stacks run side by side, so a small last one would only wait for the big ones."""
    stacks = -(-count // most)
    return [count // stacks + (1 if i < count % stacks else 0) for i in range(stacks)]


def most_to_a_stack(job: Job, max_stack: Optional[int] = None, input_shape: Optional[tuple] = None,
                    num_classes: Optional[int] = None) -> int:
    """Models to a stack of `job`'s: `max_stack` where the caller says, else the default (the numbers above). A
    functional stack holds at most MOST_FUNCTIONAL_STACK, and, where the data's input shape and classes are given,
    no more than keep a training batch's biggest activation, all the stack's models side by side, within what cuDNN
    indexes (functional.MOST_VALUES; evaluation splits its batches to it instead)."""
    most = max_stack or default_max_stack(job)
    if functional_stack_key(job) is None:
        return most
    most = min(most, MOST_FUNCTIONAL_STACK)
    if input_shape is not None and num_classes is not None:
        per_batch = job.spec.train.batch_size * largest_activation(job.spec.model, input_shape, num_classes)
        most = min(most, max(1, MOST_VALUES // per_batch))
    return most


def default_max_stack(job: Job) -> int:
    """Models to a stack of `job`'s when the caller does not say (the numbers above)."""
    if fusable(job):
        return DEFAULT_MAX_FUSED_STACK
    if functional_stack_key(job) is not None:
        return DEFAULT_MAX_FUNCTIONAL_STACK
    return DEFAULT_MAX_CNN_STACK if cnn_stack_key(job) is not None else DEFAULT_MAX_STACK
