"""Where results go, checked before the work; a full disk mid-report; Ctrl-C; sizes that cannot fit.

Every output location a command will write (the store, the report folder, TensorBoard's folder, `train`'s
--out and --save, `probe`'s --out) is checked before anything trains: a wrong one is refused in one line with
exit code 2 and nothing written. A report is written into a staging folder and swapped in whole, so a full
disk leaves the earlier report as it was.
"""
from __future__ import annotations

import errno
import io
import os
import signal
import sqlite3
import time
from pathlib import Path

import pytest

import chaos
from relulab.core.errors import UserError
from relulab.report import build_report
from runner import assert_refused, run_cli
from specs import TINY, relulab, stored_runs, write_spec

# ------------------------------------------------------------------ output locations


@pytest.mark.parametrize("argv,names", [
    (["run", "spec.yaml", "--out", "base.yaml"], "--out: "),                      # a report folder that is a file
    (["run", "spec.yaml", "--store", "base.yaml/x.sqlite"], "store: cannot create"),  # a store under a file
    (["run", "spec.yaml", "--store", "/proc/relulab-nowhere/x.sqlite"], "store: cannot write in /proc"),
    (["run", "spec.yaml", "--store", "sub"], "store: "),                          # a store that is a folder
    (["run", "spec.yaml", "--tensorboard", "base.yaml"], "--tensorboard: "),
    (["run", "spec.yaml", "--out", "rep", "--tensorboard", "rep/tb"], "--tensorboard: "),
    (["run", "spec.yaml", "--no-report", "--tensorboard", "base.yaml"], "--tensorboard: "),  # live logs, no report
    (["search", "spec.yaml", "--tensorboard", "base.yaml"], "--tensorboard: "),
    (["train", "-e", "1", "--widths", "8", "--save", "."], "--save: "),
    (["train", "-e", "1", "--widths", "8", "--out", "sub"], "--out: "),
    (["train", "-e", "1", "--widths", "8", "--save", "base.yaml/m.pt"], "--save: cannot create"),
    (["probe", "spec.yaml", "--out", "base.yaml"], "--out: "),
    (["search", "spec.yaml", "--out", "base.yaml"], "--out: "),
    (["run", "spec.yaml", "--out", "full"], "--out: "),                           # a folder holding other files
])
def test_an_output_location_that_cannot_be_written_is_refused_before_any_training(argv, names):
    files = {"base.yaml": b"x: 1\n", "sub/keep.txt": b"mine", "full/notes.txt": b"my notes"}
    code, err, left = run_cli(argv, TINY, files)
    assert_refused(code, err, left, names)


@pytest.mark.parametrize("extra,report", [([], False), (["--no-report"], False), (["--report"], True)])
def test_probe_out_writes_only_in_its_folder_and_the_store(extra, report):
    """`relulab probe --out DIR` wrote its tables in DIR and rebuilt the experiment's report beside the store: with
    --out, every file it writes is in DIR (the report only when asked, as DIR/report), apart from the store and
    the weights it keeps beside it."""
    argv = ["probe", "spec.yaml", "--epochs", "1", "--store", "db/s.sqlite", "--out", "mine", *extra]
    code, err, left = run_cli(argv, TINY)
    assert code == 0, err
    outside = [p for p in left if not p.startswith(("mine", "db"))]
    beside_store = [p for p in left if p.startswith("db/") and not p.startswith("db/s.weights")]
    assert outside == [] and beside_store == ["db/s.sqlite"], left
    assert ("mine/report/report.html" in left) is report


def test_a_read_only_folder_is_refused_before_any_training(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root writes into read-only folders; the /proc case above covers a folder that takes no file")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        code, err, left = run_cli(["run", "spec.yaml", "--store", str(locked / "s.sqlite")], TINY)
        assert_refused(code, err, left, "store: cannot write in")
    finally:
        locked.chmod(0o755)


def _report(tmp_path: Path) -> tuple[Path, Path]:
    """A store of the tiny experiment with one report written: (store, report folder)."""
    spec = write_spec(tmp_path)
    store, out = tmp_path / "s.sqlite", tmp_path / "rep"
    assert run_cli(["run", str(spec), "--seeds", "0", "--store", str(store), "--out", str(out)])[0] == 0
    return store, out


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_full_disk_mid_report_leaves_the_earlier_report_whole(tmp_path, monkeypatch):
    store, out = _report(tmp_path)
    before = _snapshot(out)
    real_fdopen, opened = os.fdopen, []

    class FullDisk(io.RawIOBase):
        def writable(self):
            return True

        def write(self, blob):
            raise OSError(errno.ENOSPC, "No space left on device")

    def filling_up(fd, *args, **kwargs):  # the first three files fit, then the disk is full
        opened.append(fd)
        if len(opened) <= 3:
            return real_fdopen(fd, *args, **kwargs)
        os.close(fd)
        return FullDisk()

    monkeypatch.setattr(os, "fdopen", filling_up)
    with pytest.raises(UserError, match="could not write it: the disk is full") as refused:
        build_report(store, out_dir=out)
    monkeypatch.setattr(os, "fdopen", real_fdopen)
    assert "\n" not in str(refused.value)
    assert _snapshot(out) == before  # the earlier report, byte for byte
    # no staging folder left (s.weights: the sweep's kept weights)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rep", "s.sqlite", "s.weights", "spec.yaml"]


def test_a_report_replaces_the_earlier_one_whole(tmp_path):
    store, out = _report(tmp_path)
    (out / "figures" / "stale.png").write_bytes(b"from an older report")
    files = build_report(store, out_dir=out)
    assert files.html.parent == out and files.html.is_file()
    assert not (out / "figures" / "stale.png").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


# ------------------------------------------------------------------ sizes that cannot fit


@pytest.mark.parametrize("argv,spec,names", [
    (["train", "-e", "1", "--widths", "100000000,100000000"], None, "--widths: a deep-mlp of"),
    (["run", "spec.yaml", "--no-report"], TINY.replace("widths: [8, 8]", "widths: [100000000, 100000000]"),
     "model.widths: a deep-mlp of"),
])
def test_a_model_too_big_for_memory_is_refused_with_its_size(argv, spec, names):
    code, err, left = run_cli(argv, spec)
    assert_refused(code, err, left, names)
    assert "of memory; this machine has" in err


# ------------------------------------------------------------------ Ctrl-C


def test_ctrl_c_says_how_to_resume_and_the_same_command_resumes(tmp_path):
    spec, store = tmp_path / "chaos.yaml", tmp_path / "chaos.sqlite"
    spec.write_text(chaos.SWEEP)
    proc = chaos.start(spec, store)
    deadline = time.monotonic() + 120
    while stored_runs(store) < 1 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    last = err.strip().splitlines()[-1]
    assert last == "interrupted; run the same command to resume (finished runs are in the store)"
    assert "Traceback" not in err
    db = sqlite3.connect(store)
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    db.close()
    chaos.finish_and_check(spec, store, chaos.expected_keys(spec, store), chaos.Campaign())


def test_ctrl_c_in_train_promises_no_resume(capsys, monkeypatch):
    """`train` keeps no store, so its line does not say that running it again goes on."""
    from relulab.cli import train as train_cli

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(train_cli, "_train_seeds", interrupted)
    code, _, err = relulab(capsys, "train", "-e", "1", "--widths", "8")
    assert code == 130 and err.strip().splitlines()[-1] == "interrupted"
