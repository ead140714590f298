"""The README's "Your own model": its model file and spec, as printed there, run through `relulab inspect` and
`relulab run`, and its Python lines."""
import json
import re
from pathlib import Path

from specs import relulab

README = Path(__file__).resolve().parents[2] / "README.md"


def block(first_line: str) -> str:
    """The README's code block whose first line is `first_line`."""
    blocks = re.findall(r"```\w*\n(.*?)```", README.read_text(), flags=re.S)
    found = [b for b in blocks if b.startswith(first_line + "\n")]
    assert len(found) == 1, f"one block starting {first_line!r} in README.md"
    return found[0]


def test_the_readme_model_and_spec_work_as_shown(capsys, tmp_path, monkeypatch):
    (tmp_path / "my_model.py").write_text(block("# my_model.py"))
    (tmp_path / "my-model.yaml").write_text(block("# my-model.yaml"))
    monkeypatch.chdir(tmp_path)
    code, out, err = relulab(capsys, "inspect", "--model", "my_model.py:build", "--json")
    assert code == 0, err
    assert [s["name"] for s in json.loads(out)["slots"]] == ["act", "F.relu"]  # as the README's comment says
    code, out, err = relulab(capsys, "run", "my-model.yaml", "--seeds", "0", "--set", "train.epochs=1",
                             "--set", "data.train_size=200", "--no-report")
    assert code == 0, err
    assert "3 runs trained" in err

    from relulab.data import DataSpec
    from relulab.training import RunSpec, TrainSpec, run
    from relulab.zoo import python_model

    spec = RunSpec(DataSpec("digits", train_size=200), python_model("my_model.py:build", {"width": 16}),
                   TrainSpec(epochs=1))
    result = run(spec, seed=0, device="cpu")
    assert [s.name for s in result.model.slots] == ["act", "F.relu"]
    assert result.provenance["model_source"]["sha256"] == spec.model.source_sha256
