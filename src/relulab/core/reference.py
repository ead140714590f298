"""Code named by reference in a spec: `target: "pkg.module:function"` or `target: "path/to/file.py:function"`.

A target is a module path or a `.py` file, a colon, and the name of a function in it (`models:build`,
`nets/resnet.py:build`, `torchvision.models:resnet18`). `load_target` imports it and hands back the function
with the SHA-256 of its source: the file named, or the module's file. That hash goes into the run key (relulab.
experiments.plan.canonical_spec), so an edited builder re-runs its runs instead of reusing stale ones; only the
one file counts (a helper module it imports is not hashed).

A file target is loaded as a module of its own (named after its path and hash, kept in sys.modules), with the
file's folder put on sys.path, as `python file.py` does, so that it can import its neighbours. The same file
with the same content is loaded once per process.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import json
import sys
import traceback
from pathlib import Path
from typing import Callable, Optional

from relulab.core.errors import UserError

EXPECTED = "expected 'module:function' or 'file.py:function'"
RELULAB_DIR = str(Path(__file__).resolve().parent.parent)
_LOADED: dict[tuple[str, str], object] = {}  # (file, sha256) -> its module
_IMPORTED: dict[str, Optional[str]] = {}  # module target -> the SHA-256 of its file when first imported


def split_target(target, field: str) -> tuple[str, str]:
    """'pkg.mod:build' -> ('pkg.mod', 'build'); 'a/b.py:build' -> ('a/b.py', 'build')."""
    if not isinstance(target, str):
        raise UserError(f"{field}: {EXPECTED}, got {target!r}")
    where, _, name = target.strip().rpartition(":")  # rpartition: a Windows path's drive letter keeps its colon
    if not where or not name.isidentifier():
        raise UserError(f"{field}: {EXPECTED}, got {target!r}")
    if not is_file(where) and not all(part.isidentifier() for part in where.split(".")):
        raise UserError(f"{field}: {EXPECTED}, got {target!r}")
    return where, name


def is_file(where: str) -> bool:
    return where.endswith(".py")


def is_target(text) -> bool:
    """Whether a --model / model.name value is a target rather than a registry name (names have no colon)."""
    return isinstance(text, str) and ":" in text


def resolve_target(target, base_dir: Optional[Path] = None, field: str = "target") -> str:
    """`target` with a file path made absolute, relative to `base_dir` (a spec's folder; default: the current
    folder): the spec stored with the runs then names the file wherever it is read. Module targets pass as they are."""
    where, name = split_target(target, field)
    if not is_file(where):
        return f"{where}:{name}"
    return f"{(base_dir or Path.cwd()).joinpath(Path(where).expanduser()).resolve()}:{name}"


def load_target(target, field: str) -> tuple[Callable, Optional[str]]:
    """(the function `target` names, the SHA-256 of its source file or None where the module has no file)."""
    where, name = split_target(target, field)
    module, source = _load_file(where, field) if is_file(where) else _import(where, field)
    function = getattr(module, name, None)
    if function is None:
        raise UserError(f"{field}: '{where}' has no '{name}'")
    if not callable(function):
        raise UserError(f"{field}: '{where}:{name}' is not a function (it is {type(function).__name__})")
    return function, source


def target_sha256(target, field: str) -> Optional[str]:
    return load_target(target, field)[1]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _import(module_name: str, field: str):
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # ImportError, or whatever the module's own code raises on import
        raise UserError(f"{field}: cannot import '{module_name}' ({_reason(e)})") from None
    file = getattr(module, "__file__", None)
    sha = _sha256(Path(file)) if file and Path(file).is_file() else None
    # Python imports a module once a process: an edited file would hash anew while the old code ran on.
    if _IMPORTED.setdefault(module_name, sha) != sha:
        raise UserError(f"{field}: {file} changed since this process imported '{module_name}'; its new code "
                        "runs only in a new process (start it again)")
    return module, sha


def _load_file(where: str, field: str):
    path = Path(where).expanduser().resolve()
    if not path.is_file():
        raise UserError(f"{field}: {path} does not exist")
    try:
        sha = _sha256(path)
    except OSError as e:
        raise UserError(f"{field}: cannot read {path} ({e.strerror or e})") from None
    if (str(path), sha) in _LOADED:
        return _LOADED[str(path), sha], sha
    name = f"relulab_target_{path.stem}_{sha[:12]}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    if str(path.parent) not in sys.path:
        sys.path.append(str(path.parent))  # its neighbours import as they would under `python file.py`
    sys.modules[name] = module  # dataclasses and pickling look a class's module up there
    try:
        spec.loader.exec_module(module)
    except Exception as e:
        del sys.modules[name]
        raise UserError(f"{field}: cannot import {path} ({_reason(e)})") from None
    _LOADED[str(path), sha] = module
    return module, sha


def _reason(e: Exception) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {text}" if not isinstance(e, ImportError) or not text else text


def check_kwargs(kwargs, field: str) -> dict:
    """Keyword arguments for a target: a mapping of argument names to plain (JSON) values, as a spec stores."""
    if not isinstance(kwargs, dict):
        raise UserError(f"{field}: expected a mapping of argument names to values, got {kwargs!r}")
    for key, value in kwargs.items():
        if not isinstance(key, str) or not key.isidentifier():
            raise UserError(f"{field}: {key!r} is not an argument name")
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError):
            raise UserError(f"{field}.{key}: expected plain data (numbers, text, lists, mappings), got "
                            f"{value!r}") from None
    return kwargs


def call_target(function: Callable, kwargs: dict, offered: dict, target: str, field: str, kwargs_field: str):
    """`function(**kwargs)`, plus those of `offered` (e.g. num_classes, input_shape) that its signature names and
    `kwargs` does not set. Arguments its signature refuses are a UserError naming `kwargs_field`; an exception
    raised by the function is one naming `field`, with the line of the target's code it came from."""
    try:
        signature: Optional[inspect.Signature] = inspect.signature(function)
    except (TypeError, ValueError):  # a builtin without a signature: nothing offered, nothing checked
        signature = None
    takes = signature.parameters if signature is not None else {}
    extra = {k: v for k, v in offered.items() if k in takes and k not in kwargs
             and takes[k].kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)}
    if signature is not None:
        try:
            signature.bind(**kwargs, **extra)
        except TypeError as e:
            raise UserError(f"{kwargs_field}: {target} does not take them ({e})") from None
    try:
        return function(**kwargs, **extra)
    except UserError:
        raise
    except Exception as e:
        text = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise UserError(f"{field}: {target} raised {type(e).__name__}: {text}{_where(e)}") from None


