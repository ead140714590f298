"""The Pareto report: every strategy's ReLU count against accuracy (figure, best-at-budget table, pareto.csv), from
searches stored through the Store API beside a real experiment's runs."""
import csv
import json

import pytest

from relulab.experiments import Overrides, load_experiment, run_experiment
from relulab.report import build_report
from relulab.report.pareto import (BEST, Point, Series, budget_levels, budget_rows, best_within, pareto_sections,
                                   pareto_series)
from relulab.store import Store
from specs import TINY, quiet, write_spec

HOSTILE_BASE = "<i>relu</i> & co"
# as stored: SearchOptions' default granularity is in every search's options, though greedy switches whole slots
GREEDY = {"strategy": "greedy", "stat": "ratio_num", "order": "highest", "budget": 2, "patience": 1, "alpha": 0.05,
          "granularity": "channel"}
ORACLE = {"strategy": "oracle", "stat": "ratio_num", "order": "highest", "budget": 2, "alpha": 0.05}
LEARNED = {"strategy": "learned", "granularity": "unit", "budgets": [12, 6, 2], "alpha": 0.05}
RANDOM = {"strategy": "random", "granularity": "channel", "budgets": [8, 4], "alpha": 0.05}


def row(placement, off, relu_count, accs, position=0):
    mean = sum(accs) / len(accs)
    return {"position": position, "placement": placement, "off_json": json.dumps(off), "relu_count": relu_count,
            "seeds": len(accs), "runs": len(accs), "diverged": 0, "mean": mean, "std": 0.01, "ci_low": mean - 0.02,
            "ci_high": mean + 0.02, "accs_json": json.dumps(accs), "run_keys_json": "[]"}


def add_search(store, part, sid, options, steps, base="relu"):
    store.begin_search({"id": sid, "experiment": "tiny", "part": part, "base": base,
                        "strategy": options["strategy"], "options_json": json.dumps(options),
                        "seeds_json": "[0, 1]", "epochs": 2, "metric": "best_val_acc", "probe_set": "first",
                        "val_is_test": 0, "spec_json": "{}", "slot_sizes_json": json.dumps({"1": 8, "2": 8})})
    for n, (kind, current, decision, chosen, rows) in enumerate(steps, 1):
        store.save_search_step(sid, {"step": n, "kind": kind, "current": current, "decision": decision,
                                     "chosen": chosen, "note": ""}, [{**r, "step": n} for r in rows])
    store.finish_search(sid, {"budgets": options["budgets"]} if "budgets" in options else {})


def slot_path(kind):
    """Greedy's and the oracle's path: relu (16 ReLUs) -> off-1 (8) accepted -> off-1-2 (0) rejected."""
    first = [row("relu", [], 16, [0.79, 0.81]), row("off-1", [1], 8, [0.81, 0.83], 1)]
    if kind == "oracle":
        first.append(row("off-2", [2], 8, [0.78, 0.80], 2))
    return [(kind, "relu", "accepted", "off-1", first),
            (kind, "off-1", "rejected", None, [row("off-1", [1], 8, [0.81, 0.83]),
                                               row("off-1-2", [1, 2], 0, [0.69, 0.71], 1)])]


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """(report before any search, report with a greedy, an oracle, a learned, a random search, one without ReLU
    counts and one from a hostile base)."""
    folder = tmp_path_factory.mktemp("pareto")
    exp = load_experiment(str(write_spec(folder, TINY)), Overrides(store=str(folder / "s.sqlite")))
    run_experiment(exp, log=quiet, echo=quiet)
    before = build_report(exp.store, out_dir=folder / "before")
    store = Store(exp.store)
    try:
        part = store.load_experiment("tiny")["parts"][0]["name"]
        store.ensure_probe_search_tables()
        add_search(store, part, "a" * 16, GREEDY, slot_path("greedy"))
        add_search(store, part, "b" * 16, ORACLE, slot_path("oracle"))
        add_search(store, part, "c" * 16, LEARNED, [
            ("learned", "relu", "measured", None, [row(f"learned-{b}", [], b, accs, i) for i, (b, accs) in
                                                   enumerate([(12, [0.83, 0.85]), (6, [0.80, 0.82]),
                                                              (2, [0.74, 0.76])])]),
            ("random", "relu", "measured", None, [row(f"random-{b}", [], b, accs, i) for i, (b, accs) in
                                                  enumerate([(12, [0.78, 0.80]), (6, [0.71, 0.73]),
                                                             (2, [0.59, 0.61])])])])
        add_search(store, part, "d" * 16, RANDOM, [
            ("random", "relu", "measured", None, [row("random-8", [], 8, [0.73, 0.75]),
                                                  row("random-4", [], 4, [0.65, 0.67], 1)])])
        uncounted = slot_path("greedy")
        for _, _, _, _, rows in uncounted:
            for r in rows:
                r["relu_count"] = None
        add_search(store, part, "e" * 16, GREEDY, uncounted)  # no ReLU counts: no series
        add_search(store, part, "f" * 16, ORACLE, slot_path("oracle"), base=HOSTILE_BASE)
    finally:
        store.close()
    return before, build_report(exp.store, out_dir=folder / "after")


