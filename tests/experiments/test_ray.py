"""Scale-out on Ray: a real local Ray cluster (2 CPUs) runs sweeps with the same results as the in-process
executor; a worker killed mid-task is retried, a killed driver resumes from the store, and every run lands in
the store exactly once.

The cluster tests need Ray (`pip install "relulab[ray]"`, which `.ci/run` installs): where it is missing they
are skipped, except in CI, where they fail. The tests of task cutting and of the command's options need no
cluster.
"""
import dataclasses
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time

import pytest
import torch

from relulab.core.errors import UserError
from relulab.experiments.executors import (InProcessExecutor, RayExecutor, Task, _probe_address, cut_tasks, execute_task,
                               run_task)
from relulab.experiments import Overrides, load_experiment, run_experiment
from relulab.search import SearchOptions, run_search
from relulab.data import DataSpec
from relulab.zoo.models import ModelSpec
from relulab.zoo.optim import OptimizerSpec
from relulab.training.specs import Job, RunSpec, TrainSpec
from specs import quiet, relulab, stored_runs, write_spec

# Two parts in one store: plain runs (packed: stacks of the same shape train together) and probed runs (each
# trains alone, its per-slot statistics travel back from the worker). `threads: 1` in the driver and in every
# worker, so that CPU training repeats bit for bit wherever it runs.
SWEEP = """\
name: raysweep
device: cpu
threads: 1
seeds: [0, 1]
data: {name: synthetic, options: {n: 240, classes: 3, size: 4}}
model: {name: deep-mlp, widths: [8, 8], init: he_normal}
train: {epochs: 2, batch_size: 32, optimizer: {name: sgd, lr: 0.05}}
parts:
  plain:
    configs:
      relu: {}
      tanh: {model: {activation: tanh}}
    baseline: relu
  probed:
    configs:
      elu: {model: {activation: elu}}
    probes: [sparsity]
"""

# Runs committed one by one (pack: false: one run a task), slow enough that a kill lands mid-sweep.
SLOW = """\
name: rayslow
device: cpu
threads: 1
pack: false
seeds: [0, 1, 2]
data: {name: synthetic, options: {n: 3000, classes: 4, size: 8}}
model: {name: deep-mlp, widths: [128, 128, 128], init: he_normal}
train: {epochs: 6, batch_size: 32, optimizer: {name: sgd, lr: 0.05}}
configs:
  relu: {}
  tanh: {model: {activation: tanh}}
  elu: {model: {activation: elu}}
"""

# A search's runs (its base and each placement, over two seeds) train on the cluster; their probes are measured in
# the driver, on the final weights the workers send back.
SEARCH = """\
name: raysearch
device: cpu
threads: 1
seeds: [0, 1]
data: {name: synthetic, options: {n: 240, classes: 3, size: 4}}
model: {name: deep-mlp, widths: [8, 8, 8], init: he_normal}
train: {epochs: 2, batch_size: 32, optimizer: {name: sgd, lr: 0.05}}
configs:
  all-relu: {}
baseline: all-relu
"""


@pytest.fixture(scope="module")
def ray_module():
    try:
        import ray
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("Ray is not installed, but CI must run the Ray tests: .ci/run installs \".[test,ray]\"")
        pytest.skip('Ray is not installed (pip install "relulab[ray]"); CI runs these tests')
    return ray


@pytest.fixture(scope="module")
def cluster(ray_module, tmp_path_factory):
    """A real local Ray cluster with 2 CPUs (and 2 declared GPUs), shared by the tests of this module; yields its
    address."""
    ray = ray_module
    auth_mode = os.environ.get("RAY_AUTH_MODE")
    cache = tmp_path_factory.mktemp("ray-cache")
    # The workers inherit this environment: offline, and a private cache (as conftest sets for the tests).
    # 2 GPUs are declared that this machine does not have: GPU tasks are scheduled as on a 2-GPU host (the one
    # test that asks for them trains on the CPU all the same); experiments with `device: cpu` use CPUs only.
    ray.init(address="local", num_cpus=2, num_gpus=2, include_dashboard=False, logging_level="warning",
             runtime_env={"env_vars": {"RELULAB_OFFLINE": "1", "RELULAB_CACHE": str(cache)}})
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()
        if auth_mode is None:  # ray.init switched this process to token authentication
            os.environ.pop("RAY_AUTH_MODE", None)


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()  # a spec's `threads:` sets it for the whole process
    yield
    torch.set_num_threads(threads)


