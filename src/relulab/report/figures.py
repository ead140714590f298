"""The report's figures of a part (matplotlib's object API: no pyplot, no global backend switch): accuracy
and loss curves, time per epoch, sparsity per layer, mean and variance through depth, the analyses'
activation plots and costs, probe statistics over epochs and seed 000's heatmaps. Each is a `FigureOut`
(PNG, and SVG when asked). The searches' figures are in `relulab.report.search_figures`.

Every figure stands on its own: its title and a subtitle (how many seeds, what the band is) are drawn on the
image; lines of several configurations differ in colour, line style and marker (`styles`), so they can be told
apart in grey too; bands over seeds are the tables' 95% interval unless the report asks for the range
(`relulab.report.measures.BANDS`).
"""
from __future__ import annotations

import base64
import hashlib
import io
import math
from dataclasses import dataclass
from typing import Callable, Optional

import matplotlib
import numpy as np
import torch
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from relulab.core.errors import UserError
from relulab.core.util import write_bytes_atomic
from relulab.core.version import __version__
from relulab.data.sources import cache_dir
from relulab.zoo import activations
from relulab.report.collect import PartData
from relulab.report.format import PCT, slot_text
from relulab.report.measures import (DEPTH_EVAL_NOTE, DEPTH_TARGET, Band, band_text, curve, last_probed_epoch,
                                     seeds_text, sparsity_by_slot)


@dataclass
class FigureOut:
    slug: str
    title: str
    caption: str
    png: bytes
    svg: Optional[bytes] = None
    about: str = ""  # the subtitle drawn under the title: seeds and band

    @property
    def png_base64(self) -> str:
        return base64.b64encode(self.png).decode("ascii")


def new_figure(width: float = 7.0, height: float = 4.2):
    from matplotlib.figure import Figure  # the object API: no pyplot, no global backend switch

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def save_figure(fig, slug: str, title: str, caption: str, svg: bool, about: str) -> FigureOut:
    """The figure as PNG (and SVG), its title and `about` (how many seeds, what the band is) drawn on it: a
    figure copied out of the report still says what it shows."""
    fig.suptitle(f"{title}\n{about}", fontsize=10)
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=110, metadata={"Software": None})
    svg_bytes = None
    if svg:
        buf = io.BytesIO()
        fig.savefig(buf, format="svg", metadata={"Date": None})
        svg_bytes = buf.getvalue()
    return FigureOut(slug, title, caption, png.getvalue(), svg_bytes, about)


MAX_NAMED_TICKS = 40  # slots an axis labels by name; more would not be legible, and the axis keeps numbers


def slot_ticks(ax, slots, names: dict[int, str], axis: str = "x") -> None:
    """Label a slot axis with the slots' names ('3 layer1.0.relu2') where the model has them, else integers."""
    slots = sorted(set(slots))
    if not names or not slots or len(slots) > MAX_NAMED_TICKS:
        getattr(ax, f"{axis}axis").set_major_locator(MaxNLocator(integer=True))
        return
    labels = [f"{s} {names[s]}" if s in names else str(s) for s in slots]
    if axis == "x":
        ax.set_xticks(slots, labels, rotation=60, ha="right", fontsize=6.5)
    else:
        ax.set_yticks(slots, labels, fontsize=6.5)


def colors(n: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


LINESTYLES = ["-", "--", "-.", ":"]
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]


def styles(n: int, size: float = 6.0) -> list[dict]:
    """A colour, a line style and a marker for each of n lines, all three changing from one line to the next:
    overlapping curves stay apart where colours alone would not (in grey, or for a reader who cannot tell them).
    Markers shrink from one line to the next, so that a line drawn exactly over another leaves the earlier
    line's markers showing around its own."""
    return [{"color": c, "linestyle": LINESTYLES[i % len(LINESTYLES)], "marker": MARKERS[i % len(MARKERS)],
             "markersize": size * (1 - 0.17 * (i % len(LINESTYLES)))} for i, c in enumerate(colors(n))]