def test_a_store_without_searches_gets_no_section_and_no_csv(stores):
    before, _ = stores
    assert "every strategy" not in before.markdown.read_text()
    assert not (before.html.parent / "pareto.csv").exists() and pareto_sections([], False) == []


def test_the_section_comes_once_per_base_with_every_series(stores):
    _, after = stores
    md = after.markdown.read_text()
    assert md.count("### ReLU count against accuracy, every strategy (from relu)") == 1
    assert md.count("every strategy (from &lt;i&gt;relu&lt;/i&gt; &amp; co)") == 1
    header = next(line for line in md.splitlines() if line.startswith("| ReLU budget |"))
    # the search without ReLU counts gave no series (nor took a name: no "greedy ... (search eeeeeeee)")
    assert header == ("| ReLU budget | greedy by ratio_num (highest first) acc (%) | oracle acc (%) | "
                      "learned (unit) acc (%) | random (unit) acc (%) | random (channel) acc (%) | best | "
                      "best vs next best (points) |")
    caption = md[md.index("![ReLU count against accuracy, every strategy from relu]"):].split("\n\n")[1]
    assert "comparable because each placement is trained by the same recipe (2 epochs" in caption
    assert {p.name for p in after.figures} >= {"1-tiny-pareto-relu.png", "1-tiny-pareto-i-relu-i-co.png"}


def test_the_table_gives_each_series_best_within_each_budget(stores):
    _, after = stores
    md = after.markdown.read_text()
    table = md[md.index("| ReLU budget |"):].split("\n\n")[0].splitlines()[2:]
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in table]
    assert [c[0] for c in cells] == ["12", "8", "6", "4", "2"]  # the learned and random searches' budgets
    at12, at6 = cells[0], cells[2]
    assert at12[1] == at12[2] == "82.00 ± 2.00 at 8"  # greedy's and the oracle's path: off-1 (relu has 16)
    assert at12[3] == "84.00 ± 2.00 at 12" + BEST and at12[6] == "learned (unit)"
    assert at12[7].startswith("+2.00 [") and "p = " in at12[7]  # learned against the path's 82
    assert at6[1] == at6[2] == "-" and at6[4] == "72.00 ± 2.00 at 6"  # no path point within 6 ReLUs


def test_pareto_csv_holds_every_point(stores):
    _, after = stores
    path = after.html.parent / "pareto.csv"
    assert path in after.extra
    rows = list(csv.DictReader(path.open()))
    by_series = {}
    for r in rows:
        by_series.setdefault((r["base"], r["series"]), []).append(r)
    assert {k: len(v) for k, v in by_series.items()} == {
        ("relu", "greedy by ratio_num (highest first)"): 2, ("relu", "oracle"): 2, ("relu", "learned (unit)"): 3,
        ("relu", "random (unit)"): 3, ("relu", "random (channel)"): 2, (HOSTILE_BASE, "oracle"): 2}
    greedy = by_series[("relu", "greedy by ratio_num (highest first)")]
    assert [(r["placement"], r["relu_count"], r["is_base"]) for r in greedy] == [("relu", "16", "true"),
                                                                               ("off-1", "8", "false")]
    assert {r["granularity"] for r in greedy} == {"layer"}  # whole slots, whatever the options' granularity
    unit = by_series[("relu", "random (unit)")][0]
    assert (unit["strategy"], unit["granularity"], unit["search_strategy"], unit["seeds"]) == \
        ("random", "unit", "learned", "2")
    assert float(unit["mean"]) == pytest.approx(0.79) and unit["val_is_test"] == "false"


def test_html_escapes_the_base_and_shows_the_figure(stores):
    _, after = stores
    page = after.html.read_text()
    assert HOSTILE_BASE not in page and "&lt;i&gt;relu&lt;/i&gt; &amp; co" in page
    assert page.count("ReLU count against accuracy, every strategy from relu.") == 1  # the figure's caption


