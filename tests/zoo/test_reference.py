"""Models and data by reference (relulab.zoo.reference, relulab.core.reference): the user's builder named in a
spec, its slots, the builder contract, its source's hash in the run key and provenance, and one-line errors."""
import hashlib
import sys
import textwrap

import pytest
import torch
from torch import nn

from relulab.core.errors import UserError
from relulab.data import load_data
from relulab.experiments.plan import run_key
from relulab.training.loop import run
from relulab.training.specs import build_run_spec
from relulab.zoo.models import build_model
from relulab.zoo.reference import python_model

# The shapes users write: a module activation used twice, F.relu, torch.relu, x.relu(), a GELU module.
MODEL = textwrap.dedent("""\
    import torch
    import torch.nn.functional as F
    from torch import nn


    class Net(nn.Module):
        def __init__(self, features, num_classes, width):
            super().__init__()
            self.fc1 = nn.Linear(features, width)
            self.fc2 = nn.Linear(width, width)
            self.fc3 = nn.Linear(width, width)
            self.relu = nn.ReLU()
            self.gelu = nn.GELU()
            self.out = nn.Linear(width, num_classes)

        def forward(self, x):
            x = self.fc2(self.relu(self.fc1(x.flatten(1))))
            x = F.relu(x) + torch.relu(-x) + (x - 0.1).relu()
            return self.out(self.gelu(self.fc3(self.relu(x))))


    def build(input_shape, num_classes, width=8):
        return Net(int(torch.Size(input_shape).numel()), num_classes, width)


    def no_classes(width=8):
        return nn.Sequential(nn.Flatten(), nn.Linear(64, width), nn.ReLU(), nn.Linear(width, 3))
    """)
NAMES = ["relu", "F.relu", "torch.relu", ".relu()", "relu#2", "gelu"]


@pytest.fixture
def model_file(tmp_path):
    path = tmp_path / "nets" / "model.py"
    path.parent.mkdir()
    path.write_text(MODEL)
    return path


def spec_of(tmp_path, model: dict, data: dict = None, train: dict = None):
    """A run spec as a spec file in `tmp_path` names it: file targets relative to that folder."""
    return build_run_spec({"data": data or {"name": "digits"}, "model": {"name": "python", **model},
                           "train": {"epochs": 1, **(train or {})}}, base_dir=tmp_path)


def test_a_model_file_relative_to_the_spec_builds_with_its_own_activations(tmp_path, model_file):
    spec = spec_of(tmp_path, {"target": "nets/model.py:build", "kwargs": {"width": 6}})
    assert spec.model.target == f"{model_file}:build" and spec.model.activation == "keep"
    assert spec.model.source_sha256 == hashlib.sha256(model_file.read_bytes()).hexdigest()
    model = build_model(spec.model, (1, 8, 8), 10)
    assert [s.name for s in model.slots] == NAMES
    assert model.placement() == ["relu"] * 5 + ["gelu"]
    assert model.fc1.out_features == 6 and model.out.out_features == 10  # kwargs, then what the signature names
    assert model(torch.zeros(3, 1, 8, 8)).shape == (3, 10)


def test_slots_by_number_and_name_off_and_one_activation_for_all(tmp_path, model_file):
    spec = spec_of(tmp_path, {"target": "nets/model.py:build", "slots": {"relu#2": "tanh", 6: "relu"},
                              "off": [".relu()", 1]})
    assert build_model(spec.model, (1, 8, 8), 10).placement() == ["identity", "relu", "relu", "identity", "tanh",
                                                                   "relu"]
    spec = spec_of(tmp_path, {"target": "nets/model.py:build", "activation": "tanh", "off": [3]})
    assert build_model(spec.model, (1, 8, 8), 10).placement() == ["tanh", "tanh", "identity", "tanh", "tanh", "tanh"]


