"""Do relulab's Triton convolutions pay for themselves? seed-cnn's convolutions through four paths (issue 25).

K seed-cnns at batch 128, bf16 autocast on CUDA, the convolution of each model with its own weights, through:

  triton-stack   relulab.kernels.conv_triton through the operator StackedCNN runs (stacked_cnn.stacked_conv),
                 activations laid out (N, H, W, K, C);
  cudnn-grouped  one cuDNN convolution with groups=K on (N, K*C, H, W) channels-last, the same operator with
                 triton_kernels=False (what StackedCNN runs off the Triton path);
  vmap           torch.func.vmap of F.conv2d over the K models' weights and inputs (as FunctionalStack runs any
                 module; vmap turns it into a grouped convolution itself);
  one-at-a-time  K separate F.conv2d calls on channels-last tensors, as K unpacked models run them.

Two parts:

- layers: per 3x3 layer of seed-cnn (c1-c9), the forward, the input gradient (not for c1: a model's first
  layer needs none) and the weight and bias gradients together, through autograd (one torch.autograd.grad
  with a random upstream gradient). The Triton forward that StackedCNN runs also applies the activation
  and sums the batch norm's statistics in its epilogue, so that is timed too, against the same work in
  PyTorch (`triton-stack+relu+sums` against `cudnn-grouped+relu+sums`, both as StackedCNN runs them).
  Each is timed eagerly and replayed from a CUDA graph (no launch cost: what the library's graphed step
  sees), median of --repeats after warm-up, in microseconds per model; each path's result is compared
  with an fp32 (TF32 off) reference: `err` is the largest of max|got - want| / max|want| over the output,
  the sums and the gradients. Layers are not compiled: what torch.compile fuses around cuDNN's
  convolutions (activation, sums, casts) shows in the steps.
- steps: one whole training step (forward, loss, backward, Adam update) of K seed-cnns through the
  library's own units (relulab.packing.units, as train_together builds them, captured in CUDA graphs as it
  does on CUDA): StackedCNN with the Triton kernels (shipped), StackedCNN with triton_kernels=False (cuDNN
  grouped; batch norm then unfolded, StackedCNN's default off the Triton path), FunctionalStack over the K
  models, and K one-model units (ModelStep, each on its own stream, as train_together runs unstacked
  models). Eager and compiled (--compile off,on), in ms per step and model-epochs/s (50,000 images at
  batch 128: 391 steps an epoch). setup_s: building, compiling and capturing, before the first timed step.

Run from the repository root on the GPU machine (about 4 minutes: --budget starts no variant that would
end past that many seconds, a compiled step being given 45; --parts steps,layers measures the steps first):

    OUT=out python benchmarks/conv_paths.py --models 16 --compile off,on --budget 240

Each measurement is one JSON line in $OUT/conv_paths.jsonl, written as soon as it is measured (a variant
that fails writes its error instead); a markdown table follows at the end. Its numbers go to BENCHMARKS.md.
`--smoke` runs everything but the Triton paths on the CPU (float32, K=2, batch 4, 2 repeats) to show the
script works end to end.
"""
import argparse
import json
import math
import os
import statistics
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace
from types import SimpleNamespace
from typing import Optional

import torch
import torch.nn.functional as F
from torch.func import vmap

sys.path.insert(0, "src")
from relulab.data import DataSpec  # noqa: E402
from relulab.packing import stacked_cnn  # noqa: E402
from relulab.packing import units as pack_units  # noqa: E402
from relulab.packing.functional import FunctionalStack  # noqa: E402
from relulab.packing.stacked_cnn import StackedCNN, stacked_conv  # noqa: E402
from relulab.training.specs import Job, RunSpec, TrainSpec  # noqa: E402
from relulab.zoo.activations import KERNEL_CODES  # noqa: E402
from relulab.zoo.models import ModelSpec  # noqa: E402
from relulab.zoo.optim import OptimizerSpec  # noqa: E402

