"""Training one model: what defines a run, the loop, its callbacks, progress saves and checkpoints.

- `specs`: plain dataclasses: `TrainSpec`, `RunSpec` (data + model + training), `Job` (a spec, a seed and the
  store's key), `EpochRecord`, `History`, `RunResult`; `build_run_spec` makes a validated RunSpec from a spec's
  mapping, naming the field of any error.
- `loop`: `run` (data, model, training, result) and `train_model`, Keras `fit`'s loop on device-resident tensors;
  `evaluate`; `time_alone` (one configuration's own time per epoch in the one-model loop; `relulab.packing.time_alone`
  times it as a lone run trains on its device).
- `schedules`: learning-rate schedules by name (constant, step, cosine, one-cycle), with linear warm-up.
- `augment`: random crop and flip of image batches on the device, drawn from the run's generator.
- `callbacks`: `Callback` and the small hooks with one job each: `BestWeights`, `ProgressBar`.
- `resume`: progress saves of runs and packs in progress (`Resume`, `Saver`).
- `checkpoints`: a finished run's weights with its spec, loaded with `torch.load(..., weights_only=True)`.

Many runs at once are `relulab.packing`'s (`train_many`), which builds on this package.
"""
from relulab.training.specs import EpochRecord, History, Job, RunResult, RunSpec, TrainSpec, build_run_spec
from relulab.training.callbacks import BestWeights, Callback, ProgressBar
from relulab.training.loop import evaluate, run, time_alone, train_model

__all__ = ["BestWeights", "Callback", "EpochRecord", "History", "Job", "ProgressBar", "RunResult", "RunSpec",
           "TrainSpec", "build_run_spec", "evaluate", "run", "time_alone", "train_model"]
