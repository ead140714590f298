"""Specs built to exhaust relulab rather than to describe an experiment: alias bombs, nesting thousands of
levels deep, files too big, binary or not UTF-8, integers no store holds, plans of millions of runs.

Each must be refused at once with one line naming the file, field or option, exit code 2, no traceback and
nothing written. Where the failure was a hang or a stack overflow, the test runs the real `relulab` process
with a timeout, so that a regression fails the test instead of hanging the suite.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import relulab
import relulab.experiments as experiments
import relulab.experiments.plan as plan
from runner import assert_refused, run_cli
from specs import TINY

SRC = str(Path(relulab.__file__).resolve().parents[1])


def _relulab_process(tmp_path: Path, spec_text: str, *options: str) -> tuple[int, str, list[str]]:
    """Run `relulab run spec.yaml --no-report OPTIONS` as a process in `tmp_path`: (exit code, stderr, files left
    beside the spec). A hang is a failure: subprocess.TimeoutExpired."""
    (tmp_path / "spec.yaml").write_text(spec_text)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-m", "relulab", "run", "spec.yaml", "--no-report", *options],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=30)
    left = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.name != "spec.yaml")
    return done.returncode, done.stderr, left


def _alias_bomb(levels: int = 10) -> str:
    """`a: &a [x, ... x]`, then each level ten aliases of the one before: 10**levels values once expanded."""
    lines = ["l0: &l0 [x, x, x, x, x, x, x, x, x, x]"]
    for level in range(1, levels):
        lines.append(f"l{level}: &l{level} [" + ", ".join([f"*l{level - 1}"] * 10) + "]")
    return "".join(f"    {line}\n" for line in lines)


def _with_data_options(extra: str) -> str:
    """TINY with `extra` (indented lines) in data.options: a free-form mapping only the dataset checks, late."""
    old = "data: {name: synthetic, options: {n: 240, classes: 3, size: 4}}\n"
    assert old in TINY
    return TINY.replace(old, "data:\n  name: synthetic\n  options:\n    n: 240\n    classes: 3\n    size: 4\n" + extra)


def test_an_alias_bomb_is_refused_at_once(tmp_path):
    start = time.monotonic()
    code, err, left = _relulab_process(tmp_path, _with_data_options(_alias_bomb()))
    assert_refused(code, err, left, "spec.yaml: YAML aliases expand to more than 100000 values (an alias bomb?)")
    assert time.monotonic() - start < 30  # a process start and a few dozen steps: it hung before


def test_nesting_five_thousand_deep_is_refused_without_a_recursion_error(tmp_path):
    code, err, left = _relulab_process(tmp_path, TINY + "x: " + "[" * 5000 + "]" * 5000 + "\n")
    line = TINY.count("\n") + 1
    assert_refused(code, err, left, f"spec.yaml: nested more than 64 levels deep at line {line}; relulab specs nest "
                                    "at most 64")


def test_an_alias_bomb_in_a_set_value_is_refused():
    bomb = "{" + ", ".join(line.strip() for line in _alias_bomb().splitlines()) + "}"  # the same, in flow style
    code, err, left = run_cli(["run", "spec.yaml", "--no-report", "--set", f"data.options={bomb}"], TINY)
    assert_refused(code, err, left, "--set data.options: YAML aliases expand to more than 100000 values")


def test_aliases_nesting_deeper_than_the_text_are_refused():
    # Each anchor nests 40 levels and holds the one before: 43 levels of text (with the spec, data and options),
    # 203 once the aliases are expanded.
    lines = ["    a0: &a0 " + "[" * 40 + "x" + "]" * 40]
    for i in range(1, 5):
        lines.append(f"    a{i}: &a{i} " + "[" * 40 + f"*a{i - 1}" + "]" * 40)
    code, err, left = run_cli(["run", "spec.yaml", "--no-report"], _with_data_options("\n".join(lines) + "\n"))
    assert_refused(code, err, left, "spec.yaml: YAML aliases nest the values 203 levels deep")


def test_a_value_that_contains_itself_is_refused():
    code, err, left = run_cli(["run", "spec.yaml", "--no-report"], _with_data_options("    loop: &loop [*loop]\n"))
    assert_refused(code, err, left, "spec.yaml: the value at line 11 contains itself through an alias")


def test_a_file_too_big_for_a_spec_is_refused_before_it_is_read():
    code, err, left = run_cli(["run", "spec.yaml", "--no-report"], TINY + "#" * (2 << 20) + "\n")
    assert_refused(code, err, left, "spec.yaml: 2.0 MiB, too big for a spec (at most 1.0 MiB)")


def test_too_many_values_are_refused():
    values = "x: [" + ", ".join(["1"] * 100_001) + "]\n"
    code, err, left = run_cli(["run", "spec.yaml", "--no-report"], TINY + values)
    assert_refused(code, err, left, "spec.yaml: more than 100000 values")


@pytest.mark.parametrize("blob,message", [
    (TINY.encode().replace(b"tiny", b"tiny\xff", 1), "spec.yaml: not a UTF-8 text file (byte 0xff at offset 10)"),
    (b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR", "spec.yaml: a binary file, not a YAML spec"),
    (TINY.encode("utf-16"), "spec.yaml: a binary file, not a YAML spec"),
], ids=["latin-1 byte", "png", "utf-16"])
def test_a_spec_that_is_not_utf8_text_is_refused(blob, message):
    code, err, left = run_cli(["run", "spec.yaml", "--no-report"], files={"spec.yaml": blob})
    assert_refused(code, err, left, message)


# ------------------------------------------------------------------ integers no store holds

HUGE = "9" * 400


@pytest.mark.parametrize("argv,spec_edit,message", [
    (["run"], ("seeds: [0, 1]", "seeds: [9223372036854775808]"),
     "seeds: seeds run from 0 to 9223372036854775807 (the store keeps them as 64-bit integers), got "
     "9223372036854775808"),
    (["run", "--seeds", "99999999999999999999"], None, "--seeds: seeds run from 0 to 9223372036854775807"),
    (["run", "--seeds", "0-99999999999999"], None, "--seeds: 0-99999999999999 is 100000000000000 seeds; at most "
                                                   "10000"),
    (["run", "--seed", f"1{HUGE}"], None, "--seed: seeds run from 0 to 9223372036854775807 (the store keeps them "
                                          "as 64-bit integers), got a number of 401 digits"),
    (["run"], ("seeds: [0, 1]", "seeds: 99999999999"), "seeds: a number of seeds runs from 1 to 10000"),
    (["run"], ("lr: 0.05", f"lr: {HUGE}"), "train.optimizer.lr: expected a finite number, got a number of 400 "
                                           "digits"),
    (["run"], ("epochs: 2", "epochs: 9223372036854775808"), "train.epochs: 9223372036854775808 is beyond a 64-bit "
                                                            "integer"),
    (["run"], ("widths: [8, 8]", "widths: [8, 9223372036854775808]"), "model.widths: 9223372036854775808 is beyond"),
    (["run"], ("widths: [8, 8]", "widths: 8x99999999999"), "model.widths: 8x99999999999 is 99999999999 layers"),
    (["run"], ("lr: 0.05", "lr: " + "9" * 5000), "spec.yaml: invalid YAML at line 7: an integer of 5000 digits"),
    (["run", "--epochs", "99999999999999999999"], None, "--epochs: 99999999999999999999 is beyond"),
    (["search", "--strategy", "budget", "--keep", "0-99999999999"], None,
     "--keep: 0-99999999999 is 100000000000 numbers; at most 10000"),
    (["probe", "--epoch", f"1-{HUGE}"], None, "--epoch: epochs run from 1 to 2 (train.epochs), got a number of"),
    (["train", "--seed", "18446744073709551616"], None, "--seed: seeds run from 0 to 9223372036854775807"),
    # `train` builds its specs from options, not YAML: the dataclasses' own checks bound them
    (["train", "--epochs", "99999999999999999999"], None, "--epochs: expected a positive integer (at most 9223"),
    (["train", "--batch-size", "99999999999999999999"], None, "--batch-size: expected a positive integer (at most"),
    (["train", "--image-size", "99999999999999999999"], None, "--image-size: expected a positive integer (at most"),
    (["train", "--train-size", "99999999999999999999"], None, "--train-size: expected a positive integer (at most"),
])
def test_integers_beyond_the_store_are_refused_before_anything_is_allocated(argv, spec_edit, message):
    text = TINY.replace(*spec_edit) if spec_edit else TINY
    assert spec_edit is None or spec_edit[0] in TINY
    command, *options = argv
    code, err, left = run_cli([command, *(["spec.yaml", "--no-report"] if command != "train" else ["-e", "1"]),
                               *options], text)
    assert_refused(code, err, left, message)


def test_threads_beyond_the_machines_cores_are_refused():
    code, err, left = run_cli(["run", "spec.yaml", "--no-report"], TINY + "threads: 100000\n")
    assert_refused(code, err, left, f"threads: 100000 asked for; this machine has {os.cpu_count()} CPU core")


# ------------------------------------------------------------------ plans too large to mean it

GRID_40_4 = TINY + "grid:\n" + "".join(
    f"  {key}: [{', '.join(str(0.001 * (i + 1)) for i in range(40))}]\n"
    for key in ("train.optimizer.lr", "train.l1", "train.l2", "train.optimizer.momentum"))


def test_a_plan_of_millions_of_runs_is_refused_before_it_is_enumerated(monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("the plan was enumerated or validated before it was counted")

    monkeypatch.setattr(plan, "_grid_points", never)
    monkeypatch.setattr(plan, "build_run_spec", never)
    code, err, left = run_cli(["run", "spec.yaml", "--no-report"], GRID_40_4)
    assert_refused(code, err, left, "grid: the plan has 10240000 runs (more than 20000); pass --yes to run it "
                                    "anyway")


@pytest.mark.parametrize("command", ["run", "search", "probe"])
def test_yes_lets_a_large_plan_through(monkeypatch, command):
    monkeypatch.setattr(plan, "PLAN_LIMIT", 100)
    grid = TINY + "grid: {train.optimizer.lr: [" + ", ".join(str(0.001 * (i + 1)) for i in range(30)) + "]}\n"
    argv = [command, "spec.yaml", "--no-report", "--set", "model.activation=nope"]
    code, err, left = run_cli(argv, grid)
    assert_refused(code, err, left, "grid: the plan has 120 runs (more than 100); pass --yes")
    code, err, left = run_cli([*argv, "--yes"], grid)  # past the count, to the next mistake
    assert_refused(code, err, left, "--set model.activation: unknown value 'nope'")


def test_a_large_plan_says_how_large_before_validating_it(capsys, tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(TINY + "grid: {train.optimizer.lr: [" + ", ".join(str(0.001 * (i + 1)) for i in range(150))
                    + "]}\n")
    exp = experiments.load_experiment(str(spec))
    assert len(exp.planned()) == 600
    assert capsys.readouterr().err == ("tiny: 600 runs to plan (2 configs x 150 grid points x 2 seeds); "
                                       "validating them\n")


# ------------------------------------------------------------------ seeds and slots, the same in every command

@pytest.mark.parametrize("argv,message", [
    (["train", "-e", "1", "--seed", "0-2", "--seed", "2"], "--seed: seeds repeat: 2 is given twice"),
    (["train", "-e", "1", "--seeds", "0,1", "--seed", "2"], "--seeds/--seed: give the seeds one way"),
    (["train", "-e", "1", "--seed", "-1"], "--seed: expected seeds like 0,1,2 or 0-4, got '-1'"),
    (["train", "-e", "1", "--seed", "3-1"], "--seed: the range 3-1 runs backwards; write 1-3"),
    (["run", "spec.yaml", "--seeds", "0-4", "--seed", "5"], "--seeds/--seed: give the seeds one way"),
    (["search", "spec.yaml", "--seed", "1,1"], "--seed: seeds repeat: 1 is given twice"),
    (["probe", "spec.yaml", "--seed", "0-2"], "--seed: relulab probe probes one model, so one seed; got '0-2'"),
    (["probe", "spec.yaml", "--seeds", "1,2"], "--seeds: relulab probe probes one model, so one seed; got '1,2'"),
    (["train", "-e", "1", "--slot", "3=tanh", "--slot", "3=relu"], "--slot: slot 3 is both tanh and relu"),
    (["train", "-e", "1", "--slot", "3=tanh", "--off", "3"], "--slot/--off: slot 3 is both tanh and off"),
    (["run", "spec.yaml", "--set", "model.widths="], "--set model.widths: expected a value after '=' (null resets "
                                                     "a field to its default)"),
])
def test_seeds_slots_and_set_values_are_read_one_way(argv, message):
    code, err, left = run_cli([*argv, "--no-report"] if argv[0] != "train" else argv, TINY)
    assert_refused(code, err, left, message)


@pytest.mark.parametrize("edit,message", [
    ("init: he_normal, slots: {2: tanh}, off: [2]}", "model.off: slot 2 is both tanh and off"),
    ("init: he_normal, slots: {2: tanh, '2': relu}}", "model.slots: slot 2 is both tanh and relu"),
])
def test_conflicting_slots_in_a_spec_are_refused(edit, message):
    code, err, left = run_cli(["run", "spec.yaml", "--no-report"], TINY.replace("init: he_normal}", edit))
    assert_refused(code, err, left, message)


def test_a_slot_given_the_same_value_twice_is_fine(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(TINY.replace("init: he_normal}", "init: he_normal, slots: {2: identity, '2': none}, off: [2, 2]}"))
    exp = experiments.load_experiment(str(spec))
    assert all(v.spec.model.slots == {2: "identity"} for v in exp.parts[0].variants)


# ---------------------------------------------------------- the same as properties (the campaign runs them longer)

from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from runner import fuzz  # noqa: E402

# Where a bomb can hide: free-form mappings checked late, a config, a grid's values, an unknown top-level field.
BOMB_PLACES = {
    "data.options": lambda body: _with_data_options(body),
    "configs": lambda body: TINY.replace("configs:\n", "configs:\n  bomb:\n    model:\n      slots:\n" +
                                         body.replace("    ", "        ") + "\n", 1),
    "top level": lambda body: TINY + "anchors:\n" + body,
}


def _shaped_bomb(levels: int, fanout: int) -> str:
    lines = ["l0: &l0 [" + ", ".join(["x"] * fanout) + "]"]
    for level in range(1, levels):
        lines.append(f"l{level}: &l{level} [" + ", ".join([f"*l{level - 1}"] * fanout) + "]")
    return "".join(f"    {line}\n" for line in lines)


@fuzz(20)
@given(levels=st.integers(3, 14), fanout=st.integers(3, 16), place=st.sampled_from(sorted(BOMB_PLACES)))
def test_alias_bombs_of_any_shape_anywhere_are_refused_as_read(levels, fanout, place):
    text = BOMB_PLACES[place](_shaped_bomb(levels, fanout))
    sizes = [1 + fanout]  # values in level 0's list, then in each level's list with its aliases expanded
    for _ in range(1, levels):
        sizes.append(1 + fanout * sizes[-1])
    started = time.monotonic()
    code, err, left = run_cli(["run", "spec.yaml", "--no-report"], text)
    if sum(sizes) > experiments.MAX_VALUES:
        assert_refused(code, err, left, "YAML aliases expand to more than 100000 values")
    elif sum(sizes) + 1000 < experiments.MAX_VALUES:  # anchors used a little: refused, if at all, for what it says
        assert code in (0, 2) and "Traceback" not in err and "aliases expand" not in err, err
    assert time.monotonic() - started < 20


# Integer fields of a spec, each given a value no 64-bit integer holds (or, as text, one too long to read).
INTEGER_FIELDS = {
    "seeds": ("seeds: [0, 1]", "seeds: [{}]", "seeds"),
    "train.epochs": ("epochs: 2", "epochs: {}", "train.epochs"),
    "train.batch_size": ("batch_size: 32", "batch_size: {}", "train.batch_size"),
    "model.widths": ("widths: [8, 8]", "widths: [8, {}]", "model.widths"),
    "data.options.n": ("n: 240", "n: {}", "data.options.n"),
    "probe_size": ("baseline: relu", "baseline: relu\nprobe_size: {}", "probe_size"),
    "threads": ("baseline: relu", "baseline: relu\nthreads: {}", "threads"),
}


@fuzz(40)
@given(field=st.sampled_from(sorted(INTEGER_FIELDS)),
       value=st.one_of(st.integers(min_value=2 ** 63, max_value=10 ** 300),
                       st.integers(min_value=301, max_value=4000).map(lambda n: int("9" * n))))
def test_integers_no_store_holds_are_refused_in_every_field(field, value):
    old, new, names = INTEGER_FIELDS[field]
    assert old in TINY
    code, err, left = run_cli(["run", "spec.yaml", "--no-report"], TINY.replace(old, new.format(value), 1))
    assert_refused(code, err, left, names if len(str(value)) <= 4300 else "spec.yaml")
