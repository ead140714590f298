"""Probe of one seed-cnn training step on the GPU: where its time goes, and which switches pay.

Random CIFAR-shaped data (timing only), relulab's own graphed step (`relulab.packing.units.model_unit`), packs of
models side by side on streams as `train_together` runs them. Run from the repository root:

    OUT=out python benchmarks/probe_cnn_step.py profile base bench compile   # eager profile, plain, cudnn.benchmark, compiled
    OUT=out python benchmarks/probe_cnn_step.py cprof c16 autotune           # compiled profile, packs 16/4, max-autotune
    OUT=out python benchmarks/probe_cnn_step.py stackcheck stack stackprof cstackprof  # StackedCNN: gradient vs fp32,
                                                                   # speed, profile uncompiled and compiled
    OUT=out python benchmarks/probe_cnn_step.py cstack   # compiled stacks of 8, batch norm folded or not
    OUT=out python benchmarks/probe_cnn_step.py cupdate  # the same, optimizer update compiled or not
    OUT=out python benchmarks/probe_cnn_step.py cstack16 # compiled stacks of 16, then of 8
    OUT=out python benchmarks/probe_cnn_step.py cstackprof16 eval16  # compiled 16-stack: profile, evaluation time
    OUT=out python benchmarks/probe_cnn_step.py step16 evalc16        # its step; its evaluation eager and compiled

Writes probe_cnn.jsonl and profile_*.txt (PyTorch profiler tables) under $OUT. The numbers it gave are
in BENCHMARKS.md ("New defaults").
"""
import json
import os
import sys
import time
from dataclasses import replace
from types import SimpleNamespace

import torch

sys.path.insert(0, "src")
from relulab.packing import units as pack_units
from relulab.data import DataSpec
from relulab.zoo.models import ModelSpec
from relulab.zoo.optim import OptimizerSpec
from relulab.training.loop import evaluate
from relulab.training.specs import Job, RunSpec, TrainSpec

T0 = time.perf_counter()
OUT = os.environ.get("OUT", ".")
dev = torch.device("cuda")
N = 50000
x = torch.rand(N, 3, 32, 32, device=dev)
y = torch.randint(0, 10, (N,), device=dev)
splits = SimpleNamespace(x_train=x, y_train=y, input_shape=(3, 32, 32), num_classes=10)
spec = RunSpec(DataSpec("cifar10"), ModelSpec("seed-cnn"), TrainSpec(3, 128, OptimizerSpec("adam", flavour="keras")))
FLOP_IMG = 1.14e9
STEPS_EPOCH = 391


def emit(rec):
    rec["t"] = round(time.perf_counter() - T0, 1)
    print(json.dumps(rec), flush=True)
    with open(f"{OUT}/probe_cnn.jsonl", "a") as f:
        f.write(json.dumps(rec) + "\n")


def measure(name, k, compile_mode=None, steps=60):
    units = [pack_units.model_unit(Job(spec, s), splits, dev, [128]) for s in range(k)]
    if compile_mode:
        for u in units:
            u.steps[128].forward = torch.compile(u.models[0], mode=compile_mode)
    c0 = time.perf_counter()
    for u in units:
        u.capture()
    torch.cuda.synchronize()
    capture = time.perf_counter() - c0
    order = torch.stack([torch.randperm(N, device=dev) for _ in range(1)])
    for i in range(10):
        for u in units:
            u.step(order, i * 128, i * 128 + 128)
    torch.cuda.synchronize()
    t = time.perf_counter()
    for i in range(steps):
        for u in units:
            u.step(order, i * 128, i * 128 + 128)
    for u in units:
        torch.cuda.current_stream().wait_stream(u.stream)
    torch.cuda.synchronize()
    per_step = (time.perf_counter() - t) / steps
    mes = k / (per_step * STEPS_EPOCH)
    emit({"variant": name, "pack": k, "step_ms": round(per_step * 1e3, 3), "model_epochs_s": round(mes, 3),
          "tflops": round(mes * N * FLOP_IMG / 1e12, 1), "capture_s": round(capture, 1)})
    return units


def profile_one(compile_mode=None, tag="eager"):
    unit = pack_units.model_unit(Job(spec, 0), splits, dev, [128])
    step = unit.steps[128]
    if compile_mode:
        step.forward = torch.compile(unit.models[0], mode=compile_mode)
    profile_step(step, torch.randperm(N, device=dev)[:128], f"profile_{tag}.txt", 40, 90)


