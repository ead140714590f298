"""relulab: fast, honest, reproducible experiments on activation functions (PyTorch).

The code is a house of packages by layer. Each package may import only the packages above it in this
table (tests/test_layout.py checks it, lazy imports included, and that there is no import cycle):

| package       | holds                                                                  | may import          |
|---------------|------------------------------------------------------------------------|---------------------|
| `core`        | errors, the `Registry`, one range parser, dataclasses from mappings,   | nothing of relulab  |
|               | files and memory checks, environment and provenance, statistics,       |                     |
|               | image decoding (its worker processes start without torch)              |                     |
| `zoo`         | activations (function, derivative, init, kernel code), initializers,   | core                |
|               | models (each entry says how it packs), optimizers (plain and stacked)  |                     |
| `kernels`     | the Triton code (fused MLP step, stacked convolutions)                  | core, zoo           |
| `data`        | datasets by name, formats, sources, splits, `data_key`                 | core                |
| `training`    | specs (RunSpec, Job, History, RunResult), the one-model loop,          | core, zoo, data     |
|               | schedules, augmentation, callbacks, progress saves, checkpoints        |                     |
| `probes`      | per-slot statistics, hooks, probe sets, probe callbacks, `watch`       | + training          |
| `packing`     | what trains with what (read from the model registry), `train_many`,    | + kernels, training |
|               | stacked MLPs, CNNs, any network (torch.func), graphed steps            |                     |
| `store`       | one `Store` per SQLite file, a method per table; kept run weights      | core, zoo, data,    |
|               |                                                                        | training            |
| `experiments` | YAML specs and presets, plans and run keys, the one sweep driver,      | all of the above    |
|               | executors (in-process, Ray), live trackers (TensorBoard, MLflow),      |                     |
|               | analyses                                                               |                     |
| `search`      | search options and strategies (greedy, oracle, exhaustive, budget)     | + experiments       |
| `report`      | collect, one formatter, figures, sections, writers; `compare`          | + search            |
| `results`     | the store's tables as pandas DataFrames, and their export              | + report            |
| `cli`         | the `relulab` command: parse, call the library, print                  | everything          |
| `integrations`| relulab's probes in other libraries' loops (a Lightning callback);     | core, zoo, probes,  |
|               | nothing imports it                                                     | store               |

Each package's own docstring says what its modules hold.

The Python API's entry points for any network: `relulab.slotify(model, example_input)` makes the activations
of any nn.Module relulab slots, and `relulab.describe` reports them (relulab.zoo.slotify); a spec names the user's
network by reference (`model: {name: python, target: "nets.py:build"}`, relulab.zoo.reference).
`relulab.watch(model, every=N)` records relulab's per-slot statistics in the user's own training loop
(relulab.probes.watch); `relulab.integrations.lightning.SlotStats` does it during a Lightning `Trainer.fit`.
"""
from relulab.core.version import __version__

__all__ = ["__version__", "describe", "slotify", "watch"]


def __getattr__(name: str):
    # Loaded on first use, so that `import relulab` (and the CLI's start) does not import torch and the zoo.
    if name in ("describe", "slotify"):
        from relulab.zoo.slotify import describe, slotify

        return {"describe": describe, "slotify": slotify}[name]
    if name == "watch":
        from relulab.probes.watch import watch

        return watch
    raise AttributeError(f"module 'relulab' has no attribute {name!r}")
