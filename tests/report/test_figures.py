"""The report's figures read on their own: title, seeds and band on the image, the tables' interval as the band,
lines told apart without colour, labelled axes and colour bars, no figure twice, and the spec as compact YAML."""
import hashlib
import re
from pathlib import Path

import numpy as np
import pytest
import yaml

from relulab.core.errors import UserError
from relulab.core.stats import summarize
from relulab.experiments import Overrides, load_experiment, run_experiment
from relulab.report import build_report
from specs import TINY, quiet, relulab, write_spec

SPEC = TINY.replace("seeds: [0, 1]", "seeds: [0, 1, 2]") + (
    "probes: [sparsity, mean_out, std_out]\n"
    "analyses: {activation_plots: {}, activation_cost: {activations: [relu, tanh], elements: 2048, "
    "min_run_time: 0.01}}\n")


def _store(folder: Path) -> Path:
    exp = load_experiment(str(write_spec(folder, SPEC)), Overrides(store=str(folder / "s.sqlite")))
    run_experiment(exp, log=quiet, echo=quiet)
    return exp.store


class Drawn:
    """Every figure a report saves, as matplotlib objects, before it becomes a PNG."""

    def __init__(self, monkeypatch):
        from relulab.report import figures, search_figures

        self.figures: dict[str, tuple] = {}
        real = figures.save_figure

        def spy(fig, slug, title, caption, svg, about):
            out = real(fig, slug, title, caption, svg, about)
            self.figures[slug] = (fig, out)
            return out

        monkeypatch.setattr(figures, "save_figure", spy)
        monkeypatch.setattr(search_figures, "save_figure", spy)
        # Every figure drawn, none read from the figure cache, which the first report of the session fills.
        monkeypatch.setattr(figures, "cached_figure", lambda *args: args[-1]())  # the last argument: draw


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return _store(tmp_path_factory.mktemp("figures"))


@pytest.fixture
def drawn(store, tmp_path, monkeypatch):
    d = Drawn(monkeypatch)
    d.files = build_report(store, out_dir=tmp_path / "ci95")
    return d


def _axes(fig):
    return [ax for ax in fig.axes if ax.get_visible()]


def test_every_figure_carries_its_title_seeds_and_band(drawn):
    assert set(drawn.figures) == {"curves", "epoch-time", "sparsity", "depth", "activations", "activation-cost",
                                  "epochs-mean_out", "epochs-std_out"}
    for slug, (fig, out) in drawn.figures.items():
        title = fig.get_suptitle()
        assert title.splitlines() == [out.title, out.about], slug  # drawn on the image, not only in the HTML
        assert "seed" in out.about and any(w in out.about for w in ("band", "whiskers")), (slug, out.about)
    assert drawn.figures["curves"][1].about == ("3 seeds; band: 95% interval of the mean over seeds (Student t, "
                                                "as in the tables)")


def test_every_figure_labels_its_axes(drawn):
    for slug, (fig, _) in drawn.figures.items():
        axes = _axes(fig)
        assert any(ax.get_xlabel() for ax in axes) and any(ax.get_ylabel() for ax in axes), slug
    fig, _ = drawn.figures["curves"]
    assert all(ax.get_xlabel() == "epoch" and ax.get_ylabel() for ax in fig.axes)


def test_overlapping_curves_differ_in_line_style_and_marker_not_only_colour(drawn):
    for slug in ("curves", "sparsity", "depth", "epochs-mean_out"):
        fig, _ = drawn.figures[slug]
        for ax in _axes(fig):
            lines = [ln for ln in ax.get_lines() if len(ln.get_xdata()) > 2]
            looks = [(ln.get_linestyle(), ln.get_marker()) for ln in lines]
            assert len(set(looks)) == len(looks), (slug, looks)
    fig, _ = drawn.figures["curves"]
    handles, labels = fig.axes[1].get_legend_handles_labels()  # the validation accuracy panel has the legend
    assert labels == ["relu", "tanh"]
    assert handles[0].get_linestyle() != handles[1].get_linestyle()
    assert handles[0].get_marker() != handles[1].get_marker()