def profile_step(step, idx, name, rows, width):
    """The PyTorch profiler's kernel table of 10 eager steps (after 5 warm-up steps), printed and saved."""
    for _ in range(5):
        step(idx)
    torch.cuda.synchronize()
    from torch.profiler import profile, ProfilerActivity
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(10):
            step(idx)
        torch.cuda.synchronize()
    table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=rows, max_name_column_width=width)
    print(table, flush=True)
    with open(f"{OUT}/{name}", "w") as f:
        f.write(table)


def eval_time(units):
    m = units[0].models[0]
    xv = x[:10000]
    yv = y[:10000]
    evaluate(m, xv, yv, 2048, torch.bfloat16)
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(3):
        evaluate(m, xv, yv, 2048, torch.bfloat16)
    emit({"variant": "eval-10k", "seconds": round((time.perf_counter() - t) / 3, 4)})


def stack_unit(k, compiled=False, fold=True):
    """relulab.packing's stack of k models; fold=False: with batch norms as their own kernels (before the folding)."""
    from relulab.packing.stacked_cnn import StackedCNN

    class Stack(StackedCNN):  # the class stack_unit builds for seed-cnn (units.STACKS), with `fold` as asked
        def __init__(self, models, triton_kernels=False):
            super().__init__(models, triton_kernels, fold_batchnorm=fold)

    run_spec = replace(spec, train=replace(spec.train, compile=compiled))
    stacks = pack_units.STACKS
    pack_units.StackedCNN, pack_units.STACKS = Stack, {**stacks, "conv-stack": Stack}
    try:
        return pack_units.stack_unit([Job(run_spec, s) for s in range(k)], splits, dev, [128])
    finally:
        pack_units.StackedCNN, pack_units.STACKS = StackedCNN, stacks


def measure_stack(k, steps=60, compiled=False, fold=True, eager_update=False):
    """A StackedCNN of k models (relulab.conv_triton's kernels), graphed, as train_together runs it;
    eager_update: with the optimizer's update not compiled (as before it was)."""
    unit = stack_unit(k, compiled, fold)
    for step in unit.steps.values() if eager_update else ():
        step.update = step.optimizer.step
    c0 = time.perf_counter()
    unit.capture()
    torch.cuda.synchronize()
    capture = time.perf_counter() - c0
    order = torch.stack([torch.randperm(N, device=dev) for _ in range(k)])
    for i in range(5):
        unit.step(order, i * 128, i * 128 + 128)
    torch.cuda.synchronize()
    t = time.perf_counter()
    for i in range(steps):
        unit.step(order, i * 128, i * 128 + 128)
    torch.cuda.current_stream().wait_stream(unit.stream)
    torch.cuda.synchronize()
    per_step = (time.perf_counter() - t) / steps
    mes = k / (per_step * STEPS_EPOCH)
    emit({"variant": "stack", "pack": k, "compiled": compiled, "folded_batchnorm": fold,
          "compiled_update": compiled and not eager_update, "step_ms": round(per_step * 1e3, 3), "model_epochs_s": round(mes, 3),
          "tflops": round(mes * N * FLOP_IMG / 1e12, 1), "capture_s": round(capture, 1)})


def profile_stack(k, compiled=False):
    step = stack_unit(k, compiled).steps[128]
    idx = torch.stack([torch.randperm(N, device=dev)[:128] for _ in range(k)])
    profile_step(step, idx, f"profile_stack{k}{'_compiled' if compiled else ''}.txt", 70, 110)


def eval_stack(k, batch=2048, images=10000):
    """Seconds of one evaluation of a (compiled-step) stack of k on `images` images, as each epoch runs it."""
    unit = stack_unit(k, compiled=True)
    xv, yv = x[:images], y[:images]
    unit.evaluate(xv, yv, batch)
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(3):
        unit.evaluate(xv, yv, batch)
    emit({"variant": "stack-eval", "pack": k, "images": images, "batch": batch,
          "seconds": round((time.perf_counter() - t) / 3, 4)})


