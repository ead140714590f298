"""Each configuration's own time per epoch beside its packed share (issue 19: packing hid seed 001's timing point).

Timings are never asserted: only that the timed pass ran, was stored once per configuration and device, and is
shown."""
import math
import sqlite3
from pathlib import Path

import torch

from relulab.data import DataSpec, load_data
from relulab.zoo.models import ModelSpec
from relulab.zoo.optim import OptimizerSpec
from relulab.training.loop import TIME_ALONE_STEPS, TIME_ALONE_WARMUP, time_alone
from relulab.training.specs import RunSpec, TrainSpec
from robustness.runner import assert_refused, run_cli
from specs import TINY, relulab, write_spec

PACKED = TINY.replace("device: cpu", "device: cpu\npack: true")
# prelu has a parameter per model, so it does not stack, and on the CPU it trains alone: it times itself
WITH_A_LONE_CONFIG = PACKED.replace("  tanh: {model: {activation: tanh}}",
                                    "  tanh: {model: {activation: tanh}}\n  prelu: {model: {activation: prelu}}")


def _rows(store: Path, sql: str) -> list[tuple]:
    db = sqlite3.connect(store)
    try:
        return db.execute(sql).fetchall()
    finally:
        db.close()


def _timings(store: Path) -> list[tuple]:
    if not _rows(store, "SELECT name FROM sqlite_master WHERE name = 'timings'"):
        return []
    return _rows(store, "SELECT config_key, device, steps, warmup, steps_per_epoch, step_seconds, eval_seconds, "
                        "epoch_seconds, created FROM timings ORDER BY config_key")


def _run(capsys, folder: Path, text: str, *extra: str) -> tuple[Path, str]:
    spec = write_spec(folder, text)
    code, _, err = relulab(capsys, "run", str(spec), "--store", str(folder / "s.sqlite"), "--out",
                           str(folder / "report"), *extra)
    assert code == 0, err
    return folder / "s.sqlite", err


def _time_table(folder: Path) -> list[str]:
    md = (folder / "report" / "report.md").read_text()
    section = md[md.index("### Time per epoch"):]
    return [line for line in section.split("![")[0].splitlines() if line.startswith("|")]


def test_packed_configurations_are_timed_alone_once_and_shown(tmp_path, capsys):
    store, err = _run(capsys, tmp_path, PACKED)
    packed = _rows(store, "SELECT data_json FROM runs")
    assert len(packed) == 4 and all('"trained_with": 4' in row[0] for row in packed)  # one stack of four
    timings = _timings(store)
    plan = _rows(store, "SELECT DISTINCT variant, spec_json FROM plan")
    from relulab.store import timing_key

    assert sorted(t[0] for t in timings) == sorted(timing_key(spec_json) for _, spec_json in plan)  # one per config
    devices = {row[0] for row in _rows(store, "SELECT device FROM runs")}
    for _, device, steps, warmup, per_epoch, step_s, eval_s, epoch_s, _ in timings:
        assert {device} == devices  # the runs' own device
        assert (steps, warmup, per_epoch) == (6, 5, 6)  # 173 training examples at batch 32: an epoch of 6 steps
        assert step_s > 0 and eval_s > 0 and math.isclose(epoch_s, step_s * per_epoch + eval_s)
    assert err.count("timed alone:") == 2

    # Run again: nothing trained, nothing timed again; the first measurement stays as it was.
    _, err = _run(capsys, tmp_path, PACKED)
    assert "timed alone" not in err and _timings(store) == timings

    header, _, *rows = _time_table(tmp_path)
    assert header == ("| configuration | s / epoch (packed share) | s / epoch alone (timed pass, 6 steps) | "
                      "alone vs baseline |")
    shown = {row.split(" | ")[0].lstrip("| "): row.strip("| ").split(" | ") for row in rows}
    assert set(shown) == {"relu", "tanh"}
    for name, (_, packed_share, alone, versus) in shown.items():
        assert float(packed_share) > 0 and float(alone) > 0
        assert versus == "baseline" if name == "relu" else versus.endswith("x")
    assert "timed pass" in (tmp_path / "report" / "report.html").read_text()


