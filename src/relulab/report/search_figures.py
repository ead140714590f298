"""The searches' figures: a search's path, an oracle step's single-slot changes, the heuristic judgement's rank
correlations, and ReLU count against accuracy (with labels placed so that they do not overlap).
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np
from matplotlib.ticker import MaxNLocator

from relulab.report.figures import MAX_NAMED_TICKS, FigureOut, clamp_percent, new_figure, save_figure
from relulab.report.format import PCT
from relulab.report.measures import seeds_text, step_candidates


INTERVAL = "bars: 95% interval of the mean over seeds (Student t, as in the tables)"


def _seeds(s: dict) -> str:
    return seeds_text([len(s.get("seeds") or [])])


def search_path_figure(s: dict, svg: bool) -> Optional[FigureOut]:
    """Accuracy of the current model at each step (line) and every candidate tried (accepted or not)."""
    if not s["steps"]:
        return None
    fig = new_figure(7, 4)
    ax = fig.add_subplot()
    path_x, path_y, labels = [], [], []
    legend = {True: "accepted candidate", False: "rejected candidate"}  # each labelled once, on its first point
    for step in s["steps"]:
        cands = step_candidates(s, step["step"])
        ref = next((c for c in cands if c["position"] == 0), None)
        if ref and not path_x:
            path_x.append(0)
            path_y.append(ref["mean"] * PCT)
            labels.append(ref["placement"])
            if ref["ci_low"] is not None and math.isfinite(ref["ci_low"]):
                ax.errorbar([0], [ref["mean"] * PCT], yerr=[[(ref["mean"] - ref["ci_low"]) * PCT],
                                                            [(ref["ci_high"] - ref["mean"]) * PCT]],
                            color="tab:blue", capsize=3)
        for c in cands:
            if c["position"] == 0:
                continue
            accepted = c["placement"] == step["chosen"]
            err = None
            if c["ci_low"] is not None and math.isfinite(c["ci_low"]):
                err = [[(c["mean"] - c["ci_low"]) * PCT], [(c["ci_high"] - c["mean"]) * PCT]]
            ax.errorbar([step["step"]], [c["mean"] * PCT], yerr=err, fmt="o" if accepted else "x",
                        color="tab:green" if accepted else "tab:red", alpha=0.9 if accepted else 0.55, capsize=3,
                        label=legend.pop(accepted, None))
            if s["strategy"] == "greedy" or accepted:
                ax.annotate(c["placement"], (step["step"], c["mean"] * PCT), textcoords="offset points",
                            xytext=(5, 3), fontsize=7)
        if step["decision"] == "accepted":
            chosen = next(c for c in cands if c["placement"] == step["chosen"])
            path_x.append(step["step"])
            path_y.append(chosen["mean"] * PCT)
    if path_x:
        ax.plot(path_x, path_y, color="tab:blue", marker="s", label="current model")
        ax.annotate(labels[0], (0, path_y[0]), textcoords="offset points", xytext=(5, 3), fontsize=7)
    ax.set_xlabel("step")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    low, high = ax.get_xlim()
    ax.set_xlim(low, high + 0.12 * (high - low))  # room for the last step's labels, which sit right of their points
    ax.set_ylabel(f"{s['metric']} (%)")
    clamp_percent(ax)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return save_figure(fig, f"search-{s['id'][:8]}-path", "Search path",
                       "Blue: the current model after each step; green: accepted candidates, red crosses: rejected "
                       "ones; bars: the 95% interval of the mean over seeds (Student t, as in the tables).", svg,
                       f"{_seeds(s)}; {INTERVAL}")


def correlation_figure(corr: list[dict], title: str, slug: str, svg: bool, seeds: str) -> Optional[FigureOut]:
    corr = [c for c in corr if c["spearman"] is not None and math.isfinite(c["spearman"])]
    if not corr:
        return None
    fig = new_figure(7, 0.8 + 0.36 * len(corr))
    ax = fig.add_subplot()
    y = np.arange(len(corr))
    ax.barh(y - 0.2, [c["spearman"] for c in corr], height=0.4, label="Spearman rho",
            xerr=_bootstrap_errors(corr, "spearman"), error_kw={"capsize": 2, "elinewidth": 0.8})
    ax.barh(y + 0.2, [c["kendall"] for c in corr], height=0.4, label="Kendall tau",
            xerr=_bootstrap_errors(corr, "kendall"), error_kw={"capsize": 2, "elinewidth": 0.8})
    ax.set_yticks(y, [f"{c['stat']} (n={c['n']})" for c in corr], fontsize=8)
    ax.set_ylabel("statistic (n: single-slot changes)")
    ax.invert_yaxis()
    ax.axvline(0, color="grey", linewidth=0.8)
    ax.set_xlim(-1.05, 1.05)
    ax.set_xlabel("rank correlation with the measured change in accuracy")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, slug, title, "Positive: switching off the slot with the HIGHEST value first was the "
                       "right order; negative: the lowest. n = single-slot candidates with a finite value; whiskers: "
                       "95% bootstrap intervals over slots and seeds.", svg,
                       f"{seeds}; whiskers: 95% bootstrap interval over slots and seeds")


def _bootstrap_errors(corr: list[dict], name: str) -> Optional[np.ndarray]:
    """Whiskers (below, above) from the rows' bootstrap intervals; zero length where a row has none."""
    low, high = [], []
    for c in corr:
        a, b = c.get(f"{name}_low"), c.get(f"{name}_high")
        ok = a is not None and b is not None and math.isfinite(a) and math.isfinite(b)
        low.append(max(0.0, c[name] - a) if ok else 0.0)
        high.append(max(0.0, b - c[name]) if ok else 0.0)
    return np.array([low, high]) if any(low) or any(high) else None