T0 = time.perf_counter()
OUT = os.environ.get("OUT", ".")
IMAGES = 50000  # CIFAR-10's training set: an epoch is ceil(IMAGES / batch) steps
# (name, input size, CIN, COUT) of seed-cnn's 3x3 'valid' convolutions on 32x32 images, as the stack runs them
# (benchmarks/probe_conv_kernels.py's LAYERS, and c9, the last 3x3 layer, on the 3x3 map after the second pool).
LAYERS = [("c1", 32, 3, 48), ("c2", 30, 48, 48), ("c3", 28, 48, 96), ("c4", 26, 96, 96), ("c5", 24, 96, 96),
          ("c6", 22, 96, 96), ("c7", 10, 96, 192), ("c8", 8, 192, 192), ("c9", 3, 192, 192)]
KS = 3
RECORDS = []  # this run's lines, for the tables at the end
# What a variant is expected to take (seconds), so that none starts that would run far past --budget: a layer's
# (Triton's compilation of its kernels, a CUDA graph, the repeats), an eager step's (graph capture, the steps),
# a compiled step's (a cold torch.compile of seed-cnn took about 25 s on an H100, BENCHMARKS.md).
LAYER_SECONDS, STEP_SECONDS, COMPILED_STEP_SECONDS = 2, 10, 45
WARM_UP_STEPS = 3  # after capture, before the timed steps


def emit(rec: dict) -> None:
    rec["t"] = round(time.perf_counter() - T0, 1)
    RECORDS.append(rec)
    print(json.dumps(rec), flush=True)
    with open(f"{OUT}/conv_paths.jsonl", "a") as f:
        f.write(json.dumps(rec) + "\n")


@dataclass
class Setting:
    device: torch.device
    amp: Optional[torch.dtype]  # bf16 autocast on CUDA (the library's default for seed-cnn), None: fp32
    batch: int
    repeats: int
    triton: bool  # whether the Triton paths run (not on the CPU)
    deadline: float

    def autocast(self):
        return torch.autocast(self.device.type, dtype=self.amp or torch.bfloat16, enabled=self.amp is not None)

    def out_of_time(self, needs: float = 0) -> bool:
        """Whether a variant expected to take `needs` seconds would end past the budget."""
        return time.perf_counter() + needs > self.deadline


# ---------------------------------------------------------------------------------------------------- timing

def graphed(fn):
    """fn captured in a CUDA graph (after warm-up on a side stream, as capture needs): a call replays it."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay


def median_seconds(fn, repeats: int, device: torch.device, graph: bool) -> float:
    """The median of `repeats` timed calls of fn after warm-up: CUDA events around each call on the GPU
    (an eager call's launch gaps count, as they cost a real step), the wall clock on the CPU."""
    if device.type != "cuda":
        fn()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return statistics.median(times)
    call = graphed(fn) if graph else fn
    for _ in range(3):
        call()
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(repeats)]
    for start, end in events:
        start.record()
        call()
        end.record()
    torch.cuda.synchronize()
    return statistics.median(start.elapsed_time(end) for start, end in events) / 1e3


# ------------------------------------------------------------------------------------------- one layer's paths

@dataclass
class Problem:
    """One layer's operands for K models, in the stack's layout: x (N, H, W, K, CIN) and dy (N, HO, WO, K, COUT)
    in the activations' dtype, weight (K, COUT, CIN, KS, KS) and bias (K, COUT) in fp32 (as the models hold
    them; autocast or the Triton operator casts them), dsums (2, K, COUT): the upstream gradient of the
    batch-norm sums."""
    x: torch.Tensor
    w: torch.Tensor
    b: torch.Tensor
    dy: torch.Tensor
    dsums: torch.Tensor
    input_grad: bool

    @property
    def k(self) -> int:
        return self.x.shape[3]

    def as_float32(self) -> "Problem":
        return replace(self, x=self.x.float(), dy=self.dy.float())


def make_problem(size: int, cin: int, cout: int, k: int, s: Setting) -> Problem:
    # drawn on the device: on the host, a 16-stack's activations take seconds of the budget to draw
    generator = torch.Generator(s.device).manual_seed(size * 1000 + cin + cout + k)
    dtype = s.amp or torch.float32
    ho = size - KS + 1

    def randn(*shape):
        return torch.randn(*shape, generator=generator, device=s.device)

    first = cin == 3  # c1 reads images in [0, 1); the others read activations (ReLU's: half of them 0)
    x = torch.rand(s.batch, size, size, k, cin, generator=generator, device=s.device) if first \
        else randn(s.batch, size, size, k, cin).relu()
    return Problem(x=x.to(dtype), w=randn(k, cout, cin, KS, KS) / (KS * KS * cin) ** 0.5, b=randn(k, cout) * 0.1,
                   dy=randn(s.batch, ho, ho, k, cout).to(dtype), dsums=randn(2, k, cout) * 1e-3,
                   input_grad=not first)


