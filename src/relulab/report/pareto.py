"""ReLU count against accuracy for every strategy of a part's searches from one base (issue 23): one figure of
every series' points with their 95% intervals over seeds, a table of each series' best accuracy within each
budget, and the points as `pareto.csv`.

A series is one step kind of one search (`KINDS`, keyed by the kind a strategy saves its steps under): greedy's
and the oracle's path (each step's current model and the last placement accepted), every placement of budget and
exhaustive, and every point of the learned strategy and of the random baseline at its budgets. A point is a
stored candidate row with a ReLU count (activations kept nonlinear per example) and a finite mean; a search with
none gives no series.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

from relulab.core.stats import compare
from relulab.report.figures import FigureOut, clamp_percent, new_figure, save_figure
from relulab.report.format import PCT, interval, safe_name
from relulab.report.measures import seeds_text
from relulab.report.sections import Section

MAX_LEVELS = 12  # budget rows of the table at most
BEST = " \u2605"  # marks the best series of a table row (the report's cells are plain, escaped text)
BUDGETED_KINDS = ("learned", "random", "finetuned")  # kinds whose searches name their budgets (options "budgets")
MARKERS = ("o", "s", "^", "v", "D", "P", "X", "<", ">", "h")
DODGE_POINTS = 3.0  # how far apart sideways (points) series are drawn where two have a point at one count


@dataclass(frozen=True)
class Point:
    """A placement as a point: its ReLU count and accuracy over seeds (mean, 95% interval, each seed's)."""

    placement: str
    relu_count: float  # an int where the store has one (a learned point's is a mean over seeds)
    mean: float
    ci_low: float
    ci_high: float
    seeds: int
    accs: tuple
    is_base: bool  # the base with every slot on


@dataclass
class Series:
    name: str
    kind: str  # the step kind the points were saved under: greedy, oracle, budget, exhaustive, learned, random
    granularity: str  # layer (whole slots), channel or unit
    search: dict
    points: list[Point]
    joined: bool  # drawn as a line through its points in ReLU count order


# ---------------------------------------------------------------- which rows of a search are its points


def _step_rows(s: dict, steps: list[dict]) -> list[list[dict]]:
    numbers = [st["step"] for st in steps]
    return [[c for c in s["candidates"] if c["step"] == n] for n in numbers]


def path_rows(s: dict, steps: list[dict]) -> list[dict]:
    """Greedy's and the oracle's path: each step's current model (position 0) and the placement it accepted;
    each placement once."""
    rows = []
    for st, cands in zip(steps, _step_rows(s, steps)):
        rows += [c for c in cands if c["position"] == 0]
        if st["decision"] == "accepted":
            rows += [c for c in cands if c["placement"] == st["chosen"]]
    first: dict[str, dict] = {}
    for c in rows:
        first.setdefault(c["placement"], c)
    return list(first.values())


def every_row(s: dict, steps: list[dict]) -> list[dict]:
    return [c for cands in _step_rows(s, steps) for c in cands]


def granularity(options: dict) -> str:
    return options.get("granularity") or "layer"  # the slot strategies switch whole slots


def _budget_name(o: dict) -> str:
    return f"budget by {o.get('stat')}" if o.get("choose", "stat") == "stat" else "budget (every placement)"


@dataclass(frozen=True)
class Kind:
    """How the steps of one kind become a series: its name from the search's options, which rows are points."""

    name: Callable[[dict], str]
    rows: Callable[[dict, list[dict]], list[dict]]
    joined: bool = True
    granular: bool = False  # placements at the search's granularity; otherwise whole slots (layer)


KINDS: dict[str, Kind] = {
    "greedy": Kind(lambda o: f"greedy by {o.get('stat')} ({o.get('order')} first)", path_rows),
    "oracle": Kind(lambda o: "oracle", path_rows),
    "budget": Kind(_budget_name, every_row),
    "exhaustive": Kind(lambda o: f"exhaustive (k <= {o.get('k')})", every_row, joined=False),
    "learned": Kind(lambda o: f"learned ({granularity(o)})", every_row, granular=True),
    "random": Kind(lambda o: f"random ({granularity(o)})", every_row, granular=True),
    "finetuned": Kind(lambda o: f"learned, fine-tuned ({granularity(o)})", every_row, granular=True),
}


def _kind(kind: str) -> Kind:
    """A kind of step this report does not know (a newer strategy's): every row, named by the kind."""
    return KINDS.get(kind) or Kind(lambda o: f"{kind} ({granularity(o)})", every_row, joined=False)


def _finite(x) -> bool:
    return x is not None and math.isfinite(x)


def _point(c: dict, base: str) -> Point:
    return Point(c["placement"], c["relu_count"], c["mean"], c["ci_low"], c["ci_high"], c["seeds"] or 0,
                 tuple(c["accs"] or ()), c["placement"] == base and not c["off"])


def pareto_series(searches: list[dict]) -> list[Series]:
    """A series per search and step kind (in the order they were stored), each with its points; series without
    a point are left out, and a name two searches share gets the later one's id."""
    out, names = [], set()
    for s in searches:
        options = s.get("options") or {}
        for kind in dict.fromkeys(st["kind"] for st in s["steps"]):
            how = _kind(kind)
            rows = how.rows(s, [st for st in s["steps"] if st["kind"] == kind])
            points = [_point(c, s["base"]) for c in rows if _finite(c["relu_count"]) and _finite(c["mean"])]
            if not points:
                continue
            name = how.name(options)
            if name in names:
                name += f" (search {s['id'][:8]})"
            names.add(name)
            out.append(Series(name, kind, granularity(options) if how.granular else "layer", s, points, how.joined))
    return out


# ---------------------------------------------------------------- the best accuracy within each budget


def _spread(values: list[float], most: int) -> list[float]:
    """At most `most` of `values` (sorted), evenly spread over them, the first and last kept."""
    if len(values) <= most:
        return values
    return [values[i] for i in sorted({round(j * (len(values) - 1) / (most - 1)) for j in range(most)})]


def _budgets(search: dict) -> list[float]:
    """A learned or random search's budgets as ReLU counts: its result's (the options may hold fractions of the
    base's count, which the search resolved)."""
    budgets = (search.get("result") or {}).get("budgets") or []
    return [float(b) for b in (budgets if isinstance(budgets, (list, tuple)) else [])
            if isinstance(b, (int, float)) and not isinstance(b, bool) and math.isfinite(b)]


def budget_levels(series: list[Series], most: int = MAX_LEVELS) -> list[float]:
    """The table's budgets, largest first: those the learned and random searches were asked for where there are
    any, else the distinct ReLU counts of every point; at most `most`."""
    asked = {b for x in series if x.kind in BUDGETED_KINDS for b in _budgets(x.search)}
    levels = asked or {p.relu_count for x in series for p in x.points}
    return _spread(sorted(levels, reverse=True), most)


def best_within(series: Series, budget: float) -> Optional[Point]:
    """The series' point of highest mean accuracy among those with at most `budget` ReLUs (the fewer ReLUs on
    a tie); None where it has none within the budget."""
    inside = [p for p in series.points if p.relu_count <= budget]
    return max(inside, key=lambda p: (p.mean, -p.relu_count), default=None)


def count_text(count: float) -> str:
    return f"{count:,.0f}" if float(count).is_integer() else f"{count:,.1f}"


def _lead_text(best: Point, runner_up: Optional[Point]) -> str:
    """The best point's lead over the best of the other series (Welch over their seeds), in points."""
    if runner_up is None:
        return "-"
    c = compare(list(best.accs), list(runner_up.accs))
    if c is None:
        return "-"
    text = c.format(PCT)
    return text if c.p is None else f"{text}, p = {c.p:.2g}"


def budget_rows(series: list[Series], levels: list[float]) -> list[list[str]]:
    """Per budget: each series' best within it (mean [95% interval] at the count it used, '-' where it has no
    point within it), the best marked; the best series' name and its lead over the next best series."""
    rows = []
    for level in levels:
        best = [best_within(x, level) for x in series]
        found = [(p, x) for p, x in zip(best, series) if p is not None]
        top = max((p.mean for p, _ in found), default=None)
        cells = ["-" if p is None else f"{interval(p.mean, p.ci_low, p.ci_high)} at {count_text(p.relu_count)}"
                 + (BEST if p.mean == top else "") for p in best]
        winners = [x.name for p, x in found if p.mean == top]
        ranked = sorted(found, key=lambda px: -px[0].mean)
        lead = _lead_text(ranked[0][0], ranked[1][0] if len(ranked) > 1 else None) if len(winners) == 1 else "-"
        rows.append([count_text(level), *cells, " = ".join(winners) or "-", lead])
    return rows


# ---------------------------------------------------------------- the figure


def _base_point(series: list[Series]) -> Optional[Point]:
    return next((p for x in series for p in x.points if p.is_base), None)


def _all_on_count(searches: list[dict]) -> Optional[int]:
    """The ReLU count with every slot on, from the slot sizes a search stored."""
    sizes = next((s["slot_sizes"] for s in searches if s.get("slot_sizes")), None)
    return sum(sizes.values()) if sizes else None


def _errors(points: list[Point]) -> list[list[float]]:
    """Whiskers (below, above) in points of accuracy; zero length where a point has no interval."""
    low = [(p.mean - p.ci_low) * PCT if _finite(p.ci_low) else 0.0 for p in points]
    high = [(p.ci_high - p.mean) * PCT if _finite(p.ci_high) else 0.0 for p in points]
    return [low, high]


def _x_scale(ax, counts: list[float]) -> str:
    """Log where the positive counts span more than a decade (symmetric log when a count is 0); linear else."""
    positive = [c for c in counts if c > 0]
    if not positive or max(positive) / min(positive) <= 10:
        return "linear"
    if len(positive) < len(counts):
        ax.set_xscale("symlog", linthresh=min(positive))
        return "symmetric log"
    ax.set_xscale("log")
    return "log"


def shared_counts(series: list[Series]) -> bool:
    """Whether two series have a point at one ReLU count (the figure then draws them slightly apart)."""
    owners: dict[float, set] = {}
    for i, x in enumerate(series):
        for p in x.points:
            owners.setdefault(p.relu_count, set()).add(i)
    return any(len(o) > 1 for o in owners.values())


def pareto_figure(series: list[Series], base: str, all_on: Optional[int], slug: str, svg: bool, metric: str,
                  about: str, caption: str) -> FigureOut:
    from matplotlib.transforms import offset_copy

    fig = new_figure(7.5, 4.8)
    ax = fig.add_subplot()
    scale = _x_scale(ax, [p.relu_count for x in series for p in x.points])
    dodge = shared_counts(series)
    for i, x in enumerate(series):
        points = sorted(x.points, key=lambda p: p.relu_count)
        drawn = ax.errorbar([p.relu_count for p in points], [p.mean * PCT for p in points], yerr=_errors(points),
                            fmt=MARKERS[i % len(MARKERS)], color=f"C{i % 10}", capsize=2.5, markersize=5,
                            alpha=0.9, linestyle="-" if x.joined and len(points) > 1 else "none", linewidth=0.9,
                            label=x.name)
        if dodge:  # shifted on the page once the data limits are taken: the axes still span the true counts
            shift = offset_copy(ax.transData, fig=fig, x=DODGE_POINTS * (i - (len(series) - 1) / 2), y=0,
                                units="points")
            for artist in drawn.get_children():
                artist.set_transform(shift)
    point = _base_point(series)
    if point is not None:
        ax.scatter([point.relu_count], [point.mean * PCT], marker="*", s=260, facecolors="none", edgecolors="black",
                   linewidths=1.2, zorder=5, label=f"all on: {base} ({count_text(point.relu_count)})")
    elif all_on:
        ax.axvline(all_on, color="grey", linestyle=":", linewidth=1.2, label=f"all on: {base} ({all_on:,}), not "
                   "measured here")
    ax.set_xlabel(f"ReLU count (activations kept nonlinear per example; {scale} scale)")
    ax.set_ylabel(f"{metric} (%)")
    clamp_percent(ax)
    ax.grid(alpha=0.3, which="both" if scale != "linear" else "major")
    ax.legend(fontsize=7, loc="best")
    return save_figure(fig, slug, f"ReLU count against accuracy, every strategy from {base}", caption, svg, about)


def figure_caption(series: list[Series], comparable: str) -> str:
    base = ("the star, the base with every slot on" if _base_point(series) is not None else
            "the dotted line, the ReLU count with every slot on (the base itself was not measured by these searches)")
    dodge = (f"Where series share a count they are drawn up to {DODGE_POINTS * (len(series) - 1) / 2:g} pt "
             "sideways of it, so that their points do not hide one another. " if shared_counts(series) else "")
    return (f"Each point a placement: mean accuracy over seeds, bars the 95% interval of the mean (Student t, as in "
            f"the tables); {base}. {dodge}{comparable}")


# ---------------------------------------------------------------- the section


def comparable_text(searches: list[dict]) -> str:
    """Why the points of different strategies can be set side by side, or where they cannot."""
    seeds = {tuple(s.get("seeds") or ()) for s in searches}
    epochs = {s.get("epochs") for s in searches}
    metrics = {s.get("metric") for s in searches}
    if len(seeds) == len(epochs) == len(metrics) == 1:
        (one,) = seeds
        tuned = any(step.get("kind") == "finetuned" for s in searches for step in s.get("steps") or ())
        return (f"Points of different strategies are comparable because each placement is trained by the same "
                f"recipe ({next(iter(epochs))} epochs of the base's training) over the same seeds "
                f"({', '.join(map(str, one))})" + (
                    "; the fine-tuned series is the exception: its models go on from the gate-trained weights (the "
                    "base's training, the gates', then the fine-tuning: more training in all), as SNL's do."
                    if tuned else "."))
    differ = [what for what, values in (("seeds", seeds), ("epochs", epochs), ("metric", metrics))
              if len(values) > 1]
    return (f"These searches differ in {', '.join(differ)}: their points were not trained or measured alike, and "
            "compare only with care.")


def _note(series: list[Series], searches: list[dict], levels_from_budgets: bool) -> str:
    levels = ("the budgets the learned and random searches were asked for" if levels_from_budgets else
              "the distinct ReLU counts of the points")
    note = (f"Each column a series (a strategy of one search); each row a ReLU budget ({levels}, largest first): "
            "the series' best mean accuracy among its points with at most that many ReLUs, its 95% interval over "
            f"seeds and the count it used; '-': no point within the budget.{BEST} marks the highest mean (the best "
            "column names its series), and the last column gives its lead over the next best series (Welch's t-test "
            "over seeds: a lead within seed noise is no win). Greedy and oracle: their path (each step's current "
            "model and the last placement accepted); budget, exhaustive, learned and random: every placement they "
            "measured.")
    unfinished = [s["id"] for s in searches if s.get("status") != "done" and any(x.search is s for x in series)]
    if unfinished:
        note += f" Not finished yet (their points so far): search {', '.join(unfinished)}."
    return note


def pareto_sections(searches: list[dict], svg: bool) -> list[Section]:
    """The section per base of a part's searches that has points: figure, budget table, note."""
    sections, slugs = [], set()
    for base in dict.fromkeys(s["base"] for s in searches):
        group = [s for s in searches if s["base"] == base]
        series = pareto_series(group)
        if not series:
            continue
        slug = f"pareto-{safe_name(base)}"
        slug = slug if slug not in slugs else f"{slug}-{len(sections) + 1}"  # two bases that write alike
        slugs.add(slug)
        from_budgets = any(_budgets(x.search) for x in series if x.kind in BUDGETED_KINDS)
        header = ["ReLU budget"] + [f"{x.name} acc (%)" for x in series] + ["best", "best vs next best (points)"]
        about = f"{seeds_text([len(group[0].get('seeds') or [])])}; bars: 95% interval of the mean over seeds"
        figure = pareto_figure(series, base, _all_on_count(group), slug, svg, group[0]["metric"], about,
                               figure_caption(series, comparable_text([x.search for x in series])))
        sections.append(Section(f"ReLU count against accuracy, every strategy (from {base})", header,
                                budget_rows(series, budget_levels(series)), figure=figure,
                                note=_note(series, group, from_budgets)))
    return sections


# ---------------------------------------------------------------- the points as a table

CSV_COLUMNS = ["part", "base", "series", "strategy", "granularity", "search", "search_strategy", "placement",
               "relu_count", "mean", "ci_low", "ci_high", "seeds", "is_base", "val_is_test"]


def csv_rows(part: str, searches: list[dict]) -> list[list]:
    """Every point of every series of a part's searches, one row each (CSV_COLUMNS); strategy: the step kind
    that measured it (a learned search's random baseline is `random`)."""
    rows = []
    for base in dict.fromkeys(s["base"] for s in searches):
        for x in pareto_series([s for s in searches if s["base"] == base]):
            for p in x.points:
                rows.append([part, base, x.name, x.kind, x.granularity, x.search["id"], x.search["strategy"],
                             p.placement, p.relu_count, p.mean, p.ci_low, p.ci_high, p.seeds,
                             str(p.is_base).lower(), str(bool(x.search.get("val_is_test"))).lower()])
    return rows
