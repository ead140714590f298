"""Checkpoints: `relulab train --save` then `relulab evaluate`, and files that must be refused."""
from __future__ import annotations

import ast
import io
import json
import os
import sqlite3
import stat
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from relulab.training import checkpoints
from relulab.data import DataSpec, load_data
from relulab.core.errors import UserError
from relulab.zoo.models import ModelSpec
from relulab.training.loop import evaluate, run
from relulab.training.specs import RunSpec, TrainSpec
from runner import assert_refused, fuzz, run_cli

SRC = Path(__file__).resolve().parents[2] / "src" / "relulab"


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A small trained model, its result, and its checkpoint's bytes."""
    spec = RunSpec(DataSpec("digits"), ModelSpec(widths=[16, 16], slots={1: "tanh"}, batchnorm=True),
                   TrainSpec(epochs=2))
    result = run(spec, seed=3, device="cpu")
    path = checkpoints.save(result, tmp_path_factory.mktemp("ckpt") / "model.pt", [str(i) for i in range(10)])
    return result, path.read_bytes()


def test_a_saved_model_loads_back_identical(saved, tmp_path):
    result, blob = saved
    (tmp_path / "m.pt").write_bytes(blob)
    ckpt = checkpoints.load(tmp_path / "m.pt")
    assert ckpt.seed == 3 and ckpt.spec == result.spec and ckpt.input_shape == (1, 8, 8)
    for name, tensor in result.model.state_dict().items():
        torch.testing.assert_close(ckpt.model.state_dict()[name], tensor.cpu(), rtol=0, atol=0)
    splits = load_data(ckpt.spec.data)
    _, val_acc = evaluate(ckpt.model, splits.x_val, splits.y_val)
    assert val_acc == result.history.final_val_acc


def test_train_save_then_evaluate_from_the_command_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    old_mask = os.umask(0o022)
    try:
        code, err, _ = run_cli(["train", "--widths", "16", "-e", "1", "--seed", "0", "--seed", "1",
                                "--save", str(tmp_path / "m.pt"), "--out", str(tmp_path / "r.json")])
    finally:
        os.umask(old_mask)
    assert code == 0, err
    trained = json.loads((tmp_path / "r.json").read_text())
    for seed in (0, 1):
        path = tmp_path / f"m-seed{seed}.pt"
        assert stat.S_IMODE(path.stat().st_mode) == 0o644  # the usual mode, not the temp file's 0600
        code, out, err = _evaluate(path)
        assert code == 0, err
        rows = {r["split"]: r for r in json.loads(out)["results"]}
        assert rows["validation"]["accuracy"] == pytest.approx(trained[seed]["final_val_acc"], abs=1e-12)
        assert rows["test"]["accuracy"] == pytest.approx(trained[seed]["test_acc"], abs=1e-12)


def _evaluate(path: Path) -> tuple[int, str, str]:
    out = io.StringIO()
    code, err, _ = run_cli(["evaluate", str(path), "--json"], stdout=out)
    return code, out.getvalue(), err


MARKER = Path("/tmp/relulab-checkpoint-pwned")


class _RunsCode:
    def __reduce__(self):
        return os.system, (f"touch {MARKER}",)


class _Custom:  # an ordinary class: loading it would import and call code of the file's choosing
    pass


@pytest.mark.parametrize("payload", [{"format": "relulab-checkpoint", "version": 1, "state_dict": _RunsCode()},
                                     {"format": "relulab-checkpoint", "version": 1, "spec": _Custom()}])
def test_a_checkpoint_with_foreign_code_is_refused_and_not_run(payload, tmp_path):
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    MARKER.unlink(missing_ok=True)
    code, err, left = run_cli(["evaluate", "evil.pt"], files={"evil.pt": buffer.getvalue()})
    assert_refused(code, err, left, "evil.pt: refused: the checkpoint holds more than tensors and plain data")
    assert "GLOBAL" in err and not MARKER.exists()


