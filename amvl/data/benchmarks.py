"""The benchmarks besides BLINK that the AMVL paper reports, read from the local copies people have
(nothing is downloaded) into rows of BLINK's schema (amvl/data/blink.py), so that prepare and
evaluate handle them as they handle BLINK (which has its own reader, amvl/data/blink_local.py).

Each reader module (vstar, hrbench, visualpuzzles) documents its layout, prompt and scoring, with
the sources they were read from. A reader yields (row, where, problems) per question: `where` is
"<file>: row <n> (id=<idx>)", n counting the file's questions from 1; each problem is one line
starting with `where`. Problems of a whole file (missing, unreadable, a column missing) raise
UserError instead.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from amvl.data import hrbench, visualpuzzles, vstar
from amvl.data.blink import decode_row, letter
from amvl.errors import UserError

Rows = Iterator[tuple[dict, str, list[str]]]


@dataclass(frozen=True)
class Benchmark:
    name: str  # registry key
    title: str  # as papers name it
    looks_like: Callable[[Path], bool]  # cheap: does a folder (or file) have this layout
    iter_rows: Callable[[Path], Rows]
    how_to_get: str  # what to put where, for messages
    score: str  # the headline score as its authors report it: "micro" (over all questions) or "macro"
    questions: int  # how many the full benchmark has
    categories: tuple[str, ...]  # the `sub_task` values
    paper: dict = field(default_factory=dict)  # the AMVL paper's numbers: model -> accuracy (%)


BENCHMARKS = {
    "vstar": Benchmark(
        "vstar", "V* Bench", vstar.looks_like, vstar.iter_rows, vstar.HOW_TO_GET, "micro", 191,
        vstar.CATEGORIES, {"Qwen2.5-VL-7B": 76.44, "AMVL": 84.29},
    ),
    "hrbench_4k": Benchmark(
        "hrbench_4k", "HR-Bench 4K", partial(hrbench.looks_like, variant="4k"),
        partial(hrbench.iter_rows, variant="4k"), hrbench.HOW_TO_GET, "micro", 800, ("FSP", "FCP"),
        {"Qwen2.5-VL-7B": 68.00, "AMVL": 72.12},
    ),
    "hrbench_8k": Benchmark(
        "hrbench_8k", "HR-Bench 8K", partial(hrbench.looks_like, variant="8k"),
        partial(hrbench.iter_rows, variant="8k"), hrbench.HOW_TO_GET, "micro", 800, ("FSP", "FCP"),
        {"Qwen2.5-VL-7B": 63.75, "AMVL": 68.50},
    ),
    "visualpuzzles": Benchmark(
        "visualpuzzles", "VisualPuzzles", visualpuzzles.looks_like, visualpuzzles.iter_rows,
        visualpuzzles.HOW_TO_GET, "micro", 1168, visualpuzzles.CATEGORIES, {"AMVL": 33.90},
    ),
}  # fmt: skip


def benchmark(name: str) -> Benchmark:
    if name not in BENCHMARKS:
        raise UserError(f"unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)}")
    return BENCHMARKS[name]


def detect(root: Path) -> str | None:
    """The first benchmark (in BENCHMARKS' order) whose layout `root` has; a root holding both
    HR-Bench files is "hrbench_4k": name "hrbench_8k" to read the other."""
    return next((name for name, bench in BENCHMARKS.items() if bench.looks_like(Path(root))), None)


def checked_rows(name: str, root: Path) -> Iterator[tuple[dict, list[str]]]:
    """(row, problems) per question: the reader's problems, then those of its images (decoded
    once by `decode_row`, then dropped; the row keeps the encoded bytes)."""
    for row, where, problems in benchmark(name).iter_rows(Path(root)):
        # The reader checked the answer against the options, naming the source's own value;
        # decode_row sees a valid one so that it does not say the same again in other words.
        _, image_problems = decode_row({**row, "answer": letter(0), "choices": row["choices"] or [""]}, where, "val")
        yield row, problems + image_problems
