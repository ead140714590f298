"""Executors: where a sweep's runs are trained.

The sweep driver (relulab.experiments.sweep: for sweeps, searches and probes) decides
*what* to train: the run keys the store does not hold yet, claimed there so that no other
driver trains them. An executor decides *where*:

    run_experiment(exp)                                            # InProcessExecutor: this process
    run_experiment(exp, executor=RayExecutor())                    # a local Ray with this machine's GPUs
    run_experiment(exp, executor=RayExecutor(address="head:6379", gpus_per_task=0.5))

Both take the same `Task`s and yield an `Outcome` per run as it finishes; the driver
commits every outcome with the same code (`Store.record`) whichever executor produced
it, so the store has one writer however many workers train (SPEC 7: several SQLite
writers is how `database is locked` happens).

A `Task` is plain, picklable data: jobs (spec + seed + run key) that share a dataset,
the dataset's `DataSpec` (paths already absolute: Ray workers do not run in the
driver's folder), probe settings, the device and thread count. `run_task` is the one
function that trains a task, in the driver's process or in a Ray worker: it loads the
data itself (cached per process, one dataset at a time), attaches the probes and calls
`packing.pack.train_many`, which packs what it can.

`InProcessExecutor` makes one task per dataset of a claimed batch and runs it here:
exactly what the driver did before executors existed. `RayExecutor` cuts the batch
into tasks of one pack each (`pack.pack_key`: jobs that can train together), small
enough that every GPU (or CPU slot) of the cluster gets work, and submits each as a
`ray.remote` call asking for `gpus_per_task` GPUs or `cpus_per_task` CPUs. A task whose
worker dies (killed, out of memory, node lost) is retried by Ray (`max_retries`); an
exception raised by the training code is not retried (`retry_exceptions=False`): a
missing dataset or a bad shape fails the same way every time. Results travel back as
numbers (history, summary, probe statistics, provenance) and the final and best-epoch
weights as CPU tensors (the driver keeps them beside the store: relulab.store.weights), never
models.

Ray is an optional extra (`pip install "relulab[ray]"`), imported only when a Ray
executor is made.
"""
from __future__ import annotations

import logging
import math
import os
import socket
from dataclasses import dataclass, field, replace
from typing import Callable, Iterator, Optional, Protocol, Sequence

import torch

from relulab.data import DataSpec, Splits, data_key, load_data
from relulab.core.env import resolve_device
from relulab.core.errors import UserError, unknown_choice
from relulab.training.resume import Resume
from relulab.packing.pack import train_many
from relulab.probes.callbacks import EpochProbeRequest, slot_probe
from relulab.probes.statistics import SLOT_NAMES, slot_names
from relulab.training.callbacks import Callback
from relulab.training.checkpoints import state_to_cpu
from relulab.training.specs import Job, RunResult

EXECUTORS = ("in-process", "ray")
RAY_HINT = 'pip install "relulab[ray]"'
MAX_MODELS_PER_TASK = 64  # train_many's own pack limit: a bigger task would only run in pieces
StillWanted = Callable[[list[Job]], list[Job]]  # jobs -> those still to train (train_many's still_wanted)


# ---------------------------------------------------------------- what travels


@dataclass
class Task:
    """One unit of work for one worker: jobs that share a dataset (and, packed, a schedule)."""

    jobs: list[Job]
    data: DataSpec  # every job's data (they are equal); paths absolute
    device: str = "auto"  # as the worker should resolve it: auto, cpu, cuda, cuda:N
    pack: bool = True  # let train_many train same-shape jobs together
    probes: dict = field(default_factory=dict)  # job key -> (statistics, probe set size); such jobs train alone
    threads: Optional[int] = None  # torch CPU threads in the worker
    resume: Optional[Resume] = None  # where training in progress is saved (relulab.resume); None: not saved
    # job key -> EpochProbeRequest: every statistic at chosen epochs (relulab probe); such jobs train alone too
    epoch_probes: dict[str, EpochProbeRequest] = field(default_factory=dict)

    @property
    def keys(self) -> list[str]:
        return [job.key for job in self.jobs]


