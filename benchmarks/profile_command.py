"""Where the wall time of a whole relulab command goes: interpreter, imports, plan, data, training, evaluation,
store, report (issue 25, "the whole command, not only the training").

The command runs in this process, through `relulab.cli.main`, with a timer around each of a few chosen library
functions (PHASES: each phase names the functions whose time it is). Time is counted once, in the innermost
phase running (a phase's "self" seconds: an evaluation inside training is evaluation, an import inside the report
is an import), on the main thread only; with CUDA in use the device is synchronised at each phase boundary, so
that queued kernels are charged to the phase that queued them. The timers cost microseconds a call, and no
function that runs once a step is timed. Beside the phases:

- the interpreter's start (`python -c pass`) and `import relulab.cli` (timed here, and by package with
  `python -X importtime`, in a subprocess);
- the runs' own training seconds (the sum of every RunResult's History.seconds, what the store keeps as each run's
  seconds) against the wall time of the training calls that produced them;
- each dataset load, with its decoded-data cache hit or miss where the loader has a cache.

    python benchmarks/profile_command.py                                   # relulab run seed001, a fresh store
    python benchmarks/profile_command.py run quickstart
    python benchmarks/profile_command.py run seed001 --epochs 1 --set data.train_size=2000
    python benchmarks/profile_command.py --cprofile run quickstart        # also the top functions of cProfile

`relulab run` without --store gets a fresh store and report folder in a temporary folder (--workdir), so that
every run of this script trains everything. The JSON goes to $OUT/profile_command.json (--json to choose), the
table to stdout; the command's own output goes to stderr/stdout as usual.
"""
from __future__ import annotations

import time

STARTED = time.perf_counter()  # before anything heavy is imported: the script's own imports are cheap

import argparse  # noqa: E402
import importlib  # noqa: E402
import inspect  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import re  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))  # this checkout's relulab, not an installed one

DEFAULT_COMMAND = ["run", "seed001"]

# phase -> the functions ("module:qualname") whose time is that phase's. Order is the table's.
PHASES: dict[str, tuple[str, ...]] = {
    "imports during the command": ("_frozen_importlib:_find_and_load",),
    "plan (spec, overrides, plan)": ("relulab.experiments.plan:load_experiment",),
    "data load": ("relulab.data:load_data",),
    "models built to check (prepare)": ("relulab.experiments.run:prepare",),
    # The first copy to a GPU also creates the CUDA context: its cost shows here.
    "data to device (CUDA context)": ("relulab.experiments.executors:InProcessExecutor.open",
                                      "relulab.data:Splits.to"),
    "store open": ("relulab.store.database:Store.__init__",),
    "store writes": ("relulab.store.database:Store.save_plan", "relulab.store.database:Store.record",
                     "relulab.store.database:Store.claim", "relulab.store.database:Store.release",
                     "relulab.store.database:Store.save_artifact", "relulab.store.database:Store.save_timing"),
    "store reads": ("relulab.store.database:Store.runs", "relulab.store.database:Store.done_keys",
                    "relulab.store.database:Store.timings", "relulab.store.database:Store.artifact"),
    "weights kept (checkpoints)": ("relulab.store.weights:Keeper.stage",),
    "analyses": ("relulab.experiments.run:run_analyses",),
    "training setup (units, stacks)": ("relulab.packing.units:form_units",),
    "CUDA graph capture": ("relulab.packing.units:Unit.capture",),
    "kernels compiled/loaded (Triton)": ("relulab.packing.pack:compile_kernels",),
    "training: the epochs": ("relulab.packing.pack:_run_epochs",),
    "training: best weights to the CPU": ("relulab.packing.units:Unit.best_state",),
    "training: unstacked into models": ("relulab.packing.units:Unit.finish",),
    "training": ("relulab.packing.pack:train_together", "relulab.training.loop:run"),
    "evaluation": ("relulab.packing.units:Unit.evaluate", "relulab.training.loop:evaluate"),
    "time alone (packed configs)": ("relulab.experiments.run:time_packed_configs",),
    "report: store read + statistics": ("relulab.report.collect:collect",),
    "report: sections + figures drawn": ("relulab.report.build:part_report",),
    "report: figures encoded (PNG/SVG)": ("relulab.report.figures:save_figure",),
    "report: HTML": ("relulab.report.writers:render_html",),
    "report: Markdown + CSV": ("relulab.report.writers:markdown", "relulab.report.writers:summary_csv",
                               "relulab.report.writers:runs_csv", "relulab.report.writers:epochs_csv"),
    "report: files written": ("relulab.core.util:write_atomic", "relulab.core.util:write_bytes_atomic"),
    "report (rest of build_report)": ("relulab.report.build:build_report",),
}