# ---------------------------------------------------------------- the table's logic on known numbers


def series(name, points, kind="greedy", budgets=None):
    return Series(name, kind, "layer", {"id": name, "options": {}, "result": {"budgets": budgets or []}},
                  [Point(f"{name}-{n}", n, m, m - 0.01, m + 0.01, 3, (m - 0.01, m, m + 0.01), False)
                   for n, m in points], True)


def test_best_within_a_budget_takes_the_highest_mean_that_fits():
    s = series("s", [(100, 0.90), (50, 0.85), (40, 0.85), (10, 0.60)])
    assert best_within(s, 1000).relu_count == 100
    assert best_within(s, 99).relu_count == 40  # a tie on the mean: the fewer ReLUs
    assert best_within(s, 10).mean == 0.60 and best_within(s, 9) is None


def test_budget_rows_mark_the_best_and_its_lead():
    a = series("a", [(100, 0.90), (10, 0.50)])
    b = series("b", [(60, 0.80), (20, 0.70)])
    c = series("c", [(60, 0.80)])
    rows = budget_rows([a, b, c], [100.0, 60.0, 15.0, 5.0])
    assert rows[0][0] == "100" and rows[0][1].endswith(BEST) and rows[0][4] == "a"
    assert rows[0][5].startswith("+10.00")  # a's 90 against b's and c's 80
    assert rows[1][1] == "50.00 ± 1.00 at 10" and rows[1][2].endswith(BEST) and rows[1][3].endswith(BEST)
    assert rows[1][4] == "b = c" and rows[1][5] == "-"  # a tie: both marked, no lead
    assert rows[2][1:4] == ["50.00 ± 1.00 at 10" + BEST, "-", "-"]
    assert rows[3][1:] == ["-", "-", "-", "-", "-"]


def test_budget_levels_are_the_asked_budgets_else_the_counts():
    slot = series("s", [(n, 0.5) for n in range(1, 31)])
    assert budget_levels([slot]) == [30, 27, 25, 22, 19, 17, 14, 12, 9, 6, 4, 1]  # 12, spread
    learned = series("l", [(7, 0.5)], kind="learned", budgets=[5, 10, 20])
    assert budget_levels([slot, learned]) == [20.0, 10.0, 5.0]


def test_a_path_is_each_steps_current_model_and_what_it_accepted():
    def c(step, position, placement, count):
        return {"step": step, "position": position, "placement": placement, "off": [] if placement == "base" else
                [1], "relu_count": count, "mean": 0.5, "ci_low": None, "ci_high": None, "seeds": 1, "accs": [0.5]}

    steps = [{"step": 1, "kind": "greedy", "decision": "accepted", "chosen": "x"},
             {"step": 2, "kind": "greedy", "decision": "accepted", "chosen": "y"}]
    s = {"id": "s", "base": "base", "options": GREEDY, "steps": steps,
         "candidates": [c(1, 0, "base", 3), c(1, 1, "x", 2), c(2, 0, "x", 2), c(2, 1, "y", 1)]}
    (only,) = pareto_series([s])
    assert [(p.placement, p.is_base) for p in only.points] == [("base", True), ("x", False), ("y", False)]
    s["steps"][1]["decision"] = "rejected"
    assert [p.placement for p in pareto_series([s])[0].points] == ["base", "x"]


def test_the_x_axis_goes_log_when_the_counts_span_more_than_a_decade():
    from relulab.report.figures import new_figure
    from relulab.report.pareto import _x_scale

    for counts, scale in (([2, 16], "linear"), ([1, 100], "log"), ([0, 5, 500], "symmetric log")):
        ax = new_figure().add_subplot()
        assert _x_scale(ax, counts) == scale
        assert ax.get_xscale() == {"linear": "linear", "log": "log", "symmetric log": "symlog"}[scale]


def test_a_learned_search_gets_its_own_tables_of_points(stores):
    _, after = stores
    md = after.markdown.read_text()
    for kind in ("learned (step 1)", "random (step 2)"):
        assert md.count(f"### Search: learned (unit, ReLU budgets 12, 6, 2), from relu: {kind}") == 1
    assert md.count("### Search: random (channel, ReLU budgets 8, 4), from relu") == 1
    assert "| learned-6 | 6 | 81.00 ± 2.00 |" in md and "| random-4 | 4 | 66.00 ± 2.00 |" in md
