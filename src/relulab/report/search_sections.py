"""The sections of a `relulab search` in the report: its path or placements with accuracies (mean ± 95% interval
over seeds, Welch comparisons, test accuracies), and the heuristic judgement of every step that allows one
(rank correlations of each statistic with the measured changes); the learned and random strategies' points at
their ReLU budgets. Every strategy's points side by side: relulab.report.pareto.
"""
from __future__ import annotations

from relulab.report.format import (difference, interval, p_value, points, rank_correlation, significant, slot_text,
                                   slots_text)
from relulab.report.measures import seeds_text, step_candidates
from relulab.report.pareto import count_text
from relulab.report.search_figures import correlation_figure, oracle_figure, relu_count_figure, search_path_figure
from relulab.report.sections import Section


GREEDY_HEADER = ["step", "current", "proposal", "statistic", "proposal acc (%)", "proposal test acc (%)",
                 "current acc (%)", "current test acc (%)", "difference (points)", "p (Welch)", "decision"]
CANDIDATE_HEADER = ["slot off", "placement", "acc (%)", "test acc (%)", "vs current (points)", "p (Welch)",
                    "statistic"]
CORRELATION_HEADER = ["statistic", "n", "Spearman rho [95% bootstrap]", "p", "p (Holm)", "Kendall tau [95% bootstrap]",
                      "p", "p (Holm)", "highest-first pick", "lowest-first pick", "best change", "random pick",
                      "highest-first vs random [95%]", "lowest-first vs random [95%]"]
PLACEMENT_HEADER = ["placement", "slots off", "ReLU count", "acc (%)", "test acc (%)", "vs base (points)",
                    "p (Welch)", "verdict"]
POINT_HEADER = ["placement", "ReLU count", "acc (%)", "test acc (%)", "vs reference (points)", "p (Welch)",
                "verdict"]
MAX_EXHAUSTIVE_ROWS = 25


def _stat_order(rows: list[dict]) -> list[dict]:
    from relulab.probes.statistics import STATS

    order = list(STATS)
    return sorted(rows, key=lambda r: (order.index(r["stat"]) if r["stat"] in order else len(order), r["stat"]))


def _budgets_text(o: dict) -> str:
    budgets = o.get("budgets")
    return ", ".join(map(str, budgets)) if isinstance(budgets, (list, tuple)) else str(budgets)


# strategy -> what its title calls it, from its options; a strategy not named here is called by its name
TITLES = {
    "greedy": lambda o: f"greedy by {o['stat']} ({o['order']} first)",
    "oracle": lambda o: "oracle (every single-slot change)",
    "exhaustive": lambda o: f"exhaustive, up to {o['k']} slots off",
    "budget": lambda o: f"budget (slots kept on: {', '.join(map(str, o['keep']))})",
    "learned": lambda o: f"learned ({o.get('granularity')}, ReLU budgets {_budgets_text(o)})",
    "random": lambda o: f"random ({o.get('granularity')}, ReLU budgets {_budgets_text(o)})",
}


def _search_title(s: dict) -> str:
    title = TITLES.get(s["strategy"])
    what = title(s["options"] or {}) if title else s["strategy"]
    return f"Search: {what}, from {s['base']}"


def _search_note(s: dict) -> str:
    o = s["options"] or {}
    rule = "source 000's plain rule (accept if the mean improves)" if o.get("plain_rule") else \
        f"Welch's t-test, p < {o.get('alpha')} with a higher mean"
    parts = [f"{len(s['seeds'])} seeds ({', '.join(map(str, s['seeds']))}), {s['epochs']} epochs, "
             f"metric {s['metric']}, probe set {s['probe_set']}"]
    if s["strategy"] in ("greedy", "oracle"):
        parts.append(f"budget {o['budget']} slots off, acceptance by {rule}")
    if s["strategy"] == "greedy":
        parts.append(f"patience {o['patience']}")
    if s["val_is_test"]:
        parts.append("validation data is the test set: accuracies chosen on it are optimistic")
    result = s.get("result") or {}
    if s["status"] != "done":
        parts.append("NOT FINISHED (run the same command again to resume)")
    elif "final" in result:  # the slot strategies' summary (relulab.search.strategies.Search.summary_of)
        final = next((c for c in s["candidates"] if c["placement"] == result["final"] and "test_mean" in c), None)
        held_out = f", test accuracy {_test_text(final)}%" if final is not None and s["metric"] != "test_acc" else ""
        parts.append(f"result: {result['final']} at {interval(result['mean'], result['ci_low'], result['ci_high'])}"
                     f"% {s['metric']}{held_out} ({result.get('relu_count', 0):,} activations per image)")
        if "distinguishably_better" in result:
            better = result["distinguishably_better"]
            parts.append("better than the base beyond seed noise: " + (", ".join(better) if better else "none"))
    return f"Search {s['id']}: " + "; ".join(parts) + "."


