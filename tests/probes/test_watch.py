"""relulab.watch: per-slot statistics in a plain training loop, equal to relulab.probes.measure (what `relulab
probe` computes) on the same weights and batch; its schedule, per-class statistics, logging, errors and store."""
from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import relulab
from relulab.core.errors import UserError
from relulab.probes.statistics import measure, stat_names
from relulab.probes.watch import RECORD_COLUMNS, watch
from relulab.store import Store
from relulab.zoo.slotify import slotify

CLASSES = ["a", "b", "c"]


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    # An in-place ReLU (watch must see its input before it is overwritten) and a saturating activation.
    return nn.Sequential(nn.Linear(6, 12), nn.ReLU(inplace=True), nn.Linear(12, 12), nn.Tanh(), nn.Linear(12, 3))


def batches(steps: int, size: int = 24):
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(size, 6, generator=g), torch.randint(0, 3, (size,), generator=g)) for _ in range(steps)]


def train(model, data, stats, reduction="sum", snapshots=None):
    """A plain loop: what a user writes, with the batch's labels handed to the watch."""
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for step, (x, y) in enumerate(data):
        if snapshots is not None:
            snapshots[step] = copy.deepcopy(model.state_dict())
        stats.labels(y)
        loss = F.cross_entropy(model(x), y, reduction=reduction)
        opt.zero_grad()
        loss.backward()
        opt.step()


def probed(model, weights, x, y):
    """relulab's probe of `weights` on the batch (x, y): the model slotified as watch numbers it."""
    same = copy.deepcopy(model)
    same.load_state_dict(weights)
    return measure(slotify(same, x[:1], trace=False), x, y, stat_names(), classes=CLASSES)


def assert_same(result, reference, scale: dict[str, float] | None = None):
    assert result.slots == reference.slots and result.counts == reference.counts
    assert result.classes == reference.classes
    for stat in stat_names():
        factor = (scale or {}).get(stat, 1.0)
        for slot in reference.slots:
            pairs = [(result.overall[stat][slot], reference.overall[stat][slot])]
            pairs += list(zip(result.by_class[stat][slot], reference.by_class[stat][slot]))
            for got, want in pairs:
                if math.isnan(want):
                    assert math.isnan(got), (stat, slot)
                else:
                    assert got == pytest.approx(want * factor, rel=1e-5, abs=1e-7), (stat, slot)


def test_a_plain_loop_under_watch_measures_what_relulab_probes_measure_on_the_same_weights_and_batch():
    model, data, weights = tiny_model(), batches(7), {}
    with watch(model, every=3, classes=CLASSES) as stats:
        train(model, data, stats, snapshots=weights)
    assert [r.step for r in stats.results] == [0, 3, 6]
    for record in stats.results:
        x, y = data[record.step]
        assert_same(record.result, probed(model, weights[record.step], x, y))
    assert stats.slot_names == {1: "1", 2: "3"}  # the modules' paths in the Sequential, as slotify names them


def test_the_gradient_statistics_are_those_of_the_loss_the_loop_backpropagates():
    # A mean over the batch: relulab probe's per-image gradients (of the summed loss) divided by the batch size.
    model, data, weights = tiny_model(), batches(1, size=24), {}
    with watch(model, every=1, classes=CLASSES) as stats:
        train(model, data, stats, reduction="mean", snapshots=weights)
    x, y = data[0]
    assert_same(stats.results[0].result, probed(model, weights[0], x, y),
                scale={"grad_norm": 1 / 24, "grad_norm_in": 1 / 24})


def test_a_slotified_model_is_watched_through_its_slots_functional_calls_included():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(6, 10), nn.Linear(10, 3)

        def forward(self, x):
            return self.b(F.gelu(self.a(x)))  # a functional call: a slot only once slotified

    torch.manual_seed(0)
    data = batches(2)
    with pytest.raises(UserError, match="watch.model: Net has no activation module"):
        watch(Net())
    model = slotify(Net(), data[0][0][:1])
    weights = {}
    with watch(model, every=1, classes=CLASSES) as stats:
        train(model, data, stats, snapshots=weights)
    for record in stats.results:
        same = copy.deepcopy(model)
        same.load_state_dict(weights[record.step])
        x, y = data[record.step]
        assert_same(record.result, measure(same, x, y, stat_names(), classes=CLASSES))
    assert stats.slot_names == {1: "F.gelu"}


