"""The ResNet training recipes: learning-rate schedules (PyTorch's own schedulers as the reference), label
smoothing, crops and flips on the device, their spec fields, `relulab train` options, and run identity."""
from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from relulab.core.errors import UserError
from relulab.data import DataSpec, load_data
from relulab.experiments import load_experiment
from relulab.experiments.plan import canonical_spec, run_key
from relulab.training import loop
from relulab.training.augment import AugmentSpec, augment_batch
from relulab.training.schedules import ScheduleSpec, build_scheduler
from relulab.training.specs import RunSpec, TrainSpec, build_run_spec
from relulab.zoo.models import ModelSpec
from relulab.zoo.optim import OptimizerSpec
from specs import relulab


@pytest.fixture(scope="module")
def digits():
    return load_data(DataSpec("digits"))


def _lrs(make_scheduler, steps: int, per_epoch_steps: int = 1) -> list[float]:
    """The learning rate of each of `steps` optimizer steps, the scheduler stepped every `per_epoch_steps`."""
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    scheduler = make_scheduler(optimizer)
    lrs = []
    for step in range(steps):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        if (step + 1) % per_epoch_steps == 0:
            scheduler.step()
    return lrs


PER_EPOCH, EPOCHS = 7, 6


def _ours(spec: ScheduleSpec) -> list[float]:
    return _lrs(lambda opt: build_scheduler(opt, spec.validate(EPOCHS), PER_EPOCH, EPOCHS), PER_EPOCH * EPOCHS)


# ---------------------------------------------------------------- schedules


def test_step_milestones_are_epochs_as_multisteplr_stepped_per_epoch():
    reference = _lrs(lambda opt: torch.optim.lr_scheduler.MultiStepLR(opt, [2, 4], gamma=0.5), PER_EPOCH * EPOCHS,
                     PER_EPOCH)
    assert _ours(ScheduleSpec("step", milestones=[2, 4], gamma=0.5)) == pytest.approx(reference, rel=1e-12)
    assert len(set(reference)) == 3


def test_cosine_is_cosineannealinglr_over_the_runs_steps():
    total = PER_EPOCH * EPOCHS
    reference = _lrs(lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total), total)
    assert _ours(ScheduleSpec("cosine")) == pytest.approx(reference, rel=1e-9, abs=1e-15)


def test_one_cycle_is_onecyclelr_without_momentum_cycling():
    total = PER_EPOCH * EPOCHS
    reference = _lrs(lambda opt: torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=total,
                                                                     pct_start=0.25, cycle_momentum=False), total)
    assert _ours(ScheduleSpec("one-cycle", pct_start=0.25)) == pytest.approx(reference, rel=1e-9, abs=1e-15)
    short = _lrs(lambda opt: build_scheduler(opt, ScheduleSpec("one-cycle", pct_start=0.1), 10, 1), 10)
    assert short[0] == 0.1 and short == sorted(short, reverse=True)  # too short to rise: falls from lr


@pytest.mark.parametrize("name,extra", [("constant", {}), ("step", {"milestones": [3]}), ("cosine", {}),
                                        ("one-cycle", {})])
def test_warm_up_ramps_the_first_epochs_of_every_schedule(name, extra):
    plain, warmed = _ours(ScheduleSpec(name, **extra)), _ours(ScheduleSpec(name, warmup_epochs=2, **extra))
    ramp = 2 * PER_EPOCH
    assert warmed[:ramp] == pytest.approx([p * (t + 1) / ramp for t, p in enumerate(plain[:ramp])], rel=1e-12)
    assert warmed[ramp:] == plain[ramp:]


def test_a_run_trains_at_the_scheduled_rate_of_every_batch(digits, monkeypatch):
    seen = []
    real_step = loop.batch_step

    def recording(model, optimizer, *args, **kwargs):
        seen.append(optimizer.param_groups[0]["lr"])
        return real_step(model, optimizer, *args, **kwargs)

    monkeypatch.setattr(loop, "batch_step", recording)
    spec = _spec(schedule=ScheduleSpec("cosine", warmup_epochs=1), epochs=3)
    loop.run(spec, 0, "cpu", splits=digits)
    per_epoch = len(loop.epoch_batches(len(digits.x_train), 64))
    total = 3 * per_epoch
    expected = [0.05 * 0.5 * (1 + math.cos(math.pi * t / total)) * min(1, (t + 1) / per_epoch) for t in range(total)]
    assert seen == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("spec,field", [
    (ScheduleSpec("linear"), "train.schedule.name"),
    (ScheduleSpec("step", milestones=[4, 2]), "train.schedule.milestones"),
    (ScheduleSpec("step", milestones=[6]), "train.schedule.milestones"),  # not before the last of 6 epochs
    (ScheduleSpec("step", milestones=["3"]), "train.schedule.milestones"),
    (ScheduleSpec("step", milestones=[2], gamma=-1.0), "train.schedule.gamma"),
    (ScheduleSpec("cosine", milestones=[2]), "train.schedule.milestones"),  # not used by cosine
    (ScheduleSpec("cosine", gamma=0.5), "train.schedule.gamma"),
    (ScheduleSpec("cosine", warmup_epochs=7), "train.schedule.warmup_epochs"),
    (ScheduleSpec("one-cycle", pct_start=1.5), "train.schedule.pct_start"),
    (ScheduleSpec("one-cycle", div_factor=0.0), "train.schedule.div_factor"),
])
def test_bad_schedules_name_their_field(spec, field):
    with pytest.raises(UserError, match=f"^{field}: "):
        TrainSpec(epochs=EPOCHS, schedule=spec).validate()


