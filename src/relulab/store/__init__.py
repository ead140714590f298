"""The results store: one SQLite file per experiment (`Store`), and the run weights kept beside it.

- `database`: `Store`, one connection to a store file, with a method for every table (runs, epochs, slot
  statistics, the plan, claims, artifacts, weights rows, probe rows, searches, timings).
- `rows`: the typed rows it gives back for searches (`StoredSearch` with its steps, candidates and
  correlations) and timings (`StoredTiming`).
- `schema`: the tables' SQL and columns, and the keys rows are stored under (`retrained_key`, `timing_key`).
- `connection`: opening a store file and checking it, and SQLite's errors as one `StoreError` line.
- `weights`: the kept weights of finished runs (`Keeper` writes them, `KeptWeights` reads them, `export_run`).

    from relulab.store import Store
    with Store("runs/quickstart.sqlite", create=False) as store:
        names = store.experiment_names()
"""
from relulab.store.connection import StoreError
from relulab.store.database import Finished, Store
from relulab.store.rows import SearchCandidate, SearchCorrelation, SearchStep, StoredSearch, StoredTiming
from relulab.store.schema import RETRAINED_FOR_PROBING, retrained_key, timing_key

__all__ = ["Finished", "RETRAINED_FOR_PROBING", "SearchCandidate", "SearchCorrelation", "SearchStep", "Store",
           "StoreError", "StoredSearch", "StoredTiming", "retrained_key", "timing_key"]
