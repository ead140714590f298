"""Save a trained model with everything needed to rebuild it, and load it back safely.

A checkpoint is one `torch.save` file holding only plain data: the run's spec as a dict
of strings and numbers, the seed, the input shape and class names, a summary of the
history, and the model's `state_dict` tensors. It is loaded with
`torch.load(..., weights_only=True)`, PyTorch's restricted unpickler: a file that tries to
import anything else (a class, a function such as os.system) is refused before any of it
runs, with a one-line error naming the file.

    from relulab.training import checkpoints
    checkpoints.save(result, "model.pt")          # result: a relulab.train.RunResult
    ckpt = checkpoints.load("model.pt")           # ckpt.model is ready for evaluation

The same files hold the weights a sweep keeps of its runs (relulab.weights): `weights` says whether a file
holds a run's final model or its best epoch's, and `epoch` which epoch that is.

A folded checkpoint (`fold_file`, `relulab fold`: relulab.zoo.fold) is the same file with the folded model's
weights and a `folded` record ({"approximate": ..., the report}); `load` builds the model from the spec, folds it
the same way (folding depends only on the structure and the placement) and loads the weights into that.
"""
from __future__ import annotations

import io
import json
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from relulab.core.errors import UserError
from relulab.zoo.fold import FoldReport, fold, fold_structure
from relulab.zoo.models import SlotNet, build_model
from relulab.training.resume import to_cpu
from relulab.training.specs import RunResult, RunSpec, build_run_spec
from relulab.core.util import write_bytes_atomic

FORMAT = "relulab-checkpoint"
VERSION = 1


@dataclass
class Checkpoint:
    spec: RunSpec
    seed: int
    model: SlotNet  # in eval mode, on the CPU
    input_shape: tuple[int, ...]
    classes: list[str]
    summary: dict  # best/final validation accuracy, epochs, seconds, diverged_at, as when it was saved
    provenance: dict
    weights: str = "final"  # whose weights: the run's final model, or its best epoch's (relulab.weights)
    epoch: Optional[int] = None  # the epoch those weights are from, where the file says
    folded: Optional[dict] = None  # a folded model's record (relulab.zoo.fold): approximate, layers, difference


WEIGHTS = ("final", "best")


def save(result: RunResult, path: str | Path, class_names: list[str] | None = None) -> Path:
    """Write `result`'s model and spec to `path` (atomically: a killed save leaves no half file).
    `class_names`: the dataset's (Splits.classes); by default the class indices."""
    if result.model is None:
        raise UserError(f"{path}: this result holds no model to save")
    return write_bytes_atomic(path, to_bytes(result, result.model.state_dict(), class_names, where=path))


def to_bytes(result: RunResult, state_dict: dict, class_names: list[str] | None = None, weights: str = "final",
             epoch: Optional[int] = None, where: str | Path = "checkpoint") -> bytes:
    """A checkpoint of `result`'s run holding the weights `state_dict` (its final model's, or its best epoch's:
    `weights`, from `epoch`), as the bytes `save` writes. `where` names the file in errors."""
    input_shape = result.data.get("input_shape")
    classes = class_names or [str(i) for i in range(int(result.data.get("classes") or 0))]
    if not input_shape or not classes:
        raise UserError(f"{where}: the result does not say its input shape and classes; cannot save its model")
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "spec": _plain(result.spec.to_dict()),
        "seed": int(result.seed),
        "input_shape": [int(d) for d in input_shape],
        "classes": [str(c) for c in classes],
        "summary": _plain(result.history.summary()),
        "provenance": _plain(result.provenance),
        "weights": weights,
        "epoch": epoch if epoch is None else int(epoch),
        "state_dict": state_to_cpu(state_dict),
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    return buffer.getvalue()


def state_to_cpu(state: dict) -> dict:
    """A copy of a state dict on the CPU (`resume.to_cpu`: one device-to-host copy per dtype, each tensor with storage
    of its own); anything else a state dict may hold (a module's extra state) as it is."""
    names = [name for name, value in state.items() if isinstance(value, torch.Tensor)]
    return {**state, **dict(zip(names, to_cpu(state[name] for name in names)))}


def _plain(value):
    """A JSON round trip: plain dicts, lists, strings and numbers, which weights_only loading accepts."""
    return json.loads(json.dumps(value, default=str))