# ---------------------------------------------------------------- label smoothing


def test_label_smoothing_goes_into_the_training_loss_and_not_into_validation(digits):
    smooth = loop.run(_spec(label_smoothing=0.5, epochs=3), 0, "cpu", splits=digits)
    plain = loop.run(_spec(epochs=3), 0, "cpu", splits=digits)
    # A cross entropy against smoothed targets is never below their entropy (1.68 nats for 0.5 over 10 classes:
    # 0.55 on the label, 0.05 on each other class). The reported train loss is the smoothed one, so it stays above
    # that floor, which the plain loss of the same start goes well under.
    floor = -(0.55 * math.log(0.55) + 9 * 0.05 * math.log(0.05))
    assert all(e.train_loss >= floor for e in smooth.history.epochs)
    assert plain.history.epochs[-1].train_loss < floor - 0.5
    val_loss, val_acc = loop.evaluate(smooth.model, digits.x_val, digits.y_val)
    assert (smooth.history.epochs[-1].val_loss, smooth.history.epochs[-1].val_acc) == (val_loss, val_acc)


def test_the_smoothed_loss_is_the_textbook_one():
    model = nn.Linear(3, 4)
    x, y = torch.randn(5, 3, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 1, 2, 3, 0])
    logits = model(x).detach()
    totals = (torch.zeros(()), torch.zeros((), dtype=torch.long))
    loop.train_step(model, torch.optim.SGD(model.parameters(), lr=0.0), x, y, torch.arange(5), [], 0, 0, None,
                    totals, label_smoothing=0.1)
    log_p = logits.log_softmax(1)
    expected = (0.9 * -log_p[torch.arange(5), y] + 0.1 * -log_p.mean(1)).sum()
    assert totals[0].item() == pytest.approx(expected.item(), rel=1e-6)


# ---------------------------------------------------------------- augmentation


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_augmented_batches_keep_their_shape_and_repeat_with_their_seed():
    x = torch.randn(16, 3, 8, 8, generator=_gen(5))
    spec = AugmentSpec(crop_padding=2, flip=True)
    out = augment_batch(x, spec, _gen(1))
    assert out.shape == x.shape and out.dtype == x.dtype
    assert torch.equal(out, augment_batch(x, spec, _gen(1)))
    assert not torch.equal(out, augment_batch(x, spec, _gen(2)))
    assert torch.equal(augment_batch(x, AugmentSpec(), _gen(1)), x)


def test_flip_mirrors_each_image_or_leaves_it():
    image = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])  # (H, W) = (2, 3)
    x = image.expand(64, 2, 2, 3)  # 64 images of two equal channels
    out = augment_batch(x, AugmentSpec(flip=True), _gen())
    mirrored = torch.tensor([[3.0, 2.0, 1.0], [6.0, 5.0, 4.0]])
    flipped = [torch.equal(o, mirrored.expand(2, 2, 3)) for o in out]
    assert all(f or torch.equal(o, x[0]) for f, o in zip(flipped, out))
    assert 16 < sum(flipped) < 48  # about half


def test_crop_takes_a_window_of_the_zero_padded_image():
    image = torch.arange(1.0, 10.0).view(1, 3, 3)  # 1..9
    padded = F.pad(image, (1, 1, 1, 1))
    windows = {(dy, dx): padded[:, dy:dy + 3, dx:dx + 3] for dy in range(3) for dx in range(3)}
    out = augment_batch(image.expand(200, 1, 3, 3), AugmentSpec(crop_padding=1), _gen())
    found = [next(k for k, w in windows.items() if torch.equal(o, w)) for o in out]  # each output is a window
    assert set(found) == set(windows)  # and every offset is drawn
    both = augment_batch(image.expand(200, 1, 3, 3), AugmentSpec(crop_padding=1, flip=True), _gen())
    mirrored_windows = [w.flip(-1) for w in windows.values()]
    assert all(any(torch.equal(o, w) for w in [*windows.values(), *mirrored_windows]) for o in both)
    assert any(torch.equal(o, windows[(0, 0)].flip(-1)) for o in both)  # the crop, flipped


