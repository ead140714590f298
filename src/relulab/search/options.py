"""How a search is asked for (`SearchOptions`) and checked against the model it starts from.

Errors name the options as fields of `search` (`search.strategy: unknown value 'beam'`); the command line
shows them as its options (--strategy).
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Optional, Union

from relulab.core.errors import UserError, unknown_choice
from relulab.core.ranges import parse_ranges
from relulab.probes import statistics as probes_mod
from relulab.search.gates import GateTraining, check_granularity

METRICS = ("best_val_acc", "final_val_acc", "test_acc")
ORDERS = ("highest", "lowest")
CHOICES = ("stat", "exhaustive")
# strategy -> the options that shape its path (what a search's id hashes, with strategy, metric and probe set).
# relulab.search.strategies.STRATEGIES holds the strategies themselves, under the same names.
PATH_OPTIONS = {"greedy": ("stat", "order", "budget", "patience", "plain_rule", "alpha"),
                "oracle": ("budget", "plain_rule", "alpha"),
                "exhaustive": ("k", "alpha"),
                "budget": ("keep", "choose", "stat", "order", "alpha"),
                "learned": ("granularity", "budgets", "gate_epochs", "lasso", "lasso_growth", "gate_lr", "alpha"),
                "random": ("granularity", "budgets", "alpha")}
DEFAULT_BUDGETS = [0.5, 0.25, 0.1]  # learned, random: fractions of the base model's ReLU count


@dataclass
class SearchOptions:
    """How to search (the fields of `search`). A plain record; `validate` checks it against the model's slots."""

    strategy: str = "greedy"
    stat: str = "ratio_num"  # greedy's ranking; budget's when choose = stat
    order: str = "highest"  # switch off the slot with the highest (or lowest) value first
    budget: Optional[int] = None  # greedy, oracle: slots switched off at most (default 20% of the active ones)
    patience: int = 1  # greedy: stop after this many rejected proposals in a row
    k: int = 2  # exhaustive: placements with up to k slots off
    keep: Union[None, str, list[int]] = None  # budget: numbers of slots kept on ('0,2,4', '0-10'; default: all)
    choose: str = "stat"  # budget: stat | exhaustive
    plain_rule: bool = False  # accept when the mean improves (the seed's rule) instead of Welch's test
    alpha: float = 0.05
    metric: str = "best_val_acc"
    probe_set: str = "first"
    max_placements: int = 100  # exhaustive / budget: refuse to plan more placements than this
    accept_all: bool = False  # greedy: accept every proposal, whatever it measured (EASIER's rule: remove, retrain)
    # learned, random: what is switched off (layer: whole slots; channel; unit: channel x position, SNL's setting)
    granularity: str = "channel"
    # learned, random: ReLU counts to reach, each a fraction of the base's (0.25) or a count (40000); '0.5,0.25'
    budgets: Union[None, str, list[float]] = None
    # learned: how the gates train (relulab.search.gates.GateTraining; None: its defaults)
    gate_epochs: Optional[int] = None
    lasso: Optional[float] = None
    lasso_growth: Optional[float] = None
    gate_lr: Optional[float] = None
    # learned: also fine-tune each seed's gate-trained model with its binarised placement for this many epochs
    # (SNL's protocol), beside the placement trained by the recipe; None or 0: not
    finetune_epochs: Optional[int] = None

    def validate(self, active: list[int]) -> "SearchOptions":
        """A copy with defaults resolved, checked against the `active` slots of the model it starts from;
        UserErrors name the options as fields (`search.budget`)."""
        o = copy.deepcopy(self)
        o._check_names()
        n = len(active)
        if o.budget is None:
            o.budget = max(1, round(0.2 * n))
        if not 1 <= o.budget <= n:
            raise UserError(f"search.budget: expected 1 to {n} (the slots that are on), got {o.budget}")
        if o.patience < 1:
            raise UserError(f"search.patience: expected a positive integer, got {o.patience}")
        if o.max_placements < 1:
            raise UserError(f"search.max_placements: expected a positive integer, got {o.max_placements}")
        if not 1 <= o.k <= n:
            raise UserError(f"search.k: expected 1 to {n} (the slots that are on), got {o.k}")
        o.keep = _kept_counts(o.keep, n)
        o._check_placements(n)
        check_granularity(o.granularity, "search.granularity")
        o.budgets = _budgets(o.budgets)
        if o.strategy == "learned":
            o._resolve_gate_training()
        if o.finetune_epochs is not None and (isinstance(o.finetune_epochs, bool) or not isinstance(
                o.finetune_epochs, int) or not 0 <= o.finetune_epochs <= 10_000):
            raise UserError(f"search.finetune_epochs: expected a whole number of epochs from 0 to 10000, got "
                            f"{o.finetune_epochs!r}")
        return o

    def gate_training(self) -> GateTraining:
        """The learned strategy's gate training (relulab.search.gates.GateTraining) from these options."""
        return GateTraining(**{f: getattr(self, o) for o, f in GATE_FIELDS.items()
                               if getattr(self, o) is not None}).validate("search", {f: o for o, f in
                                                                                      GATE_FIELDS.items()})

    def _resolve_gate_training(self) -> None:
        training = self.gate_training()  # checks the values, naming search.gate_epochs and so on
        for option, name in GATE_FIELDS.items():
            setattr(self, option, getattr(training, name))

    def _check_names(self) -> None:
        """The options that name something (a strategy, a statistic...), the probe set and alpha."""
        if self.strategy not in PATH_OPTIONS:
            raise unknown_choice("search.strategy", self.strategy, PATH_OPTIONS)
        probes_mod.check_stats([self.stat], "search.stat")
        for name, choices in (("order", ORDERS), ("metric", METRICS), ("choose", CHOICES)):
            if getattr(self, name) not in choices:
                raise unknown_choice(f"search.{name}", getattr(self, name), choices)
        self.probe_set = probes_mod.parse_probe_set(self.probe_set, "search.probe_set").name
        if not (isinstance(self.alpha, (int, float)) and 0 < self.alpha < 1):
            raise UserError(f"search.alpha: expected a number between 0 and 1, got {self.alpha!r}")

    def _check_placements(self, n: int) -> None:
        """Refuse a plan of more than max_placements placements (exhaustive and budget plan them up front)."""
        count = {"exhaustive": sum(math.comb(n, j) for j in range(self.k + 1)),
                 "budget": (sum(math.comb(n, k) for k in self.keep) if self.choose == "exhaustive"
                            else len(self.keep) + 1)}.get(self.strategy, 0)
        if count > self.max_placements:
            what = "search.k" if self.strategy == "exhaustive" else "search.keep"
            raise UserError(f"{what}: that is {count} placements of {n} slots (each over every seed), more than "
                            f"search.max_placements {self.max_placements}; ask for fewer or raise "
                            "search.max_placements")

    def identity(self) -> dict:
        """The options that shape the search's path (what its id hashes)."""
        identity = {"strategy": self.strategy, "metric": self.metric, "probe_set": self.probe_set,
                    **{k: getattr(self, k) for k in PATH_OPTIONS[self.strategy]}}
        if self.accept_all and self.strategy == "greedy":  # only when set: the ids of earlier searches stay
            identity["accept_all"] = True
        if self.finetune_epochs and self.strategy == "learned":  # the same
            identity["finetune_epochs"] = self.finetune_epochs
        return identity