def test_configurations_that_trained_alone_are_not_timed_again(tmp_path, capsys):
    store, err = _run(capsys, tmp_path, WITH_A_LONE_CONFIG)
    assert err.count("timed alone:") == 2  # relu and tanh, packed; prelu trained alone and timed itself
    prelu = _rows(store, "SELECT spec_json FROM plan WHERE variant = 'prelu' LIMIT 1")[0][0]
    from relulab.store import timing_key

    assert timing_key(prelu) not in {t[0] for t in _timings(store)}
    prelu_row = next(row for row in _time_table(tmp_path) if row.startswith("| prelu |"))
    assert prelu_row.split(" | ")[1] == "-" and "(its runs, trained alone)" in prelu_row


def test_nothing_is_timed_without_packing_or_with_time_alone_off(tmp_path, capsys):
    for name, text in (("unpacked", TINY.replace("device: cpu", "device: cpu\npack: false")),
                       ("off", PACKED.replace("pack: true", "pack: true\ntime_alone: false"))):
        (tmp_path / name).mkdir()
        store, err = _run(capsys, tmp_path / name, text)
        assert _timings(store) == [] and "timed alone" not in err
    # Unpacked, every run timed itself: the report has no time table (the seeds' table has their seconds).
    assert _time_table(tmp_path / "unpacked") == []
    # Packed but not timed: the packed share is there, and the alone column says why it is empty.
    rows = _time_table(tmp_path / "off")[2:]
    assert [row.strip("| ").split(" | ")[2] for row in rows] == ["-", "-"]
    assert "'-': not timed alone (time_alone: false" in (tmp_path / "off" / "report" / "report.md").read_text()


def test_time_alone_is_a_spec_field_checked_like_the_others():
    code, err, left = run_cli(["run", "spec.yaml", "--no-report"], PACKED + "time_alone: sometimes\n")
    assert_refused(code, err, left, "time_alone: expected true or false, got 'sometimes'")


def test_the_timed_pass_trains_the_runs_own_model_alone():
    spec = RunSpec(DataSpec("synthetic", options={"n": 2000, "classes": 3, "size": 4}),
                   ModelSpec("deep-mlp", activation="tanh", widths=[8, 8]),
                   TrainSpec(epochs=1, batch_size=16, optimizer=OptimizerSpec("sgd", lr=0.05)))
    splits = load_data(spec.data)
    timing = time_alone(spec, splits, torch.device("cpu"), seed=3)
    per_epoch = math.ceil(len(splits.x_train) / 16)
    assert per_epoch > TIME_ALONE_STEPS  # a long epoch: the pass times its first TIME_ALONE_STEPS steps only
    assert (timing.steps, timing.warmup, timing.steps_per_epoch) == (TIME_ALONE_STEPS, TIME_ALONE_WARMUP, per_epoch)
    assert timing.step_seconds > 0 and timing.eval_seconds > 0
    assert timing.epoch_seconds == timing.step_seconds * per_epoch + timing.eval_seconds


def test_on_cuda_a_configuration_is_timed_in_a_unit_of_its_own_without_torch_optim(monkeypatch):
    # What train_many does with a lone run on CUDA: a unit of its own, updated by the stacked optimizer. The unit
    # path runs here on the CPU (no graphs); building a torch.optim optimizer would import torch._dynamo, seconds
    # of a whole command, so the timed pass must not build one.
    from relulab.packing.pack import time_alone as packed_time_alone, time_unit
    from relulab.training.specs import Job

    def refuse(*args, **kwargs):
        raise AssertionError("a torch.optim optimizer was built")

    spec = RunSpec(DataSpec("synthetic", options={"n": 600, "classes": 3, "size": 4}),
                   ModelSpec("deep-mlp", activation="tanh", widths=[8, 8]),
                   TrainSpec(epochs=1, batch_size=16, optimizer=OptimizerSpec("sgd", lr=0.05)))
    splits = load_data(spec.data)
    per_epoch = math.ceil(len(splits.x_train) / 16)
    monkeypatch.setattr(torch.optim.Optimizer, "__init__", refuse)
    timing = time_unit(Job(spec, 3), splits, torch.device("cpu"), steps=per_epoch + 7, warmup=4, graphs=False)
    assert (timing.steps, timing.warmup, timing.steps_per_epoch) == (per_epoch, 4, per_epoch)  # at most an epoch
    assert timing.step_seconds > 0 and timing.eval_seconds > 0
    monkeypatch.undo()
    # Off CUDA a lone run trains through train.run's loop, and so is timed through it
    assert packed_time_alone(spec, splits, torch.device("cpu"), seed=3).steps == min(TIME_ALONE_STEPS, per_epoch)