def test_a_module_used_twice_is_one_slot_whose_last_use_counts_as_relulab_probes_see_it():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c, self.act = nn.Linear(6, 8), nn.Linear(8, 8), nn.Linear(8, 3), nn.ReLU()

        def forward(self, x):
            return self.c(self.act(self.b(self.act(self.a(x)))))

    torch.manual_seed(0)
    model, data, weights = Twice(), batches(2), {}
    with watch(model, every=1, classes=CLASSES) as stats:
        train(model, data, stats, snapshots=weights)
    for record in stats.results:
        x, y = data[record.step]
        assert_same(record.result, probed(model, weights[record.step], x, y))  # slotify(trace=False): one slot


def test_every_counts_training_forward_passes_and_record_next_adds_one():
    model = tiny_model()
    x = torch.randn(4, 6)
    with watch(model, every=4, stats=["sparsity"]) as stats:
        for step in range(10):
            model.train()
            model(x)
            if step == 5:
                stats.record_next(step=100, epoch=2)  # the next training pass (number 6): as step 100
            model.eval()
            model(x)  # evaluation passes are neither counted nor recorded
    assert [(r.step, r.epoch) for r in stats.results] == [(0, None), (4, None), (100, 2), (8, None)]
    with watch(model, every=None, stats=["sparsity"]) as stats:
        model.train()
        for epoch in range(3):
            stats.epoch = epoch
            stats.record_next()  # once an epoch, at its first batch
            for _ in range(2):
                model(x)
    assert [(r.step, r.epoch) for r in stats.results] == [(0, 0), (2, 1), (4, 2)]


def test_per_class_statistics_come_from_the_labels_of_the_recorded_pass_only():
    model, x = tiny_model(), torch.randn(6, 6)
    with watch(model, every=2, stats=["negative_fraction"]) as stats:
        stats.labels(torch.tensor([0, 0, 1, 1, 1, 2]))
        model(x)  # recorded (pass 0), with these labels
        stats.labels(torch.tensor([0, 0, 0, 0, 0, 0]))
        model(x)  # not recorded: its labels must not reach pass 2
        model(x)  # recorded, without labels: one class of all six images
    first, second = stats.results
    assert first.result.counts == [2, 3, 1] and first.result.classes == ["0", "1", "2"]
    assert second.result.counts == [6] and second.result.classes == ["0"]
    reference = measure(slotify(copy.deepcopy(model), x[:1], trace=False), x, torch.tensor([0, 0, 1, 1, 1, 2]),
                        ["negative_fraction"])
    for slot in reference.slots:
        assert first.result.by_class["negative_fraction"][slot] == pytest.approx(
            reference.by_class["negative_fraction"][slot])


def test_records_frame_and_log():
    model, data, logged = tiny_model(), batches(3), []
    with watch(model, every=2, classes=CLASSES, log=lambda metrics, step: logged.append((step, metrics))) as stats:
        train(model, data, stats)
    assert [step for step, _ in logged] == [0, 2]
    last = stats.results[-1].result
    assert logged[-1][1]["relulab/ratio_num/slot2"] == last.overall["ratio_num"][2]
    assert "relulab/saturation/slot1" not in logged[-1][1]  # a ReLU's saturation is undefined: not logged
    rows = stats.records
    assert len(rows) == 2 * len(stat_names()) * 2 * (len(CLASSES) + 1)  # records x stats x slots x (classes + all)
    frame = stats.frame()
    assert list(frame.columns) == list(RECORD_COLUMNS) and len(frame) == len(rows)
    picked = frame[(frame.step == 2) & (frame.stat == "std") & (frame.slot == 1) & (frame["class"] == -1)]
    assert picked.value.item() == pytest.approx(last.overall["std"][1])
    assert relulab.watch is watch


def test_bad_input_is_one_line_naming_the_field():
    model = tiny_model()
    for kwargs, field in [({"every": 0}, "watch.every"), ({"stats": ["nope"]}, "watch.stats"),
                          ({"classes": 0}, "watch.classes"), ({"log": 3}, "watch.log")]:
        with pytest.raises(UserError, match=field):
            watch(model, **kwargs)
    with watch(model, every=1, classes=2) as stats:
        stats.labels(torch.tensor([0, 1, 2, 0]))
        with pytest.raises(UserError, match=r"watch.labels: labels 0..2 for classes 0..1"):
            model(torch.randn(4, 6))
        stats.labels(torch.tensor([0, 1]))
        with pytest.raises(UserError, match="watch.labels: 2 labels for a batch of 4 images"):
            model(torch.randn(4, 6))
        with pytest.raises(UserError, match="watch.labels: expected a 1-d tensor"):
            stats.labels(torch.zeros(4))


