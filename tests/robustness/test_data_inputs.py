"""Data settings that cannot mean anything, through the `relulab` commands.

Loader options that do not exist or have the wrong type, sizes that could never be
allocated, splits that could be read two ways, a training-set size the split cannot
give, a path for a dataset that reads no files, a dataset with one class, train and
test images of different shapes: each is refused with one line naming the field (or
option, or file), exit code 2, nothing written, and before any memory is taken. A
decoded-data cache that changed under relulab's feet is found out, not trusted.
"""
from __future__ import annotations

import copy
import gzip
import os
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from conftest import idx_bytes, image_folder_files, write_idx_dataset, write_zip
from runner import assert_refused, fuzz, run_cli
from specs import TINY

FUZZ = fuzz(25)
TRAIN = ["train", "-e", "1", "--widths", "8", "--device", "cpu", "--no-download"]
RUN = ["run", "spec.yaml", "--no-report"]
SYNTHETIC_OPTIONS = ["channels", "classes", "n", "noise", "size"]


def _spec(**data) -> str:
    raw = copy.deepcopy(yaml.safe_load(TINY))
    raw["data"] = {k: v for k, v in {**raw["data"], **data}.items() if v is not None}
    return yaml.safe_dump(raw)


def _options(**options) -> str:
    return _spec(options={"n": 240, "classes": 3, "size": 4, **options})


# ------------------------------------------------------------------ data.options

@FUZZ
@given(key=st.from_regex(r"[a-z][a-z_]{0,8}", fullmatch=True).filter(lambda k: k not in SYNTHETIC_OPTIONS))
def test_an_unknown_loader_option_is_named(key):
    code, err, left = run_cli(RUN, _options(**{key: 1}))
    assert_refused(code, err, left, f"data.options.{key}: unknown option for synthetic")
    assert "expected one of: channels, classes, n, noise, size" in err


NOT_AN_INTEGER = st.one_of(st.floats(allow_nan=False, allow_infinity=False).filter(lambda f: f != int(f)),
                           st.integers(2, 10**6).map(float),
                           st.booleans(), st.text(max_size=5), st.lists(st.integers(), max_size=2))


@FUZZ
@given(option=st.sampled_from(["n", "classes", "size", "channels"]), value=NOT_AN_INTEGER)
def test_a_non_integer_for_an_integer_option_is_refused(option, value):
    code, err, left = run_cli(RUN, _options(**{option: value}))
    assert_refused(code, err, left, f"data.options.{option}: expected an integer")


@pytest.mark.parametrize("value", ["loud", -1, True, [1]])
def test_a_noise_that_is_not_a_number_is_refused(value):
    code, err, left = run_cli(RUN, _options(noise=value))
    assert_refused(code, err, left, "data.options.noise: expected a number >= 0")


@pytest.mark.parametrize("name", ["digits", "mnist", "cifar10", "image-folder"])
def test_loaders_without_options_refuse_any(name):
    code, err, left = run_cli(RUN, _spec(name=name, path="imgs.zip" if name == "image-folder" else None,
                                         options={"n": 10}))
    assert_refused(code, err, left, f"data.options.n: unknown option for {name}; expected no options")


def test_switching_the_dataset_leaves_the_old_options_to_be_dropped():
    code, err, left = run_cli(RUN + ["--set", "data.name=digits"], TINY)
    assert_refused(code, err, left, "data.options.n: unknown option for digits")


# ------------------------------------------------------------------ sizes that cannot fit

def test_an_image_size_that_cannot_fit_is_refused_before_allocating():
    code, err, left = run_cli(TRAIN + ["--image-size", "100000"])
    assert_refused(code, err, left, "--image-size: 1797 images of 1x100000x100000 float32 would need")
    assert "of memory; this machine has" in err


@pytest.mark.parametrize("options", [{"n": 100_000_000_000}, {"size": 1_000_000}, {"channels": 10**9}])
def test_synthetic_sizes_that_cannot_fit_are_refused_before_allocating(options):
    code, err, left = run_cli(RUN, _options(**options))
    assert_refused(code, err, left, "data.options: synthetic data of")
    assert "of memory; this machine has" in err


# ------------------------------------------------------------------ splits and sizes

@pytest.mark.parametrize("split", ["stratified:1.0", "first:5.0", "stratified:2.0", "first:1e2"])
def test_a_split_that_reads_two_ways_is_refused(split):
    code, err, left = run_cli(TRAIN + ["--split", split])
    assert_refused(code, err, left, f"--split: {split} is ambiguous: a fraction must be below 1")
    code, err, left = run_cli(RUN, _spec(split=split))
    assert_refused(code, err, left, f"data.split: {split} is ambiguous")


