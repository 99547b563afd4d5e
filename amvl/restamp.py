"""`amvl restamp`: after `dvc pull`, put the pipeline's outputs back in time order.

DVC restores files with the time of the pull, in no particular order, so an input can look newer
than what was made from it and Snakemake would rerun that stage. `snakemake --touch` fixes the
order but rewrites Snakemake's records under .snakemake/metadata, which DVC versions, so the
clone would no longer match its dvc.lock. This only sets modification times: each stage's
outputs get a later time than the stage before, all later than the files git checked out.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

# The output folders, in the order the pipeline writes them (dvc.yaml versions exactly these).
PIPELINE_ORDER = ("data", "runs", "models", "results", "reports")


def restamp(root: Path = Path(".")) -> int:
    """Set every file and folder under each output folder to one time, 1 ms after the previous
    folder's; returns how many paths were stamped."""
    start, stamped = time.time(), 0
    for index, top in enumerate(PIPELINE_ORDER):
        folder = Path(root) / top
        if not folder.exists():
            continue
        stamp = start + index * 0.001
        for path in [*folder.rglob("*"), folder]:
            os.utime(path, (stamp, stamp), follow_symlinks=False)
            stamped += 1
    return stamped