def _test_text(c: dict) -> str:
    """A candidate's mean test accuracy over its seeds with the 95% interval (computed from its stored runs)."""
    return interval(c.get("test_mean"), c.get("test_ci_low"), c.get("test_ci_high"))


def _greedy_rows(s: dict) -> list[list[str]]:
    rows, names = [], s.get("slot_names") or {}
    for step in s["steps"]:
        cands = step_candidates(s, step["step"])
        cur = next((c for c in cands if c["position"] == 0), None)
        prop = next((c for c in cands if c["position"] == 1), None)
        if prop is None:
            continue
        proposal = f"{prop['placement']} ({slot_text(prop['slot'], names, 'slot ')})"
        rows.append([str(step["step"]), step["current"], proposal,
                     significant(prop["heuristic"]), interval(prop["mean"], prop["ci_low"], prop["ci_high"]),
                     _test_text(prop), interval(cur["mean"], cur["ci_low"], cur["ci_high"]) if cur else "-",
                     _test_text(cur) if cur else "-", difference(prop), p_value(prop["p"]), step["decision"]])
    return rows


def correlation_rows(corr: list[dict]) -> list[list[str]]:
    return [[c["stat"], str(c["n"]), rank_correlation(c["spearman"], c.get("spearman_low"), c.get("spearman_high")),
             p_value(c["spearman_p"]), p_value(c.get("spearman_p_holm")),
             rank_correlation(c["kendall"], c.get("kendall_low"), c.get("kendall_high")), p_value(c["kendall_p"]),
             p_value(c.get("kendall_p_holm")), points(c["highest_pick_diff"]), points(c["lowest_pick_diff"]),
             points(c["best_diff"]), points(c.get("random_diff")),
             _lead(c["highest_pick_diff"], c.get("random_diff"), c.get("highest_vs_random_low"),
                   c.get("highest_vs_random_high")),
             _lead(c["lowest_pick_diff"], c.get("random_diff"), c.get("lowest_vs_random_low"),
                   c.get("lowest_vs_random_high"))] for c in corr]


def _lead(pick, chance, low, high) -> str:
    """A pick's change less chance's (points), with its bootstrap interval: above 0 beats a random slot."""
    if pick is None or chance is None:
        return "-"
    text = points(pick - chance)
    if low is not None and high is not None:
        text += f" [{points(low)}, {points(high)}]"
    return text


def _placement_rows(cands: list[dict], names: dict[int, str], kept: bool = False) -> list[list[str]]:
    rows = []
    for c in cands:
        rows.append(([str(c.get("kept", "-"))] if kept else []) + [
            c["placement"], slots_text(c["off"], names), f"{c['relu_count']:,}",
            interval(c["mean"], c["ci_low"], c["ci_high"]), _test_text(c), difference(c), p_value(c["p"]),
            c["verdict"] or "-"])
    return rows