@dataclass
class PhaseTime:
    calls: int = 0
    self_s: float = 0.0  # time in this phase and in no phase inside it
    inclusive_s: float = 0.0  # outermost calls only


@dataclass
class Timers:
    """The phases' clocks: a stack of the phases running on the main thread."""

    times: dict[str, PhaseTime] = field(default_factory=lambda: {name: PhaseTime() for name in PHASES})
    stack: list = field(default_factory=list)  # [phase, started, seconds spent in inner phases]
    main: int = field(default_factory=threading.get_ident)
    sync: object = None  # torch.cuda.synchronize when CUDA is in use

    def call(self, phase: str, fn, args, kwargs):
        if threading.get_ident() != self.main or (self.stack and self.stack[-1][0] == phase):
            return fn(*args, **kwargs)
        self._sync()
        frame = [phase, time.perf_counter(), 0.0]
        outermost = all(f[0] != phase for f in self.stack)
        self.stack.append(frame)
        try:
            return fn(*args, **kwargs)
        finally:
            self._sync()
            spent = time.perf_counter() - frame[1]
            self.stack.pop()
            t = self.times[phase]
            t.calls += 1
            t.self_s += spent - frame[2]
            t.inclusive_s += spent if outermost else 0.0
            if self.stack:
                self.stack[-1][2] += spent

    def _sync(self) -> None:
        cuda = getattr(sys.modules.get("torch"), "cuda", None)  # torch may be half imported: an import is timed
        if cuda is not None and cuda.is_initialized():
            cuda.synchronize()


@dataclass
class Observed:
    """What the timed functions returned that the table reports: data loads, runs' own seconds."""

    data_loads: list = field(default_factory=list)
    run_seconds: float = 0.0
    runs: int = 0
    training_calls_s: float = 0.0
    imports: list = field(default_factory=list)  # (seconds, module) of the outermost imports over 5 ms


def _resolve(target: str):
    module_name, _, qualname = target.partition(":")
    owner = importlib.import_module(module_name)
    *path, name = qualname.split(".")
    for part in path:
        owner = getattr(owner, part)
    return owner, name, getattr(owner, name)


def _relulab_caller() -> str:
    """file:line of the innermost relulab frame (not this script's) on the main thread's stack: who imported."""
    frame = sys._getframe(2)
    while frame is not None:
        file = frame.f_code.co_filename
        if "relulab" in Path(file).parts and Path(file).name != Path(__file__).name:
            return f"{'/'.join(Path(file).parts[-2:])}:{frame.f_lineno}"
        frame = frame.f_back
    return "?"


def _observe(target: str, args, result, seconds: float, observed: Observed) -> None:
    if target == "relulab.data:load_data":
        observed.data_loads.append({"seconds": round(seconds, 4), "train": len(result.y_train),
                                    "cache": result.cache})
    elif target == "_frozen_importlib:_find_and_load" and seconds > 0.005:
        observed.imports.append((seconds, args[0], _relulab_caller()))
    elif target in ("relulab.packing.pack:train_together", "relulab.training.loop:run"):
        results = result if isinstance(result, list) else [result]
        observed.runs += len(results)
        observed.run_seconds += sum(r.history.seconds for r in results)
        observed.training_calls_s += seconds


def _wrapper(phase: str, target: str, fn, timers: Timers, observed: Observed):
    def timed(*args, **kwargs):
        started = time.perf_counter()
        result = timers.call(phase, fn, args, kwargs)
        if not (timers.stack and timers.stack[-1][0] == phase):  # an outermost call (an import: not a nested one)
            _observe(target, args, result, time.perf_counter() - started, observed)
        return result

    timed.__wrapped__ = fn
    timed.__name__ = getattr(fn, "__name__", "timed")
    timed.__qualname__ = getattr(fn, "__qualname__", "timed")
    timed.__doc__ = getattr(fn, "__doc__", None)
    return timed


