"""Kept weights: each finished run's final (and best-epoch) model, as checkpoints beside its store.

A run's numbers describe one model; without its weights, anything measured later (`relulab probe`, a search's
heuristics) would have to come from a model trained again, which is another model: packed and alone, the
same seed sums in another order, and training amplifies the difference (92.75% packed against 93.13% alone
on an MLP). So when the driver stores a run it also writes its weights, as standard checkpoints
(relulab.training.checkpoints: `relulab evaluate FILE` and `torch.load(FILE, weights_only=True)` read them):

    <store stem>.weights/<run key>.pt          the final model
    <store stem>.weights/<run key>.best.pt     the best epoch's (by validation accuracy), where it is not the last

How they stay true to the store: each file is written under a temporary name first, and renamed to its own
name inside the transaction that stores the run, with a `run_weights` row holding its size and sha256
(Store.record). A kill leaves at worst a file without a row, which the next attempt overwrites; a reader
(`KeptWeights`) trusts a file only when it matches its row, and takes a missing or altered one for no
weights at all (and says so once).

How much: the spec field `keep_weights` (auto, true or false; `--keep-weights/--no-keep-weights`). auto keeps
them where one run's files take at most AUTO_LIMIT_BYTES (256 MiB: seed 000's CNN takes about 9 MB a run,
seed 001's deep MLP 6 MB, seed 002's batch-norm MLP 30 MB, a CIFAR ResNet-18 would take about 90 MB).

    from relulab.store import weights
    weights.export_run("runs/seed000.sqlite", "model.pt", config="off-7", seed=0)   # relulab export-model
"""
from __future__ import annotations

import hashlib
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch

from relulab.training import checkpoints
from relulab.core.errors import UserError, unknown_choice
from relulab.data import data_key
from relulab.store.database import Store
from relulab.store.schema import RETRAINED_FOR_PROBING
from relulab.core.util import check_output_file, human_bytes, write_bytes_atomic

AUTO_LIMIT_BYTES = 256 * 2**20  # keep_weights: auto keeps a run's files (final + best) up to this size
STAGED_STALE_S = 600.0  # a staged file lives for one commit; one older than this was left by a kill


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def check_keep_weights(value, field: str = "keep_weights"):
    """auto, true or false (YAML's booleans)."""
    if value == "auto" or isinstance(value, bool):
        return value
    raise UserError(f"{field}: expected auto (keep them where a run's weights take at most "
                    f"{human_bytes(AUTO_LIMIT_BYTES)}), true or false, got {value!r}")


def file_name(key: str, weights: str) -> str:
    return f"{key}.pt" if weights == "final" else f"{key}.{weights}.pt"


def state_bytes(state: dict) -> int:
    return sum(t.numel() * t.element_size() for t in state.values() if isinstance(t, torch.Tensor))


# ---------------------------------------------------------------- writing (the driver)


@dataclass
class _Staged:
    weights: str  # final | best
    temp: Optional[Path]  # None once in place
    final: Path
    sha256: str
    nbytes: int
    epoch: Optional[int]


class StagedWeights:
    """A run's weight files under temporary names, for Store.record to put in place in its transaction."""

    def __init__(self, files: list[_Staged]):
        self.files = files

    @property
    def rows(self) -> list[tuple]:
        """(kind, file name, sha256, bytes, epoch) for the store's `run_weights` table."""
        return [(f.weights, f.final.name, f.sha256, f.nbytes, f.epoch) for f in self.files]

    def put_in_place(self) -> None:
        for f in self.files:
            try:
                f.temp.replace(f.final)
            except OSError as e:
                raise UserError(f"{f.final}: could not write it: {e.strerror or e}") from None
            f.temp = None

    def discard(self) -> None:
        """Remove the files not put in place (the run was stored by another process first, or an error)."""
        for f in self.files:
            if f.temp is not None:
                f.temp.unlink(missing_ok=True)
                f.temp = None


