"""Training faults inside a sweep (non-finite losses, out-of-memory packs) and hostile strings in reports."""
from __future__ import annotations

import sqlite3

import torch

from relulab.packing import pack
from relulab.experiments import load_experiment, run_experiment
from specs import write_spec
from conftest import image_folder_files
from runner import run_cli

# Two healthy configurations and one whose learning rate blows the loss up to inf/NaN, 3 seeds each,
# all packable: the diverging models share packs (and stacks) with healthy ones.
FAULTY = """\
name: faulty
device: cpu
seeds: [0, 1, 2]
data: {name: synthetic, options: {n: 240, classes: 3, size: 4}}
model: {name: deep-mlp, widths: [16, 16], init: he_normal}
train: {epochs: 3, batch_size: 32, optimizer: {name: sgd, lr: 0.05}}
configs:
  relu: {}
  huge-lr: {train: {optimizer: {lr: 1.0e+30}}}
  tanh: {model: {activation: tanh}}
"""


def test_diverging_runs_and_out_of_memory_packs_do_not_stop_the_sweep(tmp_path, monkeypatch):
    packs_tried = []
    real = pack.train_together

    def low_memory(jobs, splits, device, **options):  # a GPU that fits at most two models at a time
        packs_tried.append(len(jobs))
        if len(jobs) > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (injected)")
        return real(jobs, splits, device, **options)

    monkeypatch.setattr(pack, "train_together", low_memory)
    monkeypatch.chdir(tmp_path)  # the store goes to ./runs
    exp = load_experiment(str(write_spec(tmp_path, FAULTY)))
    summary = run_experiment(exp, log=lambda _: None, echo=lambda _: None)
    assert max(packs_tried) > 2 and packs_tried.count(2) + packs_tried.count(1) >= 4  # halved, then fitted
    assert summary.trained == 9 and summary.diverged == 3
    db = sqlite3.connect(exp.store)
    rows = db.execute("SELECT variant, status, diverged_at FROM runs").fetchall()
    assert sorted(r[0] for r in rows) == sorted(["relu", "huge-lr", "tanh"] * 3)  # every run, once
    for variant, status, diverged_at in rows:
        if variant == "huge-lr":
            assert status == "diverged" and 1 <= diverged_at <= 3  # with the epoch it happened in
        else:
            assert status == "done" and diverged_at is None


def test_the_report_shows_hostile_strings_as_text(tmp_path, monkeypatch):
    evil = "<script>alert('x')</script><img src=x onerror=alert(1)>"
    folder = tmp_path / evil.replace("/", "|")  # a folder name may hold almost anything
    for name, blob in image_folder_files().items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(blob)
    spec = write_spec(tmp_path, f"""\
name: hostile
description: "{evil} & friends"
device: cpu
seeds: [0]
data: {{name: image-folder, path: "{folder}"}}
model: {{name: deep-mlp, widths: [8]}}
train: {{epochs: 1, batch_size: 16}}
configs: {{relu: {{}}}}
""")
    monkeypatch.chdir(tmp_path)
    code, err, _ = run_cli(["run", str(spec), "--store", str(tmp_path / "h.sqlite"), "--out", str(tmp_path / "r")])
    assert code == 0, err
    page = (tmp_path / "r" / "report.html").read_text()
    assert "<script" not in page.lower() and "<img src=x" not in page  # the report itself has no scripts
    escaped = "&lt;script&gt;alert(&#39;x&#39;)&lt;"
    assert escaped + "/script&gt;" in page  # the description
    assert escaped + "|script&gt;" in page  # the data path
