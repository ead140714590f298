"""Property-based tests: a malformed spec or CLI value never crashes relulab.

Each example takes a small valid experiment, breaks one thing in a way that is wrong
for it (a wrong type, an out-of-range or non-finite number, an unknown name, a key
that does not exist, a file that is not YAML), and runs the `relulab` entry point on
it in-process. Every example must end in exit code 2 with exactly one line on stderr
that names the field (or option, or file), no traceback, and nothing written: the
working folder holds the spec and nothing else afterwards.

Hypothesis runs derandomized (the same examples every time) and keeps no database,
so the suite stays deterministic and writes nothing outside its temp folders.
"""
from __future__ import annotations

import copy
import math

import yaml
from hypothesis import given
from hypothesis import strategies as st

from runner import assert_refused, fuzz, run_cli
from specs import TINY

FUZZ = fuzz(40)


# ------------------------------------------------------------------ values that are wrong for a field

def _not_a_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return True
    return False


NON_NUMERIC_TEXT = st.text(max_size=8).filter(_not_a_number)
WRONG_CONTAINERS = st.one_of(st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=3), st.integers(),
                                                                                  min_size=1, max_size=2))
BEYOND_INT64 = st.integers(min_value=2 ** 63, max_value=10 ** 1000)  # no store holds them
BEYOND_FLOAT = st.integers(min_value=10 ** 309, max_value=10 ** 1000)  # float() of them overflows
NOT_POSITIVE_INT = st.one_of(st.integers(max_value=0), st.booleans(), NON_NUMERIC_TEXT, WRONG_CONTAINERS, BEYOND_INT64,
                             st.floats().filter(lambda f: not (math.isfinite(f) and f.is_integer() and f >= 1)))
NOT_POSITIVE_NUMBER = st.one_of(st.floats(max_value=0), st.just(math.nan), st.just(math.inf), st.booleans(),
                                NON_NUMERIC_TEXT, WRONG_CONTAINERS, BEYOND_FLOAT)
NOT_NONNEGATIVE_NUMBER = st.one_of(st.floats(max_value=-1e-9), st.just(math.nan), st.just(math.inf),
                                   NON_NUMERIC_TEXT, WRONG_CONTAINERS, BEYOND_FLOAT)
# A name no registry holds, a known name with a parameter it does not take or cannot read, or not text at all.
UNKNOWN_NAME = st.one_of(
    st.text(max_size=10).map(lambda s: f"no-such-{s}"),
    st.sampled_from(["relu", "tanh", "zeros"]).flatmap(lambda n: st.text(min_size=1, max_size=5).map(
        lambda p: f"{n}:{p}")),
    st.sampled_from(["leaky_relu", "elu", "constant"]).flatmap(lambda n: NON_NUMERIC_TEXT.filter(bool).map(
        lambda p: f"{n}:{p}")),
    WRONG_CONTAINERS, st.booleans(),
)
NOT_A_BOOL = st.one_of(st.integers(), NON_NUMERIC_TEXT, WRONG_CONTAINERS)
BAD_WIDTHS = st.one_of(
    st.lists(st.integers(max_value=0), min_size=1, max_size=3),
    st.just([]),
    st.sampled_from(["8x", "x3", "a,b", "8,,8", "8x0", "-4", "8 x 8 x 8"]),
    st.dictionaries(st.text(max_size=3), st.integers(), min_size=1, max_size=2),
)
BAD_SPLITS = st.one_of(st.integers(max_value=0).map(lambda n: f"stratified:{n}"),
                       NON_NUMERIC_TEXT.map(lambda s: f"first:{s}"),
                       st.text(max_size=8).map(lambda s: f"half{s}"), WRONG_CONTAINERS)
BAD_SEEDS = st.one_of(st.lists(st.integers(max_value=-1), min_size=1, max_size=3), st.just([]),
                      st.lists(BEYOND_INT64, min_size=1, max_size=2), st.integers(min_value=10_001),
                      st.sampled_from(["0-10000", "3-1", "1,1", "0-99999999999999", "-1"]),
                      st.lists(NON_NUMERIC_TEXT, min_size=1, max_size=2), st.dictionaries(st.text(max_size=2),
                                                                                          st.integers(), min_size=1))

