"""Progress of a long loop: rich's bar on a terminal, plain lines anywhere else.

Snakemake rules run stages as `amvl train ... 2>&1 | tee logs/train/<run>.log`. stdout is then a
pipe, where rich draws nothing until the end, so a log stayed empty for the whole stage. Off a
terminal we print a line at the first update, then every `every` seconds, and at the end, each
flushed so `tee` shows it at once:

    train 120/1000 steps (12%) | loss 2.314 ntp 2.101 | 1.52 steps/s | elapsed 0:01:19 | eta 0:09:39
"""

from __future__ import annotations

import sys
import time

from rich.console import Console
from rich.progress import BarColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.progress import Progress as Bar

EVERY = 30.0  # seconds between plain lines: a 10-minute stage writes about 20


def clock(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{seconds:02d}"


class Progress:
    """`with Progress("train", total) as progress:` ... `progress.update(done, "loss 2.31")`.

    The status (such as the last loss) stays in every line until replaced. `start` is where a
    resumed loop begins (the rate counts only what this process did); `enabled=False` prints
    nothing (ranks other than 0).
    """

    def __init__(self, name, total, unit="steps", start=0, enabled=True, every=EVERY, stream=None):
        self.name, self.total, self.unit, self.every = name, total, unit, every
        self.start = self.done = start
        self.status, self.enabled = "", enabled
        self.stream = stream or sys.stdout
        self.began = self.printed_at = time.perf_counter()
        self.printed = None  # `done` at the last plain line
        self.bar = None
        if enabled and getattr(self.stream, "isatty", lambda: False)():
            columns = [
                TextColumn(f"[bold]{name}"),
                BarColumn(),
                TextColumn("{task.completed}/{task.total}"),
                TextColumn("{task.fields[status]}"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
            ]
            self.bar = Bar(*columns, console=Console(file=self.stream))
            self.task = self.bar.add_task(name, total=total, completed=start, status="")

    def __enter__(self):
        if self.bar:
            self.bar.start()
        return self

    def __exit__(self, error, *_):
        if self.bar:
            self.bar.stop()
        elif self.enabled and error is None and self.printed != self.done:
            self.line()  # the final count and rate (after an error, its message says enough)

    def update(self, done: int, status: str | None = None) -> None:
        self.done = done
        if status is not None:
            self.status = status
        if self.bar:
            self.bar.update(self.task, completed=done, status=self.status)
        elif self.enabled and (
            self.printed is None or done == self.total or time.perf_counter() - self.printed_at >= self.every
        ):
            self.line()

    def advance(self, n: int = 1) -> None:
        self.update(self.done + n)

    def line(self) -> None:
        elapsed = time.perf_counter() - self.began
        rate = (self.done - self.start) / elapsed if elapsed > 0 else 0.0
        eta = clock(max(0, self.total - self.done) / rate) if rate > 0 else "?"
        parts = [
            f"{self.name} {self.done}/{self.total} {self.unit} ({100 * self.done / max(1, self.total):.0f}%)",
            *([self.status] if self.status else []),
            f"{rate:.3g} {self.unit}/s" if rate < 1000 else f"{rate:.0f} {self.unit}/s",  # no 1.5e+03
            f"elapsed {clock(elapsed)}",
            f"eta {eta}",
        ]
        print(" | ".join(parts), file=self.stream, flush=True)
        self.printed, self.printed_at = self.done, time.perf_counter()


def track(items, name: str, unit: str = "items", **kwargs):
    """Iterate over a sized collection with a Progress, one unit per item."""
    with Progress(name, len(items), unit, **kwargs) as progress:
        for item in items:
            yield item
            progress.advance()