def _leaf(t: torch.Tensor, grad: bool = True) -> torch.Tensor:
    return t.detach().clone().requires_grad_(grad)


def _fwd_bwd(s: Setting, forward, inputs, upstream):
    """A call of forward (under autocast) and its backward to `inputs` from `upstream`, through autograd."""
    def run():
        with s.autocast():
            outs = forward()
        return outs, torch.autograd.grad(outs, inputs, upstream)
    return run


def _stack_layout_path(p: Problem, s: Setting, forward_of, fused: bool):
    """A path whose operands are in the stack's layout (StackedCNN's): (run, to_canonical)."""
    x, w, b = _leaf(p.x, p.input_grad), _leaf(p.w), _leaf(p.b)
    inputs = [x, w, b] if p.input_grad else [w, b]
    run = _fwd_bwd(s, lambda: forward_of(x, w, b), inputs, (p.dy, p.dsums) if fused else p.dy)

    def canonical(outs, grads):
        out = dict(zip(("out", "sums"), outs)) if fused else {"out": outs}
        return {**out, **dict(zip(("dx", "dw", "db") if p.input_grad else ("dw", "db"), grads))}
    return run, canonical


def _triton_operands(x, w):
    operands = stacked_cnn._triton_operands(x, w)
    if operands is None:  # stacked_conv would fall back to cuDNN silently: that is not this path
        raise ValueError(f"conv_triton does not take this layer (CIN {w.shape[2]}, COUT {w.shape[1]})")
    return operands


def triton_stack(p: Problem, s: Setting):
    def forward(x, w, b):
        _triton_operands(x, w)
        return stacked_conv(x, w, b, triton_kernels=True)
    return _stack_layout_path(p, s, forward, fused=False)


def cudnn_grouped(p: Problem, s: Setting):
    return _stack_layout_path(p, s, lambda x, w, b: stacked_conv(x, w, b, triton_kernels=False), fused=False)


def triton_stack_fused(p: Problem, s: Setting):
    """Convolution, ReLU and the batch norm's sums in one kernel, as StackedCNN._conv_act_batchnorm runs it
    (the module's private operators: this is what the stack calls, not a public API)."""
    codes = torch.full((p.k,), KERNEL_CODES["relu"], dtype=torch.int32, device=p.x.device)

    def forward(x, w, b):
        x16, w = _triton_operands(x, w)
        a, partial_sums = stacked_cnn._triton_conv_act(x16, w, stacked_cnn._kernel_weight(w), b.float().contiguous(),
                                                       codes, True, stacked_cnn._row_tiles(x16, w))
        return a, partial_sums.sum(1)
    return _stack_layout_path(p, s, forward, fused=True)


def cudnn_grouped_fused(p: Problem, s: Setting):
    """The same in PyTorch operations, as StackedCNN._conv_act_batchnorm runs it off the Triton path."""
    def forward(x, w, b):
        a = F.relu(stacked_cnn._grouped_conv(x, w, b))
        return a, torch.stack([a.sum((0, 1, 2)), (a * a).sum((0, 1, 2))]).float()
    return _stack_layout_path(p, s, forward, fused=True)


def vmapped(p: Problem, s: Setting):
    """vmap of F.conv2d over (K, N, C, H, W): given as a view of the stack's layout, which is what a vmapped
    channels-last convolution before it gives back (vmap folds K into the channels: (N, K*C, H, W))."""
    x = p.x.permute(3, 0, 4, 1, 2).detach().requires_grad_(p.input_grad)
    w, b = _leaf(p.w), _leaf(p.b)
    inputs = [x, w, b] if p.input_grad else [w, b]
    # autocast does not reach inside vmap's batched convolution (it failed: bf16 input, fp32 bias), so the
    # weights are cast to the input's dtype by hand, as autocast would (their gradients stay fp32)
    conv = vmap(lambda xk, wk, bk: F.conv2d(xk, wk.to(xk.dtype), bk.to(xk.dtype)))
    run = _fwd_bwd(s, lambda: conv(x, w, b), inputs, p.dy.permute(3, 0, 4, 1, 2))

    def canonical(out, grads):
        named = dict(zip(("dx", "dw", "db") if p.input_grad else ("dw", "db"), grads))
        if "dx" in named:
            named["dx"] = named["dx"].permute(1, 3, 4, 0, 2)
        return {"out": out.permute(1, 3, 4, 0, 2), **named}
    return run, canonical