def part_seeds(part: PartData) -> list[int]:
    """Runs per configuration that have epochs (what a curve averages)."""
    return [len(v.epochs) for v in part.variants]


def _plot_metric(ax, part: PartData, metric: str, label: str, band: Band, scale: float = 1.0,
                 legend: bool = True) -> None:
    drawn: set[int] = set()
    for style, v in zip(styles(len(part.variants)), part.variants):
        epochs, mean, low, high = curve(v, metric, band)
        if not len(epochs):
            continue
        drawn.update(int(e) for e in epochs)
        ax.plot(epochs, mean * scale, linewidth=1.4, label=v.name, **style)
        if not np.isfinite(low).any():
            continue
        if len(epochs) == 1:  # a band one epoch wide has no width: a whisker instead
            ax.errorbar(epochs, mean * scale, yerr=np.abs([(mean - low) * scale, (high - mean) * scale]),
                        color=style["color"], capsize=4, linewidth=1)
        else:
            ax.fill_between(epochs, low * scale, high * scale, color=style["color"], alpha=0.15, linewidth=0)
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if len(drawn) == 1:  # a single epoch: its number, not fractions of one around it
        ax.set_xticks(sorted(drawn))
    ax.set_ylabel(label)
    ax.grid(alpha=0.3)
    if "loss" in metric and _all_positive(ax):
        ax.set_yscale("log")
    if "acc" in metric:
        clamp_percent(ax)
    if legend and part.variants:
        ax.legend(fontsize=8)


def clamp_percent(ax) -> None:
    """Intervals over few seeds can reach past 0% or 100%: keep the axis on accuracies that exist."""
    low, high = ax.get_ylim()
    ax.set_ylim(max(low, -2.0), min(high, 102.0))


def _all_positive(ax) -> bool:
    ys = [y for line in ax.get_lines() for y in line.get_ydata() if np.isfinite(y)]
    return bool(ys) and min(ys) > 0 and max(ys) / min(ys) > 20


def band_caption(band: Band) -> str:
    return f"Mean over seeds; the band is the {band.text}."


def curves_figure(part: PartData, band: Band, svg: bool) -> FigureOut:
    """Accuracy and loss, train and validation, every configuration on each panel (seed 001's chart is the
    validation accuracy panel; it is not drawn a second time on its own)."""
    fig = new_figure(10.5, 7.6)
    axes = fig.subplots(2, 2)
    panels = [("train_acc", "train accuracy (%)", PCT), ("val_acc", "validation accuracy (%)", PCT),
              ("train_loss", "train loss", 1.0), ("val_loss", "validation loss", 1.0)]
    for ax, (metric, label, scale) in zip(axes.flat, panels):
        _plot_metric(ax, part, metric, label, band, scale, legend=metric == "val_acc")
        ax.set_title(label, fontsize=9)
    return save_figure(fig, "curves", "Accuracy and loss", band_caption(band) + " Train numbers are running means "
                       "over each epoch (as Keras reports them).", svg, band_text(band, part_seeds(part)))


