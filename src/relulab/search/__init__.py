"""Search over activation slots: which slots can be switched off without losing accuracy, and probing one
configuration's model.

    from relulab.search import SearchOptions, probe_configuration, run_search
    outcome = run_search(exp, SearchOptions("greedy", stat="ratio_num", order="highest", budget=2))
    pr = probe_configuration(exp, seed=0, probe_set="first", epochs="1,10")

- `options`: `SearchOptions` (the fields of `search`), checked against the model a search starts from.
- `subject`: the part and configuration a search or probe starts from, the plan it saves, probe rows.
- `measured`: a placement as the store has it (`Measured`: accuracy over seeds, probe statistics).
- `strategies`: `Search` (measures placements through the sweep driver and an executor, records steps), the
  strategies (greedy, oracle, exhaustive, budget) and `run_search`.
- `judgement`: the heuristic judgement (rank correlations of a statistic with the measured changes) and
  `load_search_views`, a stored search as reports show it.
- `probe_run`: `probe_configuration` (`relulab probe`): statistics from the store, kept weights, or training.
"""
from relulab.search.judgement import false_positive_note, load_search_views
from relulab.search.options import SearchOptions
from relulab.search.probe_run import ProbeRun, probe_configuration
from relulab.search.strategies import STRATEGIES, SearchOutcome, run_search

__all__ = ["STRATEGIES", "ProbeRun", "SearchOptions", "SearchOutcome", "false_positive_note", "load_search_views",
           "probe_configuration", "run_search"]
