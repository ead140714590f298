"""Splits.from_datasets: any map-style Dataset or (x, y) arrays become the Splits relulab trains on."""
import numpy as np
import pytest
import torch
from torch.utils.data import Dataset, TensorDataset

import relulab.core.util as util
from relulab.core.errors import UserError
from relulab.data import DataSpec, Splits, load_data, load_raw
from relulab.training.loop import run, train_model
from relulab.training.specs import RunSpec, TrainSpec
from relulab.zoo.models import ModelSpec, build_model


def blobs(n: int = 120, classes: int = 3, shape=(1, 4, 4), seed: int = 0):
    """Learnable uint8 images: each class a brightness."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    x = np.clip(rng.normal(60 + 60 * y[:, None, None, None], 10, size=(n, *shape)), 0, 255).astype(np.uint8)
    return x, y.astype(np.int64)


class Pairs(Dataset):
    """The shape of a user's own dataset: (numpy image, numpy integer label), with class names."""

    classes = ["dark", "mid", "light"]

    def __init__(self, x, y, label=lambda y: np.int64(y)):
        self.x, self.y, self.label = x, y, label

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i].astype(np.float32) / 255, self.label(self.y[i])


def test_the_loaders_split_rule_gives_the_same_splits_as_load_data():
    raw = load_raw(DataSpec())
    ours = Splits.from_datasets((raw.x_train, raw.y_train), test=(raw.x_test, raw.y_test))
    theirs = load_data(DataSpec(split="stratified:0.1"))
    for part in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test"):
        assert torch.equal(getattr(ours, part), getattr(theirs, part)), part
    assert ours.input_shape == (1, 8, 8) and ours.num_classes == 10 and not ours.val_is_test


def test_a_tensor_dataset_round_trips_and_trains_one_epoch():
    x, y = blobs()
    splits = Splits.from_datasets(TensorDataset(torch.from_numpy(x), torch.from_numpy(y)),
                                  test=TensorDataset(torch.from_numpy(x[:30]), torch.from_numpy(y[:30])))
    assert splits.input_shape == (1, 4, 4) and splits.classes == ["0", "1", "2"]
    assert (len(splits.y_train), len(splits.y_val), len(splits.y_test)) == (108, 12, 30)
    assert splits.x_train.dtype == torch.float32 and float(splits.x_train.max()) <= 1.0  # uint8 pixels / 255
    rows = torch.cat([splits.x_train, splits.x_val]) * 255
    assert sorted(map(tuple, rows.round().flatten(1).tolist())) == sorted(map(tuple, x.reshape(120, -1).tolist()))
    torch.manual_seed(0)
    model = build_model(ModelSpec("deep-mlp", widths=[16]), splits.input_shape, splits.num_classes)
    history = train_model(model, splits, TrainSpec(epochs=1, batch_size=16))
    assert len(history.epochs) == 1 and history.test_acc is not None


def test_a_custom_dataset_trains_through_run():
    x, y = blobs()
    splits = Splits.from_datasets(Pairs(x, y), val=Pairs(x[:15], y[:15]), test=Pairs(x[15:45], y[15:45]))
    assert splits.classes == Pairs.classes  # the dataset's own `classes`
    assert (len(splits.y_train), len(splits.y_val), len(splits.y_test)) == (120, 15, 30)
    torch.testing.assert_close(splits.x_val[3], torch.from_numpy(x[3].astype(np.float32) / 255))  # floats kept
    spec = RunSpec(model=ModelSpec("deep-mlp", widths=[16]), train=TrainSpec(epochs=1, batch_size=16))
    result = run(spec, device="cpu", splits=splits)
    assert len(result.history.epochs) == 1 and result.data["classes"] == 3 and result.data["train"] == 120
    assert result.data["dataset"] == "datasets" and result.data["source"] == "Splits.from_datasets"


def test_the_validation_split_is_stratified_and_reproducible():
    x, y = blobs(n=300)
    test = (x[:30], y[:30])
    first = Splits.from_datasets((x, y), test=test, val_split=0.2)
    again = Splits.from_datasets((x, y), test=test, val_split=0.2)
    other = Splits.from_datasets((x, y), test=test, val_split=0.2, split_seed=1)
    assert torch.equal(first.x_val, again.x_val) and torch.equal(first.y_val, again.y_val)
    assert not torch.equal(first.x_val, other.x_val)
    assert torch.bincount(first.y_val).tolist() == [20, 20, 20]  # a fifth of each class's 100
    assert torch.bincount(first.y_train).tolist() == [80, 80, 80]
    assert first.spec.split == "stratified:0.2"
    counted = Splits.from_datasets((x, y), test=test, val_split=30)
    assert torch.bincount(counted.y_val).tolist() == [10, 10, 10]


