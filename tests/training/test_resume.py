"""Training in progress saved at epoch boundaries (relulab.resume): a pack or a lone run stopped after an
epoch and started again gives the same histories as one never stopped, on the CPU to the bit; and the
best-epoch weights kept beside the final model are the ones that scored the best validation accuracy."""
from __future__ import annotations

import pytest
import torch

from relulab.training import loop, resume
from relulab.training.augment import AugmentSpec
from relulab.training.schedules import ScheduleSpec
from relulab.data import DataSpec, load_data
from relulab.zoo.models import ModelSpec, build_model
from relulab.zoo.optim import OptimizerSpec
from relulab.packing.pack import train_many
from relulab.training.loop import evaluate
from relulab.training.specs import Job, RunSpec, TrainSpec

EPOCHS = 6


@pytest.fixture(scope="module")
def splits():
    return load_data(DataSpec("digits"))


def _spec(activation="relu", batchnorm=None, optimizer="adam", lr=0.01) -> RunSpec:
    return RunSpec(DataSpec("digits"), ModelSpec("deep-mlp", activation=activation, widths=[32, 32],
                                                 batchnorm=batchnorm),
                   TrainSpec(epochs=EPOCHS, batch_size=32, optimizer=OptimizerSpec(optimizer, lr=lr)))


def _jobs() -> list[Job]:
    """Two batch-norm stacks, a fused plain stack and a momentum model: every kind of CPU unit."""
    return [Job(_spec("relu", True), 0, "a"), Job(_spec("tanh", True), 1, "b"),
            Job(_spec("relu", None, "sgd", 0.05), 2, "c"), Job(_spec("tanh", None, "sgd", 0.05), 3, "d"),
            Job(_spec("elu", None, "momentum"), 4, "e")]


def _numbers(result):
    h = result.history
    return [(e.train_loss, e.train_acc, e.val_loss, e.val_acc) for e in h.epochs], h.test_loss, h.test_acc


class Killed(Exception):
    pass


def kill_after_saving_epoch(monkeypatch, last: int):
    """Make every progress save raise Killed once epoch `last` is saved, as a kill just after that save would;
    returns the real Saver.save, to put back."""
    real_save = resume.Saver.save

    def killed_after(self, epoch, state):
        real_save(self, epoch, state)
        if epoch == last:
            raise Killed

    monkeypatch.setattr(resume.Saver, "save", killed_after)
    return real_save


def stopped_after_epoch_3(splits, folder, monkeypatch, pack: bool):
    """Train `_jobs()` with progress saved every epoch in `folder`, killed just after epoch 3's save: the resume
    options and the results of the work that finished before the kill."""
    every_epoch = resume.Resume(str(folder), every_s=0)
    real_save = kill_after_saving_epoch(monkeypatch, 3)
    finished = {}
    with pytest.raises(Killed):
        for job, r in train_many(_jobs(), splits, "cpu", pack=pack, resume=every_epoch):
            finished[job.key] = _numbers(r)
    monkeypatch.setattr(resume.Saver, "save", real_save)
    return every_epoch, finished


def go_on(splits, every_epoch, finished: dict, pack: bool) -> dict:
    """Every job's results: those finished before the kill and those of the rest, resumed."""
    rest = [job for job in _jobs() if job.key not in finished]
    return finished | {job.key: _numbers(r) for job, r in train_many(rest, splits, "cpu", pack=pack,
                                                                    resume=every_epoch)}


@pytest.mark.parametrize("pack", [True, False], ids=["pack", "one by one"])
def test_work_stopped_after_an_epoch_goes_on_to_the_same_results(splits, tmp_path, monkeypatch, pack):
    uninterrupted = {job.key: _numbers(r) for job, r in train_many(_jobs(), splits, "cpu", pack=pack)}
    every_epoch, finished = stopped_after_epoch_3(splits, tmp_path, monkeypatch, pack)
    assert len(list(tmp_path.glob("*.pt"))) == 1  # the state after epoch 3 of the work in progress
    assert go_on(splits, every_epoch, finished, pack) == uninterrupted  # losses, accuracies and test numbers, exactly
    assert list(tmp_path.iterdir()) == []  # finished work leaves no state behind


def test_a_packs_state_laid_out_otherwise_starts_the_pack_again(splits, tmp_path, monkeypatch, capsys):
    """A state of the same runs whose tensors have other shapes (a stack of an older relulab, whose rows were not
    padded) is ignored as a whole: the pack trains from its beginning, to the uninterrupted results."""
    uninterrupted = {job.key: _numbers(r) for job, r in train_many(_jobs(), splits, "cpu", pack=True)}
    every_epoch, finished = stopped_after_epoch_3(splits, tmp_path, monkeypatch, pack=True)
    (path,) = tmp_path.glob("*.pt")
    state = torch.load(path, weights_only=True)
    last = state["units"][-1]["tensors"]
    last[0] = last[0][:, :-1].clone()  # one value fewer a row, in the pack's last unit only
    torch.save(state, path)
    assert go_on(splits, every_epoch, finished, pack=True) == uninterrupted
    assert "does not fit these models' layout; they start from epoch 0" in capsys.readouterr().err