def _runs(path) -> dict:
    db = sqlite3.connect(path)
    db.row_factory = sqlite3.Row
    columns = ("experiment", "part", "variant", "seed", "status", "best_val_acc", "best_epoch", "final_val_acc",
               "test_acc", "test_loss", "diverged_at", "epochs", "params", "val_is_test", "spec_json")
    runs = {r["key"]: {c: r[c] for c in columns} for r in db.execute("SELECT * FROM runs")}
    for key, run in runs.items():
        run["history"] = [tuple(r) for r in db.execute(
            "SELECT epoch, train_loss, train_acc, val_loss, val_acc FROM epochs WHERE run_key = ? ORDER BY epoch",
            (key,))]
        run["slots"] = sorted(tuple(r) for r in db.execute(
            "SELECT epoch, stat, slot, value FROM slot_stats WHERE run_key = ?", (key,)))
    assert db.execute("SELECT count(*) FROM claims").fetchone()[0] == 0
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    db.close()
    return runs


def _assert_same(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for key in a:
        for column, value in a[key].items():
            if column in ("history", "slots"):
                assert len(value) == len(b[key][column]), (key, column)
                for x, y in zip(value, b[key][column]):
                    assert x == pytest.approx(y, abs=1e-6), (key, column)
            elif isinstance(value, float):
                assert value == pytest.approx(b[key][column], abs=1e-6), (key, column)
            else:
                assert value == b[key][column], (key, column)


def _kept(store) -> dict:
    """{(run key, final | best): (epoch, state dict)} of the weights a store kept."""
    db = sqlite3.connect(store)
    try:
        found = db.execute("SELECT run_key, kind, file, epoch FROM run_weights").fetchall()
    finally:
        db.close()
    folder = store.with_name(f"{store.stem}.weights")
    return {(key, kind): (epoch, torch.load(folder / name, weights_only=True)["state_dict"])
            for key, kind, name, epoch in found}


def _expected_keys(spec, store) -> set:
    return {p.key for p in load_experiment(str(spec), Overrides(store=str(store))).planned()}


# ---------------------------------------------------------------- connecting


def test_an_address_where_no_cluster_listens_is_refused_at_once(ray_module):
    import socket

    with socket.socket() as s:  # a free port on this machine, closed again: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for address, message in ((f"127.0.0.1:{port}", f"^executor.address: no Ray cluster answers at 127.0.0.1:{port}: "),
                             ("head-without-port", "^executor.address: expected HOST:PORT")):
        executor = RayExecutor(address=address)
        with pytest.raises(UserError, match=message):
            if executor.ray.is_initialized():  # (this module's cluster runs) a joined Ray would be reused
                _probe_address(address)
            else:
                executor.open("cpu")  # refused at once (ray.init would retry for minutes)
        assert not executor._started


# ---------------------------------------------------------------- options and errors


