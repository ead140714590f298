"""FunctionalStack (relulab.packing.functional): K residual models with batch norm trained as one through
torch.func give the histories, weights and running statistics of K separate runs of training.loop.run, with
different seeds, initializers, learning rates, schedules, augmentation and slot placements in one stack."""
import pytest
import torch
import torch.nn.functional as F

from relulab.data import DataSpec, load_data
from relulab.packing import rules
from relulab.packing.functional import FunctionalStack
from relulab.packing.pack import train_together
from relulab.training.augment import AugmentSpec
from relulab.training.loop import run
from relulab.training.schedules import ScheduleSpec
from relulab.training.specs import Job, RunSpec, TrainSpec
from relulab.zoo.models import MODELS, ModelEntry, ModelSpec, build_model
from relulab.zoo.optim import OptimizerSpec
from user_nets import build_user_net

CPU = torch.device("cpu")
DATA = DataSpec(name="digits", image_size=12, train_size=96, split="stratified:64")


@pytest.fixture
def user_model(monkeypatch):
    monkeypatch.setitem(MODELS, "user-resnet", ModelEntry(build_user_net, packs="vmap", conv=True))


def _job(seed, slots=None, lr=0.05, schedule=None, augment=None, opt="momentum", model="user-resnet"):
    train = TrainSpec(3, 32, OptimizerSpec(opt, lr), schedule=schedule, augment=augment, label_smoothing=0.1)
    return Job(RunSpec(DATA, ModelSpec(model, slots=slots or {}), train), seed, key=f"{seed}-{slots}-{lr}")


def _assert_same_run(packed, alone, tol=1e-4, weight_atol=1e-4):
    assert len(packed.history.epochs) == len(alone.history.epochs) == 3
    for p, s in zip(packed.history.epochs, alone.history.epochs):
        assert p.train_loss == pytest.approx(s.train_loss, abs=tol)
        assert p.val_loss == pytest.approx(s.val_loss, abs=tol)
        assert abs(p.val_acc - s.val_acc) <= 1 / 32 + 1e-9  # at most one validation example flips
    assert packed.history.test_loss == pytest.approx(alone.history.test_loss, abs=tol)
    mine, theirs = packed.model.state_dict(), alone.model.state_dict()
    assert mine.keys() == theirs.keys()
    for name, value in theirs.items():
        if value.is_floating_point():  # weights and batch norm's running statistics
            torch.testing.assert_close(mine[name], value, rtol=1e-3, atol=weight_atol, msg=name)


def test_a_functional_stack_of_residual_bn_models_equals_separate_runs(user_model):
    splits = load_data(DATA)
    jobs = [_job(0), _job(1, slots={2: "identity"}, lr=0.1), _job(2, slots={1: "identity", 5: "tanh"},
                                                                   schedule=ScheduleSpec("cosine", warmup_epochs=1)),
            _job(3, augment=AugmentSpec(crop_padding=2, flip=True))]
    assert len({rules.functional_stack_key(j) for j in jobs}) == 1  # one stack: placements and recipes differ
    packed = train_together(jobs, splits, CPU, stack_functional=True)
    assert all(r.data["stacked"] for r in packed)
    for job, result in zip(jobs, packed):
        alone = run(job.spec, job.seed, CPU, splits=splits)
        _assert_same_run(result, alone)
        assert result.model.placement() == alone.model.placement()


def test_a_functional_stack_of_resnet20s_steps_as_each_model_alone():
    """One training step of three resnet20s (one with two slots off) as one stack: each model's loss
    gradient and batch norm statistics are its own."""
    torch.manual_seed(0)
    models = [build_model(ModelSpec("resnet20", slots=slots), (3, 32, 32), 10) for slots in ({}, {3: "identity",
                                                                                              19: "identity"}, {})]
    stack = FunctionalStack(models)
    x, y = torch.randn(3, 4, 3, 32, 32), torch.randint(0, 10, (3, 4))
    logits = stack.forward(stack.params, x, training=True)
    loss = F.cross_entropy(logits.reshape(12, 10), y.reshape(-1), reduction="none").view(3, 4).mean(1).sum()
    (grad,) = torch.autograd.grad(loss, stack.params)
    for k, model in enumerate(models):
        model.train()
        own = F.cross_entropy(model(x[k]), y[k])
        grads = torch.autograd.grad(own, list(model.parameters()))
        torch.testing.assert_close(grad[k], torch.cat([g.reshape(-1) for g in grads]), rtol=1e-4, atol=1e-6)
        for name, value in model.named_buffers():
            if value.is_floating_point():
                torch.testing.assert_close(stack.buffers[name][k], value, msg=name)
    placements = [m.placement() for m in models]
    stack.unstack_into(models)
    assert [m.placement() for m in models] == placements  # the blend lives in the stack only


