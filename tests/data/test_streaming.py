"""A streamed training set (Splits.from_datasets' `stream`): batches fetched through a DataLoader train exactly as
the same data resident on the device does, and what cannot take one says so in one line."""
import numpy as np
import pytest
import torch
from torch.utils.data import Dataset, TensorDataset

import relulab.data
from relulab.core.errors import UserError
from relulab.data import Splits
from relulab.packing import train_many
from relulab.packing.pack import train_together
from relulab.packing.rules import data_packs
from relulab.probes.statistics import ProbeSet, select_probe_set
from relulab.training.augment import AugmentSpec
from relulab.training.loop import run, time_alone
from relulab.training.specs import Job, RunSpec, TrainSpec
from relulab.zoo.models import ModelSpec


def blobs(n: int = 150, classes: int = 3, shape=(1, 6, 6), seed: int = 0):
    """Learnable uint8 images: each class a brightness."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    x = np.clip(rng.normal(60 + 60 * y[:, None, None, None], 25, size=(n, *shape)), 0, 255).astype(np.uint8)
    return x, y.astype(np.int64)


class Pairs(Dataset):
    """A user's own dataset: (numpy uint8 image, python int label)."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], int(self.y[i])


def spec(**train) -> RunSpec:
    return RunSpec(model=ModelSpec("deep-mlp", widths=[16, 16]),
                   train=TrainSpec(epochs=3, batch_size=16, **train))


def histories_equal(a, b) -> None:
    assert [vars(e) | {"seconds": 0} for e in a.epochs] == [vars(e) | {"seconds": 0} for e in b.epochs]
    assert (a.test_loss, a.test_acc) == (b.test_loss, b.test_acc)


@pytest.mark.parametrize("make", [lambda x, y: TensorDataset(torch.from_numpy(x), torch.from_numpy(y)), Pairs],
                         ids=["TensorDataset", "custom"])
def test_a_streamed_run_is_the_resident_run_to_the_bit(make):
    x, y = blobs()
    resident = Splits.from_datasets(make(x, y), stream=False)  # val and test held out of train, as by default
    streamed = Splits.from_datasets(make(x, y), stream=True)
    assert resident.x_train is not None and streamed.x_train is None and streamed.streamed
    assert torch.equal(resident.y_train, streamed.y_train)
    for part in ("x_val", "y_val", "x_test", "y_test"):
        assert torch.equal(getattr(resident, part), getattr(streamed, part)), part
    assert streamed.input_shape == resident.input_shape == (1, 6, 6) and streamed.num_classes == 3
    assert streamed.summary() == {**resident.summary(), "streamed": True}
    # augmentation, a schedule and label smoothing draw from the same generator in the same order
    recipe = spec(augment=AugmentSpec(crop_padding=1, flip=True), label_smoothing=0.1)
    a, b = run(recipe, seed=3, device="cpu", splits=resident), run(recipe, seed=3, device="cpu", splits=streamed)
    histories_equal(a.history, b.history)
    assert b.data["streamed"] is True and "streamed" not in a.data
    other = run(recipe, seed=4, device="cpu", splits=streamed)  # the comparison can fail: another seed differs
    assert other.history.epochs[-1].train_loss != b.history.epochs[-1].train_loss


def test_loader_workers_fetch_the_same_batches():
    x, y = blobs(n=90)
    one = Splits.from_datasets(Pairs(x, y), stream=True)
    two = Splits.from_datasets(Pairs(x, y), stream=True, loader_workers=1)
    histories_equal(run(spec(), device="cpu", splits=one).history, run(spec(), device="cpu", splits=two).history)


def test_stream_none_streams_only_over_max_resident_bytes():
    x, y = blobs(n=100)  # 100 examples of 36 float32 + an int64 label: 15,200 bytes stacked
    assert not Splits.from_datasets(Pairs(x, y), max_resident_bytes=15_200).streamed
    assert Splits.from_datasets(Pairs(x, y), max_resident_bytes=15_199).streamed
    assert not Splits.from_datasets(Pairs(x, y)).streamed  # far below this machine's memory


def test_stream_none_streams_what_would_not_fit_in_memory(monkeypatch):
    x, y = blobs(n=100)
    monkeypatch.setattr(relulab.data, "memory_available", lambda: 15_199)  # the stacked training set's 15,200 bytes
    assert Splits.from_datasets(Pairs(x, y)).streamed
    monkeypatch.setattr(relulab.data, "memory_available", lambda: 15_200)
    assert not Splits.from_datasets(Pairs(x, y)).streamed


def test_given_validation_and_test_sets_are_stacked_and_checked():
    x, y = blobs()
    splits = Splits.from_datasets(Pairs(x, y), val=Pairs(x[:20], y[:20]), test=Pairs(x[20:50], y[20:50]), stream=True)
    assert len(splits.train_dataset) == 150 and splits.x_val.shape == (20, 1, 6, 6)
    with pytest.raises(UserError, match=r"^val: examples of shape 1x3x3, train's are 1x6x6"):
        Splits.from_datasets(Pairs(x, y), val=Pairs(x[:20, :, :3, :3], y[:20]), stream=True)
    with pytest.raises(UserError, match=r"^image_size: a streamed training set is not resized"):
        Splits.from_datasets(Pairs(x, y), image_size=8, stream=True)
    with pytest.raises(UserError, match=r"^stream: expected true, false or None"):
        Splits.from_datasets(Pairs(x, y), stream="yes")


def test_streamed_runs_train_alone_in_train_many():
    x, y = blobs()
    jobs = [Job(spec(), seed, f"k{seed}") for seed in (0, 1)]
    resident = Splits.from_datasets(Pairs(x, y), stream=False)
    streamed = Splits.from_datasets(Pairs(x, y), stream=True)
    assert data_packs(resident) and not data_packs(streamed)
    packed = {job.key: result for job, result in train_many(jobs, resident, "cpu")}
    assert all(result.data.get("trained_with") == 2 for result in packed.values())  # two MLPs stack on the CPU
    alone = {job.key: result for job, result in train_many(jobs, streamed, "cpu")}
    assert all("trained_with" not in result.data for result in alone.values())
    for job in jobs:
        histories_equal(alone[job.key].history, run(job.spec, job.seed, "cpu", splits=resident).history)


def test_what_needs_resident_data_says_so_in_one_line():
    x, y = blobs()
    streamed = Splits.from_datasets(Pairs(x, y), stream=True)
    jobs = [Job(spec(), seed) for seed in (0, 1)]
    with pytest.raises(UserError, match=r"^data: a streamed training set cannot train packed"):
        train_together(jobs, streamed, torch.device("cpu"))
    with pytest.raises(UserError, match=r"^data: time_alone times steps on a device-resident training set"):
        time_alone(spec(), streamed, torch.device("cpu"))


def test_a_probe_set_of_training_images_is_read_from_the_dataset():
    x, y = blobs()
    resident = Splits.from_datasets(Pairs(x, y), stream=False)
    streamed = Splits.from_datasets(Pairs(x, y), stream=True)
    for a, b in zip(select_probe_set(resident, ProbeSet("per-class", 4)),
                    select_probe_set(streamed, ProbeSet("per-class", 4))):
        assert torch.equal(a, b)