# Every field of the tiny spec, with values that are wrong for it.
FIELD_BREAKERS = {
    "train.epochs": NOT_POSITIVE_INT,
    "train.batch_size": NOT_POSITIVE_INT,
    "train.optimizer.lr": NOT_POSITIVE_NUMBER,
    "train.optimizer.name": UNKNOWN_NAME,
    "train.optimizer.flavour": UNKNOWN_NAME,
    "train.l1": NOT_NONNEGATIVE_NUMBER,
    "train.l2": NOT_NONNEGATIVE_NUMBER,
    "model.name": UNKNOWN_NAME,
    "model.activation": UNKNOWN_NAME,
    "model.init": UNKNOWN_NAME,
    "model.bias_init": UNKNOWN_NAME,
    "model.widths": BAD_WIDTHS,
    "model.batchnorm": NOT_A_BOOL,
    "data.name": UNKNOWN_NAME,
    "data.split": BAD_SPLITS,
    "data.image_size": NOT_POSITIVE_INT,
    "data.train_size": NOT_POSITIVE_INT,
    "seeds": BAD_SEEDS,
    "threads": st.one_of(st.integers(max_value=0), st.integers(min_value=10 ** 6), NON_NUMERIC_TEXT, st.booleans()),
    "probe_size": NOT_POSITIVE_INT,
    "model.slots": st.sampled_from([{3: "tanh", "3": "relu"}, {0: "relu"}, {"x": "relu"}, {2: 3}, "2=tanh,2=relu"]),
    "model.off": st.sampled_from([[0], ["x"], "1,,x", {"a": 1}]),
    "configs.tanh.model.activation": UNKNOWN_NAME,
}


def _set(mapping: dict, dotted: str, value) -> dict:
    *parents, last = dotted.split(".")
    for key in parents:
        mapping = mapping.setdefault(key, {})
    mapping[last] = value
    return mapping


@st.composite
def broken_field(draw):
    field = draw(st.sampled_from(sorted(FIELD_BREAKERS)))
    return field, draw(FIELD_BREAKERS[field])


@FUZZ
@given(broken=broken_field())
def test_a_broken_field_is_named_and_nothing_is_written(broken):
    field, value = broken
    raw = copy.deepcopy(yaml.safe_load(TINY))
    _set(raw, field, value)
    code, err, left = run_cli(["run", "spec.yaml", "--no-report"], yaml.safe_dump(raw))
    # Errors inside a configuration name it first ("configs.tanh: model.activation: ..."); the leaf is in the line.
    assert_refused(code, err, left, field.rsplit(".", 2)[-2] if field.startswith("configs.") else field)


SECTIONS = ["", "data", "model", "train", "train.optimizer"]


@FUZZ
@given(section=st.sampled_from(SECTIONS), key=st.from_regex(r"[a-z][a-z_]{0,8}", fullmatch=True))
def test_an_unknown_key_is_named(section, key):
    raw = copy.deepcopy(yaml.safe_load(TINY))
    target = raw
    for part in filter(None, section.split(".")):
        target = target[part]
    key = f"zz_{key}"  # never a real field
    target[key] = 1
    code, err, left = run_cli(["run", "spec.yaml", "--no-report"], yaml.safe_dump(raw))
    assert_refused(code, err, left, f"{section}.{key}" if section else key)


@FUZZ
@given(text=st.text(max_size=60))
def test_a_file_that_is_not_a_spec_is_named(text):
    code, err, left = run_cli(["run", "spec.yaml", "--no-report"], text)
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert left == [], left


@FUZZ
@given(data=st.data())
def test_bad_run_options(data):
    option, value, names = data.draw(st.one_of(
        st.tuples(st.just("--seeds"), st.sampled_from(["", "a", "1-", "3-1", "-2", "1,,2", "0-x", "1.5", "0-10000",
                                                       "9223372036854775808", "1,1", "9" * 5000]),
                  st.just("--seeds")),
        st.tuples(st.just("--seed"), st.sampled_from(["a", "-2", "0-99999999999999", "18446744073709551616"]),
                  st.just("--seed")),
        st.tuples(st.just("--epochs"), st.just("99999999999999999999"), st.just("--epochs")),
        st.tuples(st.just("--epochs"), st.sampled_from(["0", "-1", "x", "1.5"]), st.just("--epochs")),
        st.tuples(st.just("--device"), st.text(min_size=1, max_size=6).map(lambda s: f"tpu{s}"), st.just("device")),
        st.tuples(st.just("--set"), st.sampled_from(["train.epochs", "=1", "model.zz=1", "train.epochs=abc",
                                                     "train.optimizer.lr=-1", "model.activation=nope",
                                                     "model.widths=", "train.epochs= ", "data.options=&a [*a]",
                                                     "model.widths=" + "[" * 100 + "]" * 100]),
                  st.sampled_from(["--set"])),
        st.tuples(st.just("--executor"), st.text(min_size=1, max_size=6).map(lambda s: f"mpi{s}"),
                  st.just("--executor")),
    ))
    code, err, left = run_cli(["run", "spec.yaml", "--no-report", option, value], TINY)
    assert_refused(code, err, left, names)