# The learned strategy's options -> GateTraining's fields.
GATE_FIELDS = {"gate_epochs": "epochs", "lasso": "lasso", "lasso_growth": "growth", "gate_lr": "gate_lr"}


def _budgets(budgets: Union[None, str, list]) -> list[float]:
    """learned / random budgets, largest first: fractions of the base's ReLU count in (0, 1), or counts >= 1;
    a list, or text such as '0.5,0.25,0.1'."""
    if budgets is None:
        return list(DEFAULT_BUDGETS)
    if isinstance(budgets, str):
        try:
            budgets = [float(b) for b in budgets.split(",") if b.strip()]
        except ValueError:
            raise UserError(f"search.budgets: expected numbers such as 0.5,0.25,0.1 (fractions of the base's ReLU "
                            f"count) or 40000 (a count), got {budgets!r}") from None
    if not isinstance(budgets, list) or not budgets or not all(
            isinstance(b, (int, float)) and not isinstance(b, bool) and math.isfinite(b) and b > 0
            and (b < 1 or float(b).is_integer()) for b in budgets):
        raise UserError(f"search.budgets: expected fractions in (0, 1) or whole counts >= 1, got {budgets!r}")
    return sorted(set(budgets), reverse=True)


def _kept_counts(keep: Union[None, str, list[int]], n: int) -> list[int]:
    """budget's numbers of slots kept on, from most to fewest: every number by default; a list, or text such as
    '0,2,4' or '0-10' (relulab.core.ranges)."""
    if isinstance(keep, str):
        keep = parse_ranges(keep, "search.keep") if keep.strip() else None
    if keep is None:
        return list(range(n, -1, -1))
    bad = [k for k in keep if not 0 <= k <= n]
    if bad or not keep:
        raise UserError(f"search.keep: expected numbers of slots kept on from 0 to {n}, got {keep}")
    return sorted(set(keep), reverse=True)
