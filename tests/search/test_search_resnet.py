"""Searches and probes on the CIFAR networks and on a slotified user model: relulab search (greedy, oracle) on
resnet20 on digits upscaled to 32x32 through the command line, every strategy on a residual user model with a
shared `self.relu` and functional activations, slot names stored with the runs and shown by the report and the
commands, and the per-slot activation counts the budget strategy and the ReLU counts read."""
import re

import pytest
import torch

from relulab.experiments import Overrides, load_experiment
from relulab.probes.statistics import SLOT_NAMES, slot_output_sizes, stored_slot_names
from relulab.report import build_report
from relulab.search import SearchOptions, load_search_views, probe_configuration, run_search
from relulab.store import Store
from relulab.zoo.models import MODELS, ModelEntry, ModelSpec, build_model
from relulab.zoo.slotify import describe
from specs import quiet, relulab, write_spec
from user_nets import build_user_net

# resnet20 as published (16, 32, 64 channels), on 128 digits resized to 32x32, one epoch, one seed: the search's
# every placement is a real resnet20 run of 4 steps (about a second on one CPU thread).
RESNET = """\
name: resnet
description: resnet20 on digits upscaled to 32x32, for the search tests.
device: cpu
threads: 1
seeds: [0]
data: {name: digits, image_size: 32, train_size: 128, split: "stratified:100"}
model: {name: resnet20}
train: {epochs: 1, batch_size: 32, optimizer: {name: adam}}
configs:
  all-relu: {}
baseline: all-relu
"""
RESNET20_NAMES = ["stem.relu"] + [f"layer{stage}.{block}.relu{k}" for stage in (1, 2, 3) for block in (0, 1, 2)
                                    for k in (1, 2)]
# Activations per image of each slot at 32x32: 16 x 32 x 32 for the stem and stage 1, then 32 x 16 x 16, 64 x 8 x 8.
RESNET20_SIZES = [16 * 32 * 32] * 7 + [32 * 16 * 16] * 6 + [64 * 8 * 8] * 6


def slot_names_of_runs(store: Store, keys) -> list[dict]:
    return [stored_slot_names(row["data"]) for row in store.runs(list(keys)).values()]


def test_greedy_then_oracle_on_resnet20_on_digits_cli(capsys, tmp_path):
    spec, store = str(write_spec(tmp_path, RESNET)), tmp_path / "r.sqlite"
    code, out, err = relulab(capsys, "search", spec, "--strategy", "greedy", "--budget", "2", "--patience", "2",
                             "--plain-rule", "--store", str(store), "--no-report")
    assert code == 0, err
    assert "19 active slots" in err
    # greedy's proposals are printed and noted by number and name
    assert any(f"at slot {i} ({name}), the highest of" in out for i, name in enumerate(RESNET20_NAMES, start=1))
    code, out, err = relulab(capsys, "search", spec, "--strategy", "oracle", "--budget", "1", "--plain-rule",
                             "--store", str(store))
    assert code == 0, err
    trained, reused = map(int, re.search(r"(\d+) runs trained, (\d+) already in the store", err).groups())
    assert reused >= 2 and trained + reused == 20  # oracle's base and 19 single-slot changes; greedy's reused
    for index, name in enumerate(RESNET20_NAMES, start=1):
        assert f"{index} ({name})" in out  # the oracle step's table names every slot
    with Store(store) as s:
        views = {v["strategy"]: v for v in load_search_views(s, "resnet")}
        assert set(views) == {"greedy", "oracle"} and all(v["status"] == "done" for v in views.values())
        oracle = views["oracle"]
        step1 = [c for c in oracle["candidates"] if c["step"] == 1]
        assert sorted(c["slot"] for c in step1 if c["slot"] is not None) == list(range(1, 20))
        keys = {k for c in step1 for k in c["run_keys"]}
        assert len(keys) == 20 and len(s.runs(list(keys))) == 20  # a stored run for every placement
        assert all(n == dict(enumerate(RESNET20_NAMES, start=1)) for n in slot_names_of_runs(s, keys))
        assert oracle["slot_names"][19] == "layer3.2.relu2"
        full = sum(RESNET20_SIZES)
        for c in step1:  # ReLU counts: the activations of the slots left on
            assert c["relu_count"] == full - (RESNET20_SIZES[c["slot"] - 1] if c["slot"] else 0)
        greedy = views["greedy"]
        assert greedy["steps"] and all(c["slot"] is None or greedy["slot_names"][c["slot"]] in RESNET20_NAMES
                                       for c in greedy["candidates"])
    report = tmp_path / "resnet-report"
    md = (report / "report.md").read_text()
    assert "| 19 (layer3.2.relu2) | off-19 |" in md  # the oracle step's row of the last slot
    assert "slot 1 (stem.relu)" in md and "| 2 (layer1.0.relu1) |" in md  # probe statistics, class tables
    assert "Search: greedy by ratio_num" in md  # its proposals, e.g. off-18 (slot 18 (layer3.2.relu1)):
    assert re.search(r"\| off-\d+ \(slot \d+ \((stem|layer\d\.\d)\.relu\d?\)\) \|", md)
    csv = (report / f"search-{oracle['id']}.csv").read_text().splitlines()
    assert "slot,slot_name,relu_count" in csv[0] and any(",8,layer2.0.relu1," in line for line in csv)