def test_augmentation_touches_training_batches_only_and_repeats(digits):
    before = {k: getattr(digits, k).clone() for k in ("x_train", "x_val", "x_test")}
    spec = _spec(augment=AugmentSpec(crop_padding=1, flip=True), epochs=2)
    first, again = loop.run(spec, 0, "cpu", splits=digits), loop.run(spec, 0, "cpu", splits=digits)
    assert _numbers(first) == _numbers(again)  # a CPU run repeats exactly
    assert _numbers(first) != _numbers(loop.run(_spec(epochs=2), 0, "cpu", splits=digits))
    assert all(torch.equal(getattr(digits, k), v) for k, v in before.items())  # the data is not changed
    val_loss, val_acc = loop.evaluate(first.model, digits.x_val, digits.y_val)  # validation: the plain images
    assert (first.history.epochs[-1].val_loss, first.history.epochs[-1].val_acc) == (val_loss, val_acc)


def test_augmentation_needs_images():
    with pytest.raises(UserError, match=r"^train.augment: crop and flip need images"):
        AugmentSpec(flip=True).check_data((100, 64))
    with pytest.raises(UserError, match=r"^train.augment.crop_padding: "):
        TrainSpec(augment=AugmentSpec(crop_padding=-1)).validate()


# ---------------------------------------------------------------- specs, keys and the command line


def _spec(epochs=3, **train) -> RunSpec:
    return RunSpec(DataSpec("digits"), ModelSpec("deep-mlp", widths=[32, 32], init="he_normal"),
                   TrainSpec(epochs=epochs, batch_size=64, optimizer=OptimizerSpec("momentum", lr=0.05), **train))


def _numbers(result):
    return [(e.train_loss, e.train_acc, e.val_loss, e.val_acc) for e in result.history.epochs]


def test_specs_without_the_new_fields_keep_their_run_keys():
    # Keys computed before these fields existed (commit 384cedd).
    assert run_key(RunSpec(), 0) == "c7c8294655389df2e983623c"
    adamw = RunSpec(DataSpec("digits"), ModelSpec("deep-mlp", widths=[64, 64]),
                    TrainSpec(5, 32, OptimizerSpec("adamw", lr=0.01)))
    assert run_key(adamw, 3) == "60d15a0806561e966fe1cea2"
    momentum = RunSpec(DataSpec("digits"), ModelSpec("seed-cnn"),
                       TrainSpec(5, 32, OptimizerSpec("momentum", lr=0.1, momentum=0.8), l2=1e-4))
    assert run_key(momentum, 1) == "89908f4ee26c24a2f9235278"
    train = canonical_spec(momentum)["train"]
    assert not {"schedule", "label_smoothing", "augment"} & train.keys()
    assert not {"weight_decay", "weight_decay_kind"} & train["optimizer"].keys()
    assert run_key(_spec(schedule=ScheduleSpec("cosine")), 0) != run_key(_spec(), 0)


RECIPE_YAML = """\
name: recipe
device: cpu
seeds: [0]
data: {name: digits}
model: {name: deep-mlp, widths: [16]}
train:
  epochs: 4
  optimizer: {name: nesterov, lr: 0.1, weight_decay: 5e-4}
  schedule: {name: step, milestones: [2, 3], gamma: 0.2, warmup_epochs: 1}
  label_smoothing: 0.1
  augment: {crop_padding: 1, flip: true}
configs:
  base: {}
  cosine: {train: {schedule: cosine, optimizer: {weight_decay_kind: decoupled}}}
"""


def test_spec_files_take_the_recipe_fields(tmp_path):
    (tmp_path / "spec.yaml").write_text(RECIPE_YAML)
    variants = {v.name: v.spec.train for v in load_experiment(str(tmp_path / "spec.yaml")).parts[0].variants}
    base, cosine = variants["base"], variants["cosine"]
    assert base.optimizer == OptimizerSpec("nesterov", lr=0.1, weight_decay=5e-4)
    assert base.schedule == ScheduleSpec("step", milestones=[2, 3], gamma=0.2, warmup_epochs=1)
    assert (base.label_smoothing, base.augment) == (0.1, AugmentSpec(crop_padding=1, flip=True))
    assert cosine.schedule == ScheduleSpec("cosine") and cosine.optimizer.weight_decay_kind == "decoupled"