@dataclass
class Outcome:
    """One finished run as an executor hands it to the driver."""

    job: Job
    result: RunResult  # `model` is None when the run was trained elsewhere
    slot_stats: dict = field(default_factory=dict)  # {epoch: {stat: {slot: value}}}
    # The final model's weights (CPU tensors) when the model itself stayed where it trained (a Ray worker)
    final_state: Optional[dict] = None
    probe_results: dict = field(default_factory=dict)  # {epoch: ProbeResult} of the task's epoch_probes

    def final_weights(self) -> Optional[dict]:
        """The final model's state dict, wherever the run trained (None: not known)."""
        return self.result.model.state_dict() if self.result.model is not None else self.final_state


# ---------------------------------------------------------------- running a task (driver or worker)


_SPLITS: dict[tuple[str, str], Splits] = {}  # this process's data, on its device; one dataset at a time


def process_splits(spec: DataSpec, device: torch.device) -> Splits:
    """The dataset of `spec` on `device`, loaded once per process (a Ray worker runs many tasks)."""
    key = (data_key(spec), str(device))
    if key not in _SPLITS:
        _SPLITS.clear()  # device memory is not a cache: drop the previous dataset first
        _SPLITS[key] = load_data(spec).to(device)
    return _SPLITS[key]


def run_task(task: Task, splits: Optional[Splits] = None, device: Optional[torch.device] = None,
             still_wanted: Optional[StillWanted] = None) -> Iterator[Outcome]:
    """Train every job of `task` (through `train_many`); yield an Outcome per run as it finishes.
    `splits`: the task's data if the caller has it (else loaded here); `device`: else `task.device`;
    `still_wanted`: asked before each pack starts which of its jobs to train (train_many)."""
    device = device if device is not None else resolve_device(task.device)
    if task.threads:
        torch.set_num_threads(task.threads)
    if splits is None:
        splits = process_splits(task.data, device)
    elif splits.device != device:
        splits = splits.to(device)
    probes: dict[str, Callback] = {}

    def callbacks(job: Job) -> list[Callback]:
        # Only probed runs get a callback: a job with callbacks trains alone, the others may be packed.
        if job.key in task.probes:
            probes[job.key] = slot_probe(task.probes[job.key], splits)
        elif job.key in task.epoch_probes:
            probes[job.key] = task.epoch_probes[job.key].callback(splits)
        return [probes[job.key]] if job.key in probes else []

    for job, result in train_many(task.jobs, splits, device, callbacks=callbacks, pack=task.pack,
                                  still_wanted=still_wanted, resume=task.resume):
        probe = probes.pop(job.key, None)
        names = slot_names(result.model) if result.model is not None else {}
        if names:  # stored with the run, so that reports name the slots (relulab's own models have numbers only)
            result.data[SLOT_NAMES] = {str(index): name for index, name in names.items()}
        yield Outcome(job, result, getattr(probe, "by_epoch", {}), probe_results=getattr(probe, "results", {}))


def execute_task(task: Task) -> list[Outcome]:
    """A task as a Ray worker runs it: every outcome, with the trained models' weights as CPU tensors instead
    of the models (the driver stores the numbers and keeps the weights; `result.best_state` is on the CPU)."""
    return [replace(o, result=replace(o.result, model=None), final_state=_cpu_state(o.result.model))
            for o in run_task(task)]


def _cpu_state(model) -> Optional[dict]:
    return None if model is None else state_to_cpu(model.state_dict())


# ---------------------------------------------------------------- cutting work into tasks


def _chunks(items: list, n: int) -> list[list]:
    """`items` in `n` consecutive chunks whose sizes differ by at most one."""
    size, extra = divmod(len(items), n)
    out, start = [], 0
    for i in range(n):
        stop = start + size + (i < extra)
        out.append(items[start:stop])
        start = stop
    return [c for c in out if c]


