"""Many models at once give the same histories as the same models trained one by one."""
import math
import os
import time

import pytest
import torch

from relulab.packing import fused, pack, rules, units
from relulab.training import loop as train
from relulab.data import DataSpec, load_data
from relulab.zoo.activations import KERNEL_CODES
from relulab.zoo.models import MODELS, ModelEntry, ModelSpec, build_deep_mlp, build_model
from relulab.zoo.optim import OptimizerSpec
from relulab.packing.pack import train_many
from relulab.packing.stacked_mlp import StackedMLP
from relulab.training.loop import run
from relulab.training.specs import Job, RunSpec, TrainSpec

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def digits():
    return load_data(DataSpec())


def _job(seed, model="deep-mlp", lr=None, init="he_normal", opt="sgd", flavour="torch", epochs=2, **model_kw):
    model_spec = ModelSpec(model, init=init, widths=[24, 24, 24], **model_kw)
    return Job(RunSpec(DataSpec(), model_spec, TrainSpec(epochs, 32, OptimizerSpec(opt, lr, flavour))), seed,
               key=f"{seed}-{init}-{lr}")


def _assert_same_history(packed, single, tol):
    assert len(packed.history.epochs) == len(single.history.epochs)
    for p, s in zip(packed.history.epochs, single.history.epochs):
        assert p.train_loss == pytest.approx(s.train_loss, abs=tol)
        assert p.val_loss == pytest.approx(s.val_loss, abs=tol)
        assert abs(p.val_acc - s.val_acc) <= 1 / 144 + 1e-9  # at most one validation example flips


# Adam and RMSprop divide by the gradient's own scale, so the rounding noise in the (truly zero)
# gradient of a bias that feeds a batch norm becomes a full-size step; those cases get a looser bound.
@pytest.mark.parametrize("opt,flavour,model_kw,tol", [
    ("sgd", "torch", {}, 1e-4),
    ("momentum", "torch", {"activation": "tanh"}, 1e-4),
    ("adam", "keras", {"model": "bn-mlp"}, 3e-3),
    ("rmsprop", "keras", {"model": "bn-mlp", "activation": "selu"}, 3e-3),
    ("adam", "torch", {"batchnorm": True}, 3e-3),
    ("adam", "keras", {}, 1e-4),
])
def test_a_stack_of_k_equals_k_separate_runs(digits, opt, flavour, model_kw, tol):
    lrs = [0.01, 0.02, 0.005] if opt in ("sgd", "momentum") else [1e-3, 2e-3, 5e-4]
    jobs = [_job(s, lr=lr, init=init, opt=opt, flavour=flavour, **model_kw)
            for s, lr, init in zip((0, 1, 2), lrs, ("he_normal", "glorot_uniform", "lecun_normal"))]
    assert len({rules.stack_key(j) for j in jobs}) == 1
    packed = pack.train_together(jobs, digits, CPU)
    for job, result in zip(jobs, packed):
        _assert_same_history(result, run(job.spec, job.seed, CPU, splits=digits), tol)
        assert result.data["trained_with"] == 3


def test_models_come_back_as_ordinary_models(digits):
    jobs = [_job(s, model="bn-mlp") for s in (0, 1)]
    for job, result in zip(jobs, pack.train_together(jobs, digits, CPU)):
        loss, acc = train.evaluate(result.model, digits.x_test, digits.y_test)
        assert acc == pytest.approx(result.history.test_acc, abs=1e-6)


CNN_DATA = DataSpec(image_size=32, train_size=160)  # digits upscaled for a narrow seed-cnn


@pytest.fixture(scope="module")
def small_images():
    return load_data(CNN_DATA)


def _cnn_jobs(compile, epochs=2, seeds=(0, 1), slots=None):
    return [Job(RunSpec(CNN_DATA, ModelSpec("seed-cnn", widths=[8] * 9, slots=dict(slots or {})),
                        TrainSpec(epochs, 64, OptimizerSpec("adam", flavour="keras"), compile=compile)), s)
            for s in seeds]