def test_switching_a_named_slot_off_changes_exactly_that_use(tmp_path, model_file):
    torch.manual_seed(0)
    base = build_model(spec_of(tmp_path, {"target": "nets/model.py:build"}).model, (1, 8, 8), 10)
    off = build_model(spec_of(tmp_path, {"target": "nets/model.py:build", "off": ["torch.relu"]}).model, (1, 8, 8),
                      10)
    off.load_state_dict(base.state_dict())
    x = torch.randn(5, 1, 8, 8)
    h = base.fc2(torch.relu(base.fc1(x.flatten(1))))
    z = torch.relu(h) - h + torch.relu(h - 0.1)  # torch.relu(-x) switched off: -x
    by_hand = base.out(nn.functional.gelu(base.fc3(torch.relu(z))))
    assert torch.allclose(off(x), by_hand, atol=1e-6) and not torch.allclose(base(x), by_hand, atol=1e-3)


def test_a_module_target_and_its_file_hash(tmp_path, monkeypatch):
    package = tmp_path / "userpkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "nets.py").write_text(MODEL)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr("relulab.core.reference._IMPORTED", {})
    spec = spec_of(tmp_path, {"target": "userpkg.nets:no_classes", "kwargs": {"width": 5}},
                   {"name": "synthetic", "options": {"classes": 3, "n": 60}})
    assert spec.model.target == "userpkg.nets:no_classes"  # a module is not a path: left as it is
    assert spec.model.source_sha256 == hashlib.sha256(MODEL.encode()).hexdigest()
    model = build_model(spec.model, (1, 8, 8), 3)
    assert [s.name for s in model.slots] == ["2"]  # nn.Sequential's ReLU is its module path
    (package / "nets.py").write_text(MODEL + "# edited\n")  # imported already: the old code would run on
    with pytest.raises(UserError, match=r"^model\.target: .*nets\.py changed since this process imported "
                                        r"'userpkg\.nets'"):
        spec_of(tmp_path, {"target": "userpkg.nets:no_classes"})
    monkeypatch.delitem(sys.modules, "userpkg.nets")
    monkeypatch.delitem(sys.modules, "userpkg")


def test_editing_the_model_file_changes_the_run_key_and_nothing_else_does(tmp_path, model_file):
    key = lambda: run_key(spec_of(tmp_path, {"target": "nets/model.py:build"}), 0)  # noqa: E731
    first = key()
    assert key() == first  # read again, unedited: the same runs
    model_file.write_text(MODEL.replace("width=8", "width=9"))
    edited = key()
    assert edited != first
    model_file.write_text(MODEL)
    assert key() == first


def test_a_spec_whose_file_changed_since_it_was_read_is_refused(tmp_path, model_file):
    spec = spec_of(tmp_path, {"target": "nets/model.py:build"})
    model_file.write_text(MODEL + "\n# edited\n")
    with pytest.raises(UserError, match=r"^model\.source_sha256: model\.py:build is not the source this spec was "
                                        r"made from") as info:
        build_model(spec.model, (1, 8, 8), 10)
    assert "\n" not in str(info.value)


def test_provenance_records_the_target_and_its_hash(tmp_path, model_file):
    spec = spec_of(tmp_path, {"target": "nets/model.py:build"}, {"name": "digits", "train_size": 200})
    result = run(spec, 0, "cpu")
    assert result.provenance["model_source"] == {"target": f"{model_file}:build",
                                                 "sha256": spec.model.source_sha256}
    assert "data_source" not in result.provenance
    assert result.to_dict()["spec"]["model"]["source_sha256"] == spec.model.source_sha256
    assert len(result.history.epochs) == 1 and result.params == sum(p.numel() for p in result.model.parameters())


def test_the_python_api(tmp_path, model_file, monkeypatch):
    monkeypatch.chdir(model_file.parent)
    spec = python_model("model.py:build", {"width": 4}, slots={"gelu": "identity"})
    assert spec.target == f"{model_file}:build" and spec.source_sha256
    assert build_model(spec, (1, 8, 8), 10).placement()[-1] == "identity"


