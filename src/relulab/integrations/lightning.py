"""relulab's per-slot statistics during a Lightning `Trainer.fit`: the `SlotStats` callback.

    from relulab.integrations.lightning import SlotStats
    stats = SlotStats(every=50, classes=10, store="runs/lit.sqlite", name="lit")
    Trainer(callbacks=[stats]).fit(module, loader)
    stats.frame()                    # every number, as relulab.watch gives them; `relulab report runs/lit.sqlite`

It watches the LightningModule (its relulab slots, or its activation modules: relulab.probes.watch) on the
training batches of the optimizer steps 0, `every`, 2 x `every`, ... (`trainer.global_step`; a step's first
batch where gradients are accumulated), with the batch's labels (`labels`: a function of the batch; by default
its second item, where the batch is a (inputs, labels, ...) sequence), and finishes each record after the
batch's backward pass (`on_train_batch_end`), so the gradient statistics are those of the module's training
loss. Each record's overall values go to every logger of the trainer (`log_metrics`, at the recorded step:
Lightning's own `self.log` would hand them over only every `log_every_n_steps`). With `store` (a path, or a
relulab.store.Store opened to write) the records are written there when fitting ends, on the main process, as
`SlotWatch.save` writes them.

Needs Lightning: `pip install "relulab[lightning]"` (lightning==2.6.6).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional, Sequence, Union

from relulab.core.errors import UserError

try:
    import lightning.pytorch as pl
except ImportError:
    raise UserError('relulab.integrations.lightning needs Lightning: pip install "relulab[lightning]" '
                    "(lightning==2.6.6)") from None

import torch

from relulab.probes.watch import SlotWatch, WatchRecord, model_name


def batch_labels(batch) -> Optional[torch.Tensor]:
    """The labels of a (inputs, labels, ...) batch: its second item where that is a 1-d tensor of integers."""
    if isinstance(batch, (list, tuple)) and len(batch) > 1:
        y = batch[1]
        if isinstance(y, torch.Tensor) and y.dim() == 1 and not y.is_floating_point():
            return y
    return None


class SlotStats(pl.Callback):
    """relulab's per-slot statistics of the LightningModule every `every` optimizer steps (the module's
    docstring). `stats`, `classes`, `prefix`: as `relulab.watch` takes them; `labels`: batch -> labels or None
    (None: no per-class statistics); `store`, `name`, `config`, `seed`: where and as what the records are saved
    (config default: the module's class name)."""

    def __init__(self, every: int = 50, stats: Optional[Sequence[str]] = None,
                 classes: Union[int, Sequence[str], None] = None,
                 labels: Optional[Callable[[object], Optional[torch.Tensor]]] = batch_labels,
                 store=None, name: str = "lightning", config: Optional[str] = None, seed: int = 0,
                 prefix: str = "relulab"):
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise UserError(f"SlotStats.every: expected a number of optimizer steps >= 1, got {every!r}")
        if store is not None and not isinstance(store, (str, Path)) and not hasattr(store, "record"):
            raise UserError(f"SlotStats.store: expected a store file's path or a relulab.store.Store, got "
                            f"{type(store).__name__}")
        self.every, self.stats, self.classes, self.labels, self.prefix = every, stats, classes, labels, prefix
        self.store, self.name, self.config, self.seed = store, name, config, seed
        self.watch: Optional[SlotWatch] = None
        self.saved_key: Optional[str] = None
        self._recorded: set[int] = set()

    # ---------------------------------------------------------------- Lightning's hooks

    def on_fit_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        self.watch = SlotWatch(pl_module, None, self.stats, self.classes, prefix=self.prefix, schedule=False)
        self.watch.attach()
        self._recorded = set()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        step = trainer.global_step
        if step % self.every or step in self._recorded:
            return
        self._recorded.add(step)
        self.watch.begin(step, trainer.current_epoch, self.labels(batch) if self.labels is not None else None)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        record = self.watch.finish()  # after the batch's backward pass: its gradients are in
        if record is not None:
            self._log(trainer, record)

    def on_fit_end(self, trainer, pl_module) -> None:
        self.watch.detach()
        if self.store is not None and trainer.is_global_zero and self.watch.results:
            self.saved_key = self._save(pl_module)

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if self.watch is not None:
            self.watch.detach()

    # ---------------------------------------------------------------- what it gives

    def _log(self, trainer, record: WatchRecord) -> None:
        metrics = self.watch.metrics(record)
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=record.step)

    def _save(self, pl_module) -> str:
        config = self.config or model_name(pl_module)
        if hasattr(self.store, "record"):
            return self.watch.save(self.store, self.name, config, self.seed)
        from relulab.store import Store

        with Store(self.store) as store:
            return self.watch.save(store, self.name, config, self.seed)

    @property
    def results(self) -> list[WatchRecord]:
        return self.watch.results if self.watch is not None else []

    @property
    def records(self) -> list[dict]:
        return self.watch.records if self.watch is not None else []

    def frame(self):
        if self.watch is None:
            raise UserError("SlotStats.frame: nothing recorded yet (the callback records during Trainer.fit)")
        return self.watch.frame()