def oracle_figure(s: dict, step: int, svg: bool) -> Optional[FigureOut]:
    cands = [c for c in step_candidates(s, step) if c["position"] > 0 and c["slot"] is not None]
    if not cands:
        return None
    fig = new_figure(7, 3.6)
    ax = fig.add_subplot()
    xs = [c["slot"] for c in cands]
    ys = [(c["diff"] if c["diff"] is not None and math.isfinite(c["diff"]) else 0) * PCT for c in cands]
    lo = [max(0.0, (c["diff"] - c["diff_low"]) * PCT) if c["diff_low"] is not None and math.isfinite(c["diff_low"])
          else 0 for c in cands]
    hi = [max(0.0, (c["diff_high"] - c["diff"]) * PCT) if c["diff_high"] is not None
          and math.isfinite(c["diff_high"]) else 0 for c in cands]
    ax.bar(xs, ys, yerr=[lo, hi], capsize=3, color=["tab:green" if v > 0 else "tab:red" for v in ys])
    ax.axhline(0, color="grey", linewidth=0.8)
    ax.set_xlabel("slot switched off")
    names = s.get("slot_names") or {}
    if names and len(xs) <= MAX_NAMED_TICKS:
        ax.set_xticks(xs, [f"{x} {names[x]}" if x in names else str(x) for x in xs], rotation=60, ha="right",
                      fontsize=6.5)
    else:
        ax.set_xticks(xs)
    ax.set_ylabel("change in accuracy (points)")
    ax.grid(axis="y", alpha=0.3)
    return save_figure(fig, f"search-{s['id'][:8]}-oracle-{step}", f"Oracle step {step}: every single-slot change",
                       "Measured change in accuracy (mean over seeds) of switching each slot off, with the 95% "
                       "interval of the difference (Welch, as in the tables).", svg,
                       f"{_seeds(s)}; bars: 95% interval of the difference (Welch)")


