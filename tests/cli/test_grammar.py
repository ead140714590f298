"""One command-line grammar: every command takes random seeds as --seeds 0,1,2 / 0-4 (or --seed N, repeatable),
every command that reads a spec overrides its fields with --set KEY=VALUE, each read and refused alike; and bare
`relulab train` trains a model that learns."""
import re

import pytest

import relulab.experiments as experiments
import relulab.search as search_module
import relulab.store.weights as weights_module
from relulab.cli import train as train_module
from specs import relulab, write_spec


class Captured(Exception):
    """Raised by a stand-in for what a command calls, with what the command parsed: nothing trains."""

    def __init__(self, parsed):
        super().__init__(parsed)
        self.parsed = parsed


def capturing(pick):
    """A stand-in that raises Captured(pick(its arguments))."""
    def stand_in(*args, **kwargs):
        raise Captured(pick(*args, **kwargs))
    return stand_in


def parsed(capsys, argv) -> object:
    with pytest.raises(Captured) as caught:
        relulab(capsys, *argv)
    return caught.value.parsed


@pytest.fixture
def folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_spec(tmp_path)
    return tmp_path


# What each command needs besides its seeds; and where the seeds it parsed go.
MANY = {  # commands that take several seeds
    "train": ["train", "-e", "1", "--widths", "4", "--train-size", "100", "--device", "cpu"],
    "run": ["run", "spec.yaml", "--no-report"],
    "search": ["search", "spec.yaml", "--no-report"],
}
ONE = {  # commands that name one run, so one seed
    "probe": ["probe", "spec.yaml", "--no-report"],
    "export-model": ["export-model", "s.sqlite", "--config", "relu", "-o", "m.pt"],
}
WHY_ONE = {"probe": "relulab probe probes one model", "export-model": "relulab export-model writes one run's model"}


def _many_seeds(capsys, monkeypatch, command: str, *seed_options: str) -> list[int]:
    """The seeds `command` hands on for these options: to the trainer (train) or the experiment's overrides."""
    monkeypatch.setattr(train_module, "_train_seeds", capturing(lambda spec, splits, seeds, *rest: seeds))
    monkeypatch.setattr(experiments, "load_experiment", capturing(lambda spec, overrides: overrides.seeds))
    return parsed(capsys, [*MANY[command], *seed_options])


def _one_seed(capsys, monkeypatch, command: str, *seed_options: str) -> int:
    """The seed `command` hands on: to the probe (probe_configuration) or the export (export_run)."""
    monkeypatch.setattr(search_module, "probe_configuration", capturing(lambda exp, seed, *rest, **kw: seed))
    monkeypatch.setattr(weights_module, "export_run", capturing(lambda store, out, config, seed, *rest: seed))
    return parsed(capsys, [*ONE[command], *seed_options])


@pytest.mark.parametrize("command", sorted(MANY))
@pytest.mark.parametrize("options,seeds", [
    (["--seeds", "0,1,2"], [0, 1, 2]),
    (["--seeds", "0-4"], [0, 1, 2, 3, 4]),
    (["--seeds", "3,5-6"], [3, 5, 6]),
    (["--seed", "7"], [7]),
    (["--seed", "1", "-s", "4", "--seed", "8-9"], [1, 4, 8, 9]),  # several --seed add up
])
def test_every_command_reads_seeds_the_same_way(capsys, monkeypatch, folder, command, options, seeds):
    assert _many_seeds(capsys, monkeypatch, command, *options) == seeds


@pytest.mark.parametrize("command", sorted(ONE))
@pytest.mark.parametrize("options", [["--seeds", "3"], ["--seed", "3"], ["-s", "3"]])
def test_commands_of_one_run_read_its_seed_the_same_way(capsys, monkeypatch, folder, command, options):
    assert _one_seed(capsys, monkeypatch, command, *options) == 3


def test_probe_takes_seed_0_when_none_is_given(capsys, monkeypatch, folder):
    assert _one_seed(capsys, monkeypatch, "probe") == 0


BAD_SEEDS = [  # (options, the error after "error: ")
    (["--seeds", "x"], "--seeds: expected seeds like 0,1,2 or 0-4, got 'x'"),
    (["--seeds", ""], "--seeds: expected seeds like 0,1,2 or 0-4, got ''"),
    (["--seeds", "-1"], "--seeds: expected seeds like 0,1,2 or 0-4, got '-1'"),
    (["--seeds", "1,,2"], "--seeds: expected seeds like 0,1,2 or 0-4, got '1,,2'"),
    (["--seeds", "3-1"], "--seeds: the range 3-1 runs backwards; write 1-3"),
    (["--seeds", "1,1"], "--seeds: seeds repeat: 1 is given twice"),
    (["--seeds", "9223372036854775808"], "--seeds: seeds run from 0 to 9223372036854775807"),
    (["--seed", "-2"], "--seed: expected seeds like 0,1,2 or 0-4, got '-2'"),
    (["--seed", "2", "--seed", "2"], "--seed: seeds repeat: 2 is given twice"),
    (["--seeds", "0", "--seed", "1"], "--seeds/--seed: give the seeds one way, --seeds 0,1,2 or --seed 0 --seed 1, "
                                      "not both"),
]