def test_models_that_learn_their_activations_or_use_other_optimizers_do_not_stack():
    assert rules.functional_stack_key(_job(0, model="resnet20")) is not None
    assert rules.functional_stack_key(Job(RunSpec(DATA, ModelSpec("resnet20", activation="prelu"),
                                                  TrainSpec(1, 32)), 0)) is None
    assert rules.functional_stack_key(_job(0, model="deep-mlp")) is None
    assert rules.functional_stack_key(_job(0, model="resnet20")) != rules.functional_stack_key(
        _job(0, model="resnet20", opt="adam"))


def test_small_networks_stack_and_big_ones_train_in_units_of_their_own():
    """rules.functional_stack_pays, measured: resnet20s (270K parameters) train faster stacked; resnet20s of widths
    32-64-128 (1.08M) and resnet18-cifars (11.2M) faster as units, so form_units gives each its own unit even where
    stacking is on."""
    from relulab.packing.units import form_units
    from relulab.zoo.models import parameter_count

    splits = load_data(DataSpec(name="digits", image_size=32, train_size=64, split="stratified:32"))
    assert parameter_count(ModelSpec("resnet20"), splits.input_shape, 10) < rules.FUNCTIONAL_STACK_MAX_PARAMS < \
        parameter_count(ModelSpec("resnet20", widths=[32, 64, 128]), splits.input_shape, 10)
    small = form_units([_job(0, model="resnet20"), _job(1, model="resnet20")], splits, CPU, [32],
                       stack_functional=True)
    big = form_units([_job(0, model="resnet18-cifar"), _job(1, model="resnet18-cifar")], splits, CPU, [32],
                     stack_functional=True)
    assert [type(u.stack).__name__ for u in small] == ["FunctionalStack"]
    assert [u.stack for u in big] == [None, None]


def test_a_functional_stack_holds_at_most_64_models_whatever_the_caller_asks():
    jobs = [_job(seed, model="resnet20") for seed in range(80)]
    assert rules.stack_sizes(len(jobs), rules.most_to_a_stack(jobs[0], 128)) == [40, 40]
    assert rules.most_to_a_stack(jobs[0], 8) == 8 and rules.most_to_a_stack(jobs[0]) == 32
    assert rules.most_to_a_stack(_job(0, model="deep-mlp"), 128) == 128  # the fused MLP step: no such limit


def test_a_stack_evaluates_in_batches_whose_activations_cudnn_can_index(monkeypatch):
    """cuDNN indexes tensors with 32-bit integers: 64 resnet20s evaluated on 2,048 images at once put 2^31 values
    through the stem's batch norm and failed on an H200. largest_batch bounds the evaluation's batches by the
    model's biggest activation (resnet20's: 16 channels x 32 x 32 an image), and the split batches give the
    numbers one batch gives."""
    from relulab.packing import functional
    from relulab.packing.units import evaluate_stack
    torch.manual_seed(0)
    stack = FunctionalStack([build_model(ModelSpec("resnet20"), (3, 32, 32), 10) for _ in range(2)])
    assert stack.largest_batch((3, 32, 32)) == (2**31 - 1) // (2 * 16 * 32 * 32)
    x, y = torch.randn(12, 3, 32, 32), torch.randint(0, 10, (12,))
    whole = evaluate_stack(stack, x, y, batch=12)
    monkeypatch.setattr(functional, "MOST_VALUES", 5 * 2 * 16 * 32 * 32)  # room for 5 images
    stack._values_per_image.clear()
    batches = []
    forward = stack.forward
    monkeypatch.setattr(stack, "forward", lambda p, xb, training: batches.append(len(xb)) or forward(p, xb, training))
    split = evaluate_stack(stack, x, y, batch=12)
    assert batches == [5, 5, 2]
    for ours, theirs in zip(split, whole):
        assert ours == pytest.approx(theirs, abs=1e-6)