def test_without_a_test_set_a_fixed_stratified_fifth_is_held_out_and_the_summary_says_so():
    x, y = blobs(n=300)
    splits = Splits.from_datasets((x, y), val_split=0.1, split_seed=3)
    assert torch.bincount(splits.y_test).tolist() == [20, 20, 20]
    assert len(splits.y_val) == 24 and len(splits.y_train) == 216
    assert "no test set given" in splits.summary()["source"]
    again = Splits.from_datasets((x, y), val_split=0.1, split_seed=4)
    assert torch.equal(splits.x_test, again.x_test)  # the test set does not move with the validation seed


def test_val_and_test_the_same_object_is_validation_on_the_test_set():
    x, y = blobs()
    test = TensorDataset(torch.from_numpy(x[:30]), torch.from_numpy(y[:30]))
    splits = Splits.from_datasets((x, y), val=test, test=test)
    assert splits.val_is_test and splits.x_val is splits.x_test and splits.summary()["val_is_test"]
    assert splits.to("cpu").x_val is not None


def test_image_size_resizes_for_the_cifar_nets():
    x, y = blobs(n=60, shape=(1, 8, 8))
    splits = Splits.from_datasets((x, y), image_size=32)
    assert splits.input_shape == (1, 32, 32) and splits.x_val.shape[1:] == (1, 32, 32)
    assert build_model(ModelSpec("resnet20"), splits.input_shape, splits.num_classes) is not None


def test_pil_images_become_channels_first():
    Image = pytest.importorskip("PIL.Image")
    x, y = blobs(n=30, shape=(4, 5, 3))
    pil = [(Image.fromarray(image), int(label)) for image, label in zip(x, y)]
    splits = Splits.from_datasets(pil, test=pil)
    assert splits.input_shape == (3, 4, 5)


class Listed(Dataset):
    def __init__(self, items):
        self.items = items

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


@pytest.mark.parametrize("kwargs, message", [
    (dict(train=Listed([(np.zeros((1, 2, 2)), 0), (np.zeros((1, 2, 2)), 0.5)])),
     r"^train\[1\]: the label 0.5 is not an integer class$"),
    (dict(train=Listed([(np.zeros((1, 2, 2)), True)])), r"^train\[0\]: the label True is not an integer class$"),
    (dict(train=Listed([(np.zeros((1, 2, 2)), 0), (np.zeros((1, 3, 2)), 1)])),
     r"^train\[1\]: an example of shape 1x3x2, expected 1x2x2 like train\[0\]$"),
    (dict(train=Listed([])), r"^train: the dataset is empty$"),
    (dict(train=(np.zeros((0, 2)), np.zeros(0, dtype=np.int64))), r"^train: the dataset is empty$"),
    (dict(train=Listed([(np.zeros(2), 0)]), val=Listed([])), r"^val: the dataset is empty$"),
    (dict(train=Listed([np.zeros(2)])), r"^train\[0\]: expected an \(image, label\) pair"),
    (dict(train=Listed([("text", 0)])), r"^train\[0\]: the image is a str"),
    (dict(train=42), r"^train: expected a map-style Dataset"),
    (dict(train=(np.zeros((4, 2)), np.array([0.0, 1.0, 0.0, 1.0]))), r"^train: labels are torch.float64"),
    (dict(train=(np.zeros((4, 2)), np.array([0, 1, 0]))), r"^train: 3 labels for 4 examples$"),
    (dict(train=blobs(), test=blobs(shape=(1, 5, 5))), r"^test: examples of shape 1x5x5, train's are 1x4x4"),
    (dict(train=blobs(), classes=["a", "b"]), r"^train: labels run 0..2; expected 0..1 for 2 classes$"),
    (dict(train=blobs(), classes=["a", "a", "b"]), r"^classes: names appear twice"),
    (dict(train=(np.zeros((20, 2)), np.zeros(20, dtype=np.int64))), r"^train: only one class \(0\)"),
    (dict(train=blobs(), val_split=1.0), r"^val_split: stratified:1.0 is ambiguous"),
    (dict(train=blobs(), val_split="0.1"), r"^val_split: expected a fraction below 1 or a whole count"),
    (dict(train=blobs(n=12), val_split=10), r"^val_split: cannot hold out 10 of 10 examples$"),
    (dict(train=blobs(), image_size=0), r"^image_size: expected a positive integer"),
])
def test_bad_datasets_are_one_line_errors_naming_the_argument(kwargs, message):
    with pytest.raises(UserError, match=message) as caught:
        Splits.from_datasets(**kwargs)
    assert "\n" not in str(caught.value)


def test_a_dataset_too_big_for_memory_is_refused_before_it_is_stacked(monkeypatch):
    monkeypatch.setattr(util, "memory_available", lambda: 1000)
    x, y = blobs()
    with pytest.raises(UserError, match=r"^train: 120 examples of 1x4x4 as float32 would need .* available$"):
        Splits.from_datasets(Pairs(x, y))