USER = """\
name: user
device: cpu
threads: 1
seeds: [0]
data: {name: digits, image_size: 12, train_size: 64, split: "stratified:50"}
model: {name: user-resnet}
train: {epochs: 1, batch_size: 32, optimizer: {name: adam}}
configs:
  all-on: {}
baseline: all-on
"""
USER_NAMES = {1: "F.relu", 2: "layer1.0.relu", 3: "layer1.0.relu#2", 4: "layer1.1.relu", 5: "layer1.1.relu#2",
              6: "torch.tanh"}


@pytest.fixture
def user_model(monkeypatch):
    monkeypatch.setitem(MODELS, "user-resnet", ModelEntry(build_user_net, packs="alone", conv=True))


def test_every_strategy_and_probe_on_a_slotified_user_model(user_model, tmp_path):
    exp = load_experiment(str(write_spec(tmp_path, USER)), Overrides(store=str(tmp_path / "u.sqlite")))
    model = build_model(ModelSpec("user-resnet"), (1, 12, 12), 10)
    assert {s.index: s.name for s in model.slots} == USER_NAMES
    sizes = slot_output_sizes(model, (1, 12, 12))
    assert sizes == {**{i: 4 * 12 * 12 for i in range(1, 6)}, 6: 16}
    searches = [SearchOptions("greedy", stat="sign_entropy", order="lowest", budget=2, patience=2, plain_rule=True),
                SearchOptions("greedy", stat="grad_norm", budget=1, plain_rule=True),
                SearchOptions("oracle", budget=2, plain_rule=True), SearchOptions("exhaustive", k=2),
                SearchOptions("budget", keep=[6, 3, 0]), SearchOptions("budget", keep=[5, 1], choose="exhaustive")]
    for options in searches:
        outcome = run_search(exp, options, log=quiet)
        assert outcome.result["final"]
    with Store(tmp_path / "u.sqlite") as s:
        views = load_search_views(s, "user")
        assert len(views) == len(searches) and all(v["status"] == "done" for v in views)
        assert all(v["slot_names"] == USER_NAMES for v in views)
        exhaustive = next(v for v in views if v["strategy"] == "exhaustive")
        assert len(exhaustive["candidates"]) == 1 + 6 + 15
        for c in exhaustive["candidates"]:  # switching the shared relu's second use off keeps the shapes
            assert c["runs"] == 1 and c["relu_count"] == sum(n for i, n in sizes.items() if i not in c["off"])
    pr = probe_configuration(exp, seed=0, log=quiet)
    assert pr.slot_names == USER_NAMES and pr.results[1].slots == list(range(1, 7))
    md = build_report(tmp_path / "u.sqlite", "user").markdown.read_text()
    assert "slot 3 (layer1.0.relu#2)" in md and "| 6 (torch.tanh) |" in md


@pytest.mark.parametrize("name, shape", [("resnet20", (3, 32, 32)), ("resnet18-cifar", (3, 40, 40)),
                                         ("vgg16-bn", (1, 32, 32))])
def test_slot_output_sizes_of_the_cifar_nets_are_their_activations_per_image(name, shape):
    model = build_model(ModelSpec(name), shape, 10)
    sizes = slot_output_sizes(model, shape)
    assert sizes == {s.index: s.elements for s in describe(model, torch.zeros(1, *shape)).slots}
    if name == "resnet20":
        assert list(sizes.values()) == RESNET20_SIZES
    if name == "vgg16-bn":  # 64 x 32 x 32 twice, then halved by each pool: 512 x 2 x 2 for the last three
        assert sizes[1] == sizes[2] == 64 * 32 * 32 and sizes[13] == 512 * 2 * 2


def test_slot_names_in_a_run_data_summary_are_read_back_or_ignored():
    assert stored_slot_names({SLOT_NAMES: {"1": "stem.relu", "2": "layer1.0.relu1"}}) == {1: "stem.relu",
                                                                                         2: "layer1.0.relu1"}
    for damaged in (None, [], {}, {SLOT_NAMES: "x"}, {SLOT_NAMES: {"one": "a", "2": 3}}):
        assert stored_slot_names(damaged) == {}
