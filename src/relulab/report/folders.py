"""The folders a report is written to, checked before anything trains (`relulab run` checks them first); a module
of its own that imports no more than `relulab.core`, so that the check does not load matplotlib and jinja2 with the
rest of the report (they load later, on a thread while the GPU trains: relulab.core.background)."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

from relulab.core.errors import UserError
from relulab.core.util import check_output_dir


def default_out_dir(store_path: Path, experiment: str) -> Path:
    return store_path.parent / f"{experiment}-report"


# What a report folder holds. The folder is replaced whole on every report (util.staged_folder), so a folder that
# holds anything else is refused rather than replaced: `--out .` must never take the user's files with it.
REPORT_ENTRIES = re.compile(r"^(?:report\.html|report\.md|summary\.csv|runs\.csv|epochs\.csv|pareto\.csv|figures|"
                            r"search-[0-9a-f]+(?:-correlations)?\.csv)$")


def check_report_dir(out: str | Path, field: str = "out_dir") -> Path:
    """`out` can take a report: a new folder, or an earlier report's (which the new one replaces)."""
    out = check_output_dir(out, field)
    if out.is_dir():
        foreign = sorted(p.name for p in out.iterdir() if not REPORT_ENTRIES.match(p.name))
        if foreign:
            shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
            raise UserError(f"{field}: {out} holds files that are not a report's ({shown}); a report replaces its "
                            "folder whole, so give it a folder of its own")
    return out


def check_tensorboard_dir(logdir: str | Path, out: Optional[Path], field: str = "tensorboard") -> Path:
    """`logdir` can take TensorBoard's files, outside the report folder `out` (None: no report is written)."""
    logdir = check_output_dir(logdir, field)
    if out is not None and (logdir == out or out in logdir.parents):
        raise UserError(f"{field}: {logdir} is inside the report folder {out}, which is replaced whole on every "
                        "report; put the logs elsewhere")
    return logdir