@pytest.mark.parametrize("command", sorted({**MANY, **ONE}))
@pytest.mark.parametrize("options,message", BAD_SEEDS)
def test_bad_seeds_are_refused_alike_in_one_line_before_anything_runs(capsys, folder, command, options, message):
    code, out, err = relulab(capsys, *{**MANY, **ONE}[command], *options)
    assert (code, out) == (2, "") and err.startswith(f"error: {message}") and err.count("\n") == 1, err
    assert sorted(p.name for p in folder.iterdir()) == ["spec.yaml"]  # no store, no report, no checkpoint


@pytest.mark.parametrize("command", sorted(ONE))
@pytest.mark.parametrize("options,given", [(["--seeds", "0-2"], "--seeds"), (["--seed", "1", "--seed", "2"], "--seed")])
def test_commands_of_one_run_refuse_several_seeds(capsys, folder, command, options, given):
    code, out, err = relulab(capsys, *ONE[command], *options)
    shown = "0-2" if given == "--seeds" else "1,2"
    assert (code, out) == (2, "") and err == f"error: {given}: {WHY_ONE[command]}, so one seed; got '{shown}'\n"


def test_export_model_needs_a_seed(capsys, folder):
    code, _, err = relulab(capsys, *ONE["export-model"])
    assert code == 2 and err == ("error: --seeds: relulab export-model writes one run's model, so one seed is "
                                 "needed, e.g. --seeds 0\n")


# ---------------------------------------------------------------- --set KEY=VALUE: a spec field, everywhere

SPEC_COMMANDS = {"run": MANY["run"], "search": MANY["search"], "probe": ONE["probe"]}


@pytest.mark.parametrize("command", sorted(SPEC_COMMANDS))
def test_set_overrides_a_spec_field_in_every_command_that_reads_a_spec(capsys, monkeypatch, folder, command):
    monkeypatch.setattr(experiments, "load_experiment", capturing(lambda spec, overrides: overrides.sets))
    argv = [*SPEC_COMMANDS[command], "--set", "model.widths=[16,16]", "--set", "train.epochs=1"]
    assert parsed(capsys, argv) == ["model.widths=[16,16]", "train.epochs=1"]


@pytest.mark.parametrize("command", sorted(SPEC_COMMANDS))
@pytest.mark.parametrize("value,message", [
    ("first", "--set: expected KEY=VALUE such as model.widths=[64,64], got 'first'"),  # probe's former --set
    ("=1", "--set: expected KEY=VALUE such as model.widths=[64,64], got '=1'"),
    ("model.widths=", "--set model.widths: expected a value after '=' (null resets a field to its default)"),
    ("model.activaton=relu", "--set model.activaton: unknown field"),
    ("model.activation=nope", "--set model.activation: unknown value 'nope'"),
    ("train.epochs=[1", "--set train.epochs: invalid YAML"),
])
def test_bad_set_values_are_refused_alike(capsys, folder, command, value, message):
    code, out, err = relulab(capsys, *SPEC_COMMANDS[command], "--set", value)
    assert (code, out) == (2, "") and err.startswith(f"error: {message}") and err.count("\n") == 1, err
    assert sorted(p.name for p in folder.iterdir()) == ["spec.yaml"]


def test_probe_names_its_images_with_probe_set_only(capsys, folder):
    code, _, err = relulab(capsys, *ONE["probe"], "--probe-set", "val:0")
    assert code == 2 and err.startswith("error: --probe-set: expected first, per-class:N or val:N"), err


def test_probe_still_takes_its_former_override_option(capsys, monkeypatch, folder):
    monkeypatch.setattr(experiments, "load_experiment", capturing(lambda spec, overrides: overrides.sets))
    argv = [*ONE["probe"], "--set", "train.epochs=1", "--override", "model.widths=[4]"]
    assert parsed(capsys, argv) == ["train.epochs=1", "model.widths=[4]"]


# ---------------------------------------------------------------- bare `relulab train` learns


def test_bare_train_learns_digits(capsys):
    code, out, err = relulab(capsys, "train")
    assert code == 0, err
    line = " ".join(out.split())  # the summary line, however the terminal wrapped it
    assert float(re.search(r"test acc (\d\.\d+)", line).group(1)) > 0.8, out
    assert "17,226 parameters" in line  # deep-mlp 128,64 with He init: two hidden layers, not source 001's fifty