@pytest.mark.parametrize("change", ["shape", "extra"], ids=["a weight of another shape", "a weight too many"])
def test_a_lone_runs_state_laid_out_otherwise_starts_the_run_again(splits, tmp_path, monkeypatch, capsys, change):
    """The same for runs trained one by one (training.loop): a saved weight of another shape, or one the model
    does not have, restarts that run from epoch 0, to the uninterrupted results, instead of a traceback."""
    uninterrupted = {job.key: _numbers(r) for job, r in train_many(_jobs(), splits, "cpu", pack=False)}
    every_epoch, finished = stopped_after_epoch_3(splits, tmp_path, monkeypatch, pack=False)
    (path,) = tmp_path.glob("*.pt")
    state = torch.load(path, weights_only=True)
    name = next(iter(state["model"]))
    if change == "shape":
        state["model"][name] = state["model"][name][:-1].clone()
    else:
        state["model"]["extra.weight"] = torch.zeros(3)
    torch.save(state, path)
    assert go_on(splits, every_epoch, finished, pack=False) == uninterrupted
    assert "does not fit this model's layout; it starts from epoch 0" in capsys.readouterr().err


def _recipe_jobs() -> list[Job]:
    """Runs with the ResNet recipes: a cosine schedule with warm-up, weight decay, label
    smoothing, crops and flips; and step milestones on either side of the kill."""
    cosine = _spec(optimizer="nesterov", lr=0.05)
    cosine.train.optimizer.weight_decay = 5e-3
    cosine.train.schedule = ScheduleSpec("cosine", warmup_epochs=2)
    cosine.train.label_smoothing = 0.1
    cosine.train.augment = AugmentSpec(crop_padding=1, flip=True)
    step = _spec(optimizer="momentum", lr=0.05)
    step.train.schedule = ScheduleSpec("step", milestones=[2, 5], gamma=0.3)
    return [Job(cosine, 0, "cosine"), Job(step, 1, "step")]


def test_a_scheduled_run_stopped_after_an_epoch_goes_on_at_the_same_learning_rates(splits, tmp_path, monkeypatch):
    rates = []
    real_step = loop.batch_step

    def recording(model, optimizer, *args, **kwargs):
        rates.append(optimizer.param_groups[0]["lr"])
        return real_step(model, optimizer, *args, **kwargs)

    monkeypatch.setattr(loop, "batch_step", recording)
    for pack in (False, True):  # alone (training.loop) and packed (each model's row of the learning-rate table)
        rates[:] = []
        uninterrupted = {job.key: _numbers(r) for job, r in train_many(_recipe_jobs(), splits, "cpu", pack=pack)}
        uninterrupted_rates, rates[:] = list(rates), []
        every_epoch = resume.Resume(str(tmp_path / str(pack)), every_s=0)
        real_save = kill_after_saving_epoch(monkeypatch, 3)
        with pytest.raises(Killed):
            list(train_many(_recipe_jobs(), splits, "cpu", pack=pack, resume=every_epoch))
        monkeypatch.setattr(resume.Saver, "save", real_save)
        finished = {job.key: _numbers(r)
                    for job, r in train_many(_recipe_jobs(), splits, "cpu", pack=pack, resume=every_epoch)}
        assert finished == uninterrupted  # losses, accuracies and test numbers, exactly
        assert rates == uninterrupted_rates  # every step's learning rate, the killed run's epochs 1-3 once
        assert len(set(uninterrupted_rates)) > 10 if not pack else not rates  # a pack steps without the loop


def test_a_state_of_other_work_or_a_damaged_one_is_not_used(splits, tmp_path):
    every_epoch = resume.Resume(str(tmp_path), every_s=0)
    saver = every_epoch.saver(["a", "b"])
    saver.path.parent.mkdir(parents=True, exist_ok=True)
    saver.path.write_bytes(b"not a torch file")
    assert saver.load() is None
    saver.save(2, {"units": []})
    assert every_epoch.saver(["a", "b"]).load()["epoch"] == 2
    assert every_epoch.saver(["a"]).load() is None  # another piece of work: another file
    assert every_epoch.saver(["a", ""]) is None  # a run without a key cannot be resumed by it


def test_finished_states_are_discarded(tmp_path):
    every_epoch = resume.Resume(str(tmp_path), every_s=0)
    for keys in (["a", "b"], ["c"]):
        every_epoch.saver(keys).save(1, {})
    (tmp_path / "junk.pt").write_bytes(b"x")
    removed = resume.discard_finished(tmp_path, lambda keys: {k for k in keys if k in ("a", "b")})
    assert removed == 2 and [p.name for p in tmp_path.iterdir()] == [every_epoch.saver(["c"]).path.name]


@pytest.mark.parametrize("pack", [True, False], ids=["pack", "one by one"])
def test_the_best_epoch_weights_score_the_best_validation_accuracy(splits, pack):
    # lr 0.5 over six seeds: with digits' 144 validation images, five of six peaked before their last epoch (lr 0.3
    # and three seeds had every seed peak last after a dependency update, and the test had nothing to check)
    jobs = [Job(_spec("relu", True, "sgd", 0.5), seed, str(seed)) for seed in range(6)]
    kept = 0
    for job, result in train_many(jobs, splits, "cpu", pack=pack):
        h = result.history
        if h.best_epoch == h.epochs[-1].epoch:
            assert result.best_state is None  # the final model is the best one
            continue
        model = build_model(job.spec.model, splits.input_shape, splits.num_classes)
        model.load_state_dict(result.best_state)
        assert evaluate(model, splits.x_val, splits.y_val)[1] == h.best_val_acc
        assert all(t.device == torch.device("cpu") for t in result.best_state.values())
        storages = [t.untyped_storage().data_ptr() for t in result.best_state.values()]
        assert len(set(storages)) == len(storages)  # each tensor its own, as a state dict's are
        # the model handed back is still the final one, whatever reading the best epoch's weights did to it
        assert evaluate(result.model, splits.x_val, splits.y_val)[1] == h.final_val_acc
        kept += 1
    assert kept  # at lr 0.5 most seeds peak before the last epoch
