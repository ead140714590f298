"""Run one of the Keras peers unchanged, timing each of its epochs.

usage: peer_timed.py PEER_SCRIPT ARGS...   (KERAS_BACKEND=jax; bench_speed.py calls it)

The peers print one JSON line per run with the wall time of the whole `fit`, XLA's compile included. To
compare steady speeds, this adds a Keras callback to every `fit` that records the wall time of each epoch,
from the end of the previous one (or the start of training) to its own end, so an epoch's time holds its
validation and whatever Keras does between epochs. Before the peer's own line for a run, it prints
{"peer_epoch_s": [...]}. Nothing else in the peer changes.
"""
import json
import runpy
import sys
import time

import keras


class EpochClock(keras.callbacks.Callback):
    """Wall seconds of each epoch, end to end."""

    def __init__(self):
        super().__init__()
        self.seconds = []

    def on_train_begin(self, logs=None):
        self.last = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        now = time.perf_counter()
        self.seconds.append(now - self.last)
        self.last = now


def fit_with_clock(original_fit):
    def fit(model, *args, callbacks=None, **kwargs):
        clock = EpochClock()
        history = original_fit(model, *args, callbacks=[*(callbacks or []), clock], **kwargs)
        print(json.dumps({"peer_epoch_s": [round(s, 4) for s in clock.seconds]}), flush=True)
        return history
    return fit


if __name__ == "__main__":
    keras.Model.fit = fit_with_clock(keras.Model.fit)
    script = sys.argv[1]
    sys.argv = sys.argv[1:]
    runpy.run_path(script, run_name="__main__")