def search_sections(s: dict, svg: bool) -> list[Section]:
    title, note, names = _search_title(s), _search_note(s), s.get("slot_names") or {}
    sections = []
    if s["strategy"] == "greedy":
        sections.append(Section(title, GREEDY_HEADER, _greedy_rows(s), note=note, figure=search_path_figure(s, svg)))
        sections += _all_judgement_sections(s, svg)
    elif s["strategy"] == "oracle":
        path = []
        for st in s["steps"]:
            path.append([str(st["step"]), st["current"], st["decision"], st["note"]])
        sections.append(Section(title, ["step", "current", "decision", "why"], path, note=note,
                                figure=search_path_figure(s, svg)))
        for st in s["steps"]:
            cands = [c for c in step_candidates(s, st["step"]) if c["position"] > 0]
            rows = [[slot_text(c["slot"], names), c["placement"], interval(c["mean"], c["ci_low"], c["ci_high"]),
                     _test_text(c),
                     difference(c), p_value(c["p"]), significant(c["heuristic"])] for c in cands]
            stat = s["options"]["stat"]
            sections.append(Section(f"Oracle step {st['step']}: every single-slot change of {st['current']}",
                                    CANDIDATE_HEADER[:-1] + [stat], rows, figure=oracle_figure(s, st["step"], svg)))
            sections += _judgement_sections(s, st["step"], st["current"], svg)
    elif s["strategy"] == "exhaustive":
        cands = step_candidates(s, 1)
        shown = cands[:MAX_EXHAUSTIVE_ROWS]
        extra = f" The {len(shown)} best of {len(cands)} placements are shown; the search CSV has all." \
            if len(cands) > len(shown) else ""
        sections.append(Section(title, PLACEMENT_HEADER, _placement_rows(shown, names), note=note + extra,
                                figure=relu_count_figure(s, svg)))
        sections += _judgement_sections(s, 1, s["base"], svg)
    elif s["strategy"] == "budget":
        cands = step_candidates(s, 1)
        total = len(s["slot_sizes"])
        for c in cands:
            c["kept"] = total - len(c["off"])
        sections.append(Section(title, ["slots on"] + PLACEMENT_HEADER, _placement_rows(cands, names, kept=True),
                                note=note, figure=relu_count_figure(s, svg)))
        sections += _all_judgement_sections(s, svg)
    else:  # learned, random, and any strategy that stores points at ReLU budgets: a table per step
        sections += _point_sections(s, title, note)
    return sections


def _point_sections(s: dict, title: str, note: str) -> list[Section]:
    """A table of every row of each step (the learned points, the random baseline's): ReLU count reached and
    accuracy over seeds; the ReLU count against accuracy section draws them beside the other strategies."""
    sections = []
    for st in s["steps"]:
        rows = [[c["placement"], "-" if c["relu_count"] is None else count_text(c["relu_count"]),
                 interval(c["mean"], c["ci_low"], c["ci_high"]), _test_text(c), difference(c), p_value(c["p"]),
                 c["verdict"] or "-"] for c in step_candidates(s, st["step"])]
        what = f"{title}: {st['kind']} (step {st['step']})" if len(s["steps"]) > 1 else title
        text = " ".join(x for x in (note if not sections else "", st["note"] or "") if x)
        sections.append(Section(what, POINT_HEADER, rows, note=text))
    return sections


def _judgement_sections(s: dict, step: int, current: str, svg: bool) -> list[Section]:
    from relulab.search.judgement import false_positive_note

    corr = _stat_order([c for c in s.get("judgements", []) if c["step"] == step])
    if not corr:
        return []
    singles = f"{max(c['n'] for c in corr)} single-slot changes of {current}"
    if s["strategy"] == "greedy":
        singles += " (the proposals tried from it, rejected and accepted)"
    note = (f"For each statistic (on {current}, mean over seeds), the rank correlation with the measured change in "
            f"accuracy of switching each slot off, over {singles}; the pick columns give the change the "
            "highest-first and lowest-first choices got, and the best there was (points); the random pick is chance, "
            "the mean change over those slots (what switching off one drawn at random gets on average), and the "
            "last two columns each pick's lead over it: an interval above 0 beats chance. Brackets: 95% bootstrap "
            f"intervals ({corr[0].get('resamples') or 0} resamples of the slots, then of the seeds within).")
    extra = false_positive_note(corr[0].get("compared", 0))
    return [Section(f"Heuristic judgement, step {step}: statistics of {current} against the measured changes",
                    CORRELATION_HEADER, correlation_rows(corr), note=note + (" " + extra if extra else ""),
                    figure=correlation_figure(corr, f"Heuristic judgement, step {step}",
                                              f"search-{s['id'][:8]}-judgement-{step}", svg,
                                              seeds_text([len(s.get("seeds") or [])])))]


def _all_judgement_sections(s: dict, svg: bool) -> list[Section]:
    """Greedy and budget: a judgement for every model whose single-slot changes the search happened to measure."""
    sections = []
    for step in sorted({c["step"] for c in s.get("judgements", [])}):
        current = next(c["current"] for c in s["judgements"] if c["step"] == step)
        sections += _judgement_sections(s, step, current, svg)
    return sections
