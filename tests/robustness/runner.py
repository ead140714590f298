"""Shared by the robustness tests: run the `relulab` entry point in-process in a throwaway folder,
check how it refused, and the Hypothesis settings every property test uses."""
from __future__ import annotations

import contextlib
import io
import os
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, settings

from relulab.cli import main


def fuzz(max_examples: int) -> settings:
    """Derandomized (the same examples on every run) and without an example database, so the suite is
    deterministic and writes nothing. RELULAB_FUZZ_SCALE multiplies the number of examples:
    benchmarks/robustness_campaign.py runs the same properties many times longer."""
    scale = float(os.environ.get("RELULAB_FUZZ_SCALE", "1"))
    return settings(max_examples=max(1, int(max_examples * scale)), derandomize=True, database=None, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


def run_cli(argv: list[str], spec_text: str | None = None, files: dict[str, bytes] | None = None,
            stdout: io.StringIO | None = None) -> tuple[int, str, list[str]]:
    """Run `relulab ARGV` in a fresh temp folder holding spec.yaml (when given) and `files`;
    (exit code, stderr, the paths it left beside them). What it prints goes to `stdout` if given."""
    files = dict(files or {})
    if spec_text is not None:
        files["spec.yaml"] = spec_text.encode()
    with tempfile.TemporaryDirectory() as folder, _chdir(folder):
        for name, blob in files.items():
            Path(name).parent.mkdir(parents=True, exist_ok=True)
            Path(name).write_bytes(blob)
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(stdout or io.StringIO()):
            try:
                main(argv)
                code = 0
            except SystemExit as exit_info:
                code = exit_info.code
        given = {str(Path(name)) for name in files} | {str(p) for name in files for p in Path(name).parents}
        left = sorted(str(p) for p in Path(".").rglob("*") if str(p) not in given)
    return code, err.getvalue(), left


@contextlib.contextmanager
def _chdir(folder: str):
    before = os.getcwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(before)


def assert_refused(code: int, err: str, left: list[str], names: str) -> None:
    assert code == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    assert names in err, err
    assert left == [], left  # no store, no report, no half-written file
