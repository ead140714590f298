"""`relulab fold`: a trained checkpoint folded, read back by `relulab evaluate` with the same accuracy; bad input is
one line, exit 2, and nothing written."""
import json

import pytest
import torch

from specs import relulab
from relulab.cli import main
from relulab.training import checkpoints


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A small deep-mlp on digits with slots 2 and 3 off, and one with every slot on (nothing to fold); trained
    once for the module (capsys is a test's, so the command is called directly)."""
    folder = tmp_path_factory.mktemp("fold")
    for name, extra in (("off.pt", ["--off", "2,3"]), ("relu.pt", [])):
        with pytest.raises(SystemExit) as done:
            main(["train", "-d", "digits", "--widths", "32x4", "-e", "1", "--train-size", "400", "--device", "cpu", "--json",
                  "--save", str(folder / name), *extra])
        assert done.value.code == 0
    return folder


def accuracies(capsys, path):
    code, out, err = relulab(capsys, "evaluate", str(path), "--json", "--device", "cpu")
    assert code == 0, err
    return [row["accuracy"] for row in json.loads(out)["results"]]


def test_fold_then_evaluate_gives_the_same_accuracy(capsys, trained, tmp_path):
    out = tmp_path / "folded.pt"
    code, stdout, err = relulab(capsys, "fold", str(trained / "off.pt"), "-o", str(out))
    assert code == 0, err
    assert stdout.strip() == str(out)
    assert "layers 5 -> 3" in err and "merged body.3 + body.4 + body.5 + body.6 + body.7 -> Linear(32 -> 32)" in err
    assert "max |folded - original|" in err
    assert accuracies(capsys, out) == accuracies(capsys, trained / "off.pt")
    ckpt = checkpoints.load(out)
    assert ckpt.folded["layers_after"] == 3 and ckpt.folded["approximate"] is False
    assert ckpt.model.placement() == ["relu", "relu"]  # slots 1 and 4; 2 and 3 went with the layers they joined
    raw = torch.load(out, weights_only=True)  # plain PyTorch reads it too
    assert raw["folded"]["max_abs_diff"] < 1e-4


@pytest.mark.parametrize("case,message", [
    ("missing", "missing.pt: checkpoint not found"),
    ("corrupt", "corrupt.pt: not a readable checkpoint"),
    ("nothing", "relu.pt: model deep-mlp: nothing to fold"),
    ("folder", "is a folder; expected the checkpoint file to write"),
    ("folded", "already folded"),
])
def test_bad_input_is_one_line_exit_2_and_nothing_written(capsys, trained, tmp_path, case, message):
    source = {"missing": tmp_path / "missing.pt", "corrupt": tmp_path / "corrupt.pt",
              "nothing": trained / "relu.pt", "folder": trained / "off.pt", "folded": tmp_path / "once.pt"}[case]
    (tmp_path / "corrupt.pt").write_bytes(b"not a checkpoint")
    if case == "folded":
        assert relulab(capsys, "fold", str(trained / "off.pt"), "-o", str(source))[0] == 0
    out = tmp_path / "out" if case == "folder" else tmp_path / "out.pt"
    if case == "folder":
        out.mkdir()
    code, _, err = relulab(capsys, "fold", str(source), "-o", str(out))
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1 and err.startswith("error: ")
    assert not (tmp_path / "out.pt").exists() and (not out.is_dir() or not any(out.iterdir()))