def test_saved_statistics_are_what_relulab_report_collects(tmp_path):
    from relulab.report.collect import collect

    model, data = tiny_model(), batches(5)
    with watch(model, every=2, classes=CLASSES) as stats:
        train(model, data, stats)
    path = tmp_path / "watched.sqlite"
    with Store(path) as store:
        key = stats.save(store, name="mine", config="tiny")
        with pytest.raises(UserError, match="tiny seed 0 of experiment mine is in .* already"):
            stats.save(store, name="mine", config="tiny")
        stats.save(store, name="mine", config="tiny", seed=1)  # a second seed joins the experiment
    with pytest.raises(UserError, match="watch.save.store: expected a relulab.store.Store"):
        stats.save(str(path))
    with Store(path) as store, pytest.raises(UserError, match="watch.save.config: expected a name"):
        stats.save(store, name="mine", config="a/b")
    with Store(path, create=False) as store:
        data = collect(store, "mine")
    (part,) = data.parts
    (variant,) = part.variants
    assert (variant.name, variant.seeds, data.done) == ("tiny", [0, 1], 2)
    records = stats.results
    by_stat = variant.slot_stats[key]  # {stat: {step: {slot: value}}}
    assert sorted(by_stat["ratio_num"]) == [0, 2, 4]
    for record in records:
        for stat in stat_names():
            for slot, value in record.result.overall[stat].items():
                stored = by_stat[stat][record.step][slot]
                assert (math.isnan(value) and math.isnan(stored)) or stored == pytest.approx(value)
    rows = [r for r in part.run_probes["tiny"] if r["run_key"] == key]
    assert {r["probe_set"] for r in rows} == {"training batch, step 4"}
    last = records[-1].result
    for r in rows:
        want = last.overall[r["stat"]][r["slot"]] if r["class"] < 0 else last.by_class[r["stat"]][r["slot"]][r["class"]]
        assert (math.isnan(want) and math.isnan(r["value"])) or r["value"] == pytest.approx(want)
    assert variant.slot_names == {1: "1", 2: "3"}


def test_save_refuses_an_experiment_relulab_run_wrote(tmp_path):
    model = tiny_model()
    with watch(model, every=1, stats=["sparsity"]) as stats:
        model(torch.randn(2, 6))
    with Store(tmp_path / "s.sqlite") as store:
        store.save_plan("exp", "spec.yaml", {"name": "exp"}, [], [])
        with pytest.raises(UserError, match="watch.save.name: experiment exp .* was not written by relulab.watch"):
            stats.save(store, name="exp")


def test_relulab_report_shows_the_watched_statistics_over_steps(tmp_path):
    from relulab.report import build_report

    model, data = tiny_model(), batches(5)
    with watch(model, every=2, classes=CLASSES, stats=["ratio_num", "std"]) as stats:
        train(model, data, stats)
    with Store(tmp_path / "w.sqlite") as store:
        stats.save(store, name="mine", config="tiny")
    files = build_report(tmp_path / "w.sqlite")
    text = files.markdown.read_text()
    assert "### ratio_num over training steps" in text and "### std over training steps" in text
    assert "training batch of each recorded step" in files.html.read_text()  # the figures' captions
    assert "### ratio_num per layer and class: tiny (probe set training batch, step 4)" in text
    # No relulab epochs: no accuracy or epoch-time figures, no eval-mode depth table
    assert "### Validation accuracy" not in text and "Through depth" not in text


def test_the_readme_example_runs_as_shown(tmp_path, monkeypatch):
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    (example,) = [b for b in re.findall(r"```python\n(.*?)```", readme, flags=re.S)
                  if b.startswith("import relulab\nwith relulab.watch(")]
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 10))
    loader = [(torch.randn(8, 6), torch.randint(0, 10, (8,))) for _ in range(3)]
    namespace = {"model": model, "loader": loader, "F": F, "opt": torch.optim.SGD(model.parameters(), lr=0.1)}
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    exec(compile(example, "README.md", "exec"), namespace)
    assert [r.step for r in namespace["stats"].results] == [0]
    with Store(tmp_path / "runs" / "mine.sqlite", create=False) as store:
        assert store.experiment_names() == ["mine"]