def epoch_time_figure(part: PartData, band: Band, svg: bool) -> FigureOut:
    fig = new_figure(7, 1.1 + 0.38 * max(3, len(part.variants)))
    ax = fig.add_subplot()
    names, means, lows, highs, counts = [], [], [], [], []
    for v in part.variants:
        per_run = np.array([[r["seconds"] / r["epochs"]] for r in v.runs if r["epochs"]], dtype=float).reshape(-1, 1)
        low, high = band.bounds(per_run)
        names.append(v.name)
        counts.append(len(per_run))
        means.append(float(per_run.mean()) if per_run.size else 0.0)
        lows.append(low[0] if np.isfinite(low[0]) else means[-1])  # no whisker where there is no band
        highs.append(high[0] if np.isfinite(high[0]) else means[-1])
    y = np.arange(len(names))
    # Clipped: packed runs share one timing, and the mean of equal numbers can round below their minimum.
    err = np.clip(np.array([np.subtract(means, lows), np.subtract(highs, means)]), 0, None)
    alone = [v.alone.epoch_seconds if v.alone else 0.0 for v in part.variants]
    caption = f"Measured wall time per epoch, mean over runs; whiskers: the {band.text}."
    if any(alone):  # each configuration's own time beside its packed share
        ax.barh(y - 0.2, means, 0.4, xerr=err, color=colors(len(names)), capsize=3)
        ax.barh(y + 0.2, alone, 0.4, color=colors(len(names)), alpha=0.5, hatch="//")
        ax.legend(handles=[Patch(color="0.45", label="as trained (packed share)"),
                           Patch(facecolor="0.45", alpha=0.5, hatch="//", label="alone (timed pass)")],
                  fontsize=8, loc="lower right")
        caption += " Hatched: one model of the configuration timed alone (a short timed pass, scaled to an epoch)."
    else:
        ax.barh(y, means, xerr=err, color=colors(len(names)), capsize=3)
    ax.set_yticks(y, names, fontsize=8)
    ax.set_ylabel("configuration")
    ax.invert_yaxis()
    ax.set_xlabel("seconds per epoch (training + validation)")
    ax.grid(axis="x", alpha=0.3)
    return save_figure(fig, "epoch-time", "Time per epoch", caption, svg,
                       band_text(band, counts).replace("band:", "whiskers:"))


def sparsity_figure(part: PartData, svg: bool) -> Optional[FigureOut]:
    table = {v.name: sparsity_by_slot(v) for v in part.variants}
    if not any(table.values()):
        return None
    fig = new_figure()
    ax = fig.add_subplot()
    for style, (name, by_slot) in zip(styles(len(table)), table.items()):
        if by_slot:
            ax.plot(list(by_slot), list(by_slot.values()), label=name, **style)
    ax.set_xlabel("slot (layer)")
    slot_ticks(ax, [slot for by_slot in table.values() for slot in by_slot], part.slot_names)
    ax.set_ylabel("fraction of exact zeros")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    seeds = [len([1 for stats in v.slot_stats.values() if stats.get("sparsity")]) for v in part.variants]
    return save_figure(fig, "sparsity", "Sparsity per layer", "Fraction of exact zeros in each slot's output on the "
                       "probe set after the last epoch, mean over seeds.", svg,
                       f"mean over {seeds_text(seeds)}, last epoch; no band")


def _depth_scale(ax, what: str, values: list[float]) -> bool:
    """Variances through 50 layers can vanish (1e-19) or explode: a log scale then, where a variance of exactly 0
    (a layer whose outputs are all equal) cannot be drawn; means far from 0: a symmetric log scale. Whether
    zeros were left out."""
    finite = [x for x in values if math.isfinite(x)]
    positive = [x for x in finite if x > 0]
    if what == "variance" and positive and max(positive) / min(positive) > 50:
        ax.set_yscale("log", nonpositive="mask")
        return any(x <= 0 for x in finite)
    if what == "mean" and finite and max(abs(x) for x in finite) > 10:
        ax.set_yscale("symlog", linthresh=1.0)
    return False