TRAIN_OPTIONS = {
    "--activation": UNKNOWN_NAME.filter(lambda v: isinstance(v, str)),
    "--init": UNKNOWN_NAME.filter(lambda v: isinstance(v, str)),
    "--bias-init": UNKNOWN_NAME.filter(lambda v: isinstance(v, str)),
    "--optimizer": UNKNOWN_NAME.filter(lambda v: isinstance(v, str)),
    "--widths": st.sampled_from(["8x", "x3", "a,b", "0", "-4", "8,,8", "8x0"]),
    "--slot": st.sampled_from(["99=relu", "1=nope", "relu", "=", "a=relu", "0=tanh", "3=tanh,3=relu"]),
    "--seed": st.sampled_from(["-1", "x", "0-", "1,1", "3-1", "18446744073709551616", "0-99999999999999"]),
    "--seeds": st.sampled_from(["", "x", "0-10000", "9223372036854775808"]),
    "--off": st.sampled_from(["99", "a", "0", "1,,x"]),
    "--split": BAD_SPLITS.filter(lambda v: isinstance(v, str)),
    "--lr": st.sampled_from(["-1", "0", "nan", "inf", "x"]),
    "--l2": st.sampled_from(["-1", "nan", "inf", "x"]),
    "--epochs": st.sampled_from(["0", "-3", "x"]),
    "--batch-size": st.sampled_from(["0", "-3", "x"]),
    "--precision": UNKNOWN_NAME.filter(lambda v: isinstance(v, str) and v not in ("auto", "fp32", "tf32", "bf16")),
    "--device": st.text(min_size=1, max_size=6).map(lambda s: f"tpu{s}"),
}


@FUZZ
@given(data=st.data())
def test_bad_train_options_name_the_option(data):
    option = data.draw(st.sampled_from(sorted(TRAIN_OPTIONS)))
    value = data.draw(TRAIN_OPTIONS[option])
    code, err, left = run_cli(["train", "-e", "1", "--widths", "8,8", "--out", "r.json", option, value]
                              if option not in ("--epochs", "--widths") else
                              ["train", "--out", "r.json", option, value])
    names = "device" if option == "--device" else option
    assert_refused(code, err, left, names)


SEARCH_OPTIONS = {
    "--strategy": UNKNOWN_NAME.filter(lambda v: isinstance(v, str)),
    "--config": st.text(min_size=1, max_size=8).map(lambda s: f"no-such-{s}"),
    "--stat": UNKNOWN_NAME.filter(lambda v: isinstance(v, str)),
    "--order": st.text(min_size=1, max_size=8).map(lambda s: f"sideways{s}"),
    "--budget": st.sampled_from(["0", "-1", "x"]),
    "--patience": st.sampled_from(["-1", "x"]),
    "--alpha": st.sampled_from(["0", "1", "-0.1", "nan", "x", "2"]),
    "--metric": UNKNOWN_NAME.filter(lambda v: isinstance(v, str)),
    "--probe-set": BAD_SPLITS.filter(lambda v: isinstance(v, str)),
    "--seeds": st.sampled_from(["", "a", "3-1", "1,,2", "0-99999999999999", "1,1", "9223372036854775808"]),
    "--seed": st.sampled_from(["x", "-1", "2,2", "18446744073709551616"]),
    "--keep": st.sampled_from(["x", "0-99999999999", "1,,2", "5-1"]),
}
PROBE_OPTIONS = {
    "--config": st.text(min_size=1, max_size=8).map(lambda s: f"no-such-{s}"),
    "--seed": st.sampled_from(["-1", "x", "0-2", "1,2", "18446744073709551616"]),
    "--stats": UNKNOWN_NAME.filter(lambda v: isinstance(v, str)),
    "--probe-set": BAD_SPLITS.filter(lambda v: isinstance(v, str)),
    "--epoch": st.sampled_from(["0", "-1", "x", "99", "1,,2", "1-" + "9" * 400, "2-1"]),
}


@FUZZ
@given(data=st.data(), command=st.sampled_from(["search", "probe"]))
def test_bad_search_and_probe_options_name_the_option(data, command):
    options = SEARCH_OPTIONS if command == "search" else PROBE_OPTIONS
    option = data.draw(st.sampled_from(sorted(options)))
    value = data.draw(options[option])
    code, err, left = run_cli([command, "spec.yaml", "--no-report", option, value], TINY)
    assert_refused(code, err, left, option)