@pytest.mark.parametrize("train,message", [
    ({"epochs": 3, "schedule": {"name": "step", "milestones": [5]}}, "^train.schedule.milestones: "),
    ({"schedule": {"name": "cosine", "gama": 0.1}}, r"^train.schedule.gama: unknown field \(did you mean 'gamma'"),
    ({"augment": {"flip": "yes"}}, "^train.augment.flip: "),
    ({"label_smoothing": 1.5}, "^train.label_smoothing: "),
    ({"optimizer": {"name": "sgd", "weight_decay_kind": "l3"}}, "^train.optimizer.weight_decay_kind: "),
])
def test_bad_recipe_fields_in_a_spec_name_the_field(train, message):
    with pytest.raises(UserError, match=message):
        build_run_spec({"data": {"name": "digits"}, "train": train})


def test_relulab_train_takes_the_recipe_options(capsys):
    code, out, err = relulab(capsys, "train", "--widths", "16", "-e", "3", "-b", "64", "--json", "--device", "cpu",
                             "--optimizer", "nesterov", "--lr", "0.05", "--momentum", "0.8", "--weight-decay",
                             "5e-4", "--weight-decay-kind", "decoupled", "--schedule", "step", "--milestones",
                             "1,2", "--gamma", "0.5", "--warmup-epochs", "1", "--label-smoothing", "0.1",
                             "--crop-padding", "1", "--flip")
    assert code == 0, err
    train = json.loads(out)["spec"]["train"]
    assert train["optimizer"] == {"name": "nesterov", "lr": 0.05, "flavour": "torch", "momentum": 0.8,
                                  "weight_decay": 5e-4, "weight_decay_kind": "decoupled"}
    assert train["schedule"] == {**vars(ScheduleSpec()), "name": "step", "milestones": [1, 2], "gamma": 0.5,
                                 "warmup_epochs": 1}
    assert (train["label_smoothing"], train["augment"]) == (0.1, {"crop_padding": 1, "flip": True})


@pytest.mark.parametrize("argv,message", [
    (["--milestones", "3,x", "--schedule", "step"], "error: --milestones: expected epochs such as 30,60"),
    (["--schedule", "cosine", "--gamma", "0.5"], "error: --gamma: the cosine schedule does not use it"),
    (["--schedule", "step", "--milestones", "9"], "error: --milestones: expected increasing epochs"),
    (["--schedule", "warm"], "error: --schedule: "),
    (["--weight-decay", "-1"], "error: --weight-decay: "),
    (["--weight-decay-kind", "l1"], "error: --weight-decay-kind: "),
    (["--label-smoothing", "1"], "error: --label-smoothing: "),
    (["--crop-padding", "-2"], "error: --crop-padding: "),
])
def test_relulab_train_errors_name_the_options(capsys, argv, message):
    code, out, err = relulab(capsys, "train", "--widths", "4", "-e", "2", "--device", "cpu", *argv)
    assert code == 2 and message in err and "Traceback" not in err


def test_a_checkpoint_keeps_the_recipe(digits, tmp_path):
    from relulab.training import checkpoints

    spec = _spec(epochs=2, schedule=ScheduleSpec("step", milestones=[1]), label_smoothing=0.1,
                 augment=AugmentSpec(crop_padding=1))
    spec.train.optimizer.weight_decay = 1e-3
    result = loop.run(spec, 0, "cpu", splits=digits)
    assert checkpoints.load(checkpoints.save(result, tmp_path / "m.pt")).spec == spec


@pytest.mark.parametrize("train,message", [
    ({"epochs": 3, "schedule": {"name": "step", "milestones": [10 ** 400]}},
     r"^train.schedule.milestones: .*got \[a number of 401 digits\]$"),
    ({"schedule": {"name": "step", "milestones": "30,60"}}, "^train.schedule.milestones: expected a list"),
    ({"schedule": {"name": "step", "milestones": [1.5]}}, "^train.schedule.milestones: expected a list"),
    ({"schedule": {"warmup_epochs": 2 ** 70}}, "^train.schedule.warmup_epochs: "),
    ({"schedule": {"gamma": "nan"}}, "^train.schedule.gamma: "),
    ({"schedule": 5}, "^train.schedule: expected a mapping"),
    ({"augment": {"crop_padding": 10 ** 40}}, "^train.augment.crop_padding: "),
    ({"augment": [4]}, "^train.augment: expected a mapping"),
])
def test_hostile_recipe_values_get_one_short_line(train, message):
    with pytest.raises(UserError, match=message) as error:
        build_run_spec({"data": {"name": "digits"}, "train": train})
    assert "\n" not in str(error.value) and len(str(error.value)) < 200
