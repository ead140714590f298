"""Stacks of seed-cnns (relulab.packing.stacked_cnn) train as the same models trained one by one.

On the CPU a stack's convolutions are PyTorch's grouped convolution; the Triton kernels that replace them on
CUDA are checked against PyTorch in tests/kernels/test_triton_interpreter.py."""
import pytest
import torch

from relulab.packing import pack, rules, units
from relulab.training import loop as train
from relulab.data import DataSpec, load_data
from relulab.zoo.models import ModelSpec, build_model
from relulab.zoo.optim import OptimizerSpec
from relulab.packing.stacked_cnn import StackedCNN
from relulab.training.loop import run
from relulab.training.specs import Job, RunSpec, TrainSpec

CPU = torch.device("cpu")
DATA = DataSpec(image_size=32, train_size=160)  # digits upscaled for a narrow seed-cnn


@pytest.fixture(scope="module")
def images():
    return load_data(DATA)


def _job(seed, lr=1e-3, init="glorot_uniform", slots=None, widths=(8,) * 9, epochs=2, **train_kw):
    model = ModelSpec("seed-cnn", init=init, widths=list(widths), slots=dict(slots or {}))
    return Job(RunSpec(DATA, model, TrainSpec(epochs, 64, OptimizerSpec("adam", lr, flavour="keras"), **train_kw)), seed)


def test_a_stack_of_cnns_equals_separate_runs(images):
    # Different seeds, learning rates, initializers and slot placements in one stack.
    jobs = [_job(0), _job(1, lr=2e-3, slots={3: "identity", 7: "identity"}), _job(2, init="he_normal", slots={3: "tanh"})]
    assert len({rules.cnn_stack_key(j) for j in jobs}) == 1
    packed = pack.train_together(jobs, images, CPU, stack_cnns=True)
    for job, result in zip(jobs, packed):
        single = run(job.spec, job.seed, CPU, splits=images)
        assert result.data["trained_with"] == 3 and result.data["compiled"] is False
        for p, s in zip(result.history.epochs, single.history.epochs, strict=True):
            # Adam's step on a bias that feeds a batch norm is rounding noise of full size (see test_pack).
            assert p.train_loss == pytest.approx(s.train_loss, abs=3e-3)
            assert p.val_loss == pytest.approx(s.val_loss, abs=3e-3)
        # The trained weights and running statistics came back into an ordinary model.
        loss, acc = train.evaluate(result.model, images.x_test, images.y_test)
        assert loss == pytest.approx(result.history.test_loss, abs=1e-5)
        assert acc == result.history.test_acc


def test_which_cnn_jobs_share_a_stack():
    key = rules.cnn_stack_key(_job(0))
    assert key is not None
    assert rules.cnn_stack_key(_job(1, lr=0.1, slots={5: "identity"}, init="he_normal")) == key
    assert rules.cnn_stack_key(_job(0, widths=(16,) * 9)) != key
    assert rules.cnn_stack_key(_job(0, slots={2: "prelu"})) is None  # PReLU's own parameters are not stacked
    assert rules.cnn_stack_key(_job(0, compile=True)) != key  # a compiled stack is another graph
    assert rules.stack_key(_job(0)) is None  # not an MLP stack


def test_cnns_stack_by_default_only_on_cuda_in_bf16():
    cuda = torch.device("cuda")  # a device object only: nothing runs on it
    assert not rules.stacks_cnns([_job(0)], CPU)
    assert not rules.stacks_cnns([_job(0, precision="fp32")], cuda)
    assert rules.stacks_cnns([_job(0)], cuda) == (pytest.importorskip("importlib.util").find_spec("triton") is not None)