class Keeper:
    """Decides, run by run, whether its weights are kept (`policy`: keep_weights), and stages their files.
    `classes`: the class names of each dataset (by relulab.data.data_key), which a checkpoint holds."""

    def __init__(self, store_path: Path, policy, classes: dict[str, list[str]], log: Callable[[str], None] = _log):
        self.folder = Path(store_path).with_name(f"{Path(store_path).stem}.weights")
        self.policy, self.classes, self.log = check_keep_weights(policy), classes, log
        self._said: set[str] = set()
        self._clear_stale()

    def _say_once(self, what: str, line: str) -> None:
        if what not in self._said:
            self._said.add(what)
            self.log(line)

    def _clear_stale(self) -> None:
        """Staged files a killed process left (they never got a row)."""
        now = time.time()
        for path in self.folder.glob(".*.staged") if self.folder.is_dir() else ():
            try:
                if now - path.stat().st_mtime > STAGED_STALE_S:
                    path.unlink()
            except OSError:
                pass  # another process's, gone meanwhile, or not ours to remove: it does no harm

    def stage(self, key: str, result, final_state: Optional[dict]) -> Optional[StagedWeights]:
        """Write run `key`'s final weights (`final_state`) and its best epoch's (`result.best_state`, where
        there is one) under temporary names; None where they are not kept."""
        if self.policy is False or final_state is None:
            return None
        best = result.best_state
        size = state_bytes(final_state) + (state_bytes(best) if best is not None else 0)
        if self.policy == "auto" and size > AUTO_LIMIT_BYTES:
            self._say_once("size", f"relulab: a run's weights take {human_bytes(size)}, more than keep_weights: "
                                   f"auto keeps ({human_bytes(AUTO_LIMIT_BYTES)}): not keeping them "
                                   "(keep_weights: true, or --keep-weights, keeps them)")
            return None
        h = result.history
        files: list[_Staged] = []
        try:
            files.append(self._write(key, "final", result, final_state, len(h.epochs) or None))
            if best is not None:
                files.append(self._write(key, "best", result, best, h.best_epoch))
        except UserError as e:  # a full disk: the run is still worth storing, without its weights
            StagedWeights(files).discard()
            self._say_once("write", f"relulab: warning: cannot keep the runs' weights ({e}); storing the runs "
                                    "without them")
            return None
        return StagedWeights(files)

    def _write(self, key: str, weights: str, result, state: dict, epoch: Optional[int]) -> _Staged:
        final = self.folder / file_name(key, weights)
        blob = checkpoints.to_bytes(result, state, self.classes.get(data_key(result.spec.data)), weights, epoch,
                                    where=final)
        temp = write_bytes_atomic(self.folder / f".{final.name}.{uuid.uuid4().hex[:8]}.staged", blob)
        return _Staged(weights, temp, final, hashlib.sha256(blob).hexdigest(), len(blob), epoch)


# ---------------------------------------------------------------- reading


class KeptWeights:
    """The weights a store kept, each file trusted only when its size and sha256 are those of its row. A file
    that is missing or altered counts as no weights: said once per file, never an error."""

    def __init__(self, store: Store, log: Callable[[str], None] = _log):
        self.store, self.log = store, log
        self._said: set[Path] = set()

    def kinds(self, key: str) -> dict[str, dict]:
        """{kind: row} of what run `key` kept (whether or not the files are still right)."""
        return self.store.run_weights([key]).get(key, {})

    def check(self, key: str, weights: str = "final") -> tuple[Optional[Path], str]:
        """(the file, '') when run `key` kept these weights and the file is the one written; else (None, why)."""
        row = self.kinds(key).get(weights)
        return self._verified(row) if row is not None else (None, f"no {weights} weights kept")

    def _verified(self, row: dict) -> tuple[Optional[Path], str]:
        name = str(row["file"])
        if Path(name).name != name or name.startswith("."):  # a store row naming a path elsewhere: not ours
            return None, f"the store names {name!r} as its file, which is not a file name"
        path = self.store.weights_folder / name
        problem = _problem(path, row)
        return (None, f"{path}: {problem}") if problem else (path, "")

    def path(self, key: str, weights: str = "final") -> Optional[Path]:
        """The file of run `key`'s kept weights, verified; None where none were kept, or not this file (said)."""
        row = self.kinds(key).get(weights)
        if row is None:
            return None
        path, why = self._verified(row)
        if path is None:
            self._say(key, why)
        return path

    def checkpoint(self, key: str, weights: str = "final") -> Optional[checkpoints.Checkpoint]:
        """The model of run `key` rebuilt from its kept weights, or None (none kept, or not the file written)."""
        path = self.path(key, weights)
        if path is None:
            return None
        try:
            return checkpoints.load(path)
        except UserError as e:  # written by a relulab whose specs this one no longer reads, say
            self._say(key, str(e))
            return None

    def _say(self, key: str, why: str) -> None:
        if key not in self._said:
            self._said.add(key)
            self.log(f"relulab: warning: the kept weights of run {key} are not used ({why}); "
                     "taking the run for one without weights")


