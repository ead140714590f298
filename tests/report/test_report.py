"""Reports: tables, CSV, plots and the self-contained HTML, from a real store."""
import csv
import io
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from relulab.cli import main
from relulab.core.errors import UserError
from relulab.experiments import Overrides, load_experiment, run_experiment
from relulab.report import build_report
from specs import TINY, write_spec

EVIL = "<script>alert('relulab')</script> & <b>bold</b>"


def quiet(_message):
    pass


def _make_store(folder: Path, text: str, **overrides) -> Path:
    exp = load_experiment(str(write_spec(folder, text)), Overrides(store=str(folder / "s.sqlite"), **overrides))
    run_experiment(exp, log=quiet, echo=quiet)
    return exp.store


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """A store whose validation data is the test set, with probes, analyses and a hostile description."""
    folder = tmp_path_factory.mktemp("report")
    text = TINY.replace("description: A tiny experiment for the tests.", f'description: "{EVIL}"').replace(
        "options: {n: 240", "split: test, options: {n: 240") + (
        "probes: [sparsity]\nanalyses: {relu_demo: {}, activation_plots: {}, activation_cost: {elements: 4096, min_run_time: 0.01}}\n")
    store = _make_store(folder, text, seeds=[0, 1, 2])
    return build_report(store, svg=True)


def test_report_files(report):
    assert report.html.name == "report.html" and report.html.parent.name == "tiny-report"
    names = {p.name for p in report.figures}
    assert {"1-tiny-curves.png", "1-tiny-epoch-time.png", "1-tiny-sparsity.png", "1-tiny-activations.png",
            "1-tiny-activation-cost.png", "1-tiny-curves.svg"} <= names
    assert all(p.stat().st_size > 5000 for p in report.figures)


def test_markdown_has_the_seeds_table_extended(report):
    md = report.markdown.read_text()
    assert md.startswith("> **Warning:** validation data is the test set (tiny)")
    header = "| configuration | best val acc (%) | final val acc (%) | best epoch | seconds | s / epoch | seeds |"
    assert header in md
    relu = next(line for line in md.splitlines() if line.startswith("| relu |"))
    assert re.search(r"\| relu \| \d+\.\d\d ± \d+\.\d\d \| \d+\.\d\d ± \d+\.\d\d \| [\d.]+ \(\d-\d\) \|", relu)
    assert relu.rstrip().endswith("| 3 | baseline |")
    assert "| tanh | relu | best val acc |" in md and "seed noise" in md
    assert "rectified(-1000.0) is 0.0" in md and "![Sparsity per layer](figures/1-tiny-sparsity.png)" in md
    assert "<script>" not in md and "&lt;script&gt;" in md


def test_csv_is_machine_readable_and_flags_the_test_set(report):
    text = report.summary_csv.read_text()
    assert text.startswith("experiment,part,configuration,")  # the warning is a column, not a comment line
    rows = list(csv.DictReader(io.StringIO(text)))
    assert [r["configuration"] for r in rows] == ["relu", "tanh"]
    tanh = rows[1]
    assert tanh["baseline"] == "relu" and tanh["val_is_test"] == "true" and tanh["runs_done"] == "3"
    low, mean, high = (float(tanh[k]) for k in ("best_val_acc_ci_low", "best_val_acc_mean", "best_val_acc_ci_high"))
    assert low <= mean <= high and tanh["distinguishable"] in ("true", "false")
    runs = list(csv.DictReader(io.StringIO(report.runs_csv.read_text())))
    assert len(runs) == 6 and {r["status"] for r in runs} == {"done"} and {r["val_is_test"] for r in runs} == {"true"}


def test_html_is_self_contained_escaped_and_flagged_at_the_top(report):
    page = report.html.read_text()
    assert page.index("validation data is the test set") < page.index("<h1>")
    assert "<script" not in page.lower()  # the description's script tag came out escaped
    assert "&lt;script&gt;alert(&#39;relulab&#39;)&lt;/script&gt; &amp; &lt;b&gt;bold&lt;/b&gt;" in page
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)  # nothing loaded from outside
    images = re.findall(r'<img [^>]*src="([^"]+)"', page)
    assert len(images) == 5 and all(src.startswith("data:image/png;base64,") for src in images)
    assert "rectified(1000.0) is 1000.0" in page and "Provenance" in page


def test_no_flag_when_validation_is_held_out_and_one_seed_says_so(tmp_path):
    files = build_report(_make_store(tmp_path, TINY, seeds=[0]), out_dir=tmp_path / "out")
    assert "validation data is the test set" not in files.html.read_text()
    assert {r["val_is_test"] for r in csv.DictReader(io.StringIO(files.summary_csv.read_text()))} == {"false"}
    md = files.markdown.read_text()
    assert "(n=1)" in md and "too few seeds to tell" in md