def test_any_model_trained_together_equals_separate_runs(small_images):
    jobs = _cnn_jobs(None)
    for job, result in zip(jobs, pack.train_together(jobs, small_images, CPU)):
        single = run(job.spec, job.seed, CPU, splits=small_images)
        for p, s in zip(result.history.epochs, single.history.epochs):
            assert p.train_loss == pytest.approx(s.train_loss, abs=1e-3)


def test_a_compiled_step_trains_as_the_uncompiled_one(small_images, recording_compile):
    traced = recording_compile
    compiled = pack.train_together(_cnn_jobs(True), small_images, CPU)
    plain = pack.train_together(_cnn_jobs(False), small_images, CPU)
    assert traced, "torch.compile never traced the step"
    # Only the full batch (64) is compiled; the epoch's short last batch (32 of 160) runs uncompiled.
    assert all((64, 1, 32, 32) in shapes and (32, 1, 32, 32) not in shapes for shapes in traced)
    for c, p in zip(compiled, plain):
        assert c.data["compiled"] is True and p.data["compiled"] is False
        for a, b in zip(c.history.epochs, p.history.epochs):
            assert a.train_loss == pytest.approx(b.train_loss, abs=1e-5)
            assert a.val_loss == pytest.approx(b.val_loss, abs=1e-5)


def test_compiled_steps_keep_their_artefacts_in_relulabs_cache(tmp_path, monkeypatch):
    """Inductor's default cache, /tmp/torchinductor_$USER, is lost at a reboot: relulab's compiles point it into
    its own cache folder, unless the user chose a folder."""
    from relulab.packing import steps

    monkeypatch.setenv("RELULAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    steps.compiler(dynamic=False)
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "cache" / "torchinductor")
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "mine"))
    steps.compiler()
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "mine")


