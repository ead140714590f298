"""Run keys are the store's identity of a run: the fields models and data by reference added (target, kwargs,
source_sha256) leave every built-in spec's key as it was; these keys were computed before they existed."""
from relulab.experiments.plan import load_experiment, run_key
from relulab.training.specs import build_run_spec


def test_built_in_specs_keep_their_run_keys():
    assert [p.key for p in load_experiment("quickstart").planned()][:3] == [
        "9c592c319f8ddf2f4311f73f", "7731f8fc7dca55eb188e4f51", "06ee822e776bbb95e1a788a8"]
    spec = build_run_spec({"model": {"name": "resnet20", "slots": {3: "identity"}},
                           "data": {"name": "digits", "image_size": 32}, "train": {"epochs": 2}})
    assert run_key(spec, 0) == "e9a9a224b8d5c8182d58f8ef"
