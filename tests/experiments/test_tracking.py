"""Live tracking: TensorBoard event files and MLflow runs written as the sweep driver records each run."""
import sys
from pathlib import Path

import pytest
import torch

from relulab.experiments import Overrides, load_experiment, run_experiment
from relulab.experiments.tracking import Tracker, Trackers
from relulab.store import Store
from relulab.training.loop import epoch_batches
from relulab.training.schedules import ScheduleSpec, build_scheduler
from specs import TINY, quiet, relulab, stored_runs, write_spec

# TINY with a probe (slot statistics each epoch, so histograms of them) and a configuration on a schedule (so the
# learning rate changes within the run); three epochs.
PROBED = TINY.replace("epochs: 2", "epochs: 3").replace(
    "  tanh: {model: {activation: tanh}}\n",
    "  tanh: {model: {activation: tanh}}\n  cosine: {train: {schedule: {name: cosine}}}\n") + "probes: [sparsity]\n"


def experiment(folder: Path, text: str = PROBED, seeds=(0,)):
    return load_experiment(str(write_spec(folder, text)), Overrides(store=str(folder / "s.sqlite"), seeds=list(seeds)))


def accumulator(folder: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    return EventAccumulator(str(folder), size_guidance={"scalars": 0, "histograms": 0, "tensors": 0}).Reload()


def scalars(acc, tag: str) -> dict[int, float]:
    return {e.step: e.value for e in acc.Scalars(tag)}


def session_hparams(acc) -> dict:
    """The hyperparameters a run's event file gives TensorBoard's HParams plugin."""
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    content = acc.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    start = HParamsPluginData.FromString(content).session_start_info
    return {k: v.WhichOneof("kind") and getattr(v, v.WhichOneof("kind")) for k, v in start.hparams.items()}


class Peek(Tracker):
    """After each run is logged, what TensorBoard reads back of the log folder then, and how many runs the store
    holds: the sweep is still going while the first runs are on disk."""

    name = "peek"

    def __init__(self, logdir: Path, store: Path):
        self.logdir, self.store, self.seen = logdir, store, []

    def run_done(self, run, metrics, weights):
        folder = self.logdir / run.part / run.config / f"seed{run.seed}"
        acc = accumulator(folder)
        self.seen.append((run.config, stored_runs(self.store), sorted(acc.Tags()["scalars"]),
                          sorted(p.name for p in self.logdir.glob("tiny/*/seed*"))))


def test_tensorboard_logs_each_run_while_the_sweep_goes_on(tmp_path):
    pytest.importorskip("tensorboard")
    from relulab.experiments.trackers import TensorBoardTracker

    exp, tb = experiment(tmp_path), tmp_path / "tb"
    peek = Peek(tb, exp.store)
    run_experiment(exp, log=quiet, echo=quiet, trackers=Trackers([TensorBoardTracker(tb), peek]))

    first, stored, tags, folders = peek.seen[0]
    assert stored == 1 and len(peek.seen) == 3  # read back when one run of three was in the store
    assert {"train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds", "hparams/best_val_acc"} <= set(tags)
    assert "sparsity/slot01" in tags and "sparsity/slot02" in tags
    assert len(folders) == 1  # the runs not yet recorded have no folder yet

    with Store(exp.store) as s:
        rows = {r["variant"]: r for r in s.experiment_runs("tiny")}
        epochs = s.epochs([r["key"] for r in rows.values()])
    for config, row in rows.items():
        acc = accumulator(tb / "tiny" / config / "seed0")
        assert scalars(acc, "val_acc") == pytest.approx({e["epoch"]: e["val_acc"] for e in epochs[row["key"]]})
        assert scalars(acc, "hparams/best_val_acc") == pytest.approx({3: row["best_val_acc"]})
        histograms = acc.Tags()["histograms"]
        assert "sparsity/slots" in histograms and any(t.startswith("weights/") for t in histograms)
        assert [h.step for h in acc.Histograms("sparsity/slots")] == [0, 1, 2, 3]  # as initialised, then each epoch
        hp = session_hparams(acc)
        assert hp["config"] == config and hp["seed"] == 0 and hp["train.optimizer.lr"] == pytest.approx(0.05)
        assert hp["model.activation"] == ("tanh" if config == "tanh" else "relu")

    # The learning rate is the one the optimizer used in each epoch's last step.
    lr = scalars(accumulator(tb / "tiny" / "cosine" / "seed0"), "lr")
    steps = len(epoch_batches(rows["cosine"]["data"]["train"], 32))
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.05)
    scheduler = build_scheduler(optimizer, ScheduleSpec("cosine"), steps, 3)
    used = []
    for step in range(3 * steps):
        used.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lr == pytest.approx({e: used[e * steps - 1] for e in (1, 2, 3)})
    assert lr[1] > lr[2] > lr[3] > 0
    assert scalars(accumulator(tb / "tiny" / "relu" / "seed0"), "lr") == pytest.approx({1: 0.05, 2: 0.05, 3: 0.05})