def test_compiling_is_chosen_where_enough_model_epochs_share_a_graph():
    cuda = torch.device("cuda")  # a device object only: nothing runs on it
    needed = rules.COMPILE_MIN_MODEL_EPOCHS
    short = _cnn_jobs(None, epochs=needed // 4, seeds=range(3))
    assert not any(rules.compiles(job, short, cuda) for job in short)  # 3 x 50 model-epochs: not worth it
    enough = _cnn_jobs(None, epochs=needed // 4, seeds=range(4))
    assert all(rules.compiles(job, enough, cuda) for job in enough)
    mixed = enough[:2] + _cnn_jobs(None, epochs=needed // 4, seeds=range(2), slots={7: "identity"})
    assert not any(rules.compiles(job, mixed, cuda) for job in mixed)  # two placements: two graphs of 100
    assert not rules.compiles(enough[0], enough, CPU)  # the CPU gains little and may lack a compiler
    assert rules.compiles(_cnn_jobs(True, epochs=1)[0], [], CPU)  # train.compile says so
    assert not rules.compiles(_cnn_jobs(False)[0], enough, cuda)
    mlps = [_job(s, epochs=needed) for s in range(4)]
    assert not rules.compiles(mlps[0], mlps, cuda)  # stacks have their own kernels


def test_setting_up_a_pack_counts_in_its_first_epoch(digits, monkeypatch):
    # Compiling and graph capture happen before the first epoch; a run's seconds must still include them.
    real = pack.form_units

    def slow_setup(*args, **kwargs):
        time.sleep(0.4)
        return real(*args, **kwargs)

    monkeypatch.setattr(pack, "form_units", slow_setup)
    results = pack.train_together([_job(0), _job(1)], digits, CPU)
    for result in results:
        assert result.history.epochs[0].seconds >= 0.2  # its half of the 0.4 s set-up
        assert result.history.epochs[1].seconds < result.history.epochs[0].seconds


def test_one_diverging_model_does_not_spoil_its_pack(digits):
    jobs = [_job(0, lr=0.01), _job(1, lr=1e6, epochs=3), _job(2, lr=0.01)]
    jobs[0].spec.train.epochs = jobs[2].spec.train.epochs = 3
    results = pack.train_together(jobs, digits, CPU)
    assert results[1].history.diverged_at is not None and results[1].history.test_acc is None
    for healthy in (results[0], results[2]):
        assert healthy.history.diverged_at is None and math.isfinite(healthy.history.final_val_acc)
        assert len(healthy.history.epochs) == 3


def test_train_many_packs_what_it_can_and_yields_everything(digits):
    jobs = [_job(0), _job(1), _job(2, opt="adamw"), _job(3, model="bn-mlp")]
    results = dict((job.key, result) for job, result in train_many(jobs, digits, CPU))
    assert set(results) == {j.key for j in jobs}
    assert results[jobs[0].key].data.get("trained_with") == 3  # two deep-mlps stacked, one bn-mlp beside them
    assert "trained_with" not in results[jobs[2].key].data  # adamw is not packable: trained alone


def test_a_model_registered_to_train_alone_trains_alone(digits, monkeypatch):
    # Packing reads the model's registry entry: deep-mlp's builder registered with packs="alone" never stacks.
    monkeypatch.setitem(MODELS, "lone-mlp", ModelEntry(build_deep_mlp, packs="alone"))
    lone, stacked = [_job(s, model="lone-mlp", epochs=1) for s in (0, 1)], [_job(s, epochs=1) for s in (2, 3)]
    assert rules.stack_key(lone[0]) is None and rules.pack_key(lone[0], CPU) is None
    assert [unit.stack for unit in units.form_units(lone, digits, CPU, [32])] == [None, None]  # on CUDA: a unit each
    results = dict((job.key, result) for job, result in train_many(lone + stacked, digits, CPU))
    for job in lone:
        assert "trained_with" not in results[job.key].data  # trained by itself, by training.loop.run
        _assert_same_history(results[job.key], run(job.spec, job.seed, CPU, splits=digits), 0)
    assert results[stacked[0].key].data["trained_with"] == 2  # the same model as deep-mlp does stack


def test_out_of_memory_halves_the_pack(digits, monkeypatch):
    calls = []
    real = pack.train_together

    def small_memory(jobs, splits, device, **options):
        calls.append(len(jobs))
        if len(jobs) > 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (injected)")
        return real(jobs, splits, device, **options)

    monkeypatch.setattr(pack, "train_together", small_memory)
    jobs = [_job(s, epochs=1) for s in range(4)]
    results = list(train_many(jobs, digits, CPU))
    assert sorted(j.seed for j, _ in results) == [0, 1, 2, 3]
    assert calls == [4, 2, 1, 1, 2, 1, 1]


def test_a_fused_stack_mixes_activations_and_equals_separate_runs(digits):
    jobs = [_job(0, activation="tanh"), _job(1, lr=0.02), _job(2, activation="sigmoid", lr=0.05),
            _job(3, slots={2: "identity"}), _job(4, init="glorot_uniform")]
    for job in jobs:
        job.spec.train.l2 = 1e-3
    assert all(rules.fusable(j) for j in jobs) and len({rules.stack_key(j) for j in jobs}) == 1
    assert len(units.form_units(jobs, digits, CPU, [32], max_stack=8)) == 1
    for job, result in zip(jobs, pack.train_together(jobs, digits, CPU)):
        _assert_same_history(result, run(job.spec, job.seed, CPU, splits=digits), 1e-4)


def test_the_fused_gradient_equals_autograd():
    torch.manual_seed(0)
    models = [build_model(ModelSpec("deep-mlp", activation=a, widths=[20, 12, 12]), (30,), 5)
              for a in ("relu", "relu", "tanh", "sigmoid", "identity")]
    stack = StackedMLP(models)
    linear = stack.linear_layers()
    x, y = torch.randn(len(models), 8, 30), torch.randint(0, 5, (len(models), 8))
    grad = torch.empty_like(stack.params)
    losses, _ = fused.FusedMLP(models, stack.sizes, linear, CPU).gradient(stack.params.detach(), x, y, grad)
    expected = torch.stack([torch.nn.functional.cross_entropy(m(x[k]), y[k]) for k, m in enumerate(models)])
    assert torch.allclose(losses, expected.detach(), atol=1e-6)
    expected.sum().backward()
    for k, model in enumerate(models):
        flat = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
        assert torch.allclose(grad[k, :len(flat)], flat, atol=1e-6)
        assert torch.equal(grad[k, len(flat):], torch.zeros(grad.shape[1] - len(flat)))  # the row's padding


def test_a_stacks_rows_are_padded_to_64_bytes_and_unstack_to_the_same_models():
    # 1,093 parameters a model: rows of 1,104, so that every model's row starts 64-byte aligned for the kernels.
    torch.manual_seed(0)
    models = [build_model(ModelSpec("deep-mlp", activation="relu", widths=[20, 12, 12]), (30,), 5) for _ in range(3)]
    stack = StackedMLP(models)
    n = sum(p.numel() for p in models[0].parameters())
    assert (n, stack.params.shape) == (1093, (3, 1104)) and stack.params.shape[1] % 16 == 0
    assert sum(stack.sizes) == 1104 and torch.equal(stack.params.detach()[:, n:], torch.zeros(3, 11))
    copies = [build_model(ModelSpec("deep-mlp", activation="relu", widths=[20, 12, 12]), (30,), 5) for _ in range(3)]
    stack.unstack_into(copies)
    for model, copy in zip(models, copies):
        assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), copy.state_dict().values()))