def cut_tasks(jobs: Sequence[Job], device: str, *, pack: bool = True, probes: Optional[dict] = None,
              threads: Optional[int] = None, slots: int = 1, max_models: int = MAX_MODELS_PER_TASK,
              resume: Optional[Resume] = None, epoch_probes: Optional[dict] = None) -> list[Task]:
    """Jobs -> tasks of one pack each, for workers whose device is `device` (cpu or cuda).

    Jobs that can train together (same dataset and `pack.pack_key` on that device) form a
    group; a group is cut into tasks of at most `max_models` jobs, and small enough that
    the packable work fills `slots` workers (two GPUs get two tasks, not one task of
    everything). Jobs of one stack stay together where the sizes allow. A job that trains
    alone (probed, not packable, or `pack` off) is a task of its own. Tasks keep the jobs'
    order of first appearance."""
    from relulab.packing import rules as packing

    probes, epoch_probes = probes or {}, epoch_probes or {}
    kind = torch.device("cuda" if str(device).startswith("cuda") else "cpu")
    groups: dict[tuple, list[Job]] = {}
    for position, job in enumerate(jobs):
        probed = job.key in probes or job.key in epoch_probes
        key = packing.pack_key(job, kind) if pack and not probed else None
        groups.setdefault((data_key(job.spec.data), key) if key is not None else ("alone", position), []).append(job)
    packable = sum(len(members) for key, members in groups.items() if key[0] != "alone")
    size = max(1, min(max_models, math.ceil(packable / max(1, slots))))
    tasks = []
    for key, members in groups.items():
        if key[0] != "alone":  # jobs of one stack side by side (in order of first appearance): chunks keep stacks
            stacks: dict[str, list[Job]] = {}
            for job in members:
                stacks.setdefault(str(packing.stack_key(job)), []).append(job)
            members = [job for stack in stacks.values() for job in stack]
        for chunk in _chunks(members, math.ceil(len(members) / size)):
            tasks.append(Task(chunk, chunk[0].spec.data, str(device), pack, _of(probes, chunk), threads, resume,
                              _of(epoch_probes, chunk)))
    return tasks


def _of(requests: dict, jobs: Sequence[Job]) -> dict:
    """The probe requests of `jobs`."""
    return {job.key: requests[job.key] for job in jobs if job.key in requests}


# ---------------------------------------------------------------- executors


class Executor(Protocol):
    """Where runs train. `open` before anything is written (it may refuse with a UserError), then
    `tasks` + `submit` for each claimed batch, then `close` (always)."""

    name: str
    claim_size: Optional[int]  # how many run keys the driver claims at a time (None: all it can)
    one_dataset_at_a_time: bool  # the driver sweeps dataset by dataset (keeps one on the device)

    def open(self, device: str, splits_by_data: dict[str, Splits]) -> str:
        """Get ready for an experiment whose spec says `device`; returns a line describing where runs train."""

    @property
    def driver_device(self) -> torch.device:
        """Where the driver itself computes (the analyses)."""

    def tasks(self, jobs: Sequence[Job], *, pack: bool, probes: dict, threads: Optional[int],
              resume: Optional[Resume] = None, epoch_probes: Optional[dict] = None) -> list[Task]: ...

    def submit(self, tasks: Sequence[Task], still_wanted: Optional[StillWanted] = None) -> Iterator[Outcome]:
        """Run the tasks; yield each run's Outcome as it finishes (in any order). `still_wanted(jobs)` returns
        those of `jobs` still to train: asked as late as the executor can, at the latest before submitting."""

    def close(self) -> None: ...


class InProcessExecutor:
    """Train in this process, one task per dataset, through train_many (the default)."""

    name = "in-process"
    claim_size: Optional[int] = 64
    one_dataset_at_a_time = True

    def __init__(self):
        self.device = torch.device("cpu")
        self._splits: dict[str, Splits] = {}
        self._on_device: tuple[str, Optional[Splits]] = ("", None)

    def open(self, device: str, splits_by_data: dict[str, Splits]) -> str:
        self.device = resolve_device(device)
        self._splits = dict(splits_by_data)
        return f"device {self.device}"

    @property
    def driver_device(self) -> torch.device:
        return self.device

    def tasks(self, jobs: Sequence[Job], *, pack: bool = True, probes: Optional[dict] = None,
              threads: Optional[int] = None, resume: Optional[Resume] = None,
              epoch_probes: Optional[dict] = None) -> list[Task]:
        by_data: dict[str, list[Job]] = {}
        for job in jobs:
            by_data.setdefault(data_key(job.spec.data), []).append(job)
        return [Task(group, group[0].spec.data, str(self.device), pack, _of(probes or {}, group), threads, resume,
                     _of(epoch_probes or {}, group))
                for group in by_data.values()]

    def _device_splits(self, spec: DataSpec) -> Splits:
        key = data_key(spec)
        if self._on_device[0] != key:  # once per dataset: the training loop never copies data
            self._on_device = ("", None)
            host = self._splits.get(key) or load_data(spec)
            self._on_device = (key, host.to(self.device))
        return self._on_device[1]

    def submit(self, tasks: Sequence[Task], still_wanted: Optional[StillWanted] = None) -> Iterator[Outcome]:
        """Each task in turn; `still_wanted` is asked before every pack starts (a paused process that resumes
        skips what another process stored meanwhile)."""
        for task in tasks:
            yield from run_task(task, self._device_splits(task.data), self.device, still_wanted)

    def close(self) -> None:
        self._on_device = ("", None)
        self._splits = {}