def test_a_compiled_stack_trains_as_the_uncompiled_one(images, recording_compile):
    traced = recording_compile
    compiled = pack.train_together([_job(s, compile=True) for s in (0, 1)], images, CPU, stack_cnns=True)
    plain = pack.train_together([_job(s) for s in (0, 1)], images, CPU, stack_cnns=True)
    steps = [shapes for shapes in traced if any(len(shape) == 5 for shape in shapes)]
    assert steps and all((2, 64, 1, 32, 32) in shapes for shapes in steps)  # the full batch, both models
    assert len(traced) > len(steps)  # and the optimizer's update, on the stacked weights
    for c, p in zip(compiled, plain):
        assert c.data["compiled"] is True and c.data["stacked"] is True and p.data["compiled"] is False
        # The traced update computes Adam's v with a fused multiply-add (dynamo's addcmul_), one rounding
        # fewer than eager; batch norm's rounding-noise bias gradients, which Adam scales up, carry it on
        # (1e-4 after 2 epochs with one thread).
        for a, b in zip(c.history.epochs, p.history.epochs, strict=True):
            assert a.train_loss == pytest.approx(b.train_loss, abs=1e-3)
            assert a.val_loss == pytest.approx(b.val_loss, abs=1e-3)


def test_stacks_compile_where_enough_model_epochs_share_a_stack():
    cuda = torch.device("cuda")  # a device object only: nothing runs on it
    needed = rules.COMPILE_MIN_MODEL_EPOCHS
    assert rules.compiles_stack([_job(s, epochs=needed // 4) for s in range(4)], cuda)
    assert not rules.compiles_stack([_job(s, epochs=needed // 4) for s in range(3)], cuda)
    assert not rules.compiles_stack([_job(s, epochs=needed) for s in range(4)], CPU)
    assert rules.compiles_stack([_job(0, epochs=1, compile=True)], CPU)  # train.compile says so
    assert not rules.compiles_stack([_job(s, epochs=needed, compile=False) for s in range(4)], cuda)


def test_stacks_are_as_few_and_as_even_as_their_limit_allows():
    assert rules.stack_sizes(18, 16) == [9, 9]
    assert rules.stack_sizes(16, 16) == [16]
    assert rules.stack_sizes(20, 8) == [7, 7, 6]
    assert rules.stack_sizes(1, 8) == [1]
    assert rules.default_max_stack(_job(0)) == rules.DEFAULT_MAX_CNN_STACK


def _stack_step(stack, x, training=True):
    """Logits, gradient of a loss of them, and running statistics after one forward of a stack."""
    params = stack.params.detach().clone().requires_grad_(True)
    logits = stack.forward(params, x, training)
    grad = torch.autograd.grad(logits.square().sum(), params)[0] if training else None
    return logits.detach(), grad, torch.cat([t for pair in stack.running for t in pair])


def test_batch_norm_folded_into_the_next_convolution_computes_the_same():
    # ReLU, identity, tanh and sigmoid slots, and both max-pools, in one stack.
    torch.manual_seed(0)
    placements = [{}, {3: "identity", 7: "identity"}, {2: "tanh", 9: "sigmoid"}]
    models = [build_model(ModelSpec("seed-cnn", widths=[8] * 9, slots=p), (3, 32, 32), 10) for p in placements]
    x = torch.randn(3, 16, 3, 32, 32)
    plain = StackedCNN(models, triton_kernels=False, fold_batchnorm=False)
    folded = StackedCNN(models, triton_kernels=False, fold_batchnorm=True)
    # Every 3x3 conv -> activation -> batch norm is one folded block; the 1x1 head's is not.
    assert not plain.folded and len(folded.folded) == 9
    for training in (True, False):
        (z0, g0, r0), (z1, g1, r1) = _stack_step(plain, x, training), _stack_step(folded, x, training)
        assert torch.allclose(z1, z0, rtol=1e-4, atol=1e-4)
        assert torch.allclose(r1, r0, rtol=1e-4, atol=1e-6)  # the running statistics moved the same way
        if training:
            assert torch.allclose(g1, g0, rtol=1e-3, atol=1e-3 * g0.abs().max().item())


def test_activations_the_kernels_lack_leave_their_layer_unfolded():
    models = [build_model(ModelSpec("seed-cnn", widths=[8] * 9, slots={4: "gelu"}), (3, 32, 32), 10)]
    folded = StackedCNN(models, triton_kernels=False, fold_batchnorm=True)
    gelu_conv = [i for i, op in enumerate(folded.ops) if op.kind == "conv"][3]
    assert gelu_conv not in folded.folded and len(folded.folded) == 8
    x = torch.randn(1, 4, 3, 32, 32)
    z0 = _stack_step(StackedCNN(models, triton_kernels=False, fold_batchnorm=False), x)[0]
    assert torch.allclose(_stack_step(folded, x)[0], z0, rtol=1e-4, atol=1e-4)


def test_evaluation_batches_keep_the_kernels_offsets_in_32_bits(monkeypatch):
    models = [build_model(ModelSpec("seed-cnn"), (3, 32, 32), 10) for _ in range(2)]
    stack = StackedCNN(models, triton_kernels=False)
    # seed-cnn's largest activation is slot 3's, 26 x 26 x 96 values an image and model.
    assert stack.largest_batch((3, 32, 32)) == (2**31 - 1) // (26 * 26 * 96 * 2)
    # An evaluation split into batches that small gives what one batch gives.
    x, y = torch.randn(10, 3, 32, 32), torch.randint(0, 10, (10,))
    (whole_loss, whole_acc) = units.evaluate_stack(stack, x, y, 10)
    monkeypatch.setattr(StackedCNN, "largest_batch", lambda self, image_shape: 3)
    batches, forward = [], stack.forward

    def counted(params, xb, training):
        batches.append(len(xb))
        return forward(params, xb, training)
    monkeypatch.setattr(stack, "forward", counted)
    loss, acc = units.evaluate_stack(stack, x, y, 10)
    assert batches == [3, 3, 3, 1]
    assert loss == pytest.approx(whole_loss, rel=1e-5) and acc == whole_acc


def test_the_kernels_refuse_tensors_past_their_32_bit_offsets():
    conv_triton = pytest.importorskip("relulab.kernels.conv_triton")  # needs triton, which CUDA builds of torch bring
    conv_triton.check_indexable(torch.empty(2**31 - 1, device="meta"))
    with pytest.raises(ValueError, match="32-bit offsets"):
        conv_triton.check_indexable(torch.empty(2**31, device="meta"))


def test_the_triton_operators_output_as_many_partial_sums_as_their_callers_traced():
    """A compiled step is cached on disk by its code, where the operators' arguments appear but the shapes their fake
    versions give do not; so how many row tiles and splits an operator returns is an argument of it. (Deriving them
    inside made a graph compiled under other tile sizes be reused, and stop at its first step.) The fake versions,
    which torch.compile traces with, follow the counts they are given."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from relulab.packing import stacked_cnn as sc

    k, n, size, cin, cout = 2, 4, 10, 16, 32
    with FakeTensorMode():
        x = torch.empty(n, size, size, k, cin, dtype=torch.bfloat16)
        weight = torch.empty(k, cout, cin, 3, 3)
        w16 = torch.empty(k, cout, 3, 3, cin, dtype=torch.bfloat16)
        a, sums = sc._triton_conv_act(x, weight, w16, torch.empty(k, cout), torch.empty(k, dtype=torch.int32),
                                      True, 7)
        dx, dw_parts, db_parts = sc._triton_conv_act_backward(a, torch.empty(2, k, cout), x, w16, a,
                                                              torch.empty(k, dtype=torch.int32), True, 5, 3)
        _, plain_parts = sc._triton_conv_backward(a, x, w16, False, 4)
    assert tuple(a.shape) == (n, size - 2, size - 2, k, cout) and tuple(sums.shape) == (2, 7, k, cout)
    assert tuple(dx.shape) == tuple(x.shape) and tuple(dw_parts.shape) == (k, 5, cout, 3, 3, cin)
    assert tuple(db_parts.shape) == (3, k, cout) and plain_parts.shape[1] == 4