def depth_figure(part: PartData, table: dict[str, dict], band: Band, seeds: list[int], svg: bool) -> FigureOut:
    """Rows: mean, variance; columns: at initialisation, after training (one y scale per row, so that the two
    can be compared); a line per configuration."""
    whens = [w for w in ("init", "trained") if any(w in p for p in table.values())]
    fig = new_figure(5.2 * len(whens) + 1.6, 7.4)
    axes = fig.subplots(2, len(whens), squeeze=False, sharex=True, sharey="row")
    last = last_probed_epoch(part)
    titles = {"init": "at initialisation (epoch 0)", "trained": f"after training (epoch {last})"}
    zeros = cut = False
    for row, what in enumerate(("mean", "variance")):
        drawn = [DEPTH_TARGET[what]] + [x for profiles in table.values() for when in whens if when in profiles
                                        for p in [profiles[when][what]] for x in p.mean + p.low + p.high]
        zeros |= _depth_scale(axes[row][0], what, drawn)  # shared by the row
        log = axes[row][0].get_yscale() == "log"
        for col, when in enumerate(whens):
            ax = axes[row][col]
            for style, (name, profiles) in zip(styles(len(table), 4.5), table.items()):
                if when not in profiles:
                    continue
                p = profiles[when][what]
                # on a log scale a band reaching 0 is cut there (NaN), not drawn to a masked point
                low = [x if not log or x > 0 else math.nan for x in p.low]
                cut |= log and any(x <= 0 for x in p.low)
                ax.plot(p.slots, p.mean, linewidth=1.3, label=name, **style)
                ax.fill_between(p.slots, low, p.high, color=style["color"], alpha=0.15, linewidth=0)
            ax.axhline(DEPTH_TARGET[what], color="black", linestyle=(0, (6, 2)), linewidth=0.9,
                       label="target (mean 0, variance 1)")
            ax.set_title(f"{what} of each slot's output, {titles[when]}", fontsize=9)
            ax.grid(alpha=0.3)
            if row == 1:
                ax.set_xlabel("slot (depth)")
            slot_ticks(ax, [s for profiles in table.values() if when in profiles
                            for s in profiles[when][what].slots], part.slot_names)
        axes[row][0].set_ylabel(what)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right center", fontsize=8)
    caption = ("Mean and variance (std squared) of each slot's output over every entry of the probe set, mean over "
               f"seeds; the band is the {band.text}; black dashes: the self-normalising target (mean 0, variance "
               "1). Left: the network as initialised; right: after the last epoch. " + DEPTH_EVAL_NOTE)
    if cut:
        caption += " Where a band reaches 0 or below, its lower edge is off the log scale (the band stops there)."
    if zeros:
        caption += " Variances of exactly 0 (a slot whose outputs are all equal) are off the log scale."
    return save_figure(fig, "depth", "Post-activation mean and variance through depth", caption, svg,
                       band_text(band, seeds))


def cached_figure(parts: list[bytes], slug: str, title: str, caption: str, svg: bool, about: str,
                  draw: Callable[[], FigureOut]) -> FigureOut:
    """`draw()`, or the images it drew before for the same `parts` (everything the image shows: its numbers and
    texts), kept in relulab's cache folder per relulab and matplotlib version. For figures that come out the same
    in every report of their inputs: drawing one costs a second of a short command's time (BENCHMARKS.md)."""
    digest = hashlib.sha256()
    for part in [__version__.encode(), matplotlib.__version__.encode(), slug.encode(), title.encode(),
                 caption.encode(), about.encode(), b"svg" if svg else b"png", *parts]:
        digest.update(len(part).to_bytes(8, "little") + part)
    stem = cache_dir() / "figures" / digest.hexdigest()[:32]
    try:
        png, svg_bytes = stem.with_suffix(".png").read_bytes(), stem.with_suffix(".svg").read_bytes() if svg else None
        return FigureOut(slug, title, caption, png, svg_bytes, about)
    except OSError:
        pass
    out = draw()
    try:
        write_bytes_atomic(stem.with_suffix(".png"), out.png)
        if out.svg is not None:
            write_bytes_atomic(stem.with_suffix(".svg"), out.svg)
    except (OSError, UserError):  # a read-only or full cache (write_bytes_atomic names it): the figure still is drawn
        pass
    return out


ACTIVATIONS_TITLE = "Activation functions and their derivatives"
ACTIVATIONS_CAPTION = ("Solid: the function; dashed: its closed-form derivative (relulab.activations; 0 at x = 0 for "
                       "ReLU by convention).")
ACTIVATIONS_ABOUT = "closed form: no seeds, no band"


