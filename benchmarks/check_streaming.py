"""The streamed training path on CUDA (pinned memory, non-blocking copies) against the same data resident.

    python benchmarks/check_streaming.py

One seed-size MLP run on digits, 3 epochs, fp32: once with the training set on the device, once streamed from a
TensorDataset through a DataLoader. Prints both histories' largest difference in validation loss and the time of
each epoch.
"""
import sys
from pathlib import Path

from torch.utils.data import TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from relulab.data import DataSpec, Splits, load_data  # noqa: E402
from relulab.training import RunSpec, TrainSpec, run  # noqa: E402
from relulab.zoo import ModelSpec, OptimizerSpec  # noqa: E402

digits = load_data(DataSpec("digits"))
train = TensorDataset(digits.x_train, digits.y_train)
val = TensorDataset(digits.x_val, digits.y_val)
test = TensorDataset(digits.x_test, digits.y_test)
spec = RunSpec(DataSpec("digits"), ModelSpec("deep-mlp", widths=[256] * 4, init="he_normal"),
               TrainSpec(3, 32, OptimizerSpec("sgd", lr=0.01), precision="fp32"))
rows = {}
for stream in (False, True):
    splits = Splits.from_datasets(train, val, test, stream=stream)
    result = run(spec, 0, "cuda", splits=splits)
    rows[stream] = result.history
    print(f"stream={stream}: streamed={splits.streamed} val_loss={[round(e.val_loss, 6) for e in result.history.epochs]}"
          f" s/epoch={[round(e.seconds, 3) for e in result.history.epochs]}")
print("largest val-loss difference:", max(abs(a.val_loss - b.val_loss) for a, b in
                                          zip(rows[False].epochs, rows[True].epochs)))