BAD = [
    ({"target": "nets/model.py"}, "model.target: expected 'module:function' or 'file.py:function'"),
    ({"target": "no_such_pkg.mod:build"}, "model.target: cannot import 'no_such_pkg.mod' (No module named"),
    ({"target": "nets/missing.py:build"}, "model.target: "),
    ({"target": "nets/model.py:nothing"}, "model.target: "),
    ({"target": "nets/model.py:torch"}, "model.target: "),
    ({"target": "nets/bad.py:dict_of"}, "model.target: bad.py:dict_of returned a dict, not an nn.Module"),
    ({"target": "nets/bad.py:raising"}, "model.target: bad.py:raising raised ValueError: width must be even at "),
    ({"target": "nets/bad.py:broken"}, "model.target: cannot import "),
    ({"target": "nets/model.py:no_classes"}, "model.target: model.py:no_classes gives 3 outputs per example; the "
                                             "data has 10 classes"),
    ({"target": "nets/bad.py:no_activation"}, "model.target: bad.py:no_activation: slotify: Sequential has no "
                                              "activation"),
    ({"target": "nets/model.py:build", "kwargs": {"depth": 3}}, "model.kwargs: model.py:build does not take them"),
    ({"target": "nets/model.py:build", "kwargs": [3]}, "model.kwargs: expected a mapping"),
    ({"target": "nets/model.py:build", "kwargs": {"width": {1, 2}}}, "model.kwargs.width: expected plain data"),
    ({"target": "nets/model.py:build", "widths": [3]}, "model.widths: a model by reference is shaped by its own"),
    ({"target": "nets/model.py:build", "slots": {"nope": "tanh"}}, "model.slots: slot: unknown value 'nope'"),
    ({"target": "nets/model.py:build", "slots": {9: "tanh"}}, "model.slots: slot 9: the model has slots 1..6"),
    ({"target": "nets/model.py:build", "slots": {1: "identity", "relu": "tanh"}}, "model.slots: slot 1 (relu) is "
                                                                                  "both identity (as 1) and tanh"),
    ({"target": "nets/model.py:build", "source_sha256": "0" * 64}, "model.source_sha256: "),
    ({}, "model.target: a model by reference (name: python) needs a target"),
]


@pytest.mark.parametrize("model,message", BAD)
def test_each_mistake_is_one_line_naming_the_field(tmp_path, model_file, model, message):
    (model_file.parent / "bad.py").write_text(textwrap.dedent("""\
        from torch import nn
        import torch
        def dict_of():
            return {"a": 1}
        def raising(num_classes):
            raise ValueError("width must be even")
        def no_activation(input_shape, num_classes):
            return nn.Sequential(nn.Flatten(), nn.Linear(64, num_classes))
        def broken():
            pass
        1 / 0 if False else None
        """) if "broken" not in str(model) else "import no_such_module_anywhere\n")
    with pytest.raises(UserError) as info:
        spec = spec_of(tmp_path, model)
        build_model(spec.model, (1, 8, 8), 10)
    assert str(info.value).startswith(message) and "\n" not in str(info.value)


def test_built_in_models_refuse_a_target_kwargs_and_keep():
    for model, field in (({"name": "deep-mlp", "target": "a.py:b"}, "model.target"),
                         ({"name": "deep-mlp", "kwargs": {"a": 1}}, "model.kwargs"),
                         ({"name": "deep-mlp", "activation": "keep"}, "model.activation"),
                         ({"name": "deep-mlp", "slots": {"fc": "tanh"}}, "model.slots")):
        with pytest.raises(UserError, match=f"^{field}: "):
            build_run_spec({"model": model})


def test_torchvision_models_by_reference():
    torchvision = pytest.importorskip("torchvision")
    spec = build_run_spec({"model": {"name": "python", "target": "torchvision.models:resnet18",
                                     "kwargs": {"num_classes": 10}}})
    model = build_model(spec.model, (3, 32, 32), 10)
    assert isinstance(model, torchvision.models.ResNet) and len(model.slots) == 17
    assert model.slots[1].name == "layer1.0.relu" and model.slots[2].name == "layer1.0.relu#2"


# ---------------------------------------------------------------- data by reference