@fuzz(25)
@given(fraction=st.floats(min_value=0.0, max_value=0.999))
def test_a_truncated_checkpoint_is_refused_by_name(saved, fraction):
    _, blob = saved
    code, err, left = run_cli(["evaluate", "cut.pt"], files={"cut.pt": blob[:int(len(blob) * fraction)]})
    assert_refused(code, err, left, "cut.pt: not a readable checkpoint")


def _resaved(blob: bytes, change) -> bytes:
    payload = torch.load(io.BytesIO(blob), weights_only=True)
    change(payload)
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    return buffer.getvalue()


@pytest.mark.parametrize("change,names", [
    (lambda p: p.update(format="other"), "not a relulab checkpoint"),
    (lambda p: p.update(version=99), "checkpoint version 99"),
    (lambda p: p["spec"]["model"].update(activation="nope"), "model.activation: unknown value 'nope'"),
    (lambda p: p["state_dict"].update({next(iter(p["state_dict"])): torch.zeros(3)}), "damaged checkpoint"),
    (lambda p: p.pop("state_dict"), "damaged checkpoint: 'state_dict' should be a mapping"),
    (lambda p: p.update(seed="x"), "damaged checkpoint: 'seed' should be an integer"),
    (lambda p: p.update(seed=2**64), "damaged checkpoint: 'seed' should be an integer"),
    (lambda p: p.update(spec=None), "damaged checkpoint: 'spec' should be a mapping"),
    (lambda p: p.update(input_shape="abc"), "damaged checkpoint: 'input_shape' should be a list"),
    (lambda p: p.update(input_shape=[1, 0, 8]), "damaged checkpoint: 'input_shape' should be a list"),
    (lambda p: p.update(classes=[0, 1]), "damaged checkpoint: 'classes' should be a list"),
    (lambda p: p.update(summary=[1]), "damaged checkpoint: 'summary' should be a mapping"),
    (lambda p: p.update(provenance="x"), "damaged checkpoint: 'provenance' should be a mapping"),
])
def test_a_damaged_checkpoint_is_named(saved, change, names):
    _, blob = saved
    code, err, left = run_cli(["evaluate", "m.pt"], files={"m.pt": _resaved(blob, change)})
    assert_refused(code, err, left, names)


def test_a_model_for_other_data_is_refused(saved, tmp_path):
    _, blob = saved
    other = _resaved(blob, lambda p: p["spec"]["data"].update(name="synthetic", options={"n": 60, "size": 5}))
    code, err, left = run_cli(["evaluate", "m.pt"], files={"m.pt": other})
    assert_refused(code, err, left, "m.pt: the model takes [1, 8, 8] inputs in 10 classes; the data has [1, 5, 5]")
    with pytest.raises(UserError, match="checkpoint not found"):
        checkpoints.load(tmp_path / "missing.pt")


def test_every_torch_load_in_the_package_is_weights_only_and_no_plain_unpickling():
    """A source scan: each torch.load call passes weights_only=True, and pickle is only used through
    a subclass of pickle.Unpickler that overrides find_class."""
    for path in SRC.rglob("*.py"):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
                continue
            owner = getattr(node.func.value, "id", None)
            if owner == "torch" and node.func.attr == "load":
                flags = {k.arg: getattr(k.value, "value", None) for k in node.keywords}
                assert flags.get("weights_only") is True, f"{path}:{node.lineno} torch.load without weights_only=True"
            if owner == "pickle":
                assert node.func.attr not in ("load", "loads"), f"{path}:{node.lineno} plain pickle.{node.func.attr}"


# ---------------------------------------------------------------- kept weights and relulab export-model

KEPT_SPEC = """\
name: kept
device: cpu
threads: 1
seeds: [0, 1]
data: {name: synthetic, options: {n: 120, classes: 3, size: 4}}
model: {name: deep-mlp, widths: [8], init: he_normal}
train: {epochs: 2, batch_size: 32, optimizer: {name: sgd, lr: 0.05}}
configs:
  relu: {}
  tanh: {model: {activation: tanh}}
"""