def test_the_run_kernels_take_seed001s_48_square_layers_and_nothing_else():
    # 784 -> 300 -> 100, 48 x (100 -> 100), 100 -> 10: one run from layer 2 to 50; the Triton interpreter test
    # (tests/kernels) checks the run kernels' numbers against this reference path.
    models = [build_model(ModelSpec("deep-mlp", activation=a), (1, 28, 28), 10) for a in ("relu", "tanh")]
    stack = StackedMLP(models)
    step = fused.FusedMLP(models, stack.sizes, stack.linear_layers(), CPU)
    assert step.runs == []  # the reference path computes every layer alone
    (run,) = fused.find_runs(step.layers)
    assert (run.start, run.stop, run.width) == (2, 50, 100)
    assert run.codes.shape == (2, 48) and run.codes[1].unique().tolist() == [KERNEL_CODES["tanh"]]
    # One square layer is no run, nor are square layers of two widths side by side.
    narrow = [build_model(ModelSpec("deep-mlp", widths=[20, 20, 12, 12]), (30,), 5)]
    stack = StackedMLP(narrow)
    layers = fused.FusedMLP(narrow, stack.sizes, stack.linear_layers(), CPU).layers
    assert fused.find_runs(layers) == []


def test_activations_with_weights_of_their_own_never_stack():
    # A stack trains only its stacked weights: PReLU's slopes, however spelled, would be left out.
    assert rules.stack_key(_job(0, activation="PReLU:0.1")) is None
    assert rules.stack_key(_job(0, slots={2: "prelu"})) is None
    assert rules.stack_key(_job(0, activation="leaky_relu:0.2")) is not None


def test_tf32_and_fp32_jobs_never_share_a_stack():
    exact, tf32, auto = _job(0), _job(1), _job(2)
    exact.spec.train.precision, tf32.spec.train.precision = "fp32", "tf32"
    assert rules.fusable(tf32) and rules.stack_key(exact) != rules.stack_key(tf32)
    assert rules.stack_key(auto) == rules.stack_key(tf32)  # auto means TF32 products for MLPs on CUDA


ONE_STEP = DataSpec(train_size=32)  # one batch of 32: an epoch is a single optimizer step