def one_at_a_time(p: Problem, s: Setting):
    """K convolutions, each model's tensors its own channels-last ones, as a model alone has them."""
    def own(t, k):
        return t[:, :, :, k].permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)
    xs = [own(p.x, k).requires_grad_(p.input_grad) for k in range(p.k)]
    ws, bs = [_leaf(p.w[k]) for k in range(p.k)], [_leaf(p.b[k]) for k in range(p.k)]
    inputs = (xs if p.input_grad else []) + ws + bs
    run = _fwd_bwd(s, lambda: [F.conv2d(x, w, b) for x, w, b in zip(xs, ws, bs)], inputs,
                   [own(p.dy, k) for k in range(p.k)])

    def canonical(outs, grads):
        k = p.k
        named = {"out": torch.stack([o.permute(0, 2, 3, 1) for o in outs], 3)}
        if p.input_grad:
            named["dx"], grads = torch.stack([g.permute(0, 2, 3, 1) for g in grads[:k]], 3), grads[k:]
        return {**named, "dw": torch.stack(grads[:k]), "db": torch.stack(grads[k:])}
    return run, canonical


# name -> (builder, what it computes, whether it needs the Triton kernels)
LAYER_PATHS = {
    "triton-stack": (triton_stack, "conv", True),
    "cudnn-grouped": (cudnn_grouped, "conv", False),
    "vmap": (vmapped, "conv", False),
    "one-at-a-time": (one_at_a_time, "conv", False),
    "triton-stack+relu+sums": (triton_stack_fused, "conv+relu+sums", True),
    "cudnn-grouped+relu+sums": (cudnn_grouped_fused, "conv+relu+sums", False),
}
# The fp32 reference of each kind of work: cuDNN's grouped convolution in fp32, TF32 off.
REFERENCES = {"conv": cudnn_grouped, "conv+relu+sums": cudnn_grouped_fused}


@contextmanager
def full_float32():
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def reference(p: Problem, s: Setting, kind: str) -> dict:
    fp32 = replace(s, amp=None)
    with full_float32():
        run, canonical = REFERENCES[kind](p.as_float32(), fp32)
        return {name: t.detach() for name, t in canonical(*run()).items()}


def relative_errors(got: dict, want: dict) -> dict:
    return {name: float((got[name].detach().float() - w).abs().max() / w.abs().max().clamp_min(1e-30))
            for name, w in want.items()}


def measure_layer(name: str, size: int, cin: int, cout: int, k: int, s: Setting, modes) -> None:
    p = make_problem(size, cin, cout, k, s)
    references = {}
    for path, (build, kind, needs_triton) in LAYER_PATHS.items():
        if needs_triton and not s.triton:
            continue
        for mode in modes:
            rec = {"part": "layer", "layer": name, "path": path, "work": kind, "K": k, "batch": s.batch,
                   "mode": mode, "compile": False}
            if s.out_of_time(LAYER_SECONDS):
                emit({**rec, "skipped": "budget"})
                continue
            try:
                if kind not in references:
                    references[kind] = reference(p, s, kind)
                run, canonical = build(p, s)
                errors = relative_errors(canonical(*run()), references[kind])
                seconds = median_seconds(run, s.repeats, s.device, graph=mode == "graph")
                emit({**rec, "median_us": round(seconds * 1e6, 1), "us_per_model": round(seconds * 1e6 / k, 2),
                      "repeats": s.repeats, "err": max(errors.values()),
                      "errs": {n: float(f"{e:.3g}") for n, e in errors.items()}})
            except Exception as exc:  # one failing path must not stop the others
                emit({**rec, "error": f"{type(exc).__name__}: {str(exc)[:300]}"})
            finally:
                run = canonical = None