def _problem(path: Path, row: dict) -> str:
    """Why the file at `path` is not the one its row describes ('' when it is)."""
    try:
        size = path.stat().st_size
        if size != row["bytes"]:
            return f"{size} bytes, not the {row['bytes']} it was written with"
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    except FileNotFoundError:
        return "missing"
    except OSError as e:
        return f"unreadable ({e.strerror or e})"
    return "" if digest.hexdigest() == row["sha256"] else "altered since it was written (its sha256 differs)"


# ---------------------------------------------------------------- exporting (relulab export-model)


NOT_KEPT_HINT = ("runs keep their weights when trained with keep_weights on (the spec field; --keep-weights on "
                 f"relulab run and search; auto keeps runs of up to {human_bytes(AUTO_LIMIT_BYTES)}); this one was "
                 "trained without, or by a relulab that kept none")


@dataclass
class Exported:
    path: Path
    key: str
    experiment: str
    part: str
    variant: str
    seed: int
    weights: str  # final | best
    epoch: Optional[int]
    checkpoint: checkpoints.Checkpoint


def export_run(store_path: str | Path, out: str | Path, config: str, seed: int, part: Optional[str] = None,
               experiment: Optional[str] = None, best: bool = False, epochs: Optional[int] = None) -> Exported:
    """Write the kept weights of one stored run (a configuration or a search's placement, and a seed) to `out`
    as a checkpoint: its final model, or with `best` its best epoch's. Refused in one line, writing nothing:
    an unknown experiment, part or configuration, a run not in the store, weights not kept or not intact,
    `best` where the final model is the best."""
    out = check_output_file(out, "export.out")
    with Store(store_path, create=False) as store:
        run = find_run(store, config, seed, part, experiment, epochs)
        key, label = run["key"], f"{run['variant']} seed {seed}"
        kept = KeptWeights(store)
        kinds = kept.kinds(key)
        if not kinds:
            raise UserError(f"{store.path}: keeps no weights of {label} (run {key}): {NOT_KEPT_HINT}")
        weights = "best" if best else "final"
        if weights not in kinds:
            accuracy = "-" if run["best_val_acc"] is None else f"{run['best_val_acc']:.4f}"
            raise UserError(f"export.best: the best epoch of {label} is its last (epoch {run['best_epoch']}, validation "
                            f"accuracy {accuracy}): its final weights are the best; export without export.best")
        path, why = kept.check(key, weights)
        if path is None:
            raise UserError(f"the kept {weights} weights of {label} are not intact ({why}); not exported")
        blob = path.read_bytes()
        if hashlib.sha256(blob).hexdigest() != kinds[weights]["sha256"]:
            raise UserError(f"{path}: changed while it was read; not exported")
        ckpt = checkpoints.load(path)  # it must rebuild before it is handed on
        write_bytes_atomic(out, blob)
    return Exported(out, key, run["experiment"], run["part"], run["variant"], seed, weights, ckpt.epoch, ckpt)