@pytest.mark.parametrize("opt,model,model_kw", [
    ("sgd", "deep-mlp", {}),  # a fused stack
    ("sgd", "deep-mlp", {"activation": "tanh", "batchnorm": True}),  # an autograd stack with batch norm
    ("adam", "bn-mlp", {}),
    ("momentum", "deep-mlp", {"activation": "prelu"}),  # PReLU does not stack: a model unit of its own
], ids=["fused", "stack-bn", "bn-mlp", "unit"])
def test_packed_and_alone_agree_after_one_step(opt, model, model_kw):
    """The weights after one step agree to float rounding: packing changes the order of the sums, nothing else.
    (Whole runs then drift apart as training amplifies that rounding: README, "Packed and alone".)"""
    splits = load_data(ONE_STEP)
    jobs = [Job(RunSpec(ONE_STEP, ModelSpec(model, init="he_normal", widths=[24, 24, 24], **model_kw),
                        TrainSpec(1, 32, OptimizerSpec(opt, 0.01))), seed, str(seed)) for seed in (0, 1, 2)]
    for job, packed in zip(jobs, pack.train_together(jobs, splits, CPU)):
        alone = run(job.spec, job.seed, CPU, splits=splits)
        for name, weight in alone.model.state_dict().items():
            if weight.is_floating_point():
                torch.testing.assert_close(packed.model.state_dict()[name], weight, rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.parametrize("kind", ["l2", "decoupled"])
@pytest.mark.parametrize("opt,model,model_kw", [
    ("momentum", "deep-mlp", {}),  # a fused stack
    ("nesterov", "deep-mlp", {"activation": "tanh", "batchnorm": True}),  # an autograd stack with batch norm
    ("adam", "bn-mlp", {}),
    ("sgd", "deep-mlp", {"activation": "prelu"}),  # a model unit of its own
], ids=["fused", "stack-bn", "bn-mlp", "unit"])
def test_weight_decay_packed_equals_alone_after_one_step(opt, model, model_kw, kind):
    """StackedOptimizer's weight decay (each model its own rate) is the plain optimizers': every weight of a
    packed model after a step is that of the same model trained alone, and not that of one without decay."""
    splits = load_data(ONE_STEP)

    def job(seed, rate):
        spec = RunSpec(ONE_STEP, ModelSpec(model, init="he_normal", widths=[24, 24, 24], **model_kw),
                       TrainSpec(1, 32, OptimizerSpec(opt, 0.05, weight_decay=rate, weight_decay_kind=kind)))
        return Job(spec, seed, f"{seed}-{rate}")

    jobs = [job(0, 0.1), job(1, 0.3), job(2, 0.0)]
    for j, packed in zip(jobs, pack.train_together(jobs, splits, CPU)):
        alone = run(j.spec, j.seed, CPU, splits=splits).model.state_dict()
        undecayed = run(job(j.seed, 0.0).spec, j.seed, CPU, splits=splits).model.state_dict()
        for name, weight in alone.items():
            if weight.is_floating_point():
                torch.testing.assert_close(packed.model.state_dict()[name], weight, rtol=1e-5, atol=1e-6, msg=name)
        if j.spec.train.optimizer.weight_decay:
            assert any((alone[n] - undecayed[n]).abs().max() > 1e-4 for n in alone if alone[n].is_floating_point())


def test_a_stack_with_weight_decay_equals_separate_runs(digits):
    jobs = [_job(s, lr=0.02, opt="momentum", model="bn-mlp") for s in (0, 1)]
    for j, rate in zip(jobs, (5e-3, 2e-2)):
        j.spec.train.optimizer.weight_decay = rate
    assert len({rules.stack_key(j) for j in jobs}) == 1
    for j, result in zip(jobs, pack.train_together(jobs, digits, CPU)):
        _assert_same_history(result, run(j.spec, j.seed, CPU, splits=digits), 1e-4)


def test_schedules_label_smoothing_and_augmentation_pack_and_equal_separate_runs(digits):
    """The packed steps train every recipe as training.loop.run does: a schedule through each model's row of
    learning rates, label smoothing in the loss, augmentation drawn from each model's generator before the step.
    Models with different schedules and augmentation share a stack; label smoothing is part of the stack key
    (and keeps deep-mlp off the fused step, whose gradient is the plain cross-entropy's)."""
    from relulab.training.augment import AugmentSpec
    from relulab.training.schedules import ScheduleSpec

    recipes = [{"schedule": ScheduleSpec("cosine")}, {"schedule": ScheduleSpec(warmup_epochs=1)},
               {"label_smoothing": 0.1}, {"augment": AugmentSpec(flip=True)}]
    jobs = [_job(s, model="bn-mlp") for s in range(len(recipes))]
    for j, recipe in zip(jobs, recipes):
        for name, value in recipe.items():
            setattr(j.spec.train, name, value)
    assert all(rules.pack_key(j, CPU) is not None for j in jobs)
    keys = [rules.stack_key(j) for j in jobs]
    assert keys[0] == keys[1] == keys[3] != keys[2]  # label smoothing stacks apart
    smoothed = _job(9)
    smoothed.spec.train.label_smoothing = 0.1
    assert not rules.fusable(smoothed) and rules.fusable(_job(10))
    results = dict((job.key, result) for job, result in train_many(jobs, digits, CPU))
    for j in jobs:
        assert results[j.key].data["trained_with"] == len(jobs)
        _assert_same_history(results[j.key], run(j.spec, j.seed, CPU, splits=digits), 1e-4)


def test_recording_a_units_kernels_leaves_its_state_as_it_was(digits):
    """A unit records its kernels by running one step of each batch size and an evaluation (relulab.kernels.launches):
    weights, optimizer state and totals are put back bit for bit, so training afterwards is training as if it had not."""
    jobs = [_job(s, opt="adam", epochs=1) for s in (0, 1)]
    (unit,) = units.form_units(jobs, digits, CPU, [32, 5], max_stack=8)
    before = [t.clone() for t in unit.state_tensors()]
    noted = unit.record_kernels(digits.x_test[:16], digits.y_test[:16])
    assert noted == []  # on the CPU no step launches a Triton kernel
    assert all(torch.equal(a, b) for a, b in zip(before, unit.state_tensors()))
    assert len(unit.steps) == 2 and any(not torch.equal(a, b) for a, b in zip(before, _after_one_step(unit)))


def _after_one_step(unit):
    unit.steps[32](torch.arange(32).unsqueeze(0).expand(unit.stack.k, -1).contiguous())
    return unit.state_tensors()


class _TritonUnit:
    """A unit that says it runs Triton kernels, whose recorded launches compile through `compile`."""

    launches_triton = True

    def __init__(self, compile):
        self.compile = compile

    def record_kernels(self, x, y):
        from relulab.kernels.launches import Launch

        kernel = type("Kernel", (), {"warmup": lambda _, *a, grid, **k: self.compile()})()
        return [Launch(kernel, (1,), (len(x),), {})]


def test_kernels_compiled_ahead_are_said_once_and_a_failure_only_costs_the_head_start(digits, monkeypatch, capsys):
    monkeypatch.setattr(pack, "COMPILE_NOTICE_S", 0.0)
    done = pack.compile_kernels([_TritonUnit(lambda: None)], digits)
    assert done.kernels == 1
    assert "relulab: compiled 1 GPU kernels in" in capsys.readouterr().err

    def broken():
        raise RuntimeError("no ptxas")
    assert pack.compile_kernels([_TritonUnit(broken)], digits) is None  # training goes on: kernels compile at launch
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "compiling the GPU kernels ahead of the first step failed" in err and "no ptxas" in err
    monkeypatch.setenv("RELULAB_COMPILE_THREADS", "0")
    assert pack.compile_kernels([_TritonUnit(broken)], digits) is None and not capsys.readouterr().err


def test_a_pack_says_when_the_device_has_an_epoch_of_steps_queued(digits, monkeypatch):
    # relulab.core.background starts its waiting work then (on CUDA); the pack says so once it has queued a step.
    calls = []
    monkeypatch.setattr(pack.background, "device_busy", lambda device: calls.append(device))
    pack.train_together([_job(0), _job(1)], digits, CPU)
    assert calls == [CPU, CPU]  # once an epoch, after its first step