def test_a_partial_store_reports_what_is_missing(tmp_path):
    store = _make_store(tmp_path, TINY, seeds=[0])
    load = load_experiment(str(tmp_path / "spec.yaml"), Overrides(store=str(store), seeds=[0, 1]))
    from relulab.store import Store

    with Store(store) as s:  # a plan with more seeds than have run, as while a sweep is going
        s.save_plan(load.name, load.origin, load.raw, [p.meta() for p in load.parts], load.plan_rows())
    files = build_report(store, out_dir=tmp_path / "out")
    assert "2 runs are missing" in files.html.read_text()
    assert "| relu | " in files.markdown.read_text() and "1 of 2" in files.markdown.read_text()


def test_tensorboard_is_optional(tmp_path, monkeypatch):
    store = _make_store(tmp_path, TINY, seeds=[0])
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if tensorboard were not installed
    with pytest.raises(UserError, match=r"report.tensorboard: .*pip install relulab\[tensorboard\]"):
        build_report(store, tensorboard=tmp_path / "tb")
    assert not (tmp_path / "tb").exists()


def test_tensorboard_logs_when_installed(tmp_path):
    pytest.importorskip("tensorboard")
    store = _make_store(tmp_path, TINY, seeds=[0])
    files = build_report(store, tensorboard=tmp_path / "tb")
    assert len(list(files.tensorboard.glob("tiny/*/seed0/events.out.tfevents.*"))) == 2


def test_report_command(capsys, tmp_path):
    store = _make_store(tmp_path, TINY, seeds=[0])
    with pytest.raises(SystemExit) as info:
        main(["report", str(store), "--out", str(tmp_path / "r")])
    out, err = capsys.readouterr()
    assert info.value.code == 0 and out.strip() == str(tmp_path / "r" / "report.html")
    with pytest.raises(SystemExit) as info:
        main(["report", str(tmp_path / "spec.yaml"), "--store", str(store), "--out", str(tmp_path / "r2")])
    assert info.value.code == 0 and capsys.readouterr().out.strip().endswith("r2/report.html")
    with pytest.raises(SystemExit) as info:
        main(["report", str(tmp_path / "nothing.sqlite")])
    assert info.value.code == 2 and "does not exist" in capsys.readouterr().err


CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium) for a screenshot")
def test_quickstart_report_renders_in_headless_chromium(capsys, tmp_path, monkeypatch):
    from PIL import Image

    monkeypatch.chdir(tmp_path)
    # The README's main job, cut down to one seed and one epoch so the suite stays fast.
    with pytest.raises(SystemExit) as info:
        main(["run", "quickstart", "--seeds", "0", "--epochs", "1", "--set", "data.train_size=300"])
    out, err = capsys.readouterr()
    assert info.value.code == 0, err
    html = Path(out.strip().splitlines()[-1])
    assert html == tmp_path / "runs" / "quickstart-report" / "report.html" and html.is_file()
    shot = tmp_path / "shot.png"
    subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    f"--user-data-dir={tmp_path / 'chromium'}", f"--screenshot={shot}", "--window-size=1280,2000",
                    html.as_uri()], check=True, capture_output=True, timeout=120)
    image = Image.open(shot).convert("RGB")
    assert image.size == (1280, 2000)
    colours = image.getcolors(maxcolors=1 << 20)
    assert len(colours) > 300, "the page looks blank"
    assert max(count for count, _ in colours) < 0.9 * 1280 * 2000  # no single colour fills the page
    assert shot.stat().st_size > 50_000


# ---------------------------------------------------------------- seed 002 through depth

DEPTH = """\
name: depth
description: Seed 002 scaled down for the tests.
device: cpu
threads: 1
seeds: [0, 1]
data: {name: digits}
model: {name: bn-mlp, widths: [16, 16, 16, 16, 16, 16, 16, 16], init: glorot_uniform}
train: {epochs: 2, batch_size: 64, optimizer: {name: rmsprop, flavour: keras}}
probes: [mean_out, std_out]
probe_size: 128
configs:
  relu-no-bn: {model: {activation: relu, batchnorm: false}}
  selu-bn-lecun: {model: {activation: selu, batchnorm: true, init: lecun_uniform}}
baseline: relu-no-bn
"""


@pytest.fixture(scope="module")
def depth(tmp_path_factory):
    folder = tmp_path_factory.mktemp("depth")
    store = _make_store(folder, DEPTH)
    return store, build_report(store)


def test_the_selu_vs_batchnorm_preset_probes_what_its_premise_is_about():
    exp = load_experiment("selu-vs-batchnorm", Overrides(store="/nonexistent/never-written.sqlite"))
    assert {"mean_out", "std_out"} <= set(exp.parts[0].probes)
    assert "one by one" in exp.raw["description"]  # probed runs are not packed: the preset says so