# ------------------------------------------------------------------------------------------- whole steps

def run_spec(s: Setting, compiled: bool) -> RunSpec:
    """seed-cnn's recipe as probe_cnn_step.py runs it; precision auto: bf16 on CUDA, fp32 on the CPU."""
    return RunSpec(DataSpec("cifar10"), ModelSpec("seed-cnn"),
                   TrainSpec(epochs=1, batch_size=s.batch, optimizer=OptimizerSpec("adam", flavour="keras"),
                             compile=compiled))


@contextmanager
def swapped(module, name, value):
    """module.name = value for the block (how the probes pick another stack class for the library's units)."""
    saved = getattr(module, name)
    setattr(module, name, value)
    try:
        yield
    finally:
        setattr(module, name, saved)


def _stack(jobs, splits, s: Setting):
    return [pack_units.stack_unit(jobs, splits, s.device, [s.batch])]


def triton_stack_step(jobs, splits, s):
    units = _stack(jobs, splits, s)
    if not units[0].stack.triton_kernels:
        raise ValueError("StackedCNN did not take the Triton kernels here (they need CUDA and bf16)")
    return units


def _stack_of(jobs, splits, s, stack_class):
    """The library's stack unit, with `stack_class(models)` for seed-cnn's "conv-stack" entry instead of the
    StackedCNN it builds (units.STACKS)."""
    with swapped(pack_units, "STACKS", {**pack_units.STACKS, "conv-stack": stack_class}):
        return _stack(jobs, splits, s)


def cudnn_stack_step(jobs, splits, s):
    # fold_batchnorm left at its default, which is off without the Triton kernels
    return _stack_of(jobs, splits, s, lambda models: StackedCNN(models, triton_kernels=False))


def vmap_stack_step(jobs, splits, s):
    return _stack_of(jobs, splits, s, FunctionalStack)  # it takes any SlottedModel, seed-cnn too


def one_model_steps(jobs, splits, s):
    return [pack_units.model_unit(job, splits, s.device, [s.batch], compiled=bool(job.spec.train.compile))
            for job in jobs]


# name -> (builder of the units, whether it needs the Triton kernels)
STEP_PATHS = {"triton-stack": (triton_stack_step, True), "cudnn-grouped": (cudnn_stack_step, False),
              "vmap": (vmap_stack_step, False), "one-at-a-time": (one_model_steps, False)}


def _step_all(units, orders, i: int, batch: int, images: int) -> None:
    start = (i * batch) % (images - batch + 1)
    for unit, order in zip(units, orders):
        unit.step(order, start, start + batch)


def _wait_for(units, device) -> None:
    if device.type == "cuda":
        for unit in units:
            torch.cuda.current_stream(device).wait_stream(unit.stream)


def time_steps(units, splits, s: Setting, steps: int) -> float:
    """Median over s.repeats blocks of `steps` steps of every unit (launched one after another, each unit on
    its stream, as train_together steps them) of the seconds per step."""
    n = len(splits.x_train)
    orders = [torch.stack([torch.randperm(n, device=s.device) for _ in unit.jobs]) for unit in units]
    times = []
    for r in range(s.repeats):
        if s.device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for unit in units:
            if unit.stream is not None:
                unit.stream.wait_stream(torch.cuda.current_stream(s.device))
        for i in range(steps):
            _step_all(units, orders, r * steps + i, s.batch, n)
        _wait_for(units, s.device)
        if s.device.type == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - start) / steps)
    return statistics.median(times)