def eval_stack_compiled(k, batch=2048, images=10000):
    """The same evaluation with the stack's forward (training=False) through torch.compile, as a compiled
    evaluation would run it: the first evaluation's seconds (compiling for the full and the short last batch)
    and the steady seconds, beside the eager evaluation of the same unit."""
    unit = stack_unit(k, compiled=True)
    xv, yv = x[:images], y[:images]
    timings = {}
    for mode in ("eager", "compiled"):
        if mode == "compiled":
            unit.stack.forward = torch.compile(type(unit.stack).forward.__get__(unit.stack), dynamic=False)
        torch.cuda.synchronize()
        t = time.perf_counter()
        first = unit.evaluate(xv, yv, batch)
        torch.cuda.synchronize()
        timings[f"{mode}_first_s"] = round(time.perf_counter() - t, 3)
        t = time.perf_counter()
        for _ in range(5):
            again = unit.evaluate(xv, yv, batch)
        torch.cuda.synchronize()
        timings[f"{mode}_s"] = round((time.perf_counter() - t) / 5, 4)
        timings[f"{mode}_loss_acc_model0"] = again[0]
        timings[f"{mode}_repeatable"] = first == again
    emit({"variant": "stack-eval-compiled", "pack": k, "images": images, "batch": batch, **timings})


def stack_gradient_check(k=4):
    """One step's gradient of a stack in bf16 (Triton kernels; cuDNN's grouped convolution) against fp32."""
    from relulab.zoo.models import build_model
    from relulab.packing.stacked_cnn import StackedCNN
    torch.manual_seed(0)
    models = [build_model(ModelSpec("seed-cnn"), (3, 32, 32), 10).to(dev) for _ in range(k)]
    xb, yb = x[:k * 128].view(k, 128, 3, 32, 32), y[:k * 128]
    grads = {}
    variants = (("triton-folded-bf16", True, True, True), ("triton-bf16", True, True, False),
                ("cudnn-bf16", False, True, False), ("fp32", False, False, False))
    for name, use_triton, amp, fold in variants:
        stack = StackedCNN(models, use_triton, fold_batchnorm=fold)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
            logits = stack.forward(stack.params, xb, training=True).float()
        loss = torch.nn.functional.cross_entropy(logits.reshape(k * 128, -1), yb)
        grads[name] = torch.autograd.grad(loss, stack.params)[0]
    ref = grads["fp32"]
    emit({"variant": "stack-gradient-vs-fp32", **{name: round(((g - ref).norm() / ref.norm()).item(), 4)
                                                   for name, g in grads.items() if name != "fp32"}})


which = sys.argv[1:] or ["profile", "base", "bench", "compile"]
if "stackcheck" in which:
    stack_gradient_check()
if "stack" in which:
    measure_stack(8)
    measure_stack(16)
if "cstack" in which:  # compiled stacks of 8, batch norms folded into the convolutions or not
    measure_stack(8, compiled=True)
    measure_stack(8, compiled=True, fold=False)
if "cstack16solo" in which:  # a compiled stack of 16 alone
    measure_stack(16, compiled=True)
if "cstack16" in which:  # compiled stacks of 16, then 8 in the same process (each compiled for its size)
    measure_stack(16, compiled=True)
    measure_stack(8, compiled=True)
if "cupdate" in which:  # compiled stacks of 8, the optimizer's update compiled or not, alternating
    for eager in (False, True, False, True):
        measure_stack(8, steps=200, compiled=True, eager_update=eager)
if "stackprof" in which:
    profile_stack(8)
if "cstackprof" in which:
    profile_stack(8, compiled=True)
if "cstackprof16" in which:
    profile_stack(16, compiled=True)
if "eval16" in which:
    eval_stack(16)
if "evalc16" in which:  # the evaluation eager and through torch.compile
    eval_stack_compiled(16)
if "step16" in which:  # the compiled 16-stack's step, for the evaluation's share of an epoch
    measure_stack(16, compiled=True)
if "profile" in which:
    profile_one()
if "base" in which:
    us = measure("base", 1)
    eval_time(us)
    measure("base", 8)
if "bench" in which:
    torch.backends.cudnn.benchmark = True
    us = measure("cudnn.benchmark", 1)
    eval_time(us)
    measure("cudnn.benchmark", 8)
    measure("cudnn.benchmark", 16)
if "compile" in which:
    torch.backends.cudnn.benchmark = True
    measure("compile-default", 1, "default")
    measure("compile-default", 8, "default")
if "cprof" in which:
    profile_one("default", "compiled")
if "c16" in which:
    measure("compile-default", 16, "default")
    measure("compile-default", 4, "default")
if "autotune" in which and time.perf_counter() - T0 < 300:
    import torch._inductor.config as ic
    ic.max_autotune_conv_backends = "ATEN,TRITON"
    measure("compile-max-autotune-no-cg", 1, "max-autotune-no-cudagraphs")
    measure("compile-max-autotune-no-cg", 8, "max-autotune-no-cudagraphs")
    profile_one("max-autotune-no-cudagraphs", "autotune")