def activations_figure(value: dict, svg: bool) -> FigureOut:
    names, (low, high) = value["activations"], value["range"]
    x = torch.linspace(low, high, 801, dtype=torch.float64)
    curves = [(activations.activation_fn(name)(x), activations.activation_grad(name)(x)) for name in names]
    # Keyed by the curves' values, not the names: a user's activation keeps its name when its definition changes.
    parts = [name.encode() for name in names] + [x.numpy().tobytes()] + \
        [values.detach().numpy().tobytes() for pair in curves for values in pair]
    return cached_figure(parts, "activations", ACTIVATIONS_TITLE, ACTIVATIONS_CAPTION, svg, ACTIVATIONS_ABOUT,
                         lambda: _draw_activations(names, x, curves, svg))


def _draw_activations(names: list[str], x: torch.Tensor, curves: list, svg: bool) -> FigureOut:
    cols = min(3, len(names))
    rows = math.ceil(len(names) / cols)
    fig = new_figure(3.4 * cols, 2.6 * rows)
    for i, (name, (values, grads)) in enumerate(zip(names, curves)):
        ax = fig.add_subplot(rows, cols, i + 1)
        ax.plot(x, values, label=name)
        ax.plot(x, grads, linestyle="--", label="derivative")
        ax.axhline(0, color="grey", linewidth=0.6)
        ax.axvline(0, color="grey", linewidth=0.6)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("x", fontsize=8)
        ax.set_ylabel("f(x), f'(x)", fontsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return save_figure(fig, "activations", ACTIVATIONS_TITLE, ACTIVATIONS_CAPTION, svg, ACTIVATIONS_ABOUT)


def cost_figure(value: dict, svg: bool) -> FigureOut:
    """Median time per activation, forward and forward + backward, whiskers from the first to the third quartile
    of torch.utils.benchmark's measurements (none for a store measured before relulab kept them)."""
    rows = [cost_numbers(r) for r in value["rows"]]
    fig = new_figure(7, 1.0 + 0.35 * max(3, len(rows)))
    ax = fig.add_subplot()
    y = np.arange(len(rows))
    for offset, what, label, hatch in ((-0.2, "forward", "forward", None),
                                       (0.2, "forward_backward", "forward + backward", "//")):
        medians = [r[what]["median"] for r in rows]
        whiskers = np.array([[r[what]["median"] - r[what]["q25"], r[what]["q75"] - r[what]["median"]]
                             if r[what]["q25"] is not None else [0.0, 0.0] for r in rows]).T
        ax.barh(y + offset, medians, height=0.4, label=label, hatch=hatch, xerr=whiskers.clip(0),
                error_kw={"capsize": 2, "elinewidth": 0.8})
    ax.set_yticks(y, [r["activation"] for r in rows], fontsize=8)
    ax.set_ylabel("activation")
    ax.invert_yaxis()
    ax.set_xlabel(f"milliseconds for {value['elements']:,} elements ({value['device']})")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, "activation-cost", "Cost of each activation function", cost_text(value) + ".", svg,
                       cost_text(value, short=True))


def cost_numbers(row: dict) -> dict:
    """An activation_cost row as {"activation", "forward" | "forward_backward": {median, iqr, q25, q75}}; a row
    measured before relulab used torch.utils.benchmark has a median only (iqr, q25, q75 None)."""
    out = {"activation": row["activation"]}
    for what in ("forward", "forward_backward"):
        if f"{what}_median_ms" in row:
            out[what] = {k: row[f"{what}_{k}_ms"] for k in ("median", "iqr", "q25", "q75")}
        else:
            out[what] = {"median": row[f"{what}_ms"], "iqr": None, "q25": None, "q75": None}
    return out


def threads_text(value: dict) -> str:
    return f"{value['threads']} thread{'s' * (value['threads'] != 1)}"