def measure_step(path: str, k: int, compiled: bool, splits, s: Setting, steps: int) -> None:
    build, needs_triton = STEP_PATHS[path]
    rec = {"part": "step", "layer": "step", "path": path, "K": k, "batch": s.batch, "compile": compiled,
           "graph": s.device.type == "cuda"}
    if needs_triton and not s.triton:
        return
    if s.out_of_time(COMPILED_STEP_SECONDS if compiled else STEP_SECONDS):
        emit({**rec, "skipped": "budget"})
        return
    units = None
    try:
        started = time.perf_counter()
        jobs = [Job(run_spec(s, compiled), seed) for seed in range(k)]
        units = build(jobs, splits, s)
        if s.device.type == "cuda":  # as train_together does on CUDA: warm-up (compiling) then capture
            for unit in units:
                unit.capture()
        orders = [torch.stack([torch.randperm(len(splits.x_train), device=s.device) for _ in u.jobs]) for u in units]
        for i in range(WARM_UP_STEPS if s.device.type == "cuda" else 1):  # on the CPU: the compiling one
            _step_all(units, orders, i, s.batch, len(splits.x_train))
        _wait_for(units, s.device)
        setup = time.perf_counter() - started
        seconds = time_steps(units, splits, s, steps)
        per_epoch = math.ceil(IMAGES / s.batch)
        emit({**rec, "median_us": round(seconds * 1e6, 1), "step_ms": round(seconds * 1e3, 3),
              "model_epochs_s": float(f"{k / (seconds * per_epoch):.4g}"), "repeats": s.repeats, "steps": steps,
              "setup_s": round(setup, 1), "units": len(units)})
    except Exception as exc:
        emit({**rec, "error": f"{type(exc).__name__}: {str(exc)[:300]}"})
    finally:
        del units
        if s.device.type == "cuda":
            torch.cuda.empty_cache()


def random_splits(s: Setting, images: int):
    """CIFAR-shaped random data on the device (timing only), as the training loop holds it."""
    generator = torch.Generator(s.device).manual_seed(0)
    x = torch.rand(images, 3, 32, 32, generator=generator, device=s.device)
    y = torch.randint(0, 10, (images,), generator=generator, device=s.device)
    return SimpleNamespace(x_train=x, y_train=y, input_shape=(3, 32, 32), num_classes=10)


# ------------------------------------------------------------------------------------------- tables

def _cell(value: float, base: Optional[float], unit: str) -> str:
    ratio = f" ({value / base:.2f}x)" if base else ""
    return f"{value:.{1 if unit == 'ms' else 2}f}{ratio}"


def layer_table(mode: str) -> list[str]:
    rows = [r for r in RECORDS if r["part"] == "layer" and r["mode"] == mode and "us_per_model" in r]
    paths = [p for p in LAYER_PATHS if any(r["path"] == p for r in rows)]
    lines = []
    for k in sorted({r["K"] for r in rows}, reverse=True):
        mine = {(r["layer"], r["path"]): r["us_per_model"] for r in rows if r["K"] == k}
        lines += [f"\nPer layer, forward + backward, us per model ({mode}, K={k}; ratio to the matching Triton path):",
                  "| layer | " + " | ".join(paths) + " |", "|---" * (len(paths) + 1) + "|"]
        names = [n for n, *_ in LAYERS if any((n, p) in mine for p in paths)]
        for layer in names + ["sum"]:
            value = {p: sum(mine.get((n, p), math.nan) for n in names) if layer == "sum" else mine.get((layer, p))
                     for p in paths}
            base = {p: value.get("triton-stack+relu+sums" if "sums" in p else "triton-stack") for p in paths}
            lines.append(f"| {layer} | " + " | ".join("-" if value[p] is None else _cell(value[p], base[p], "us")
                                                       for p in paths) + " |")
    return lines


def step_table() -> list[str]:
    rows = [r for r in RECORDS if r["part"] == "step" and "step_ms" in r]
    paths = [p for p in STEP_PATHS if any(r["path"] == p for r in rows)]
    lines = ["\nPer training step of K seed-cnns: ms per step (ratio to the Triton stack), model-epochs/s:",
             "| K | compiled | " + " | ".join(paths) + " |", "|---" * (len(paths) + 2) + "|"]
    for k, compiled in sorted({(r["K"], r["compile"]) for r in rows}, key=lambda key: (-key[0], key[1])):
        mine = {r["path"]: r for r in rows if r["K"] == k and r["compile"] == compiled}
        base = mine.get("triton-stack", {}).get("step_ms")
        lines.append(f"| {k} | {compiled} | " + " | ".join(
            f"{_cell(mine[p]['step_ms'], base, 'ms')}, {mine[p]['model_epochs_s']:.3g}" if p in mine else "-"
            for p in paths) + " |")
    return lines