def test_depth_section_shows_mean_and_variance_by_slot_at_init_and_after_training(depth):
    import sqlite3

    from relulab.report.collect import collect
    from relulab.report.measures import curve
    from relulab.store import Store

    store, files = depth
    md = files.markdown.read_text()
    assert "### Through depth: post-activation mean and variance" in md
    assert "| slot | relu-no-bn init | relu-no-bn epoch 2 | selu-bn-lecun init | selu-bn-lecun epoch 2 |" in md
    assert "![Post-activation mean and variance through depth](figures/1-depth-depth.png)" in md
    assert (files.html.parent / "figures" / "1-depth-depth.png").stat().st_size > 20_000
    # the table's numbers are the store's: slot 3 of selu-bn-lecun before training, mean / variance over 2 seeds
    db = sqlite3.connect(store)
    rows = db.execute("SELECT s.stat, s.value FROM slot_stats s JOIN runs r ON r.key = s.run_key WHERE "
                      "r.variant = 'selu-bn-lecun' AND s.epoch = 0 AND s.slot = 3").fetchall()
    mean = sum(v for s, v in rows if s == "mean_out") / 2
    variance = sum(v * v for s, v in rows if s == "std_out") / 2
    line = next(line for line in md.splitlines() if line.startswith("| 3 |"))
    assert line.split(" | ")[3] == f"{mean:.3g} / {variance:.3g}"
    # epoch 0 is a measurement, not a training epoch: the curves still start at epoch 1
    with Store(store) as s:
        data = collect(s, "depth")
    assert list(curve(data.parts[0].variants[0], "val_acc")[0]) == [1, 2]
    page = files.html.read_text()
    assert "Through depth: post-activation mean and variance" in page and "selu-bn-lecun epoch 2" in page


def test_depth_table_of_a_deep_model_shows_representative_slots():
    from relulab.report.measures import representative_slots

    assert representative_slots(list(range(1, 52))) == [1, 5, 10, 15, 20, 25, 30, 35, 40, 45, 50, 51]
    assert representative_slots([1, 2, 3]) == [1, 2, 3]
    assert len(representative_slots(list(range(1, 1001)))) <= 12


def test_a_statistic_undefined_for_a_configuration_gets_no_panel(tmp_path, monkeypatch):
    """Saturation is NaN at every slot of a ReLU model: its panel would be empty, so it is not drawn."""
    from relulab.report import sections

    drawn = []
    real = sections.stat_over_epochs_figure

    def spy(title, panels, *args, **kwargs):
        drawn.append((title, [name for name, _ in panels]))
        return real(title, panels, *args, **kwargs)

    monkeypatch.setattr(sections, "stat_over_epochs_figure", spy)
    files = build_report(_make_store(tmp_path, TINY + "probes: [saturation]\n", seeds=[0]))
    assert drawn == [("saturation per slot over epochs", ["tanh"])]
    assert "saturation is undefined for relu (no panel)." in files.markdown.read_text()


def test_pareto_labels_do_not_overlap(monkeypatch):
    from relulab.report import search_figures

    boxes = []
    real = search_figures.place_labels
    monkeypatch.setattr(search_figures, "place_labels", lambda *a, **k: boxes.extend(real(*a, **k)) or boxes)
    # a frontier whose points sit close together (ReLU counts 0..64, accuracies within 0.4 points), on an axis
    # stretched by a placement far below: labels at one fixed offset from their points would overlap
    cands = [{"relu_count": 8 * i, "mean": 0.90 + 0.0005 * i, "ci_low": None, "ci_high": None,
              "placement": f"off-{'-'.join(str(j) for j in range(1, 9 - i))}" if i < 8 else "all-relu"}
             for i in range(9)]
    cands.append({"relu_count": 64, "mean": 0.40, "ci_low": None, "ci_high": None, "placement": "off-9"})
    figure = search_figures.relu_count_figure({"id": "0" * 16, "metric": "best_val_acc", "candidates": cands}, False)
    assert figure is not None and len(boxes) == 9
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])


def test_every_analysis_has_a_renderer_and_a_renderer_without_one_is_refused():
    from relulab.experiments.analyses import ANALYSES
    from relulab.report.sections import RENDERERS, checked_renderers

    assert set(RENDERERS) == set(ANALYSES)
    with pytest.raises(RuntimeError, match=r"no renderer for the analyses \['relu_demo'\]"):
        checked_renderers({k: v for k, v in RENDERERS.items() if k != "relu_demo"})
    with pytest.raises(RuntimeError, match=r"renderers of no analysis \['unknown'\]"):
        checked_renderers({**RENDERERS, "unknown": RENDERERS["relu_demo"]})


# ---------------------------------------------------------------- CSVs for pandas, and corrected comparisons

