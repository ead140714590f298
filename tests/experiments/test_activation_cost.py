"""The activation-cost analysis, timed by torch.utils.benchmark: median and interquartile range per activation,
after warm-up calls, on a stated number of threads."""
import pytest
import torch

from relulab.core.errors import UserError
from relulab.experiments.analyses import ANALYSES, WARMUP_CALLS, parse_analyses

FIELDS = ("median_ms", "iqr_ms", "q25_ms", "q75_ms", "measurements", "calls_per_measurement")


def _cost(**options) -> dict:
    parsed = parse_analyses({"activation_cost": {"elements": 2048, "min_run_time": 0.01, **options}})
    return ANALYSES["activation_cost"].compute(parsed["activation_cost"], ["relu"], torch.device("cpu"))


def test_cost_has_median_and_iqr_per_activation_and_says_its_threads():
    value = _cost(activations=["relu", "tanh"], threads=1)
    assert value["threads"] == 1 and value["warmup"] == WARMUP_CALLS
    assert value["timer"] == "torch.utils.benchmark.Timer.blocked_autorange" and value["min_run_time"] == 0.01
    assert [r["activation"] for r in value["rows"]] == ["relu", "tanh"]
    for row in value["rows"]:
        for what in ("forward", "forward_backward"):
            q = {k: row[f"{what}_{k}"] for k in FIELDS}
            assert q["iqr_ms"] >= 0 and q["iqr_ms"] == pytest.approx(q["q75_ms"] - q["q25_ms"])
            assert 0 < q["q25_ms"] <= q["median_ms"] <= q["q75_ms"]
            assert q["measurements"] >= 1 and q["calls_per_measurement"] >= 1
    assert "IQR" in value["lines"][0] and value["lines"][0].endswith("; 1 thread")


def test_auto_threads_are_torchs_and_the_setting_is_restored():
    before = torch.get_num_threads()
    value = _cost(activations=["relu"])  # threads: auto
    assert value["threads"] == before and torch.get_num_threads() == before


@pytest.mark.parametrize("options, message", [
    ({"threads": 0}, "analyses.activation_cost.threads: expected auto or a positive integer, got 0"),
    ({"min_run_time": -1}, "analyses.activation_cost.min_run_time: expected a positive number of seconds, got -1"),
    ({"repeats": 5}, "analyses.activation_cost: unknown value 'repeats'"),
])
def test_bad_options_are_one_line_errors_naming_the_field(options, message):
    with pytest.raises(UserError, match="^" + message.replace("(", r"\(")):
        parse_analyses({"activation_cost": options})