def install(timers: Timers, observed: Observed) -> list[tuple]:
    """Every PHASES function replaced by its timed wrapper, where it is defined and in every module that imported
    it by name (`from relulab.data import load_data`). Returns what to put back."""
    undo = []
    for phase, targets in PHASES.items():
        for target in targets:
            owner, name, fn = _resolve(target)
            assert not inspect.isgeneratorfunction(fn), f"{target}: a generator's time is not its call's"
            timed = _wrapper(phase, target, fn, timers, observed)
            setattr(owner, name, timed)
            undo.append((owner, name, fn))
            if inspect.ismodule(owner):
                for module in list(sys.modules.values()):
                    if module is not owner and getattr(module, "__name__", "").startswith("relulab") \
                            and getattr(module, name, None) is fn:
                        setattr(module, name, timed)
                        undo.append((module, name, fn))
    return undo


def interpreter_start_s(repeats: int = 3) -> float:
    """The fastest of `repeats` starts of a bare interpreter (`python -c pass`)."""
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        best = min(best, time.perf_counter() - started)
    return best


def imports_by_package(top: int = 10) -> dict[str, float]:
    """`python -X importtime -c "import relulab.cli"`: the self time of every module imported, summed by top-level
    package (torch, scipy, ...), the `top` largest, in seconds."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-X", "importtime", "-c", "import relulab.cli"], env=env,
                          capture_output=True, text=True, check=True)
    totals: dict[str, float] = {}
    for line in done.stderr.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+\d+ \|\s*(\S+)", line)
        if m:
            root = m.group(2).split(".")[0]
            totals[root] = totals.get(root, 0.0) + int(m.group(1)) / 1e6
    return dict(sorted(totals.items(), key=lambda kv: -kv[1])[:top])


def command_args(args: list[str], workdir: Path) -> list[str]:
    """The command as given; `relulab run` without --store gets a fresh store and report folder in `workdir`."""
    if args[:1] == ["run"] and not any(a == "--store" or a.startswith("--store=") for a in args):
        args = [*args, "--store", str(workdir / "profile.sqlite")]
        if not any(a == "--out" or a.startswith("--out=") for a in args):
            args += ["--out", str(workdir / "profile-report")]
    return args


def run_command(args: list[str]) -> int:
    import relulab.cli

    try:
        relulab.cli.main(args)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    return 0


def cprofile_top(profile, top: int) -> list[dict]:
    """The `top` relulab functions (and the heaviest others) by cumulative time."""
    import pstats

    stats = pstats.Stats(profile)
    rows = []
    for (file, line, name), (_, calls, _, cumulative, _) in stats.stats.items():
        rows.append({"function": f"{Path(file).name}:{line}({name})", "file": file, "calls": calls,
                     "cumulative_s": round(cumulative, 4)})
    rows.sort(key=lambda r: -r["cumulative_s"])
    return [r for r in rows if "relulab" in r["file"]][:top]


def table(report: dict) -> str:
    wall = report["command_wall_s"]
    lines = [f"{'phase':<36} {'calls':>6} {'self s':>9} {'% cmd':>6} {'incl. s':>9}"]
    for name, t in report["phases"].items():
        if t["calls"]:
            lines.append(f"{name:<36} {t['calls']:>6} {t['self_s']:>9.3f} {100 * t['self_s'] / wall:>5.1f}% "
                         f"{t['inclusive_s']:>9.3f}")
    lines.append(f"{'not in a phase (CLI, logging, ...)':<36} {'':>6} {report['unattributed_s']:>9.3f} "
                 f"{100 * report['unattributed_s'] / wall:>5.1f}%")
    lines.append(f"{'the command, in-process':<36} {'':>6} {wall:>9.3f}")
    lines.append("")
    lines.append(f"interpreter start (python -c pass): {report['interpreter_start_s']:.3f} s")
    lines.append(f"import relulab.cli (this process):  {report['import_cli_s']:.3f} s")
    if report.get("imports_by_package"):
        lines.append("  by package (-X importtime, self times): " + ", ".join(
            f"{k} {v:.3f}" for k, v in report["imports_by_package"].items()))
    lines.append(f"modules the timers needed, imported before the command: {report['preimport_s']:.3f} s "
                 f"({', '.join(report['preimported_new'][:6]) or 'none new'})")
    lines.append(f"end to end (interpreter + imports + command): {report['end_to_end_s']:.3f} s")
    o = report["observed"]
    lines.append(f"runs trained: {o['runs']}, their own seconds summed {o['run_seconds']:.3f} s (the store's), "
                 f"the training calls' wall {o['training_calls_s']:.3f} s")
    if o["imports"]:
        lines.append("imports during the command (outermost, over 5 ms):")
        lines += [f"  {i['seconds']:.3f} s {i['module']} (from {i['imported_from']})" for i in o["imports"][:8]]
    for load in o["data_loads"]:
        cache = load["cache"]
        said = "no decoded-data cache" if not cache else ("cache hit" if cache.get("hit") else "decoded, cached")
        lines.append(f"data load: {load['seconds']:.3f} s, {load['train']} training examples, {said}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=Path, default=None,
                        help="Where the JSON goes (default: $OUT/profile_command.json, else the workdir's).")
    parser.add_argument("--workdir", type=Path, default=None, help="Fresh store and report folder for `run` "
                        "(default: a new temporary folder).")
    parser.add_argument("--cprofile", action="store_true", help="Also run the command under cProfile (slower: "
                        "its overhead is in the phases' times too) and list the top relulab functions.")
    parser.add_argument("--top", type=int, default=30, help="cProfile functions listed.")
    parser.add_argument("--no-importtime", action="store_true", help="Skip the -X importtime subprocess.")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="The relulab command and its arguments "
                        f"(default: {' '.join(DEFAULT_COMMAND)}).")
    opts = parser.parse_args()

    started = time.perf_counter()
    importlib.import_module("relulab.cli")  # the CLI's own imports, as `relulab` pays them at start
    import_cli_s = time.perf_counter() - started

    # The modules whose functions are timed, imported now if the CLI did not: their import is said apart.
    before = set(sys.modules)
    started = time.perf_counter()
    for module in sorted({t.split(":")[0] for targets in PHASES.values() for t in targets}):
        importlib.import_module(module)
    preimport_s = time.perf_counter() - started
    preimported_new = sorted(m for m in set(sys.modules) - before if "." not in m or m.startswith("relulab"))

    workdir = opts.workdir or Path(tempfile.mkdtemp(prefix="relulab-profile-"))
    workdir.mkdir(parents=True, exist_ok=True)
    args = command_args(opts.command or DEFAULT_COMMAND, workdir)
    timers, observed = Timers(), Observed()
    undo = install(timers, observed)
    profile = None
    if opts.cprofile:
        import cProfile

        profile = cProfile.Profile()
        profile.enable()
    started = time.perf_counter()
    try:
        code = run_command(args)
    finally:
        wall = time.perf_counter() - started
        if profile is not None:
            profile.disable()
        for owner, name, fn in reversed(undo):
            setattr(owner, name, fn)
    end_to_end = time.perf_counter() - STARTED
    interpreter = interpreter_start_s()
    phases = {name: {"calls": t.calls, "self_s": round(t.self_s, 4), "inclusive_s": round(t.inclusive_s, 4)}
              for name, t in timers.times.items()}
    report = {
        "command": ["relulab", *args], "exit_code": code, "machine": platform.node(),
        "processor": platform.processor() or platform.machine(), "python": platform.python_version(),
        "cuda": _cuda_name(), "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "interpreter_start_s": round(interpreter, 4), "import_cli_s": round(import_cli_s, 4),
        "imports_by_package": {} if opts.no_importtime else {k: round(v, 4) for k, v in imports_by_package().items()},
        "preimport_s": round(preimport_s, 4), "preimported_new": preimported_new,
        "command_wall_s": round(wall, 4), "end_to_end_s": round(interpreter + end_to_end, 4),
        "phases": phases, "unattributed_s": round(wall - sum(t.self_s for t in timers.times.values()), 4),
        "observed": {"runs": observed.runs, "run_seconds": round(observed.run_seconds, 4),
                     "training_calls_s": round(observed.training_calls_s, 4), "data_loads": observed.data_loads,
                     "imports": [{"module": m, "seconds": round(t, 4), "imported_from": where}
                                 for t, m, where in sorted(observed.imports)[::-1]]},
        "phase_functions": PHASES,
    }
    if profile is not None:
        report["cprofile_top"] = cprofile_top(profile, opts.top)
        profile.dump_stats(str(workdir / "profile_command.pstats"))
    out = opts.json or (Path(os.environ["OUT"]) if os.environ.get("OUT") else workdir) / "profile_command.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1, default=str) + "\n")
    print(table(report))
    for row in report.get("cprofile_top", []):
        print(f"  {row['cumulative_s']:>9.3f} s  {row['calls']:>7}  {row['function']}")
    print(f"json: {out}")
    sys.exit(code)


def _cuda_name() -> str | None:
    torch = sys.modules.get("torch")
    return torch.cuda.get_device_name() if torch is not None and torch.cuda.is_available() else None


if __name__ == "__main__":
    main()
