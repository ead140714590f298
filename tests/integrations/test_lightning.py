"""relulab.integrations.lightning.SlotStats in a real Lightning Trainer.fit (CPU, a few steps): its statistics
equal relulab.probes.measure (what `relulab probe` computes) on the same weights and batch, at the steps its
schedule names; they reach the trainer's logger and a relulab store; without Lightning the import says so."""
from __future__ import annotations

import copy
import importlib
import math
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from relulab.core.errors import UserError
from relulab.probes.statistics import measure, stat_names
from relulab.store import Store
from relulab.zoo.slotify import slotify

pl = pytest.importorskip("lightning.pytorch")  # CI installs the lightning extra (.ci/run): there it always runs

from relulab.integrations.lightning import SlotStats  # noqa: E402

CLASSES = ["a", "b", "c"]
BATCH = 16


class Tiny(pl.LightningModule):
    """A LightningModule that keeps its weights at every step, as the test's reference needs them."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 12), nn.Sigmoid(), nn.Linear(12, 3))
        self.weights: dict[int, dict] = {}

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        self.weights[self.global_step] = copy.deepcopy(self.net.state_dict())
        x, y = batch
        return F.cross_entropy(self(x), y, reduction="sum")  # relulab probe's loss: the images' losses summed

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


class Remembering(pl.loggers.Logger):
    """A logger that keeps what it is given (no files)."""

    def __init__(self):
        super().__init__()
        self.logged: list[tuple[int, dict]] = []

    @property
    def name(self):
        return "remembering"

    @property
    def version(self):
        return 0

    def log_hyperparams(self, params, *args, **kwargs):
        pass

    def log_metrics(self, metrics, step=None):
        self.logged.append((step, dict(metrics)))


def dataset():
    g = torch.Generator().manual_seed(1)
    return TensorDataset(torch.randn(3 * BATCH, 6, generator=g), torch.randint(0, 3, (3 * BATCH,), generator=g))


def fit(tmp_path, callback, steps=5):
    module, logger = Tiny(), Remembering()
    trainer = pl.Trainer(max_steps=steps, accelerator="cpu", devices=1, logger=logger, callbacks=[callback],
                         enable_progress_bar=False, enable_checkpointing=False, enable_model_summary=False,
                         default_root_dir=tmp_path)
    trainer.fit(module, DataLoader(dataset(), batch_size=BATCH, shuffle=False))
    return module, logger


def test_trainer_fit_records_what_relulab_probes_measure_on_the_same_weights_and_batch(tmp_path):
    callback = SlotStats(every=2, classes=CLASSES)
    module, logger = fit(tmp_path, callback)
    assert [(r.step, r.epoch) for r in callback.results] == [(0, 0), (2, 0), (4, 1)]  # 3 batches an epoch
    data = dataset()
    for record in callback.results:
        index = torch.arange(record.step % 3 * BATCH, (record.step % 3 + 1) * BATCH)  # the step's batch
        x, y = data.tensors[0][index], data.tensors[1][index]
        net = copy.deepcopy(module.net)
        net.load_state_dict(module.weights[record.step])
        reference = measure(slotify(net, x[:1], trace=False), x, y, stat_names(), classes=CLASSES)
        assert record.result.counts == reference.counts and record.result.slots == reference.slots
        for stat in stat_names():
            for slot in reference.slots:
                pairs = [(record.result.overall[stat][slot], reference.overall[stat][slot])]
                pairs += list(zip(record.result.by_class[stat][slot], reference.by_class[stat][slot]))
                for got, want in pairs:
                    assert (math.isnan(want) and math.isnan(got)) or got == pytest.approx(want, rel=1e-5, abs=1e-7), \
                        (record.step, stat, slot)
    assert callback.results[0].result.overall["grad_norm"][1] > 0  # the module's own backward pass reached it
    assert callback.records[0]["slot_name"] == "net.1"
    steps = [step for step, metrics in logger.logged if any(k.startswith("relulab/") for k in metrics)]
    assert steps == [0, 2, 4]
    last_step, last = [(s, m) for s, m in logger.logged if "relulab/std/slot2" in m][-1]
    assert last["relulab/std/slot2"] == callback.results[-1].result.overall["std"][2]


def test_fit_writes_the_statistics_to_a_store_relulab_report_reads(tmp_path):
    from relulab.report.collect import collect

    path = tmp_path / "lit.sqlite"
    callback = SlotStats(every=3, classes=CLASSES, store=path, name="lit", stats=["ratio_num", "sparsity"])
    fit(tmp_path, callback)
    with Store(path, create=False) as store:
        data = collect(store, "lit")
    (variant,) = data.parts[0].variants
    assert variant.name == "Tiny"
    by_stat = variant.slot_stats[callback.saved_key]
    assert sorted(by_stat["ratio_num"]) == [0, 3]
    assert by_stat["ratio_num"][3][1] == pytest.approx(callback.results[-1].result.overall["ratio_num"][1])
    assert {r["probe_set"] for r in data.parts[0].run_probes["Tiny"]} == {"training batch, step 3"}


def test_bad_arguments_are_one_line():
    with pytest.raises(UserError, match="SlotStats.every"):
        SlotStats(every=0)
    with pytest.raises(UserError, match="SlotStats.store"):
        SlotStats(store=3)


def test_without_lightning_the_import_names_the_extra(monkeypatch):
    for name in [n for n in sys.modules if n == "lightning" or n.startswith("lightning.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "lightning", None)  # what an environment without it gives: ImportError
    monkeypatch.delitem(sys.modules, "relulab.integrations.lightning")
    with pytest.raises(UserError, match=r'pip install "relulab\[lightning\]"') as raised:
        importlib.import_module("relulab.integrations.lightning")
    assert "\n" not in str(raised.value)