def relu_count_figure(s: dict, svg: bool) -> Optional[FigureOut]:
    cands = [c for c in s["candidates"] if c["mean"] is not None and math.isfinite(c["mean"])]
    if not cands:
        return None
    fig = new_figure(7, 4.2)
    ax = fig.add_subplot()
    for c in cands:
        err = None
        if c["ci_low"] is not None and math.isfinite(c["ci_low"]):
            err = [[(c["mean"] - c["ci_low"]) * PCT], [(c["ci_high"] - c["mean"]) * PCT]]
        ax.errorbar([c["relu_count"]], [c["mean"] * PCT], yerr=err, fmt="o", color="tab:blue", capsize=3, alpha=0.8)
    frontier, best = [], -math.inf
    for c in sorted(cands, key=lambda c: (c["relu_count"], -c["mean"])):
        if c["mean"] > best:
            best = c["mean"]
            frontier.append(c)
    ax.plot([c["relu_count"] for c in frontier], [c["mean"] * PCT for c in frontier], drawstyle="steps-post",
            color="tab:orange", marker="D", markersize=5, zorder=3, label="frontier: best accuracy for its ReLU count")
    ax.set_xlabel("ReLU count (activations computed per image)")
    ax.set_ylabel(f"{s['metric']} (%)")
    clamp_percent(ax)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    place_labels(ax, [(c["relu_count"], c["mean"] * PCT, c["placement"]) for c in frontier])
    return save_figure(fig, f"search-{s['id'][:8]}-relu-count", "ReLU count against accuracy",
                       "Each point a placement (mean over seeds, with the 95% interval of the mean as in the tables); "
                       "the ReLU count sums the output sizes of the slots that are on.", svg, f"{_seeds(s)}; {INTERVAL}")


def _label_offsets(rings: int = 10) -> list[tuple[int, int]]:
    """Offsets (points) to try for a label, nearest first: the four corners of its point, then further up and
    down, left and right."""
    return [(dx, dy * (4 + 8 * ring)) for ring in range(rings + 1) for dx, dy in ((4, 1), (4, -1), (-4, 1), (-4, -1))]


def _overlap(a, b) -> float:
    width = min(a.x1, b.x1) - max(a.x0, b.x0)
    height = min(a.y1, b.y1) - max(a.y0, b.y0)
    return width * height if width > 0 and height > 0 else 0.0


def place_labels(ax, points: list[tuple[float, float, str]], fontsize: float = 7) -> list:
    """Annotate each (x, y, text) at the first offset where the label stays on the figure and covers no label
    placed before, no point and not the legend (else where it covers least); a leader line joins a label moved
    away from its point. Returns the labels' boxes in display space. Call it once the axes are final (limits,
    scales, legend): positions are measured on the laid-out figure."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.text import Text
    from matplotlib.transforms import Bbox

    fig = ax.figure
    if not hasattr(fig.canvas, "get_renderer"):
        FigureCanvasAgg(fig)
    fig.canvas.draw()  # the layout, so that display positions hold
    renderer = fig.canvas.get_renderer()
    page = fig.bbox
    marker = 3.0 * fig.dpi / 72  # half a marker's width, in pixels
    obstacles = [Bbox.from_extents(px - marker, py - marker, px + marker, py + marker)
                 for px, py in ax.transData.transform([(x, y) for x, y, _ in points])]
    legend = ax.get_legend()
    if legend is not None:
        obstacles.append(legend.get_window_extent(renderer))
    boxes: list = []
    for x, y, text in points:
        best = None
        for n, (dx, dy) in enumerate(_label_offsets()):
            label = ax.annotate(text, (x, y), textcoords="offset points", xytext=(dx, dy), fontsize=fontsize,
                                ha="left" if dx > 0 else "right", va="bottom" if dy > 0 else "top",
                                arrowprops={"arrowstyle": "-", "color": "grey", "linewidth": 0.5} if n >= 4 else None)
            label.set_in_layout(False)
            label.update_positions(renderer)
            box = Text.get_window_extent(label, renderer).padded(2)  # the text alone (with a gap), not its line
            inside = page.x0 <= box.x0 and box.x1 <= page.x1 and page.y0 <= box.y0 and box.y1 <= page.y1
            cost = (0 if inside else 10 * box.width * box.height) + sum(_overlap(box, b) for b in boxes + obstacles)
            if best is None or cost < best[0]:
                if best is not None:
                    best[1].remove()
                best = (cost, label, box)
            else:
                label.remove()
            if cost == 0:
                break
        boxes.append(best[2])
    return boxes
