"""The report's text: how numbers, intervals, percentages and names are written in its tables and files.

One formatter for every table of the report (and `relulab compare`): a missing or non-finite number is "-";
an interval is the mean ± the half-width of its 95% interval (`relulab.core.stats.Summary.format`), a
difference is signed with its interval in brackets (`relulab.core.stats.Comparison.format`).
"""
from __future__ import annotations

import html
import math
import re
from typing import Optional

import numpy as np
import yaml

from relulab.core.stats import Comparison, Summary
from relulab.probes.statistics import slot_text  # how every table, figure and command names a slot

PCT = 100.0  # accuracies are shown in percent, as in the seeds' tables


def _finite(value) -> bool:
    return value is not None and math.isfinite(value)


def _missing(value) -> bool:
    """No number to show: None, or a float that is not finite (a NaN the store gave back for NULL)."""
    return value is None or (isinstance(value, float) and not math.isfinite(value))


def fixed(value, digits: int = 2, scale: float = 1.0) -> str:
    return "-" if _missing(value) else f"{value * scale:.{digits}f}"


def percent(value, digits: int = 2) -> str:
    return fixed(value, digits, PCT)


def significant(value, digits: int = 4) -> str:
    return "-" if _missing(value) else f"{value:.{digits}g}"


def seconds(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.3g}"


def points(value) -> str:
    """A difference of accuracies in percentage points, signed."""
    return f"{value * PCT:+.2f}" if _finite(value) else "-"


def p_value(p) -> str:
    return f"{p:.2g}" if _finite(p) else "-"


def interval(mean, low, high, scale: float = PCT, digits: int = 2) -> str:
    """A mean with its 95% interval as stored (low, high), written as Summary.format writes it."""
    if not _finite(mean):
        return "-"
    if not (_finite(low) and _finite(high)):
        return Summary(1, mean, math.nan, None, None).format(scale, digits)
    return Summary(2, mean, math.nan, low, high).format(scale, digits)


def difference(c: dict) -> str:
    """A stored comparison's difference (`diff`, `diff_low`, `diff_high`) in points, as Comparison.format writes
    it."""
    d, low, high = c.get("diff"), c.get("diff_low"), c.get("diff_high")
    if not _finite(d):
        return "-"
    ci = _finite(low) and _finite(high)
    return Comparison(d, low if ci else None, high if ci else None, None, 0, 0, None).format(PCT)


def rank_correlation(value, low, high) -> str:
    text = significant(value, 3)
    if text != "-" and _finite(low) and _finite(high):
        text += f" [{low:+.2f}, {high:+.2f}]"
    return text


def csv_number(value) -> str:
    """A CSV cell: full precision (repr), empty for None and NaN."""
    if value is None:
        return ""
    if isinstance(value, (float, np.floating)):
        return "" if math.isnan(value) else repr(float(value))
    return str(value)


def md_escape(text) -> str:
    """One line of Markdown table or paragraph text: whitespace collapsed, HTML and | escaped."""
    return html.escape(" ".join(str(text).split()), quote=False).replace("|", "\\|")


def safe_name(text: str) -> str:
    """`text` as a part of a file name: runs of other characters than letters, digits, _ . - become one -."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", str(text)).strip("-") or "x"


def slots_text(slots, names: dict[int, str]) -> str:
    """Several slots: '7, 10', or with names '7 (layer2.0.relu2), 10 (layer2.2.relu1)'; 'none' for no slot."""
    return ", ".join(slot_text(s, names) for s in slots) or "none"


# ---------------------------------------------------------------- a spec as compact YAML

SPEC_WIDTH = 100  # columns a spec dump's flow-style line may take before its mapping is written as a block


def _yaml(value, flow: Optional[bool], width: float = SPEC_WIDTH) -> str:
    return yaml.safe_dump(value, default_flow_style=flow, sort_keys=False, allow_unicode=True, width=width)


def _spec_lines(mapping: dict, indent: int) -> list[str]:
    lines, pad = [], " " * indent
    for key, value in mapping.items():
        if isinstance(value, (dict, list)):
            flow = _yaml({key: value}, True, math.inf).strip()[1:-1]  # "key: {...}", its outer braces taken off
            if "\n" not in flow and indent + len(flow) <= SPEC_WIDTH:
                lines.append(pad + flow)
                continue
            if isinstance(value, dict) and value:
                head = _yaml({key: None}, False).rstrip().removesuffix(" null")  # the key as YAML writes it, and its colon
                lines += [pad + head] + _spec_lines(value, indent + 2)
                continue
        # a scalar (long text folded), or a long list (flow, wrapped): PyYAML's layout, shifted to this depth
        lines += [pad + line for line in _yaml({key: value}, None if isinstance(value, list) else False).splitlines()]
    return lines


def spec_text(spec: dict) -> str:
    """A spec as compact YAML, as the presets are written: a line per field, each mapping or list in flow style
    (`model: {name: deep-mlp, widths: [8, 8]}`) where it fits in SPEC_WIDTH columns, else a block of such lines.
    It loads back to the same spec."""
    return "\n".join(_spec_lines(spec, 0)) + "\n"