DATA = textwrap.dedent("""\
    import torch
    from torch.utils.data import TensorDataset


    def _part(n, seed):
        g = torch.Generator().manual_seed(seed)
        y = torch.arange(n) % 3
        x = torch.randn(n, 1, 8, 8, generator=g) * 0.3 + y.view(-1, 1, 1, 1).float()
        return TensorDataset(x, y)


    def datasets(n=120):
        return _part(n, 0), None, _part(60, 1)


    def as_dict(n=120):
        return {"train": _part(n, 0), "test": _part(60, 1), "classes": ["a", "b", "c"]}


    def train_only(n=150):
        return _part(n, 0)


    def two():
        return _part(10, 0), _part(10, 1)
    """)


@pytest.fixture
def data_file(tmp_path):
    path = tmp_path / "data.py"
    path.write_text(DATA)
    return path


def test_data_by_reference_trains_and_is_keyed_by_its_source(tmp_path, data_file, model_file):
    data = {"name": "python", "target": "data.py:datasets", "kwargs": {"n": 90}}
    spec = spec_of(tmp_path, {"target": "nets/model.py:build"}, data)
    assert spec.data.source_sha256 == hashlib.sha256(DATA.encode()).hexdigest()
    result = run(spec, 0, "cpu")
    assert result.data["train"] + result.data["val"] == 90 and result.data["test"] == 60
    assert result.data["dataset"] == "python" and result.model.num_classes == 3
    assert result.provenance["data_source"]["sha256"] == spec.data.source_sha256
    first = run_key(spec, 0)
    data_file.write_text(DATA + "\n# edited\n")
    assert run_key(spec_of(tmp_path, {"target": "nets/model.py:build"}, data), 0) != first


def test_data_by_reference_as_a_dict_or_one_dataset(tmp_path, data_file):
    splits = load_data(build_run_spec({"data": {"name": "python", "target": "data.py:as_dict", "split": "test"}},
                                      base_dir=tmp_path).data)
    assert splits.classes == ["a", "b", "c"] and splits.val_is_test and len(splits.y_test) == 60
    splits = load_data(build_run_spec({"data": {"name": "python", "target": "data.py:train_only",
                                                "split": "stratified:15"}}, base_dir=tmp_path).data)
    assert len(splits.y_val) == 15 and len(splits.y_test) == 30 and len(splits.y_train) == 105


@pytest.mark.parametrize("data,message", [
    ({"target": "data.py:two"}, "data.target: "),
    ({"target": "data.py:datasets", "kwargs": {"size": 3}}, "data.kwargs: "),
    ({"target": "data.py:datasets", "path": "x"}, "data.path: data by reference is made by its own code"),
    ({"target": "data.py:datasets", "split": "first:10"}, "data.split: data by reference takes"),
    ({"target": "data.py:train_only", "split": "test"}, "data.split: test uses the test set as validation"),
    ({"target": "nowhere.py:datasets"}, "data.target: "),
    ({}, "data.target: data by reference (name: python) needs a target"),
])
def test_data_mistakes_are_one_line_naming_the_field(tmp_path, data_file, data, message):
    with pytest.raises(UserError) as info:
        load_data(build_run_spec({"data": {"name": "python", **data}}, base_dir=tmp_path).data)
    assert str(info.value).startswith(message) and "\n" not in str(info.value)


def test_built_in_data_refuses_a_target():
    with pytest.raises(UserError, match=r"^data\.target: only data by reference"):
        build_run_spec({"data": {"name": "digits", "target": "a.py:b"}})


def test_a_user_model_trains_through_the_loop_from_python(tmp_path):
    """The README's Python path: slotify an nn.Module, Splits.from_datasets, train_model."""
    import relulab
    from relulab.data import Splits
    from relulab.training import TrainSpec, train_model

    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 3))
    model = relulab.slotify(net, torch.zeros(1, 1, 8, 8))
    y = torch.arange(150) % 3
    x = torch.randn(150, 1, 8, 8) * 0.3 + y.view(-1, 1, 1, 1).float()
    splits = Splits.from_datasets((x, y))
    history = train_model(model, splits, TrainSpec(epochs=3, batch_size=16))
    assert history.best_val_acc > 0.6 and history.test_acc is not None
