"""Preset names: descriptive names, the former seed000-style names as aliases, and stores made under a former
name still resumed and reported."""
import sqlite3

import pytest

import relulab.experiments.spec as spec_module
from relulab.experiments import PRESET_ALIASES, Overrides, load_experiment, preset_aliases, preset_names
from specs import TINY, relulab, write_spec

SOURCES = {  # former name -> (name, what its source is about, as SPEC.md section 1 describes it)
    "seed000": ("greedy-relu-cifar10", "seed-cnn", "cifar10"),
    "seed001": ("why-relu-fmnist", "deep-mlp", "fashion-mnist"),
    "seed002": ("selu-vs-batchnorm", "bn-mlp", "mnist"),
    "seed004": ("relu-explained", "deep-mlp", "digits"),
}


@pytest.mark.parametrize("former", sorted(SOURCES))
def test_a_former_name_is_the_same_experiment_as_the_new_one(former):
    name, model, dataset = SOURCES[former]
    assert PRESET_ALIASES[former] == name and preset_aliases(name) == [former]
    assert name in preset_names() and former not in preset_names()
    by_new, by_former = (load_experiment(n, Overrides(store="/nonexistent/never.sqlite")) for n in (name, former))
    assert by_new.name == by_former.name == name and by_former.origin == f"preset:{name}"
    assert [r.key for r in by_new.planned()] == [r.key for r in by_former.planned()]  # the same runs, by key
    assert {v.spec.model.name for v in by_new.parts[0].variants} == {model}
    assert {v.spec.data.name for v in by_new.parts[0].variants} == {dataset}


def test_presets_lists_each_name_with_its_former_one(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    code, out, _ = relulab(capsys, "presets")
    assert code == 0
    rows = {line.split("│")[1].strip(): line.split("│")[2].strip() for line in out.splitlines()
            if line.startswith("│") and line.split("│")[1].strip()}
    assert {rows[name] for name, *_ in SOURCES.values()} == set(SOURCES)
    assert rows["quickstart"] == ""


def test_quickstart_parts_answer_to_the_former_names():
    exp = load_experiment("quickstart", Overrides(parts=["seed004", "why-relu-fmnist"]))
    assert [p.name for p in exp.parts] == ["why-relu-fmnist", "relu-explained"]


@pytest.fixture
def renamed_tiny(monkeypatch):
    """TINY as a preset named `tiny`, formerly `tinyold` (the same mechanism as greedy-relu-cifar10/seed000, on an
    experiment small enough to run here)."""
    real_names, real_text = spec_module.preset_names, spec_module.preset_text
    monkeypatch.setattr(spec_module, "preset_names", lambda: [*real_names(), "tiny"])
    monkeypatch.setattr(spec_module, "preset_text", lambda n: TINY if n == "tiny" else real_text(n))
    monkeypatch.setitem(PRESET_ALIASES, "tinyold", "tiny")


def _runs(store, experiment):
    db = sqlite3.connect(store)
    try:
        return db.execute("SELECT count(*) FROM runs WHERE experiment = ?", (experiment,)).fetchone()[0]
    finally:
        db.close()


def test_a_store_made_under_the_former_name_resumes_and_reports(renamed_tiny, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_spec(tmp_path, TINY.replace("name: tiny", "name: tinyold"))  # the preset as it was, before the rename
    code, _, err = relulab(capsys, "run", "spec.yaml", "--seeds", "0", "--no-report")
    assert code == 0, err
    old = tmp_path / "runs" / "tinyold.sqlite"
    assert _runs(old, "tinyold") == 2

    code, out, err = relulab(capsys, "run", "tiny", "--seeds", "0-1", "--no-report")  # the new name: the old store
    assert code == 0, err
    assert "tiny: the store" in err and "under its former name tinyold" in err
    assert "2 runs trained, 2 already done" in err and not (tmp_path / "runs" / "tiny.sqlite").exists()
    assert _runs(old, "tinyold") == 4
    code, out, err = relulab(capsys, "report", "tinyold")  # named either way, the report is the old store's
    assert code == 0 and out.strip() == str(tmp_path / "runs" / "tinyold-report" / "report.html"), err
    code, _, err = relulab(capsys, "run", "tiny", "--seeds", "0-1", "--store", str(old), "--no-report")
    assert code == 0 and "0 runs trained, 4 already done" in err, err


def test_a_new_store_takes_the_new_name(renamed_tiny, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = relulab(capsys, "run", "tinyold", "--seeds", "0", "--no-report")
    assert code == 0, err
    assert "former name" not in err and _runs(tmp_path / "runs" / "tiny.sqlite", "tiny") == 2
