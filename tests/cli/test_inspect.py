"""`relulab inspect`: a built-in model's slots, parameters and multiply-accumulates, against counts by hand."""
import json

from specs import relulab

# deep-mlp on digits (8x8 images, 10 classes): Dense 300, 49 x Dense 100, Dense 10
DEEP_MLP_PARAMETERS = (64 * 300 + 300) + (300 * 100 + 100) + 48 * (100 * 100 + 100) + (100 * 10 + 10)
DEEP_MLP_MACS = 64 * 300 + 300 * 100 + 48 * 100 * 100 + 100 * 10


def test_inspect_json_counts_deep_mlp(capsys):
    code, out, err = relulab(capsys, "inspect", "--model", "deep-mlp", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["model"] == "deep-mlp" and report["dataset"] == "digits" and report["input_shape"] == [1, 8, 8]
    assert [s["index"] for s in report["slots"]] == list(range(1, 51))
    assert [s["elements"] for s in report["slots"]] == [300] + [100] * 49
    assert {s["activation"] for s in report["slots"]} == {"relu"} and report["slots"][0]["shape"] == [300]
    assert report["activation_elements"] == 300 + 49 * 100
    assert report["parameters"] == DEEP_MLP_PARAMETERS == 535_410
    assert report["macs"] == DEEP_MLP_MACS and report["flops"] == 2 * DEEP_MLP_MACS


def test_inspect_prints_a_table(capsys):
    code, out, err = relulab(capsys, "inspect", "--model", "bn-mlp")
    assert code == 0, err
    assert "bn-mlp on digits [1, 8, 8]: 51 slots" in out
    assert "activations per example: 13,312" in out  # 512 + 50 x 256


def test_inspect_a_conv_model_at_its_image_size(capsys):
    code, out, err = relulab(capsys, "inspect", "--model", "seed-cnn", "--image-size", "32", "--json")
    assert code == 0, err
    slots = json.loads(out)["slots"]
    assert len(slots) == 10 and slots[0]["shape"] == [48, 30, 30] and slots[0]["elements"] == 48 * 30 * 30
    assert slots[-1]["shape"] == [10, 1, 1]


def test_inspect_errors_name_the_options(capsys):
    code, out, err = relulab(capsys, "inspect", "--model", "resnet")
    assert code == 2 and out == ""
    assert err.startswith("error: --model: unknown value 'resnet'") and "deep-mlp" in err
    code, _, err = relulab(capsys, "inspect", "--model", "seed-cnn")
    assert code == 2 and err.startswith("error: --image-size: seed-cnn needs images of at least 32x32")
    code, _, err = relulab(capsys, "inspect", "--model", "deep-mlp", "--dataset", "digitz")
    assert code == 2 and err.startswith("error: --dataset: unknown value 'digitz'")
