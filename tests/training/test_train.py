import math

import pytest
import torch

from relulab.data import DataSpec, load_data
from relulab.core.errors import UserError
from relulab.zoo.models import ModelSpec
from relulab.zoo.optim import OptimizerSpec
from relulab.training.callbacks import Callback
from relulab.training.loop import epoch_batches, run
from relulab.training.specs import RunSpec, TrainSpec, arithmetic

SMALL = ModelSpec("deep-mlp", widths=[32, 32], init="he_normal")


def _spec(**train):
    return RunSpec(DataSpec(), SMALL, TrainSpec(**{"epochs": 3, "batch_size": 64, **train}))


def test_a_small_mlp_learns_digits():
    result = run(_spec(epochs=5, optimizer=OptimizerSpec("adam", lr=0.005)), seed=0, device="cpu")
    h = result.history
    assert len(h.epochs) == 5 and h.best_val_acc > 0.85 and h.test_acc > 0.8
    assert h.epochs[-1].train_loss < h.epochs[0].train_loss
    assert result.provenance["torch"] == torch.__version__ and "relulab" in result.provenance


def test_same_seed_same_history_other_seed_other_history():
    splits = load_data(DataSpec())
    a = run(_spec(), seed=3, device="cpu", splits=splits).history
    b = run(_spec(), seed=3, device="cpu", splits=splits).history
    c = run(_spec(), seed=4, device="cpu", splits=splits).history
    assert [e.val_loss for e in a.epochs] == [e.val_loss for e in b.epochs]
    assert [e.train_loss for e in a.epochs] != [e.train_loss for e in c.epochs]


def test_divergence_is_recorded_with_its_epoch():
    spec = _spec(epochs=4, optimizer=OptimizerSpec("sgd", lr=1e6))
    h = run(spec, seed=0, device="cpu").history
    assert h.diverged_at is not None and h.diverged_at <= 4
    assert len(h.epochs) == h.diverged_at and not math.isfinite(h.epochs[-1].train_loss)
    assert h.test_acc is None


def test_seed_002_protocol_runs_keras_rmsprop_with_batchnorm():
    spec = RunSpec(DataSpec(train_size=256), ModelSpec("bn-mlp", activation="selu", init="lecun_uniform",
                                                       widths=[64] + [32] * 5),
                   TrainSpec(1, 128, OptimizerSpec("rmsprop", flavour="keras")))
    assert math.isfinite(run(spec, seed=0, device="cpu").history.final_val_acc)


def test_weight_penalty_shrinks_weights():
    plain = run(_spec(epochs=2), seed=0, device="cpu").model
    penalized = run(_spec(epochs=2, l2=0.05), seed=0, device="cpu").model
    norm = lambda m: sum(p.pow(2).sum().item() for n, p in m.named_parameters() if n.endswith("weight"))
    assert norm(penalized) < norm(plain)


def test_callbacks_see_every_epoch():
    class Count(Callback):
        def __init__(self):
            self.epochs = []

        def on_epoch_end(self, model, record):
            self.epochs.append(record.epoch)

    counter = Count()
    run(_spec(), seed=0, device="cpu", callbacks=[counter])
    assert counter.epochs == [1, 2, 3]


def test_a_last_batch_of_one_is_dropped():
    assert epoch_batches(10, 3) == [(0, 3), (3, 6), (6, 9)]
    assert epoch_batches(11, 3) == [(0, 3), (3, 6), (6, 9), (9, 11)]
    assert epoch_batches(1, 3) == [(0, 1)]


def _tiny_spec(precision: str) -> RunSpec:
    return RunSpec(DataSpec(), ModelSpec("deep-mlp", widths=[16, 16]),
                   TrainSpec(1, 32, OptimizerSpec("sgd", lr=0.05), precision=precision))


def test_precision_tf32_is_accepted_and_changes_nothing_on_the_cpu():
    # TF32 is a tensor-core format of CUDA GPUs; on the CPU float32 products stay full fp32.
    exact, tf32 = run(_tiny_spec("fp32"), 0, "cpu"), run(_tiny_spec("tf32"), 0, "cpu")
    assert exact.history.epochs[0].val_loss == tf32.history.epochs[0].val_loss
    assert torch.backends.cuda.matmul.fp32_precision == "none"  # the setting is restored after the run


def test_an_unknown_precision_names_the_field_and_the_choices():
    with pytest.raises(UserError, match=r"train\.precision: expected one of auto, fp32, tf32, bf16, got 'fp16'"):
        TrainSpec(precision="fp16").validate()


def test_arithmetic_says_what_a_run_computed_in():
    cuda, cpu = torch.device("cuda"), torch.device("cpu")  # device objects only: nothing runs on them
    cnn = RunSpec(DataSpec(image_size=32), ModelSpec("seed-cnn"), TrainSpec())
    assert arithmetic(_tiny_spec("auto"), cuda) == "tf32"  # JAX's (and so the Keras peers') default on A100/H100
    assert arithmetic(_tiny_spec("fp32"), cuda) == "fp32"
    assert arithmetic(cnn, cuda) == "bf16"
    assert arithmetic(_tiny_spec("auto"), cpu) == arithmetic(cnn, cpu) == "fp32"
    assert arithmetic(_tiny_spec("bf16"), cpu) == "bf16"


def test_train_compile_takes_true_false_or_null():
    with pytest.raises(UserError, match=r"train\.compile: expected true, false or null \(auto\), got 'yes'"):
        TrainSpec(compile="yes").validate()
    assert TrainSpec(compile=True).validate().compile is True


def test_a_state_dict_comes_to_the_cpu_whole_and_unshared():
    from relulab.training.checkpoints import state_to_cpu

    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4)).to(torch.float64)
    state = model.state_dict()  # float64 weights and statistics, an int64 0-d counter
    copied = state_to_cpu(state)
    assert list(copied) == list(state)
    for name, tensor in state.items():
        assert copied[name].dtype == tensor.dtype and torch.equal(copied[name], tensor)
    copied["0.weight"].add_(1.0)  # a copy, not the model's own tensor, nor a view of a shared buffer
    assert not torch.equal(copied["0.weight"], state["0.weight"])
    assert torch.equal(copied["0.bias"], state["0.bias"])