def _where(error: Exception) -> str:
    """' at file:line' of the innermost frame outside relulab: the line of the user's code that raised."""
    frames = [f for f in traceback.extract_tb(error.__traceback__) if not f.filename.startswith(RELULAB_DIR)]
    return f" at {frames[-1].filename}:{frames[-1].lineno}" if frames else ""


def short_name(target: str, field: str = "target") -> str:
    """`nets.py:build` for `/home/me/project/nets.py:build`: how messages name a target."""
    where, name = split_target(target, field)
    return f"{Path(where).name if where.endswith('.py') else where}:{name}"


def check_same_source(target: str, recorded: Optional[str], current: Optional[str], field: str) -> None:
    """Refuse a spec (or checkpoint) whose recorded source hash is not the target's hash now: what was planned or
    saved from the old source would be filed under the new one. `field` names the hash field."""
    if recorded is not None and recorded != current:
        raise UserError(f"{field}: {short_name(target)} is not the source this spec was made from (its SHA-256 is "
                        f"now {str(current)[:12]}..., the spec's {recorded[:12]}...): the file changed since, and what "
                        "was planned or saved from the old source is not the new one's; read the spec again (relulab "
                        "fills this field in: leave it out)")


def record_source(spec, prefix: str) -> None:
    """Check a by-reference spec's `kwargs`, import its `target`, and fill in `source_sha256` (refusing a spec
    made from another version of the source): the part a model and data by reference share."""
    check_kwargs(spec.kwargs, f"{prefix}.kwargs")
    _, sha = load_target(spec.target, f"{prefix}.target")
    check_same_source(spec.target, spec.source_sha256, sha, f"{prefix}.source_sha256")
    spec.source_sha256 = sha