def test_a_stack_holds_no_more_models_than_keep_a_training_batch_within_cudnns_reach(monkeypatch):
    """A training batch of a stack runs all its models' activations through one cuDNN call: the stack size is
    capped so that K x batch x the model's biggest activation stays within functional.MOST_VALUES."""
    from relulab.packing.units import form_units
    from relulab.zoo.models import ModelSpec, largest_activation
    assert largest_activation(ModelSpec("resnet20"), (3, 32, 32), 10) == 16 * 32 * 32  # the stem's and layer1's
    job = _job(0, model="resnet20")  # batch 32
    assert rules.most_to_a_stack(job, 64, (3, 32, 32), 10) == 64  # 64 x 32 x 16,384 values: far within reach
    monkeypatch.setattr(rules, "MOST_VALUES", 3 * 32 * 16 * 32 * 32)  # room for 3 models' batches
    assert rules.most_to_a_stack(job, 64, (3, 32, 32), 10) == 3
    splits = load_data(DataSpec(name="digits", image_size=32, train_size=64, split="stratified:32"))
    units = form_units([_job(seed, model="resnet20") for seed in range(7)], splits, CPU, [32], max_stack=64,
                       stack_functional=True)
    assert sorted(u.stack.k for u in units) == [2, 2, 3]


def test_augmentation_is_set_up_before_the_steps_are_captured(user_model, monkeypatch):
    """A CUDA graph replays what it captured: a step captured before its augmentation is set would train on
    unaugmented batches (as it once did). Capture is recorded here (the CPU has no graphs), and every step of an
    augmenting unit must already read its augmented input buffer when it is captured."""
    from relulab.packing.units import Unit

    seen = []
    monkeypatch.setattr(Unit, "capture", lambda unit: seen.extend(step.augments for step in unit.steps.values()))
    splits = load_data(DATA)
    jobs = [_job(0, augment=AugmentSpec(crop_padding=2, flip=True)), _job(1)]
    train_together(jobs, splits, CPU, graphs=True, stack_functional=True)
    assert seen and all(a is not None and a[0][0] is not None and a[1][0] is None for a in seen)


def test_on_cuda_a_functional_stack_is_formed_only_where_its_step_compiles():
    """An eager functional stack is slower on CUDA than its models as one-model units side by side (BENCHMARKS.md):
    relulab stacks them only where the stack's step is compiled, unless train.compile says otherwise."""
    cuda = torch.device("cuda")  # the rule only reads the device's type: no GPU needed

    def jobs(k, epochs, compile_=None):
        train = TrainSpec(epochs, 128, OptimizerSpec("momentum", 0.1), compile=compile_)
        return [Job(RunSpec(DATA, ModelSpec("resnet20"), train), seed, key=str(seed)) for seed in range(k)]

    assert not rules.functional_stack_runs(jobs(16, 2), cuda)  # 32 model-epochs: not compiled, so units
    assert rules.functional_stack_runs(jobs(16, 20), cuda)  # 320 >= COMPILE_MIN_MODEL_EPOCHS: a compiled stack
    assert rules.functional_stack_runs(jobs(16, 2, compile_=False), cuda)  # the eager stack asked for
    assert rules.functional_stack_runs(jobs(16, 2), CPU)  # off CUDA a stack is only formed when asked for


def test_masked_models_share_a_functional_stack_and_train_as_alone(user_model):
    """Channel and unit masks (relulab.zoo.masks) are buffers of the slots: models with different masks of one
    layout share a stack, and each trains as it would alone; the MLP and CNN stacks take no masked model."""
    from relulab.zoo.masks import Mask
    generator = torch.Generator().manual_seed(0)

    def masks():
        return {1: Mask("channel", torch.rand(4, generator=generator) < 0.5).text(),
                2: Mask("unit", torch.rand(4, 12, 12, generator=generator) < 0.5).text()}

    splits = load_data(DATA)
    jobs = [_job(seed) for seed in range(3)]
    for job in jobs:
        job.spec.model.masks = masks()
    assert len({rules.functional_stack_key(j) for j in jobs}) == 1
    assert rules.functional_stack_key(_job(0)) != rules.functional_stack_key(jobs[0])  # the layout is in the key
    packed = train_together(jobs, splits, CPU, stack_functional=True)
    assert all(r.data["stacked"] for r in packed)
    for job, result in zip(jobs, packed):
        alone = run(job.spec, job.seed, CPU, splits=splits)
        _assert_same_run(result, alone, weight_atol=5e-4)  # float sums in another order, over 3 epochs
        assert result.data["relu_count"] == alone.data["relu_count"] == result.model.relu_count()
    cnn = Job(RunSpec(DATA, ModelSpec("seed-cnn", masks={1: Mask("channel", torch.ones(48, dtype=torch.bool)).text()}),
                      TrainSpec(1, 32)), 0, key="cnn")
    mlp = Job(RunSpec(DATA, ModelSpec("deep-mlp", widths=[8, 8], masks={1: Mask("unit", torch.ones(8,
                      dtype=torch.bool)).text()}), TrainSpec(1, 32)), 0, key="mlp")
    assert rules.cnn_stack_key(cnn) is None and rules.stack_key(mlp) is None and not rules.fusable(mlp)