DIGITS = """\
name: digits-csv
description: Three placements of a 4-slot MLP on digits, and a search over them.
device: cpu
threads: 1
seeds: [0, 1]
data: {name: digits, split: test}
model: {name: deep-mlp, widths: [16, 16, 16, 16], init: he_normal}
train: {epochs: 2, batch_size: 32, optimizer: {name: adam}}
configs:
  all-relu: {}
  off-4: {model: {off: [4]}}
  off-1: {model: {off: [1]}}
baseline: all-relu
"""


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """A digits store whose validation data is the test set, with a search: every kind of CSV a report writes."""
    from relulab.search import SearchOptions, run_search

    folder = tmp_path_factory.mktemp("digits")
    exp = load_experiment(str(write_spec(folder, DIGITS)), Overrides(store=str(folder / "s.sqlite")))
    run_experiment(exp, log=quiet, echo=quiet)
    run_search(exp, SearchOptions("oracle", budget=1), log=quiet)
    return exp.store


def test_every_csv_of_a_report_loads_with_a_plain_read_csv(digits, tmp_path):
    import sqlite3

    import pandas as pd

    files = build_report(digits, out_dir=tmp_path / "r")
    written = sorted((tmp_path / "r").glob("*.csv"))
    assert {p.name for p in written} >= {"summary.csv", "runs.csv", "epochs.csv", "pareto.csv"}
    assert len(written) == 6  # + the search's and pareto.csv
    for path in written:
        table = pd.read_csv(path)  # no comment lines, no options: the header is the first line
        assert len(table) and not any(str(c).startswith("#") for c in table.columns), path.name
        if not path.name.endswith("-correlations.csv"):
            assert table["val_is_test"].tolist() == [True] * len(table), path.name  # split: test, said per row
    epochs = pd.read_csv(files.epochs_csv)
    db = sqlite3.connect(digits)
    plan = db.execute("SELECT run_key FROM plan").fetchall()
    stored = db.execute("SELECT e.run_key, e.epoch, e.val_acc FROM epochs e JOIN plan p ON p.run_key = e.run_key "
                        "ORDER BY e.run_key, e.epoch").fetchall()
    db.close()
    assert len(epochs) == len(stored) == 2 * len(plan)
    assert sorted(zip(epochs["key"], epochs["epoch"], epochs["val_acc"])) == sorted(stored)
    assert set(epochs.columns) >= {"configuration", "seed", "train_loss", "val_loss", "seconds"}


def test_a_correction_adjusts_the_comparisons_together_and_says_so(digits, tmp_path, capsys):
    import pandas as pd

    from relulab.core.stats import benjamini_hochberg, holm

    plain = pd.read_csv(build_report(digits, out_dir=tmp_path / "plain").summary_csv)
    compared = plain["p_value"].notna()
    assert compared.sum() == 2 and plain["p_adjusted"].isna().all() and set(plain["correction"]) == {"none"}
    for name, adjust, title in (("holm", holm, "Holm"), ("bh", benjamini_hochberg, "Benjamini-Hochberg")):
        files = build_report(digits, out_dir=tmp_path / name, correction=name)
        summary = pd.read_csv(files.summary_csv)
        expected = adjust(plain.loc[compared, "p_value"].tolist())
        assert summary.loc[compared, "p_adjusted"].tolist() == pytest.approx(expected)
        assert (summary.loc[compared, "distinguishable"] == (summary.loc[compared, "p_adjusted"] < 0.05)).all()
        md = files.markdown.read_text()
        assert f"| p (Welch) | p ({title}) | verdict |" in md and f"({title}-adjusted p = " in md
        assert f"adjusted together ({title})" in md and f"adjusted together ({title})" in files.html.read_text()
        assert f"<th>p ({title})</th>" in files.html.read_text()
    assert "no correction for several comparisons" in (tmp_path / "plain" / "report.md").read_text()
    code = _report_cli(capsys, digits, "--out", str(tmp_path / "cli"), "--correction", "holm")
    assert code == 0 and "p (Holm)" in (tmp_path / "cli" / "report.md").read_text()
    assert _report_cli(capsys, digits, "--correction", "hom") == 2
    err = capsys.readouterr().err
    assert err == "error: --correction: unknown value 'hom' (did you mean 'holm'?); expected one of: bh, holm, none\n"


def _report_cli(capsys, store, *argv) -> int:
    with pytest.raises(SystemExit) as info:
        main(["report", str(store), *argv])
    if info.value.code == 0:
        capsys.readouterr()
    return info.value.code


def test_warming_up_the_report_loads_its_modules_and_writes_nothing(tmp_path):
    import subprocess
    import sys

    code = ("import sys, relulab.report as r; assert 'matplotlib' not in sys.modules; r.warm_up(); "
            "assert {'relulab.report.build', 'matplotlib.backends.backend_agg', 'scipy.special'} <= set(sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert list(tmp_path.iterdir()) == []