def test_without_ray_the_command_says_how_to_install_it(capsys, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    store = tmp_path / "s.sqlite"
    code, out, err = relulab(capsys, "run", str(write_spec(tmp_path, SWEEP)), "--store", str(store),
                             "--executor", "ray")
    assert (code, out, err) == (2, "", 'error: --executor ray needs Ray: pip install "relulab[ray]"\n')
    assert not store.exists()


@pytest.mark.parametrize("argv,message", [
    (["--executor", "slurm"], "error: --executor: unknown value 'slurm'; expected one of: in-process, ray"),
    (["--address", "head:6379"], "error: --address: only with --executor ray"),
    (["--cpus-per-task", "2"], "error: --cpus-per-task: only with --executor ray"),
    (["--executor", "ray", "--gpus-per-task", "2"], "error: --gpus-per-task: expected a number from 0 to 1"),
    (["--executor", "ray", "--cpus-per-task", "0"], "error: --cpus-per-task: expected a positive integer"),
])
def test_bad_executor_options_are_one_line_exit_2_and_nothing_written(capsys, tmp_path, argv, message):
    store = tmp_path / "s.sqlite"
    code, out, err = relulab(capsys, "run", str(write_spec(tmp_path, SWEEP)), "--store", str(store), *argv)
    assert code == 2 and err.startswith(message) and err.count("\n") == 1 and out == "", err
    assert not store.exists()


def test_executor_errors_name_fields_and_the_command_shows_its_options():
    from relulab.cli.app import flag_message
    from relulab.experiments import make_executor

    with pytest.raises(UserError, match="^executor.address: only with executor.name ray$") as error:
        make_executor("in-process", address="head:6379")
    assert flag_message(str(error.value)) == "--address: only with --executor ray"
    with pytest.raises(UserError, match="^executor.name: unknown value 'slurm'") as error:
        make_executor("slurm")
    assert flag_message(str(error.value)).startswith("--executor: unknown value 'slurm'")


# ---------------------------------------------------------------- cutting work into tasks


def _job(seed, activation="relu", model="deep-mlp", epochs=2, batch=32, data=None, key=None):
    spec = RunSpec(data or DataSpec(), ModelSpec(model, activation=activation,
                                                 widths=[16, 16] if model == "deep-mlp" else None),
                   TrainSpec(epochs, batch, OptimizerSpec("sgd", 0.01)))
    return Job(spec, seed, key or f"{model}-{activation}-{seed}-{epochs}-{batch}-{data.name if data else ''}")


def test_cut_tasks_fills_the_slots_keeps_stacks_whole_and_respects_the_pack_limit():
    acts = ["relu", "tanh", "elu", "selu"]
    jobs = [_job(s, a) for s in range(5) for a in acts]  # interleaved: a stack's jobs are not adjacent
    sizes = lambda tasks: [len(t.jobs) for t in tasks]  # noqa: E731
    assert sizes(cut_tasks(jobs, "cpu", slots=1)) == [20]
    two = cut_tasks(jobs, "cpu", slots=2)
    assert sizes(two) == [10, 10]
    assert [sorted({j.spec.model.activation for j in t.jobs}) for t in two] == [["relu", "tanh"], ["elu", "selu"]]
    assert sizes(cut_tasks(jobs, "cpu", slots=3)) == [7, 7, 6]
    assert sizes(cut_tasks(jobs, "cpu", slots=1, max_models=8)) == [7, 7, 6]
    assert sizes(cut_tasks(jobs, "cpu", slots=64)) == [1] * 20
    assert sizes(cut_tasks(jobs, "cpu", slots=1, pack=False)) == [1] * 20
    probed = cut_tasks(jobs, "cpu", slots=1, probes={jobs[0].key: (("sparsity",), 64)})
    assert sizes(probed) == [1, 19] and probed[0].probes == {jobs[0].key: (("sparsity",), 64)}
    assert sorted(j.key for t in two for j in t.jobs) == sorted(j.key for j in jobs)  # every job once


def test_cut_tasks_separates_datasets_and_schedules_and_packs_cnns_only_on_gpus():
    other = DataSpec("synthetic")
    jobs = [_job(0), _job(1), _job(0, data=other), _job(0, epochs=3), _job(0, batch=64)]
    tasks = cut_tasks(jobs, "cpu", slots=1)
    assert [len(t.jobs) for t in tasks] == [2, 1, 1, 1]
    assert [t.data.name for t in tasks] == ["digits", "synthetic", "digits", "digits"]
    cnns = [_job(s, model="seed-cnn", data=DataSpec("synthetic", options={"size": 32, "channels": 3}))
            for s in range(4)]
    assert [len(t.jobs) for t in cut_tasks(cnns, "cpu", slots=1)] == [1, 1, 1, 1]  # no gain from packing on CPUs
    assert [len(t.jobs) for t in cut_tasks(cnns, "cuda", slots=2)] == [2, 2]  # CUDA graphs side by side
    assert all(t.device == "cuda" for t in cut_tasks(cnns, "cuda", slots=2))


def test_run_task_is_what_the_in_process_executor_runs(one_thread):
    jobs = [_job(0), _job(1, "tanh")]
    task = Task(jobs, DataSpec(), "cpu", probes={jobs[1].key: (("sparsity",), 32)}, threads=1)
    executor = InProcessExecutor()
    executor.open("cpu", {})
    direct = {o.job.key: o for o in run_task(task)}
    via = {o.job.key: o for o in executor.submit(executor.tasks(jobs, probes=task.probes, threads=1))}
    executor.close()
    assert sorted(direct) == sorted(via) == sorted(j.key for j in jobs)
    numbers = lambda o: [(e.train_loss, e.train_acc, e.val_loss, e.val_acc) for e in o.result.history.epochs]  # noqa
    for key in direct:
        assert numbers(direct[key]) == numbers(via[key])
    assert set(direct[jobs[1].key].slot_stats) == {0, 1, 2} and not direct[jobs[0].key].slot_stats
    stripped = execute_task(task)  # what a Ray worker sends back: numbers and weights, no model
    assert all(o.result.model is None for o in stripped) and all(o.result.model is not None for o in direct.values())
    for o in stripped:  # the final weights as CPU tensors, for the driver to keep
        model = direct[o.job.key].result.model
        assert o.final_state.keys() == model.state_dict().keys()
        assert all(torch.equal(o.final_state[k], v) and o.final_state[k].device.type == "cpu"
                   for k, v in model.state_dict().items())
        assert o.final_weights() is o.final_state


# ---------------------------------------------------------------- the same results, one writer


def test_a_sweep_through_ray_stores_what_the_in_process_executor_stores(cluster, tmp_path, capsys, one_thread):
    spec = write_spec(tmp_path, SWEEP)
    code, _, err = relulab(capsys, "run", str(spec), "--store", str(tmp_path / "local.sqlite"), "--no-report")
    assert code == 0, err
    code, out, err = relulab(capsys, "run", str(spec), "--store", str(tmp_path / "ray.sqlite"), "--executor", "ray")
    assert code == 0, err
    assert "executor ray:" in err and "6 runs trained, 0 already done" in err
    assert out.strip().endswith("raysweep-report/report.html")  # the report reads Ray's results like any others
    local, remote = _runs(tmp_path / "local.sqlite"), _runs(tmp_path / "ray.sqlite")
    assert len(local) == 6 and sum(bool(r["slots"]) for r in local.values()) == 2  # the probed part's runs
    _assert_same(local, remote)
    # the weights came back from the workers: the driver kept the same ones as it keeps of runs trained here
    kept = {name: _kept(tmp_path / f"{name}.sqlite") for name in ("local", "ray")}
    assert sorted(kept["local"]) == sorted(kept["ray"]) and len([k for k in kept["ray"] if k[1] == "final"]) == 6
    for key, (epoch, state) in kept["ray"].items():
        assert epoch == kept["local"][key][0]
        assert all(torch.equal(v, kept["local"][key][1][name]) for name, v in state.items()), key
    code, _, err = relulab(capsys, "run", str(spec), "--store", str(tmp_path / "ray.sqlite"), "--executor", "ray",
                           "--no-report")
    assert code == 0 and "0 runs trained, 6 already done" in err  # resumable like any sweep


def test_runs_trained_on_ray_are_logged_live_with_the_weights_the_workers_sent(cluster, tmp_path, capsys, one_thread):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tb = tmp_path / "tb"
    code, _, err = relulab(capsys, "run", str(write_spec(tmp_path, SWEEP)), "--store", str(tmp_path / "s.sqlite"),
                           "--executor", "ray", "--no-report", "--tensorboard", str(tb))
    assert code == 0, err
    folders = sorted(tb.glob("*/*/seed*"))
    assert len(folders) == 6  # every run, from the outcomes the workers sent back
    for folder in folders:
        tags = EventAccumulator(str(folder)).Reload().Tags()
        assert "val_acc" in tags["scalars"] and any(t.startswith("weights/") for t in tags["histograms"])
        assert ("sparsity/slots" in tags["histograms"]) == (folder.parts[-3] == "probed")


def test_ray_cuts_the_work_into_packs_for_every_worker(cluster, tmp_path, one_thread):
    spec = write_spec(tmp_path, SWEEP)
    exp = load_experiment(str(spec), Overrides(store=str(tmp_path / "s.sqlite")))
    seen: list = []

    class Recording(RayExecutor):
        def submit(self, tasks, still_wanted=None):
            seen.extend(tasks)
            return super().submit(tasks, still_wanted)

    executor = Recording()
    lines: list = []
    run_experiment(exp, log=lines.append, executor=executor)
    assert executor.slots == 2 and executor.worker_device == "cpu" and executor.gpus == 0
    # relu x 2 seeds and tanh x 2 seeds: one stack each, one task each; the probed elu runs train alone
    assert sorted(len(t.jobs) for t in seen) == [1, 1, 2, 2]
    assert all(len({j.spec.model.activation for j in t.jobs}) == 1 for t in seen)
    assert all(t.threads == 1 and t.device == "cpu" for t in seen)
    assert sum(bool(t.probes) for t in seen) == 2
    assert "2 at a time" in lines[0]


def test_on_gpus_every_task_gets_a_gpu_of_its_own(cluster, tmp_path, one_thread):
    spec = write_spec(tmp_path, SWEEP.replace("device: cpu", "device: auto"))  # auto: GPUs, as the cluster has
    started = tmp_path / "started"
    started.mkdir()

    def task_fn(task):  # trains on the CPU what Ray scheduled on a (declared) GPU
        assert task.device == "cuda"
        (started / f"{os.getpid()}-{time.time_ns()}-gpu{os.environ.get('CUDA_VISIBLE_DEVICES')}").touch()
        deadline = time.time() + 20
        while len(list(started.iterdir())) < 2 and time.time() < deadline:  # the first two tasks meet
            time.sleep(0.02)
        return execute_task(dataclasses.replace(task, device="cpu"))

    executor = RayExecutor(task_fn=task_fn)
    summary = run_experiment(load_experiment(str(spec), Overrides(store=str(tmp_path / "s.sqlite"))), log=quiet,
                             executor=executor)
    assert (executor.gpus, executor.slots, executor.worker_device) == (1.0, 2, "cuda")
    assert summary.trained == 6
    first_two = sorted(started.iterdir(), key=lambda p: int(p.name.split("-")[1]))[:2]
    assert sorted(p.name.split("-")[2] for p in first_two) == ["gpu0", "gpu1"]  # side by side, one GPU each


def test_the_share_of_a_task_follows_the_cluster_and_the_options(ray_module):
    one_gpu_nodes = [{"CPU": 8, "GPU": 1}, {"CPU": 8, "GPU": 1}]
    assert RayExecutor()._shares("auto", [{"CPU": 32, "GPU": 2}]) == (1.0, 2)
    assert RayExecutor(gpus_per_task=0.5)._shares("cuda", [{"CPU": 32, "GPU": 2}]) == (0.5, 4)
    assert RayExecutor(cpus_per_task=4)._shares("auto", one_gpu_nodes) == (1.0, 2)
    assert RayExecutor(cpus_per_task=6, gpus_per_task=0.25)._shares("auto", one_gpu_nodes) == (0.25, 2)
    assert RayExecutor()._shares("cpu", one_gpu_nodes) == (0.0, 16)
    assert RayExecutor(gpus_per_task=0)._shares("auto", one_gpu_nodes) == (0.0, 16)
    assert RayExecutor()._shares("auto", [{"CPU": 2}]) == (0.0, 2)
    with pytest.raises(UserError, match=r"^device: cuda asked for, but the Ray tasks get no GPU \(the Ray cluster "
                                        r"has none\)"):
        RayExecutor()._shares("cuda", [{"CPU": 2}])
    with pytest.raises(UserError, match="^executor.gpus_per_task: the Ray cluster has no GPU"):
        RayExecutor(gpus_per_task=1)._shares("auto", [{"CPU": 2}])


def _probes(path) -> dict:
    """{(run key, probe set, epoch, stat, slot, class): value} of a store's run_probes."""
    db = sqlite3.connect(path)
    try:
        return {tuple(r[:-1]): r[-1] for r in db.execute(
            "SELECT run_key, probe_set, epoch, stat, slot, class, value FROM run_probes")}
    finally:
        db.close()


def test_a_search_through_ray_stores_what_the_in_process_search_stores(cluster, tmp_path, one_thread):
    spec = write_spec(tmp_path, SEARCH)
    options = SearchOptions("oracle", budget=1)
    stores = {name: tmp_path / f"{name}.sqlite" for name in ("local", "ray")}
    local = run_search(load_experiment(str(spec), Overrides(store=str(stores["local"]))), options, log=quiet)
    remote = run_search(load_experiment(str(spec), Overrides(store=str(stores["ray"]))), options, log=quiet,
                        executor=RayExecutor())
    assert (remote.id, remote.result["final"], remote.trained) == (local.id, local.result["final"], 8)
    assert remote.result["mean"] == pytest.approx(local.result["mean"], abs=1e-6)  # 8: the base, 3 changes, 2 seeds
    runs = {name: _runs(path) for name, path in stores.items()}
    assert len(runs["ray"]) == 8
    _assert_same(runs["local"], runs["ray"])
    probes = {name: _probes(path) for name, path in stores.items()}
    assert probes["ray"].keys() == probes["local"].keys() and probes["ray"]
    for key, value in probes["local"].items():
        assert probes["ray"][key] == pytest.approx(value, abs=1e-6, nan_ok=True), key


def test_relulab_search_and_probe_run_on_ray(cluster, tmp_path, capsys, one_thread):
    spec, store = write_spec(tmp_path, SEARCH), tmp_path / "s.sqlite"
    code, out, err = relulab(capsys, "search", str(spec), "--strategy", "greedy", "--budget", "1", "--store",
                             str(store), "--no-report", "--executor", "ray", "--address", cluster)
    assert code == 0, err
    assert "executor ray:" in err and "4 runs trained, 0 already in the store" in err  # base + one proposal
    before = _runs(store)
    assert len(before) == 4
    # Probed at an epoch whose weights are not kept: a copy is retrained, on the cluster, with the probe attached.
    code, out, err = relulab(capsys, "probe", str(spec), "--seed", "1", "--epoch", "1", "--store", str(store),
                             "--no-report", "--out", str(tmp_path / "probes"), "--executor", "ray")
    assert code == 0, err
    assert "statistics of a copy of run" in err and "retrained for probing" in err
    runs = _runs(store)
    (copy,) = [key for key, run in runs.items() if run["seed"] == 1 and key not in before]
    assert len(runs) == 5 and {key[2] for key in _probes(store) if key[0] == copy} == {1}


# ---------------------------------------------------------------- failures


def _killed_once(marker: str):
    """A task function whose first attempt (of any task) trains its first run and then SIGKILLs its own worker
    process, results unsent; every other attempt is the real thing."""

    def task_fn(task):
        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return execute_task(task)
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        next(iter(run_task(task)))  # mid-task: some training done, nothing returned
        os.kill(os.getpid(), signal.SIGKILL)

    return task_fn


def test_a_worker_killed_mid_task_is_retried_and_every_run_stored_once(cluster, tmp_path, one_thread):
    spec, store, marker = write_spec(tmp_path, SWEEP), tmp_path / "s.sqlite", tmp_path / "killed.pid"
    exp = load_experiment(str(spec), Overrides(store=str(store)))
    summary = run_experiment(exp, log=quiet, executor=RayExecutor(task_fn=_killed_once(str(marker))))
    killed = int(marker.read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(killed, 0)  # the worker really died
    assert (summary.trained, summary.already_done, summary.finished_elsewhere) == (6, 0, 0)
    runs = _runs(store)
    assert set(runs) == _expected_keys(spec, store)  # every run, none twice (runs.key is the primary key)
    assert all(len(r["history"]) == 2 for r in runs.values())


def test_a_worker_killed_mid_search_loses_nothing(cluster, tmp_path, one_thread):
    """An oracle step on Ray whose first task's worker dies after training a run: the task is retried, the
    search ends as the in-process one does, and every run is stored once."""
    spec, marker = write_spec(tmp_path, SEARCH), tmp_path / "killed.pid"
    stores = {name: tmp_path / f"{name}.sqlite" for name in ("local", "ray")}
    options = SearchOptions("oracle", budget=1)
    local = run_search(load_experiment(str(spec), Overrides(store=str(stores["local"]))), options, log=quiet)
    remote = run_search(load_experiment(str(spec), Overrides(store=str(stores["ray"]))), options, log=quiet,
                        executor=RayExecutor(task_fn=_killed_once(str(marker))))
    with pytest.raises(ProcessLookupError):
        os.kill(int(marker.read_text()), 0)  # the worker really died
    assert (remote.id, remote.result["final"], remote.trained) == (local.id, local.result["final"], 8)
    assert _runs(stores["ray"]).keys() == _runs(stores["local"]).keys()  # every run, none twice


def test_an_error_in_a_task_is_not_retried_and_the_other_tasks_are_kept(cluster, tmp_path, one_thread):
    spec, store, attempts = write_spec(tmp_path, SWEEP), tmp_path / "s.sqlite", tmp_path / "attempts"
    attempts.mkdir()

    def task_fn(task):
        if any(j.spec.model.activation == "tanh" for j in task.jobs):
            (attempts / f"{os.getpid()}-{time.time_ns()}").touch()
            raise UserError("data.path: no such file on this node")
        return execute_task(task)

    exp = load_experiment(str(spec), Overrides(store=str(store)))
    with pytest.raises(UserError, match="^data.path: no such file on this node$"):
        run_experiment(exp, log=quiet, executor=RayExecutor(task_fn=task_fn))
    assert len(list(attempts.iterdir())) == 1  # retry_exceptions off: the same error would come back
    runs = _runs(store)  # the other tasks' runs are stored, the failed ones are not, no claim is left
    assert sorted(r["variant"] for r in runs.values()) == ["elu", "elu", "relu", "relu"]



def test_a_killed_driver_resumes_from_the_store(cluster, tmp_path, one_thread):
    spec, store = write_spec(tmp_path, SLOW), tmp_path / "slow.sqlite"
    expected = _expected_keys(spec, store)
    driver = subprocess.Popen(
        [sys.executable, "-c", "from relulab.cli import main; main()", "run", str(spec), "--store", str(store),
         "--no-report", "--executor", "ray", "--address", cluster],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    start = time.time()
    while stored_runs(store) < 1:
        assert driver.poll() is None, driver.communicate()
        assert time.time() - start < 120, "the sweep made no progress"
        time.sleep(0.02)
    os.kill(driver.pid, signal.SIGKILL)  # the driver dies; Ray drops its job's tasks
    driver.communicate()
    first = stored_runs(store)
    assert 0 < first < len(expected), "kill -9 should land mid-sweep"
    exp = load_experiment(str(spec), Overrides(store=str(store)))
    summary = run_experiment(exp, log=quiet, executor=RayExecutor())  # its claims are stale: taken over
    assert (summary.already_done, summary.trained) == (first, len(expected) - first)
    runs = _runs(store)
    assert set(runs) == expected and all(len(r["history"]) == 6 for r in runs.values())


def _without_ray_logs(err: str) -> list[str]:
    """stderr's lines less those Ray's own processes forward to it ('(raylet) ...', '(pid=...) ...', coloured):
    a raylet warns there of a nearly full disk, say, whatever relulab prints."""
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", line) for line in err.splitlines()]
    return [line for line in lines if not line.startswith("(")]


@pytest.mark.parametrize("argv,message", [
    (["--device", "cuda", "--gpus-per-task", "0"], "error: device: cuda asked for, but the Ray tasks get no GPU "
                                                   "(--gpus-per-task is 0)"),
    (["--device", "tpu"], "error: device: expected auto, cpu, cuda or cuda:N, got 'tpu'"),
    (["--gpus-per-task", "0.5"], "error: --gpus-per-task: the experiment's device is cpu"),
    (["--cpus-per-task", "64"], "error: --cpus-per-task: 64 asked for, but no node of the Ray cluster has that many"),
])
def test_what_the_cluster_cannot_run_is_refused_before_anything_is_written(cluster, capsys, tmp_path, argv,
                                                                             message):
    store = tmp_path / "s.sqlite"
    code, out, err = relulab(capsys, "run", str(write_spec(tmp_path, SWEEP)), "--store", str(store),
                             "--executor", "ray", *argv)
    ours = _without_ray_logs(err)
    assert code == 2 and len(ours) == 1 and ours[0].startswith(message) and out == "", err
    assert not store.exists()
    import ray

    assert ray.is_initialized()  # a Ray this process joined before is left running
