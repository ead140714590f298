"""Integrations: relulab's probes inside other libraries' training loops.

- `relulab.integrations.lightning`: `SlotStats`, a Lightning `Callback` that records relulab's per-slot
  statistics during `Trainer.fit` (relulab.probes.watch's machinery), logs them through the trainer's loggers
  and can write them to a relulab store. Needs the `lightning` extra: `pip install "relulab[lightning]"`.

Nothing in relulab imports this package; it may import core, zoo, probes and store.
"""