def cost_text(value: dict, short: bool = False) -> str:
    """How the costs were measured, for a caption (or, short, a figure's subtitle)."""
    if "threads" not in value:  # measured before torch.utils.benchmark
        return f"median of {value['repeats']} timings after two warm-ups (no spread recorded)"
    if short:
        return f"median, whiskers: interquartile range; {threads_text(value)}; no seeds"
    return (f"Timed with {value['timer']} on {threads_text(value)} after {value['warmup']} warm-up calls: "
            f"blocks of calls for at least {value['min_run_time']:g} s; bars: the median time per call, whiskers: "
            "the interquartile range of the blocks (a wide one: the machine was busy while it was measured)")


def stat_over_epochs_figure(title: str, panels: list[tuple[str, dict[int, tuple[list, list]]]], ylabel: str,
                            slug: str, caption: str, svg: bool, names: Optional[dict[int, str]] = None, *,
                            about: str, xlabel: str = "epoch") -> FigureOut:
    cols = min(3, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig = new_figure(3.8 * cols + 1.2, 2.9 * rows + 0.4)
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax, (name, curves) in zip(axes.flat, panels):
        for style, (slot, (epochs, values)) in zip(styles(max(1, len(curves)), 5.0), curves.items()):
            ax.plot(epochs, values, linewidth=1.2, label=slot_text(slot, names or {}, "slot "), **style)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel(xlabel)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside right center", fontsize=7)
    return save_figure(fig, slug, title, caption, svg, about)


def heatmap_figure(header: list[str], rows: list[list], title: str, slug: str, caption: str,
                   svg: bool, degenerate: Optional[list[bool]] = None,
                   names: Optional[dict[int, str]] = None, *, quantity: str, about: str) -> FigureOut:
    """Seed 000's heatmap: a row per slot, a column per class and the average, each cell annotated. Columns marked
    in `degenerate` (relulab.probes.statistics.degenerate_columns: a class of one image for a statistic taken
    across images) are grey and say n/a: they are not data, and they do not set the colour scale. `names`: the
    slots' names, where the model has them (the rows' labels). `quantity` labels the colour bar; `about` (the
    runs averaged) is the subtitle."""
    values = np.array([[np.nan if v is None else float(v) for v in row[1:]] for row in rows], dtype=float)
    marked = np.zeros(values.shape[1], dtype=bool) if degenerate is None else np.asarray(degenerate, dtype=bool)
    values[:, marked] = np.nan
    fig = new_figure(2.4 + 0.72 * len(header) + (1.2 if names else 0), 1.9 + 0.42 * len(rows))
    ax = fig.add_subplot()
    finite = values[np.isfinite(values)]
    if marked.any():
        grey = np.where(marked[None, :], 1.0, np.nan) * np.ones_like(values)
        ax.imshow(np.ma.masked_invalid(grey), aspect="auto", cmap="Greys", vmin=0, vmax=5)
    image = ax.imshow(np.ma.masked_invalid(values), aspect="auto", cmap="viridis",
                      vmin=finite.min() if finite.size else 0, vmax=finite.max() if finite.size else 1)
    ax.set_xticks(range(len(header) - 1), header[1:], rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(rows)), [slot_text(row[0], names or {}, "slot ") for row in rows], fontsize=8)
    ax.axvline(len(header) - 2.5, color="white", linewidth=2)  # the average column stands apart
    middle = (finite.min() + finite.max()) / 2 if finite.size else 0
    for i in range(values.shape[0]):
        for j in range(values.shape[1]):
            if marked[j]:
                ax.text(j, i, "n/a", ha="center", va="center", fontsize=6.5, color="dimgrey")
            elif np.isfinite(values[i, j]):
                ax.text(j, i, f"{values[i, j]:.2f}", ha="center", va="center", fontsize=6.5,
                        color="black" if values[i, j] > middle else "white")
    ax.set_xlabel("class (last column: every probe image)")
    ax.set_ylabel("slot")
    fig.colorbar(image, ax=ax, fraction=0.04).set_label(quantity)
    if marked.any():
        caption += " Grey n/a: a class with one probe image, where this statistic (taken across images) is fixed " \
                   "by its definition, not measured."
    return save_figure(fig, slug, title, caption, svg, about)
