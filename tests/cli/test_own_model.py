"""Your own model on the command line: `relulab train/inspect --model FILE.py:FUNCTION`, and a spec with
`model: {name: python, target: ...}` through `relulab run` and `relulab search`."""
import json
import re
import sqlite3
import textwrap
from pathlib import Path

import pytest

from specs import relulab

MODEL = textwrap.dedent("""\
    import torch.nn.functional as F
    from torch import nn


    class Net(nn.Module):
        def __init__(self, num_classes, width):
            super().__init__()
            self.fc1 = nn.Linear(64, width)
            self.fc2 = nn.Linear(width, width)
            self.act = nn.ReLU()
            self.out = nn.Linear(width, num_classes)

        def forward(self, x):
            x = self.act(self.fc1(x.flatten(1)))
            return self.out(F.relu(self.fc2(x)))


    def build(num_classes, width=16):
        return Net(num_classes, width)
    """)

SPEC = textwrap.dedent("""\
    name: mine
    device: cpu
    threads: 1
    seeds: [0, 1]
    data: {name: digits, train_size: 300}
    model: {name: python, target: "models/net.py:build", kwargs: {width: 12}}
    train: {epochs: 2, batch_size: 32}
    configs:
      base: {}
      off-act: {model: {off: [act]}}
    baseline: base
    """)


@pytest.fixture
def project(tmp_path):
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "net.py").write_text(MODEL)
    (tmp_path / "mine.yaml").write_text(SPEC)
    return tmp_path


def stored_keys(store: Path) -> set[str]:
    with sqlite3.connect(store) as db:
        return {row[0] for row in db.execute("SELECT key FROM runs")}


def test_train_your_own_model_file(capsys, project, monkeypatch):
    monkeypatch.chdir(project)
    code, out, err = relulab(capsys, "train", "--model", "models/net.py:build", "--model-kwargs", '{"width": 8}',
                             "-e", "1", "--train-size", "200", "--device", "cpu", "--slot", "F.relu=tanh")
    assert code == 0, err
    assert re.search(r"│\s+1 │", out) and "best val acc" in out  # the history table, then the summary
    code, out, err = relulab(capsys, "train", "--model", "models/net.py:build", "-e", "1", "--train-size", "200",
                             "--json", "--device", "cpu")
    assert code == 0, err
    result = json.loads(out)
    assert result["spec"]["model"]["activation"] == "keep" and result["spec"]["model"]["kwargs"] == {}
    assert result["provenance"]["model_source"]["target"] == f"{project / 'models' / 'net.py'}:build"


def test_a_checkpoint_of_your_own_model_evaluates_until_the_model_file_changes(capsys, project, monkeypatch):
    monkeypatch.chdir(project)
    code, _, err = relulab(capsys, "train", "--model", "models/net.py:build", "-e", "1", "--train-size", "200",
                           "--device", "cpu", "--off", "act", "--save", "m.pt")
    assert code == 0, err
    code, out, err = relulab(capsys, "evaluate", "m.pt", "--device", "cpu", "--json")
    assert code == 0, err
    (project / "models" / "net.py").write_text(MODEL + "# edited\n")
    code, out, err = relulab(capsys, "evaluate", "m.pt", "--device", "cpu")
    assert code == 2 and "model.source_sha256: net.py:build is not the source" in err and err.count("\n") == 1


def test_inspect_your_own_model(capsys, project):
    code, out, err = relulab(capsys, "inspect", "--model", str(project / "models" / "net.py") + ":build",
                             "--model-kwargs", '{"width": 5}', "--json")
    assert code == 0, err
    report = json.loads(out)
    assert [s["name"] for s in report["slots"]] == ["act", "F.relu"]
    assert [s["elements"] for s in report["slots"]] == [5, 5]


def test_a_spec_with_a_python_model_runs_searches_and_reruns_when_the_model_changes(capsys, project, monkeypatch):
    monkeypatch.chdir(project.parent)  # the target is relative to the spec's folder, not to the current one
    store = project / "mine.sqlite"
    code, out, err = relulab(capsys, "run", str(project / "mine.yaml"), "--store", str(store), "--no-report")
    assert code == 0, err
    assert "4 runs trained" in err
    first = stored_keys(store)
    assert len(first) == 4
    code, out, err = relulab(capsys, "search", str(project / "mine.yaml"), "--strategy", "greedy", "--budget", "1",
                             "--plain-rule", "--store", str(store), "--no-report")
    assert code == 0, err
    assert "already in the store" in err
    code, _, err = relulab(capsys, "run", str(project / "mine.yaml"), "--store", str(store), "--no-report")
    assert code == 0 and "0 runs trained" in err  # unedited: the same runs
    (project / "models" / "net.py").write_text(MODEL.replace("width=16", "width=15"))
    code, _, err = relulab(capsys, "run", str(project / "mine.yaml"), "--store", str(store), "--no-report")
    assert code == 0 and "4 runs trained" in err  # edited: new runs, the old ones kept beside them
    assert first < stored_keys(store)


@pytest.mark.parametrize("argv,message", [
    (["--model", "no_such_pkg.nets:build"], "error: --model: cannot import 'no_such_pkg.nets' (No module named"),
    (["--model", "models/net.py"], "error: --model: unknown value 'models/net.py'"),
    (["--model", "models/net.py:"], "error: --model: expected 'module:function' or 'file.py:function'"),
    (["--model", "models/missing.py:build"], "error: --model: "),
    (["--model", "models/net.py:Net"], "error: --model-kwargs: net.py:Net does not take them"),
    (["--model", "models/net.py:build", "--model-kwargs", "{width: 3}"], "error: --model-kwargs: expected a JSON"),
    (["--model", "models/net.py:build", "--model-kwargs", '{"depth": 3}'], "error: --model-kwargs: net.py:build "
                                                                          "does not take them"),
    (["--model", "deep-mlp", "--model-kwargs", '{"depth": 3}'], "error: --model-kwargs: only a model by reference"),
    (["--model", "models/net.py:build", "--widths", "4"], "error: --widths: a model by reference is shaped by"),
    (["--model", "models/net.py:build", "--slot", "nope=tanh"], "error: --slot/--off: slot: unknown value 'nope'"),
])
def test_train_mistakes_are_one_line_exit_2(capsys, project, monkeypatch, argv, message):
    monkeypatch.chdir(project)
    code, out, err = relulab(capsys, "train", "-e", "1", "--device", "cpu", *argv)
    assert code == 2
    assert err.startswith(message) and err.count("\n") == 1, err


def test_data_by_reference_in_a_spec(capsys, project):
    (project / "data.py").write_text(textwrap.dedent("""\
        import torch

        def datasets():
            y = torch.arange(240) % 4
            x = torch.randn(240, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 0.3 + y.view(-1, 1, 1, 1)
            return {"train": (x[:180], y[:180]), "test": (x[180:], y[180:])}
        """))
    (project / "data.yaml").write_text(SPEC.replace("{name: digits, train_size: 300}",
                                                    '{name: python, target: "data.py:datasets"}'))
    code, out, err = relulab(capsys, "run", str(project / "data.yaml"), "--store", str(project / "d.sqlite"),
                             "--no-report")
    assert code == 0, err
    assert "4 runs trained" in err
