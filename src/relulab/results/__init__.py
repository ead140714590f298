"""A store's results as pandas DataFrames, and written as CSV, Parquet or JSON (`relulab export`).

    import relulab.results as results
    runs = results.runs("runs/quickstart.sqlite")              # one row per run: hyperparameters as columns
    runs.groupby(["activation", "lr"])["best_val_acc"].mean()
    results.summary("runs/quickstart.sqlite")                  # mean, std, 95% interval per configuration

Every function takes a store's path (opened read-only) or an open `relulab.store.Store` (left open), and
`experiment=` to read one experiment of a store that holds several (default: all of them).

- `tables`: `runs`, `epochs` (per-epoch history), `slot_stats` (stored per-slot probe statistics), `searches`
  (each step's measured placements) and `summary` (the report's statistics, `correction=` holm or bh).
- `source`: opening the store, the plan's configurations, a run's spec flattened into columns.
- `export`: the tables written to a folder (`export_tables`), in a format of `FORMATS`.
"""
from relulab.results.tables import epochs, runs, searches, slot_stats, summary

# The tables by name, in the order `relulab export` writes them.
TABLES = {"runs": runs, "epochs": epochs, "slot_stats": slot_stats, "searches": searches, "summary": summary}

__all__ = ["TABLES", "epochs", "runs", "searches", "slot_stats", "summary"]