def test_the_reports_export_writes_what_the_live_log_wrote(tmp_path):
    pytest.importorskip("tensorboard")
    from relulab.experiments.trackers import TensorBoardTracker
    from relulab.report import build_report

    exp = experiment(tmp_path)
    run_experiment(exp, log=quiet, echo=quiet, trackers=Trackers([TensorBoardTracker(tmp_path / "live")]))
    build_report(exp.store, out_dir=tmp_path / "report", tensorboard=tmp_path / "after")
    for config in ("relu", "tanh", "cosine"):
        live, after = (accumulator(tmp_path / kind / "tiny" / config / "seed0") for kind in ("live", "after"))
        for tag in ("train_loss", "val_acc", "lr", "sparsity/slot01", "hparams/final_val_acc"):
            assert scalars(after, tag) == pytest.approx(scalars(live, tag))
        assert session_hparams(after) == session_hparams(live)
        assert "sparsity/slots" in after.Tags()["histograms"]
        assert len(list((tmp_path / "after" / "tiny" / config / "seed0").glob("events.out.tfevents.*"))) == 1


def test_a_failing_tracker_is_dropped_and_the_sweep_goes_on(tmp_path):
    class Broken(Tracker):
        name = "broken"

        def __init__(self):
            self.calls, self.closed = 0, None

        def run_started(self, run):
            self.calls += 1
            raise OSError("No space left on device")

        def close(self, finished=True):
            self.closed = finished

    exp, lines, broken = experiment(tmp_path, TINY, seeds=(0, 1)), [], Broken()
    run_experiment(exp, log=quiet, echo=quiet, trackers=Trackers([broken], lines.append))
    assert stored_runs(exp.store) == 4 and broken.calls == 1 and broken.closed is False
    assert lines == ["warning: broken logging stopped: OSError: No space left on device"]