class TaskFailed(RuntimeError):
    """Ray tasks that failed for good (their retries spent, or an error in the training code)."""


def require_ray():
    """The `ray` module, or a UserError saying how to install it."""
    try:
        import ray
    except ImportError:
        raise UserError(f"executor.name ray needs Ray: {RAY_HINT}") from None
    return ray


class RayExecutor:
    """Train on a Ray cluster: one `ray.remote` task per pack, each asking for its GPU or CPU share.

    address: None starts a local Ray with this machine's GPUs and CPUs (or joins the one
    `ray.init` already made in this process, or $RAY_ADDRESS); "auto" joins the cluster
    `ray start` made on this machine; "HOST:PORT" joins that head node.
    gpus_per_task: GPUs each task asks for, from 0 to 1 (0.5 puts two tasks on a GPU; 0
    trains on CPUs). None: 1 if the cluster has GPUs and the spec's device is not cpu.
    cpus_per_task: CPU cores each task asks for; also its torch thread count unless the spec
    sets `threads`.
    max_retries: how often Ray reruns a task whose worker died.
    task_fn: what a worker runs for a task (tests wrap `execute_task` to inject failures).
    """

    name = "ray"
    claim_size: Optional[int] = None  # claim all: every task is submitted at once, the cluster queues them
    one_dataset_at_a_time = False  # workers load their own data

    def __init__(self, address: Optional[str] = None, gpus_per_task: Optional[float] = None,
                 cpus_per_task: Optional[int] = None, max_retries: int = 3,
                 max_models_per_task: int = MAX_MODELS_PER_TASK,
                 task_fn: Callable[[Task], list[Outcome]] = execute_task, init_options: Optional[dict] = None):
        if gpus_per_task is not None and (isinstance(gpus_per_task, bool) or
                                          not isinstance(gpus_per_task, (int, float)) or
                                          not 0 <= gpus_per_task <= 1):
            raise UserError(f"executor.gpus_per_task: expected a number from 0 to 1 (a task trains on one GPU), got "
                            f"{gpus_per_task!r}")
        if cpus_per_task is not None and (isinstance(cpus_per_task, bool) or not isinstance(cpus_per_task, int)
                                          or cpus_per_task < 1):
            raise UserError(f"executor.cpus_per_task: expected a positive integer, got {cpus_per_task!r}")
        if not isinstance(max_retries, int) or max_retries < 0:
            raise UserError(f"executor.max_retries: expected an integer >= 0, got {max_retries!r}")
        self.ray = require_ray()
        self.address, self.max_retries, self.max_models = address, max_retries, max_models_per_task
        self.gpus_asked, self.cpus = gpus_per_task, cpus_per_task or 1
        self.task_fn, self.init_options = task_fn, dict(init_options or {})
        self.gpus, self.slots, self.worker_device = 0.0, 1, "cpu"
        self._started, self._remote, self._pending = False, None, {}
        self._driver_device = torch.device("cpu")

    # ------------------------------------------------------------ connecting

    def _init_address(self) -> Optional[str]:
        """What to hand ray.init: None (the default) starts a new local Ray unless $RAY_ADDRESS names a cluster;
        never silently a stale cluster file from an old `ray start` (ray.init(None) would try that one)."""
        if self.address is None:
            return os.environ.get("RAY_ADDRESS") or "local"
        return self.address

    def _starts_local(self) -> bool:
        return not self.ray.is_initialized() and self._init_address() == "local"

    def _connect(self) -> str:
        ray = self.ray
        if ray.is_initialized():
            return "the Ray this process already joined"
        address = self._init_address()
        # Ray itself would retry an unreachable address for minutes: check that something listens there.
        if address == "auto" and _current_cluster(ray):
            _probe_address(_current_cluster(ray), "the cluster `ray start` last made on this machine")
        elif address not in ("auto", "local"):
            _probe_address(address)
        options = {"logging_level": logging.WARNING, **self.init_options}
        if address == "local":
            options = {"include_dashboard": False, **options}
        try:
            ray.init(address=address, **options)
        except (ConnectionError, ValueError, RuntimeError, TimeoutError) as e:
            where = "(local)" if address == "local" else f"at {address}"
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            hint = "" if address in ("auto", "local") or os.environ.get("RAY_AUTH_MODE") else \
                " (a cluster with token authentication needs RAY_AUTH_MODE=token here, and its token)"
            raise UserError(f"executor.address: could not start or join a Ray cluster {where}: {first}{hint}") from None
        self._started = True
        return "a local Ray" if address == "local" else f"Ray at {address}"

    def _nodes(self) -> list[dict]:
        return [n.get("Resources", {}) for n in self.ray.nodes() if n.get("Alive", n.get("alive", False))]

    def open(self, device: str, splits_by_data: Optional[dict] = None) -> str:
        device = _device_kind(device)
        if self._starts_local():  # what a local Ray would have: refuse before starting it
            self._shares(device, [{"CPU": os.cpu_count() or 1, "GPU": torch.cuda.device_count()}])
        where = self._connect()
        try:
            nodes = self._nodes()
            self.gpus, self.slots = self._shares(device, nodes)
        except BaseException:
            self.close()
            raise
        self.worker_device = "cuda" if self.gpus > 0 else "cpu"
        # The driver computes only the analyses; on a GPU-less head node it does so on its CPU.
        self._driver_device = resolve_device("cpu" if device == "cpu" or not torch.cuda.is_available() else "auto")
        self._remote = self.ray.remote(self.task_fn).options(
            num_cpus=self.cpus, num_gpus=self.gpus, max_retries=self.max_retries, retry_exceptions=False,
            name="relulab-task")
        cpus, gpus = sum(n.get("CPU", 0) for n in nodes), sum(n.get("GPU", 0) for n in nodes)
        share = f"{self.gpus:g} GPU and {self.cpus} CPU" if self.gpus else f"{self.cpus} CPU"
        return (f"executor ray: {where}, {len(nodes)} node(s) with {cpus:g} CPUs and {gpus:g} GPUs; a task per pack, "
                f"each taking {share}, {self.slots} at a time")

    def _shares(self, device: str, nodes: list[dict]) -> tuple[float, int]:
        """(GPUs per task, tasks the cluster runs at once) for an experiment on `device`; UserErrors where the
        cluster cannot run it."""
        total_gpus = sum(n.get("GPU", 0) for n in nodes)
        total_cpus = sum(n.get("CPU", 0) for n in nodes)
        if device == "cpu":
            if self.gpus_asked:
                raise UserError("executor.gpus_per_task: the experiment's device is cpu; leave executor.gpus_per_task "
                                "out or set it to 0")
            gpus = 0.0
        elif self.gpus_asked is not None:
            gpus = float(self.gpus_asked)
            if gpus > 0 and total_gpus == 0:
                raise UserError("executor.gpus_per_task: the Ray cluster has no GPU (use 0 to train on CPUs)")
        else:
            gpus = 1.0 if total_gpus > 0 else 0.0
        if gpus == 0 and device.startswith("cuda"):
            why = "the Ray cluster has none" if total_gpus == 0 else "executor.gpus_per_task is 0"
            raise UserError(f"device: {device} asked for, but the Ray tasks get no GPU ({why}); use cpu or auto")
        if max((n.get("CPU", 0) for n in nodes), default=0) < self.cpus:
            raise UserError(f"executor.cpus_per_task: {self.cpus} asked for, but no node of the Ray cluster has that "
                            f"many CPUs ({total_cpus:g} in all)")
        slots = sum(min(int(n.get("CPU", 0) // self.cpus),
                        math.floor(n.get("GPU", 0) / gpus + 1e-6) if gpus > 0 else 1 << 30) for n in nodes)
        return gpus, max(1, slots)

    @property
    def driver_device(self) -> torch.device:
        return self._driver_device

    # ------------------------------------------------------------ work

    def tasks(self, jobs: Sequence[Job], *, pack: bool = True, probes: Optional[dict] = None,
              threads: Optional[int] = None, resume: Optional[Resume] = None,
              epoch_probes: Optional[dict] = None) -> list[Task]:
        return cut_tasks(jobs, self.worker_device, pack=pack, probes=probes, threads=threads or self.cpus,
                         slots=self.slots, max_models=self.max_models, resume=resume, epoch_probes=epoch_probes)

    def submit(self, tasks: Sequence[Task], still_wanted: Optional[StillWanted] = None) -> Iterator[Outcome]:
        """Submit every task, then yield outcomes task by task as they complete. A task that failed for good
        does not stop the others: its error is raised once every other task has delivered. Tasks are data run
        elsewhere, so `still_wanted` is asked once, before submitting."""
        if self._remote is None:
            raise RuntimeError("RayExecutor.submit before open")
        if still_wanted is not None:
            tasks = [replace(task, jobs=jobs) for task in tasks if (jobs := still_wanted(task.jobs))]
        ray = self.ray
        self._pending = {self._remote.remote(task): task for task in tasks}
        failures: list[tuple[Task, BaseException]] = []
        try:
            while self._pending:
                ready, _ = ray.wait(list(self._pending), num_returns=1, timeout=1.0)  # a timeout keeps Ctrl-C live
                for ref in ready:
                    task = self._pending.pop(ref)
                    try:
                        outcomes = ray.get(ref)
                    except ray.exceptions.RayError as e:
                        failures.append((task, e))
                        continue
                    yield from outcomes
        finally:
            self._cancel()
        if failures:
            raise _failure(failures)

    def _cancel(self) -> None:
        pending, self._pending = self._pending, {}
        for ref in pending:
            try:
                self.ray.cancel(ref, force=True)
            except Exception:  # noqa: BLE001 - already finished or gone: nothing to cancel
                pass

    def close(self) -> None:
        self._cancel()
        if self._started and self.ray.is_initialized():
            self.ray.shutdown()
        self._started = False


def _failure(failures: list[tuple[Task, BaseException]]) -> Exception:
    """One error for the driver: the training code's UserError as it is (a missing dataset on a node, say),
    anything else as a one-line TaskFailed."""
    task, error = failures[0]
    cause = getattr(error, "cause", None)
    if isinstance(cause, UserError):
        return UserError(str(cause))
    runs = sum(len(t.jobs) for t, _ in failures)
    detail = str(cause if cause is not None else error).strip().splitlines()
    what = type(cause if cause is not None else error).__name__
    return TaskFailed(f"{len(failures)} Ray task(s) failed for good, {runs} runs not trained (run the command again "
                      f"to retry them): {what}: {detail[-1] if detail else ''}")


def _device_kind(name: str) -> str:
    """auto, cpu or cuda[:N] checked as `env.resolve_device` checks them, without needing a local GPU (the
    workers have them); cuda:N becomes cuda: Ray decides which GPU a task gets."""
    if name == "auto":
        return name
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise UserError(f"device: expected auto, cpu, cuda or cuda:N, got {name!r}")
    return device.type


def _current_cluster(ray) -> Optional[str]:
    """The address the last `ray start` on this machine recorded (it may be stale), or None."""
    try:
        return ray._private.utils.read_ray_address() or None
    except Exception:  # noqa: BLE001 - a private helper of Ray's: without it, ray.init finds the cluster itself
        return None


def _probe_address(address: str, what: str = "", timeout_s: float = 10.0) -> None:
    """A UserError unless something listens at HOST:PORT (a Ray head's GCS port, 6379 by default)."""
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise UserError(f"executor.address: expected HOST:PORT (the head node's address, port 6379 by default) or "
                        f"auto, got {address!r}")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as e:
        what = f" ({what})" if what else ""
        raise UserError(f"executor.address: no Ray cluster answers at {hostport}{what}: {e.strerror or e}; start one "
                        f"with `ray start --head` there") from None


def make_executor(name: str = "in-process", address: Optional[str] = None, gpus_per_task: Optional[float] = None,
                  cpus_per_task: Optional[int] = None) -> "Executor":
    """An executor by name (`executor.name`: in-process or ray), with the Ray options; errors name the fields
    (`executor.address`), which the command line shows as its options (--address)."""
    if name not in EXECUTORS:
        raise unknown_choice("executor.name", name, EXECUTORS)
    if name != "ray":
        for option, value in (("executor.address", address), ("executor.gpus_per_task", gpus_per_task),
                              ("executor.cpus_per_task", cpus_per_task)):
            if value is not None:
                raise UserError(f"{option}: only with executor.name ray")
        return InProcessExecutor()
    return RayExecutor(address=address, gpus_per_task=gpus_per_task, cpus_per_task=cpus_per_task)