def load(path: str | Path) -> Checkpoint:
    """Read a checkpoint written by `save` and rebuild its model; every failure is a one-line UserError."""
    path = Path(path)
    payload = _read(path)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise UserError(f"{path}: not a relulab checkpoint (no '{FORMAT}' header)")
    if payload.get("version") != VERSION:
        raise UserError(f"{path}: checkpoint version {payload.get('version')!r}; this relulab reads version {VERSION}")

    seed, input_shape, classes, summary, provenance = _metadata(payload, path)
    weights, epoch = _weights_of(payload, path)
    folded = _folded_of(payload, path)
    try:
        spec = build_run_spec(payload["spec"], prefix="checkpoint spec ")
        model = build_model(spec.model, input_shape, len(classes))
        if folded is not None:
            model = fold_structure(model, folded["approximate"])
        model.load_state_dict(payload["state_dict"])
    except UserError as e:
        raise UserError(f"{path}: {e}") from None
    except (KeyError, TypeError, ValueError, RuntimeError) as e:  # missing fields, shapes that do not match
        raise UserError(f"{path}: damaged checkpoint ({type(e).__name__}: {str(e).splitlines()[0]})") from None
    return Checkpoint(spec, seed, model.eval(), input_shape, classes, summary, provenance, weights, epoch, folded)


def _folded_of(payload: dict, path: Path) -> Optional[dict]:
    folded = payload.get("folded")
    if folded is not None and (not isinstance(folded, dict) or not isinstance(folded.get("approximate"), bool)):
        raise UserError(f"{path}: damaged checkpoint: 'folded' should be a mapping with approximate true or false, "
                        f"got {folded!r:.60}")
    return folded


def fold_file(source: str | Path, out: str | Path, approximate: bool = False) -> FoldReport:
    """Fold the checkpoint `source`'s model (relulab.zoo.fold.fold) and write it, with the same spec, seed and
    summary, to `out` (atomically); nothing is written if it cannot fold."""
    source, out = Path(source), Path(out)
    if out.is_dir():
        raise UserError(f"{out}: is a folder; expected the checkpoint file to write")
    ckpt = load(source)
    if ckpt.folded is not None:
        raise UserError(f"{source}: already folded; fold the checkpoint it was folded from")
    try:
        folded, report = fold(ckpt.model, approximate)
    except UserError as e:
        raise UserError(f"{source}: {e}") from None
    payload = _read(source)
    payload["folded"] = _plain(report.to_dict())
    payload["state_dict"] = {k: v.detach().cpu() for k, v in folded.state_dict().items()}
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    write_bytes_atomic(out, buffer.getvalue())
    return report


def _metadata(payload: dict, path: Path) -> tuple[int, tuple[int, ...], list[str], dict, dict]:
    """The checkpoint's plain fields, each checked for its type: (seed, input shape, classes, summary,
    provenance). A file edited by hand or damaged says which field is wrong instead of failing later."""
    def damaged(field: str, expected: str) -> UserError:
        return UserError(f"{path}: damaged checkpoint: '{field}' should be {expected}, got {payload.get(field)!r:.60}")

    seed = payload.get("seed")
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**63:
        raise damaged("seed", "an integer from 0 to 2**63 - 1")
    shape = payload.get("input_shape")
    if not isinstance(shape, list) or not shape or not all(
            isinstance(d, int) and not isinstance(d, bool) and 0 < d < 2**31 for d in shape):
        raise damaged("input_shape", "a list of positive integers")
    classes = payload.get("classes")
    if not isinstance(classes, list) or len(classes) < 2 or not all(isinstance(c, str) for c in classes):
        raise damaged("classes", "a list of at least two class names")
    for field in ("spec", "state_dict"):
        if not isinstance(payload.get(field), dict):
            raise damaged(field, "a mapping")
    for field in ("summary", "provenance"):
        if not isinstance(payload.get(field, {}), dict):
            raise damaged(field, "a mapping")
    return seed, tuple(shape), list(classes), dict(payload.get("summary", {})), dict(payload.get("provenance", {}))


def _weights_of(payload: dict, path: Path) -> tuple[str, Optional[int]]:
    """Whose weights the file holds and from which epoch; files written before this was recorded hold a
    model's final weights."""
    weights, epoch = payload.get("weights", "final"), payload.get("epoch")
    if weights not in WEIGHTS:
        raise UserError(f"{path}: damaged checkpoint: 'weights' should be final or best, got {weights!r:.60}")
    if epoch is not None and (not isinstance(epoch, int) or isinstance(epoch, bool) or not 0 < epoch < 2**63):
        raise UserError(f"{path}: damaged checkpoint: 'epoch' should be a positive integer, got {epoch!r:.60}")
    return weights, epoch


def _read(path: Path):
    if not path.is_file():
        raise UserError(f"{path}: checkpoint not found")
    try:
        # weights_only=True: only tensors and plain containers; anything else is refused, not run.
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # PyTorch's message is a paragraph; a line naming a GLOBAL means the file asked for code.
        refused = next((line.strip() for line in str(e).splitlines() if "GLOBAL" in line), None)
        if refused:
            raise UserError(f"{path}: refused: the checkpoint holds more than tensors and plain data ({refused})"
                            ) from None
        raise UserError(f"{path}: not a readable checkpoint (not a torch.save file)") from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:  # truncated, not a zip, not a torch file
        first_sentence = str(e).split(". ")[0]
        raise UserError(f"{path}: not a readable checkpoint ({type(e).__name__}: {first_sentence})") from None