@pytest.fixture(scope="module")
def kept_stores(tmp_path_factory) -> dict[str, bytes]:
    """Two swept stores, `s.sqlite` with its kept weights in s.weights/ and `n.sqlite` that kept none, as
    {relative path: bytes} for run_cli."""
    from relulab.experiments import Overrides, load_experiment, run_experiment

    folder = tmp_path_factory.mktemp("kept")
    (folder / "spec.yaml").write_text(KEPT_SPEC)
    for name, keep in (("s", True), ("n", False)):
        exp = load_experiment(str(folder / "spec.yaml"), Overrides(store=str(folder / f"{name}.sqlite"),
                                                                   keep_weights=keep))
        run_experiment(exp, log=lambda line: None)
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()
            and p.suffix in (".sqlite", ".pt")}


def _export(files: dict[str, bytes], *argv: str) -> tuple[int, str, list[str]]:
    return run_cli(["export-model", *argv], files=files)


@pytest.mark.parametrize("argv,names", [
    (["s.sqlite", "--config", "rel", "--seed", "0", "-o", "m.pt"], "--config: unknown value 'rel' (did you mean "
                                                                   "'relu'?); expected one of: relu, tanh"),
    (["s.sqlite", "--config", "relu", "--seed", "7", "-o", "m.pt"], "--seeds: relu seed 7 is not in the store"),
    (["s.sqlite", "--config", "relu", "--seed", "0,1", "-o", "m.pt"], "--seed: relulab export-model writes one"),
    (["s.sqlite", "--experiment", "other", "--config", "relu", "--seed", "0", "-o", "m.pt"],
     "--experiment: unknown value 'other'"),
    (["s.sqlite", "--part", "p", "--config", "relu", "--seed", "0", "-o", "m.pt"], "--part: unknown value 'p'"),
    (["n.sqlite", "--config", "relu", "--seed", "0", "-o", "m.pt"], "n.sqlite: keeps no weights of relu seed 0"),
    (["s.sqlite", "--config", "relu", "--seed", "0", "-o", "s.weights"], "--out: "),
    (["missing.sqlite", "--config", "relu", "--seed", "0", "-o", "m.pt"], "missing.sqlite does not exist"),
    (["s.sqlite", "--config", "relu", "--seed", "0"], "Missing option '--out'"),
])
def test_export_model_refusals_are_one_line_and_write_nothing(kept_stores, argv, names):
    code, err, left = _export(kept_stores, *argv)
    assert_refused(code, err, left, names)


def test_export_model_refuses_weights_that_are_not_the_ones_written(kept_stores, tmp_path):
    files = dict(kept_stores)
    final = sorted(k for k in files if k.startswith("s.weights/") and not k.endswith(".best.pt"))[0]
    blob = bytearray(files[final])
    blob[len(blob) // 2] ^= 0x01  # the same size, one bit else
    files[final] = bytes(blob)
    (tmp_path / "s.sqlite").write_bytes(files["s.sqlite"])
    db = sqlite3.connect(tmp_path / "s.sqlite")
    (variant, seed), = db.execute("SELECT variant, seed FROM runs WHERE key = ?", (Path(final).stem,))
    db.close()
    code, err, left = _export(files, "s.sqlite", "--config", variant, "--seed", str(seed), "-o", "m.pt")
    assert_refused(code, err, left, "weights of")
    assert "not intact" in err and "sha256 differs" in err


def test_a_bad_keep_weights_is_refused_before_anything_is_written():
    code, err, left = run_cli(["run", "spec.yaml", "--store", "s.sqlite", "--no-report"],
                              KEPT_SPEC + "keep_weights: sometimes\n")
    assert_refused(code, err, left, "keep_weights: expected auto")
