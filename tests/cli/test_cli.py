"""The `relulab` command, run in-process through its entry point."""
import json

import pytest

from specs import relulab



def test_train_prints_json(capsys, tmp_path):
    code, out, err = relulab(capsys, "train", "--widths", "32,32", "--init", "he_normal", "-e", "2", "-b", "64",
                             "--json", "--device", "cpu", "--out", str(tmp_path / "r.json"))
    assert code == 0
    result = json.loads(out)
    assert len(result["history"]) == 2 and result["best_val_acc"] > 0.3
    assert result["spec"]["model"]["widths"] == [32, 32]
    assert json.loads((tmp_path / "r.json").read_text())[0]["seed"] == 0


def test_train_several_seeds_and_per_slot_options(capsys):
    code, out, _ = relulab(capsys, "train", "--widths", "16x3", "--off", "2", "--slot", "3=tanh", "-e", "1",
                           "--slot", "2=none", "--slot", "3=tanh", "--seed", "1", "--seed", "2", "--json")
    assert code == 0
    results = json.loads(out)
    assert [r["seed"] for r in results] == [1, 2]
    assert results[0]["spec"]["model"]["slots"] == {"2": "identity", "3": "tanh"}


@pytest.mark.parametrize("argv,seeds", [
    (["--seed", "0-2"], [0, 1, 2]),  # typer read 0-2 as the integer -2
    (["--seeds", "3,5"], [3, 5]),
    (["-s", "3", "-s", "5-6"], [3, 5, 6]),
    ([], [0]),
])
def test_train_takes_seeds_as_every_command_does(capsys, argv, seeds):
    code, out, err = relulab(capsys, "train", "--widths", "4", "-e", "1", "--train-size", "100", "--json",
                             "--device", "cpu", *argv)
    assert code == 0, err
    results = json.loads(out)
    assert [r["seed"] for r in (results if isinstance(results, list) else [results])] == seeds


def test_train_packs_seeds_with_the_same_histories(capsys, tmp_path):
    """--pack trains the seeds together (the default on CUDA); on the CPU they stack, and each keeps the history
    it has when trained alone; checkpoints are saved from the pack too."""
    common = ["train", "--widths", "16x3", "-e", "2", "-b", "64", "--seed", "1", "--seed", "2", "--json",
              "--device", "cpu"]
    code, out, err = relulab(capsys, *common, "--pack", "--save", str(tmp_path / "m.pt"))
    assert code == 0, err
    packed = json.loads(out)
    assert "packed: 2 seed(s) train at once" in err
    code, out, _ = relulab(capsys, *common, "--no-pack")
    alone = json.loads(out)
    assert [r["seed"] for r in packed] == [1, 2]
    assert packed[0]["data"]["trained_with"] == 2 and "trained_with" not in alone[0]["data"]
    for p, a in zip(packed, alone):
        for pe, ae in zip(p["history"], a["history"]):
            assert pe["val_loss"] == pytest.approx(ae["val_loss"], abs=1e-4)
    assert (tmp_path / "m-seed1.pt").exists() and (tmp_path / "m-seed2.pt").exists()


def test_train_compile_needs_packing(capsys):
    code, out, err = relulab(capsys, "train", "-e", "1", "--compile", "--no-pack", "--device", "cpu")
    assert code == 2 and "--compile: only packed runs compile their step" in err and not out


@pytest.mark.parametrize("argv,names", [
    (["--activation", "nope"], "--activation: unknown value 'nope'"),
    (["--init", "he_nrmal"], "--init: unknown value 'he_nrmal'"),
    (["--optimizer", "adagrad"], "--optimizer: unknown value"),
    (["--epochs", "0"], "--epochs: expected a positive integer"),
    (["--epochs", "x"], "'--epochs'"),
    (["--dataset", "imagenet"], "--dataset: unknown value"),
    (["--split", "half"], "--split: expected"),
    (["--slot", "99=relu"], "--slot/--off: deep-mlp has slots 1..2"),
    (["--widths", "300,100x49", "--slot", "99=relu"], "--slot/--off: deep-mlp has slots 1..50"),
    (["--slot", "3=tanh", "--slot", "3=relu"], "--slot: slot 3 is both tanh and relu"),
    (["--off", "3", "--slot", "3=tanh"], "--slot/--off: slot 3 is both tanh and off"),
    (["--seed", "1", "--seed", "0-1"], "--seed: seeds repeat: 1 is given twice"),
    (["--seed", "18446744073709551616"], "--seed: seeds run from 0 to 9223372036854775807"),
    (["--seeds", "0,1", "--seed", "2"], "--seeds/--seed: give the seeds one way"),
    (["--widths", "1,a"], "--widths: expected widths"),
    (["--precision", "fp16"], "--precision: expected one of auto, fp32, tf32, bf16"),
    (["--model", "seed-cnn"], "seed-cnn needs images of at least 32x32"),
    (["--dataset", "mnist", "--no-download"], "dataset mnist: files not found"),
    (["--bogus"], "No such option: --bogus"),
])
def test_bad_input_is_one_line_and_exit_2(capsys, argv, names):
    code, out, err = relulab(capsys, "train", "-e", "1", *argv)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("error: ") and names in err
    assert "Traceback" not in err and out == ""


def test_valid_activations_are_listed(capsys):
    _, _, err = relulab(capsys, "train", "--activation", "nope")
    for name in ("relu", "selu", "gelu", "tanh", "identity"):
        assert name in err


def test_datasets_command(capsys):
    code, out, _ = relulab(capsys, "datasets")
    assert code == 0 and "digits" in out and "fashion-mnist" in out


def test_the_command_shows_the_librarys_fields_as_its_options():
    from relulab.cli.app import flag_message

    assert flag_message("search.keep: expected numbers") == "--keep: expected numbers"  # not --k + "eep"
    assert flag_message("search.k: that is 15 placements, more than search.max_placements 10") == \
        "--k: that is 15 placements, more than --max-placements 10"
    assert flag_message("probe.epochs: epochs run from 1 to 2 (train.epochs)") == \
        "--epoch: epochs run from 1 to 2 (train.epochs)"  # a spec field it has no option for stays as it is
    assert flag_message("out_dir: not a folder", {"out_dir": "--out"}) == "--out: not a folder"
    assert flag_message("configs.search.k: x") == "configs.search.k: x"  # inside a longer name: not a field


def test_the_command_starts_without_the_reports_heavy_imports():
    """scipy.stats (about half a second), matplotlib and jinja2 load where a statistic, a figure or the HTML is
    made, not at every start of `relulab` (its --help, train, ...)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    import relulab

    src = str(Path(relulab.__file__).resolve().parents[1])  # the relulab under test, not another installed one
    heavy = ("scipy.stats", "matplotlib", "jinja2")
    done = subprocess.run([sys.executable, "-c", "import sys, relulab.cli; "
                           f"print([m for m in {heavy!r} if m in sys.modules])"],
                          capture_output=True, text=True, check=True, env={**os.environ, "PYTHONPATH": src})
    assert done.stdout.strip() == "[]"