def test_a_train_size_the_split_cannot_give_is_refused():
    code, err, left = run_cli(TRAIN + ["--train-size", "5000"])
    assert_refused(code, err, left, "--train-size: 5000 is more than the 1294 training examples the split leaves")
    code, err, left = run_cli(RUN, _spec(train_size=1000))
    assert_refused(code, err, left, "data.train_size: 1000 is more than the ")
    assert "training examples the split leaves" in err


def _zip_bytes(tmp_path: Path, files: dict) -> bytes:
    return write_zip(tmp_path / "made.zip", files).read_bytes()


def test_a_dataset_of_one_class_is_refused(tmp_path):
    code, err, left = run_cli(TRAIN + ["--dataset", "image-folder", "--data-path", "one.zip"],
                              files={"one.zip": _zip_bytes(tmp_path, image_folder_files(classes=("cat",)))})
    assert_refused(code, err, left, "one.zip: only one class (cat) in the training data; a classifier needs at "
                                    "least 2")
    code, err, left = run_cli(RUN, _options(classes=1))
    assert_refused(code, err, left, "data.options.classes: expected an integer >= 2")


def test_a_class_left_without_training_examples_trains(tmp_path):
    files = {"imgs.zip": _zip_bytes(tmp_path, image_folder_files())}
    code, err, left = run_cli(TRAIN + ["--dataset", "image-folder", "--data-path", "imgs.zip", "--split", "first:6",
                                       "--out", "r.json"], files=files)
    assert code == 0 and "Traceback" not in err, err
    assert left == ["r.json"]


def test_train_and_test_images_of_different_shapes_are_refused(tmp_path):
    write_idx_dataset(tmp_path / "mnist")
    files = {f"mnist/{p.name}": p.read_bytes() for p in (tmp_path / "mnist").iterdir()}
    files["mnist/t10k-images-idx3-ubyte.gz"] = gzip.compress(idx_bytes(np.zeros((20, 14, 14), np.uint8)))
    code, err, left = run_cli(TRAIN + ["--dataset", "mnist", "--data-path", "mnist"], files=files)
    assert_refused(code, err, left, "mnist: test images are 1x14x14 (channels x height x width), training images "
                                    "1x28x28")


# ------------------------------------------------------------------ data.path for built-in datasets

@pytest.mark.parametrize("name", ["digits", "synthetic"])
def test_a_path_for_a_built_in_dataset_is_refused(name):
    code, err, left = run_cli(TRAIN + ["--dataset", name, "--data-path", "somewhere"])
    assert_refused(code, err, left, f"--data-path: {name} is built in and reads no files")
    code, err, left = run_cli(RUN, _spec(name=name, path="somewhere", options=None))
    assert_refused(code, err, left, f"data.path: {name} is built in and reads no files; leave data.path out")


def test_run_data_path_on_a_built_in_preset_is_refused():
    # Every part of quickstart is digits: a --data-path would be ignored by all of them.
    code, err, left = run_cli(["run", "quickstart", "--no-report", "--data-path", "imgs.zip"])
    assert_refused(code, err, left, "data.path: digits is built in and reads no files")


# ------------------------------------------------------------------ the decoded-data cache

def test_a_truncated_cache_file_is_rebuilt_with_a_warning(tmp_path, monkeypatch):
    monkeypatch.setenv("RELULAB_CACHE", str(tmp_path / "cache"))
    argv = TRAIN + ["--dataset", "image-folder", "--data-path", "imgs.zip", "--split", "test", "--json"]
    files = {"imgs.zip": _zip_bytes(tmp_path, image_folder_files())}
    code, err, _ = run_cli(argv, files=files)
    assert code == 0, err
    (cache_file,) = (tmp_path / "cache" / "decoded").glob("*.npz")
    cache_file.write_bytes(cache_file.read_bytes()[:100])
    code, err, left = run_cli(argv, files=files)
    assert code == 0 and "Traceback" not in err, err
    assert f"relulab: warning: decoded-data cache {cache_file} is damaged (" in err
    assert [line for line in err.splitlines() if "warning" in line][0].endswith("); rebuilding it")
    assert left == [] and os.path.getsize(cache_file) > 100
    assert Path(cache_file).is_file()