def _band_at(ax, x: float) -> tuple[float, float]:
    """(low, high) of the first band (fill_between) of an axes at epoch x."""
    vertices = ax.collections[0].get_paths()[0].vertices
    ys = vertices[np.isclose(vertices[:, 0], x), 1]
    return float(ys.min()), float(ys.max())


def _val_acc(store, variant: str, epoch: int) -> list[float]:
    import sqlite3

    db = sqlite3.connect(store)
    return [v for (v,) in db.execute("SELECT e.val_acc FROM epochs e JOIN runs r ON r.key = e.run_key WHERE "
                                     "r.variant = ? AND e.epoch = ?", (variant, epoch))]


def test_the_band_is_the_tables_interval_and_the_caption_says_so(drawn, store):
    fig, out = drawn.figures["curves"]
    values = _val_acc(store, "relu", 2)
    s = summarize(values)  # the function the tables' "mean ± half-width" comes from
    low, high = _band_at(fig.axes[1], 2)
    assert len(values) == 3 and (low, high) == pytest.approx((s.low * 100, s.high * 100))
    assert "95% interval of the mean over seeds (Student t, as in the tables)" in out.caption
    for written in (drawn.files.html, drawn.files.markdown):  # the caption beside the figure in both
        assert "the band is the 95% interval of the mean over seeds (Student t, as in the tables)" in \
            written.read_text()


def test_minmax_band_is_the_range_over_seeds(store, tmp_path, monkeypatch):
    d = Drawn(monkeypatch)
    build_report(store, out_dir=tmp_path / "minmax", band="minmax")
    fig, out = d.figures["curves"]
    values = _val_acc(store, "relu", 2)
    assert _band_at(fig.axes[1], 2) == pytest.approx((min(values) * 100, max(values) * 100))
    assert "range over seeds (min to max)" in out.caption and "range over seeds" in out.about
    with pytest.raises(UserError, match=r"^report.band: unknown value 'iqr'; expected one of: ci95, minmax$"):
        build_report(store, out_dir=tmp_path / "bad", band="iqr")


def test_report_command_takes_band(capsys, store, tmp_path):
    code, out, err = relulab(capsys, "report", str(store), "--out", str(tmp_path / "r"), "--band", "minmax")
    assert code == 0 and "the band is the range over seeds" in Path(out.strip()).read_text()
    code, out, err = relulab(capsys, "report", str(store), "--out", str(tmp_path / "r2"), "--band", "cl95")
    assert code == 2 and "--band: unknown value 'cl95' (did you mean 'ci95'?)" in err


def test_no_figure_repeats_another(drawn):
    pngs = [p for p in drawn.files.figures if p.suffix == ".png"]
    digests = [hashlib.sha256(p.read_bytes()).hexdigest() for p in pngs]
    assert len(set(digests)) == len(digests) == len(drawn.figures)
    # nor the same curve in two figures (the validation accuracy drawn on its own and again among the curves)
    seen: dict[tuple, str] = {}
    for slug, (fig, _) in drawn.figures.items():
        for ax in fig.axes:
            for line in ax.get_lines():
                if len(line.get_xdata()) > 2:
                    key = (tuple(np.asarray(line.get_xdata(), float)), tuple(np.asarray(line.get_ydata(), float)))
                    assert seen.setdefault(key, slug) == slug, f"{slug} repeats a line of {seen[key]}"


def test_heatmap_labels_both_axes_and_its_colour_bar(monkeypatch):
    from relulab.report.figures import heatmap_figure

    d = Drawn(monkeypatch)
    header = ["slot", "0 zero", "1 one", "average"]
    rows = [[1, 0.2, 0.4, 0.3], [2, 0.5, None, 0.5]]
    heatmap_figure(header, rows, "ratio_num of relu", "heat", "caption.", False, [False, True, False],
                   quantity="ratio_num", about="mean over 3 seeds; no band")
    fig, out = d.figures["heat"]
    image_ax, bar_ax = fig.axes[0], fig.axes[-1]
    assert image_ax.get_xlabel().startswith("class") and image_ax.get_ylabel() == "slot"
    assert bar_ax.get_ylabel() == "ratio_num"
    assert fig.get_suptitle() == f"ratio_num of relu\n{out.about}"
    assert "Grey n/a" in out.caption