def print_tables(modes) -> None:
    lines = [line for mode in modes for line in layer_table(mode)] + step_table()
    failed = [r for r in RECORDS if "error" in r]
    skipped = [r for r in RECORDS if "skipped" in r]
    lines.append(f"\n{len(failed)} variants failed, {len(skipped)} skipped for the budget "
                 f"(JSON lines in {OUT}/conv_paths.jsonl).")
    print("\n".join(lines), flush=True)


# ------------------------------------------------------------------------------------------- main

def listed(text: str, allowed, flag: str) -> list[str]:
    """The comma-separated values of a flag, each one of `allowed`, or a one-line error naming the flag."""
    values = text.split(",")
    wrong = [v for v in values if v not in allowed]
    if wrong or not values:
        raise SystemExit(f"error: {flag}: expected a comma-separated list of {', '.join(allowed)}, got {text!r}")
    return values


def measure_part(part: str, k: int, s: Setting, args, splits) -> None:
    if part == "layers":
        for name, size, cin, cout in LAYERS:
            if name in args.layers:
                measure_layer(name, size, cin, cout, k, s, args.modes)
        return
    for compiled in args.compile:
        for path in STEP_PATHS:
            measure_step(path, k, compiled, splits, replace(s, repeats=args.step_repeats), args.steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="16", help="stack sizes K, comma-separated (e.g. 16,8)")
    parser.add_argument("--compile", default="off", help="the steps eager (off), compiled (on), or both: off,on")
    parser.add_argument("--budget", type=float, default=240, help="start no variant that would end past this many seconds")
    parser.add_argument("--parts", default="layers,steps", help="layers, steps or both, measured in this order")
    parser.add_argument("--layers", default=",".join(n for n, *_ in LAYERS), help="which of c1-c9")
    parser.add_argument("--modes", default="graph,eager", help="per-layer timing: from a CUDA graph, eager, or both")
    parser.add_argument("--repeats", type=int, default=50, help="timed calls per layer variant (median)")
    parser.add_argument("--step-repeats", type=int, default=5, help="timed blocks of steps per step variant (median)")
    parser.add_argument("--steps", type=int, default=20, help="steps per timed block")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--cudnn-benchmark", action="store_true",
                        help="let cuDNN time its algorithms (torch.backends.cudnn.benchmark; relulab leaves it off)")
    parser.add_argument("--smoke", action="store_true",
                        help="CPU, float32, K=2, batch 4, 2 repeats, no Triton: that the script runs end to end")
    args = parser.parse_args()
    args.compile = [flag == "on" for flag in listed(args.compile, ("off", "on"), "--compile")]
    args.parts = listed(args.parts, ("layers", "steps"), "--parts")
    args.layers = listed(args.layers, [n for n, *_ in LAYERS], "--layers")
    args.modes = listed(args.modes, ("graph", "eager"), "--modes")
    try:
        models = [int(k) for k in args.models.split(",")]
    except ValueError:
        raise SystemExit(f"error: --models: expected comma-separated stack sizes, got {args.models!r}")
    images = IMAGES
    if args.smoke:
        models, images = [2], 64
        s = Setting(torch.device("cpu"), None, 4, 2, triton=False, deadline=T0 + args.budget)
        args.modes, args.steps, args.step_repeats = ["eager"], 2, 2
    elif not torch.cuda.is_available():
        raise SystemExit("error: no CUDA device: run on the GPU machine, or pass --smoke for the CPU check")
    else:
        s = Setting(torch.device("cuda"), torch.bfloat16, args.batch, args.repeats, triton=True,
                    deadline=T0 + args.budget)
    torch.backends.cudnn.benchmark = args.cudnn_benchmark
    os.makedirs(OUT, exist_ok=True)
    emit({"part": "setup", "device": torch.cuda.get_device_name() if s.device.type == "cuda" else "cpu",
          "torch": torch.__version__, "models": models, "batch": s.batch, "amp": str(s.amp), "modes": args.modes,
          "compile": args.compile, "cudnn_benchmark": args.cudnn_benchmark, "budget_s": args.budget})
    splits = random_splits(s, images) if "steps" in args.parts else None
    for k in models:
        for part in args.parts:
            measure_part(part, k, s, args, splits)
    print_tables(args.modes)


if __name__ == "__main__":
    main()