@pytest.fixture
def mlflow_store(tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # what mlflow.search_runs reads; no global state is set
    return mlflow, uri


def test_mlflow_gets_each_run_with_params_metrics_tags_and_the_report(tmp_path, capsys, mlflow_store):
    mlflow, uri = mlflow_store
    write_spec(tmp_path)
    store, out = tmp_path / "s.sqlite", tmp_path / "report"
    code, _, err = relulab(capsys, "run", str(tmp_path / "spec.yaml"), "--store", str(store), "--out", str(out),
                           "--mlflow", uri)
    assert code == 0, err
    runs = mlflow.search_runs(experiment_names=["tiny"])
    children = runs[runs["tags.relulab.role"].isna()]
    sweep = runs[runs["tags.relulab.role"] == "sweep"]
    assert len(children) == 4 and len(sweep) == 1 and set(runs["status"]) == {"FINISHED"}
    assert set(children["tags.mlflow.parentRunId"]) == {sweep["run_id"].iloc[0]}
    assert set(zip(children["tags.relulab.config"], children["params.seed"])) == {
        ("relu", "0"), ("relu", "1"), ("tanh", "0"), ("tanh", "1")}
    assert set(children["params.train.optimizer.lr"]) == {"0.05"} and set(children["params.model.widths"]) == {"[8, 8]"}
    assert set(children["params.model.activation"]) == {"relu", "tanh"}

    client = mlflow.tracking.MlflowClient(uri)
    with Store(store) as s:
        rows = {r["key"]: r for r in s.experiment_runs("tiny")}
        epochs = s.epochs(rows)
    for _, child in children.iterrows():
        key = child["tags.relulab.run_key"]
        assert child["tags.relulab.experiment"] == "tiny" and child["tags.relulab.seed"] == str(rows[key]["seed"])
        assert child["metrics.best_val_acc"] == pytest.approx(rows[key]["best_val_acc"])
        assert child["metrics.run_seconds"] == pytest.approx(rows[key]["seconds"], abs=1e-3)
        assert child["metrics.epochs"] == 2 and child["metrics.seconds"] == pytest.approx(epochs[key][-1]["seconds"])
        history = client.get_metric_history(child["run_id"], "val_acc")
        assert {m.step: m.value for m in history} == pytest.approx({e["epoch"]: e["val_acc"] for e in epochs[key]})
        assert [m.value for m in client.get_metric_history(child["run_id"], "lr")] == pytest.approx([0.05, 0.05])
    report = {Path(a.path).name for a in client.list_artifacts(sweep["run_id"].iloc[0], "report")}
    assert {"report.html", "report.md", "summary.csv", "runs.csv"} <= report
    assert (tmp_path / "mlartifacts").is_dir()  # beside the database, not in the working folder


def test_a_second_command_adds_a_sweep_run_to_the_same_mlflow_experiment(tmp_path, capsys, mlflow_store):
    mlflow, uri = mlflow_store
    write_spec(tmp_path)
    for seeds in ("0", "0-1"):
        code, _, err = relulab(capsys, "run", str(tmp_path / "spec.yaml"), "--store", str(tmp_path / "s.sqlite"),
                               "--no-report", "--mlflow", uri, "--seeds", seeds)
        assert code == 0, err
    runs = mlflow.search_runs(experiment_names=["tiny"])
    assert (runs["tags.relulab.role"] == "sweep").sum() == 2
    assert sorted(runs["params.seed"].dropna()) == ["0", "0", "1", "1"]  # the second trained seed 1 only


@pytest.mark.parametrize("argv,message", [
    (["--mlflow", "nosuchscheme://x"], "error: --mlflow: cannot use the MLflow tracking store nosuchscheme://x: "),
    (["--mlflow", "sqlite:////proc/relulab-nowhere/m.db"], "error: --mlflow: cannot use the MLflow tracking store "),
    (["--tensorboard", "spec.yaml"], "error: --tensorboard: "),
])
def test_a_bad_destination_is_one_line_before_anything_trains(tmp_path, capsys, monkeypatch, argv, message):
    pytest.importorskip("mlflow")
    pytest.importorskip("tensorboard")
    monkeypatch.chdir(tmp_path)
    write_spec(tmp_path)
    code, _, err = relulab(capsys, "run", "spec.yaml", "--store", "s.sqlite", *argv)
    assert code == 2 and err.startswith(message) and err.count("\n") == 1, err
    assert not (tmp_path / "s.sqlite").exists()


@pytest.mark.parametrize("option,module,extra", [("--mlflow", "mlflow", "mlflow"),
                                                 ("--tensorboard", "torch.utils.tensorboard", "tensorboard")])
@pytest.mark.parametrize("command", ["run", "search"])
def test_a_missing_package_is_one_line_before_anything_trains(tmp_path, capsys, monkeypatch, option, module, extra,
                                                              command):
    for name in (module, f"{module}.tracking") if extra == "mlflow" else (module,):
        monkeypatch.setitem(sys.modules, name, None)  # as if it were not installed
    write_spec(tmp_path)
    code, _, err = relulab(capsys, command, str(tmp_path / "spec.yaml"), "--store", str(tmp_path / "s.sqlite"),
                           option, str(tmp_path / "dest"))
    assert code == 2, err
    assert err == f"error: {option}: the {extra} package is not installed; pip install relulab[{extra}]\n"
    assert not (tmp_path / "s.sqlite").exists() and not (tmp_path / "dest").exists()


def test_search_logs_its_runs_live(tmp_path, capsys):
    pytest.importorskip("tensorboard")
    write_spec(tmp_path, TINY.replace("seeds: [0, 1]", "seeds: [0]"))
    tb = tmp_path / "tb"
    code, _, err = relulab(capsys, "search", str(tmp_path / "spec.yaml"), "--store", str(tmp_path / "s.sqlite"),
                           "--no-report", "--strategy", "oracle", "--budget", "1", "--tensorboard", str(tb))
    assert code == 0, err
    with Store(tmp_path / "s.sqlite") as s:
        trained = s.experiment_runs("tiny")
    folders = list(tb.glob("tiny/*/seed0"))
    assert len(folders) == len(trained) >= 2
    assert all("val_acc" in accumulator(f).Tags()["scalars"] for f in folders)


def test_train_logs_each_seed(tmp_path, capsys, mlflow_store):
    pytest.importorskip("tensorboard")
    mlflow, uri = mlflow_store
    tb = tmp_path / "tb"
    code, _, err = relulab(capsys, "train", "-e", "2", "--widths", "8", "--seeds", "0,1", "--no-pack",
                           "--tensorboard", str(tb), "--mlflow", uri)
    assert code == 0, err
    for seed in (0, 1):
        acc = accumulator(tb / "digits" / "deep-mlp" / f"seed{seed}")
        assert sorted(scalars(acc, "val_acc")) == [1, 2] and session_hparams(acc)["seed"] == seed
    runs = mlflow.search_runs(experiment_names=["train"])
    assert sorted(runs["params.seed"].dropna()) == ["0", "1"]