def test_cost_table_and_figure_show_median_iqr_and_threads(drawn):
    from relulab.report.sections import COST_HEADER

    md = drawn.files.markdown.read_text()
    assert "| " + " | ".join(COST_HEADER) + " |" in md
    assert "forward IQR (ms)" in COST_HEADER and re.search(r"### Cost of each activation \(.+, \d+ threads?\)", md)
    table = md.split("| " + " | ".join(COST_HEADER) + " |")[1]
    relu = next(line for line in table.splitlines() if line.startswith("| relu | "))
    cells = relu.strip("| \n").split(" | ")
    assert len(cells) == 6 and all(float(c) >= 0 for c in cells[1:5]) and cells[5] == "1.00x"
    fig, out = drawn.figures["activation-cost"]
    assert re.search(r"\d+ threads?\b", out.about) and "interquartile range" in out.caption and "torch.utils.benchmark" in out.caption


def test_a_cost_measured_before_the_benchmark_timer_still_renders():
    from relulab.report.sections import cost_rows

    old = {"elements": 1000, "repeats": 5, "device": "cpu",
           "rows": [{"activation": "relu", "forward_ms": 1.0, "forward_backward_ms": 2.0},
                    {"activation": "tanh", "forward_ms": 2.0, "forward_backward_ms": 4.0}]}
    assert cost_rows(old) == [["relu", "1.000", "-", "2.000", "-", "1.00x"], ["tanh", "2.000", "-", "4.000", "-",
                                                                             "2.00x"]]


def test_the_spec_is_dumped_as_compact_flow_style_yaml(drawn, store):
    from relulab.experiments import read_spec
    from relulab.report.format import SPEC_WIDTH, spec_text

    page = drawn.files.html.read_text()
    assert "model: {name: deep-mlp, widths: [8, 8], init: he_normal}" in page
    assert "configs: {relu: {}, tanh: {model: {activation: tanh}}}" in page
    for name in ("quickstart", "seed000", "seed001", "seed002", "seed004", "search-digits"):
        raw, _, _ = read_spec(name)
        text = spec_text(raw)
        assert yaml.safe_load(text) == raw, name  # the same spec, loaded back
        assert len(text.splitlines()) < len(yaml.safe_dump(raw).splitlines()) / 2, name
        assert all(len(line) <= SPEC_WIDTH for line in text.splitlines() if line.rstrip().endswith(("}", "]"))), name
    odd = {"a: b": {"text": "two\nlines", "list": [{"p": 1}]}, "long": list(range(60)), "empty": {}}
    assert yaml.safe_load(spec_text(odd)) == odd


def test_a_cached_figure_is_drawn_once_and_again_when_what_it_shows_changes(tmp_path, monkeypatch):
    from relulab.report import figures

    monkeypatch.setenv("RELULAB_CACHE", str(tmp_path / "cache"))
    drawn = []
    real = figures._draw_activations
    monkeypatch.setattr(figures, "_draw_activations", lambda *args: drawn.append(args[0]) or real(*args))
    value = {"activations": ["relu", "tanh"], "range": [-3.0, 3.0]}
    first = figures.activations_figure(value, svg=True)
    again = figures.activations_figure(value, svg=True)
    assert drawn == [["relu", "tanh"]] and (again.png, again.svg) == (first.png, first.svg)
    assert again.title == first.title and again.caption == first.caption and again.about == first.about
    assert len(list((tmp_path / "cache" / "figures").glob("*.png"))) == 1
    wider = figures.activations_figure({**value, "range": [-4.0, 4.0]}, svg=True)
    assert len(drawn) == 2 and wider.png != first.png
    figures.activations_figure(value, svg=False)  # a report without SVG is its own entry: nothing wrongly missing
    assert len(drawn) == 3


def test_a_figure_is_still_drawn_where_the_cache_cannot_be_written(tmp_path, monkeypatch):
    from relulab.report import figures

    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the cache folder would be")
    monkeypatch.setenv("RELULAB_CACHE", str(blocked))
    out = figures.activations_figure({"activations": ["relu"], "range": [-2.0, 2.0]}, svg=False)
    assert out.png.startswith(b"\x89PNG") and out.svg is None and blocked.read_text().startswith("a file")