def find_run(store: Store, config: str, seed: int, part: Optional[str] = None, experiment: Optional[str] = None,
             epochs: Optional[int] = None) -> dict:
    """The stored run row of a configuration (a variant or configuration name of the plan, or a search's
    placement such as off-7) and seed; errors name the option that would pick it."""
    name = _pick_experiment(store, experiment)
    plan = store.load_experiment(name)["plan"]
    runs = [r for r in store.experiment_runs(name) if RETRAINED_FOR_PROBING not in r["data"]]
    parts = sorted({r["part"] for r in plan} | {r["part"] for r in runs})
    if part is not None and part not in parts:
        raise unknown_choice("export.part", part, parts)
    plan = [r for r in plan if part is None or r["part"] == part]
    runs = [r for r in runs if part is None or r["part"] == part]
    variant_part = _pick_variant(config, plan, runs)
    mine = [r for r in runs if (r["part"], r["variant"]) == variant_part]
    found = [r for r in mine if r["seed"] == seed]
    if not found:
        stored = ", ".join(str(s) for s in sorted({r["seed"] for r in mine})) or "none"
        raise UserError(f"export.seed: {variant_part[1]} seed {seed} is not in the store {store.path} (not trained, or "
                        f"not finished; seeds stored: {stored})")
    return _one_run(found, plan, variant_part, seed, epochs)


def _pick_experiment(store: Store, experiment: Optional[str]) -> str:
    names = store.experiment_names()
    if experiment is not None:
        if experiment not in names:
            raise unknown_choice("export.experiment", experiment, names)
        return experiment
    if not names:
        raise UserError(f"store: {store.path} holds no experiment yet (run one first: relulab run ...)")
    if len(names) > 1:
        raise UserError(f"export.experiment: {store.path} holds several experiments ({', '.join(sorted(names))}); "
                        "name one")
    return names[0]


def _pick_variant(config: str, plan: list[dict], runs: list[dict]) -> tuple[str, str]:
    """(part, variant) that `config` names: a variant (of the plan or a stored run: a search's placement), or a
    configuration of the plan with a single grid point."""
    pairs = sorted({(r["part"], r["variant"]) for r in plan} | {(r["part"], r["variant"]) for r in runs})
    exact = [pv for pv in pairs if pv[1] == config]
    if not exact:
        exact = sorted({(r["part"], r["variant"]) for r in plan if r["config"] == config})
        if len({pv[0] for pv in exact}) == 1 and len(exact) > 1:
            raise UserError(f"export.config: {config} has several grid points ({', '.join(v for _, v in exact)}); "
                            "name one")
    if not exact:
        raise unknown_choice("export.config", config, sorted({v for _, v in pairs} | {r["config"] for r in plan}))
    if len(exact) > 1:
        raise UserError(f"export.part: {config} is in several parts ({', '.join(p for p, _ in exact)}); name one")
    return exact[0]


def _epochs(run: dict) -> int:
    """The epochs a stored run was asked for (its spec's; a diverged run stopped before them)."""
    return run["spec"]["train"]["epochs"]


def _one_run(found: list[dict], plan: list[dict], variant_part: tuple[str, str], seed: int,
             epochs: Optional[int]) -> dict:
    """Of several stored runs of one variant and seed (a search's shorter runs beside the sweep's), the one
    `epochs` names, else the plan's."""
    if epochs is not None:
        found = [r for r in found if _epochs(r) == epochs]
        if not found:
            raise UserError(f"export.epochs: no run of {variant_part[1]} seed {seed} trained for {epochs} epochs in the "
                            "store")
    if len(found) == 1:
        return found[0]
    planned = {r["run_key"] for r in plan if (r["part"], r["variant"]) == variant_part and r["seed"] == seed}
    ours = [r for r in found if r["key"] in planned]
    if len(ours) == 1:
        return ours[0]
    lengths = sorted({_epochs(r) for r in found})
    raise UserError(f"export.epochs: {len(found)} runs of {variant_part[1]} seed {seed} are in the store, trained for "
                    f"{' and '.join(map(str, lengths))} epochs; pick one with export.epochs")
