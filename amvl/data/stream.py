"""Streamed splits: rows read from a prepared parquet file as they are needed, then decoded, fitted
to the token budget (amvl/data/budget.py) and encoded one example at a time, in DataLoader
workers when `workers` > 0. No stage holds a split's images or pixel values (about 19 KB per
visual token).

Training batches stay a pure function of (seed, step): the sampler yields `batch_indices(step,
micro, ...)` for every step from the one a run starts (or resumes) at, each example is encoded as
the in-memory path encoded it, and the DataLoader keeps the sampler's order whatever the number
of workers.
"""

from __future__ import annotations

import dataclasses
import functools
import io
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image

from amvl.data import budget
from amvl.data.blink import IMAGE_COLUMNS, as_decoded, check_columns, decode_row
from amvl.data.collate import Example, collate
from amvl.errors import UserError
from amvl.progress import track

GROUP_WINDOW = 64  # train.group_by_length sorts rows by length within windows of this many micro-batches
CACHE_BYTES = 1 << 30  # evaluation keeps its examples between passes when their pixel values fit in this
STAND_INS = 100  # rows tried in place of a skipped one before giving up


@functools.lru_cache(maxsize=4)
def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(n)


def stream_rows(seed: int, start: int, count: int, n: int) -> list[int]:
    """Rows at positions start .. start + count - 1 of an endless stream of seeded epochs."""
    positions = [divmod(position, n) for position in range(start, start + count)]
    return [int(epoch_order(seed, epoch, n)[offset]) for epoch, offset in positions]


def batch_indices(step: int, micro: int, cfg, n: int, rank: int = 0, world: int = 1, lengths=None) -> list[int]:
    """Rows of micro-batch `micro` of optimizer step `step` on `rank`: consecutive slices of the
    stream, so one process sees what `world` processes see together.

    With `lengths` (tokens per row: train.group_by_length) each window of GROUP_WINDOW
    micro-batches of the stream is sorted by length, cut into micro-batches, and those are
    shuffled: similar lengths share a batch, and the long batches do not all come first."""
    first = ((step * cfg.grad_accum + micro) * world + rank) * cfg.batch_size
    if lengths is None:
        return stream_rows(cfg.seed, first, cfg.batch_size, n)
    window, offset = divmod(first, cfg.batch_size * GROUP_WINDOW)
    return grouped_window(cfg.seed, window, cfg.batch_size, n, lengths)[offset : offset + cfg.batch_size]


def grouped_window(seed: int, window: int, size: int, n: int, lengths: np.ndarray) -> list[int]:
    rows = np.array(stream_rows(seed, window * size * GROUP_WINDOW, size * GROUP_WINDOW, n))
    rows = rows[np.argsort(-lengths[rows], kind="stable")]
    batches = np.random.default_rng([seed, window, 1]).permutation(GROUP_WINDOW)
    return rows.reshape(GROUP_WINDOW, size)[batches].reshape(-1).tolist()


class Rows:
    """Random access to the rows of a BLINK-schema parquet file, images decoded (one row of
    `read_split`). It holds the row group it read last: each DataLoader worker its own.
    `instruction` is appended to every prompt (evaluate.instruction), so everything that encodes
    or counts a row's tokens sees the prompt the model is given."""

    def __init__(self, path: Path, split: str = "val", instruction: str = ""):
        self.path, self.split, self.instruction = Path(path), split, instruction
        try:
            file = pq.ParquetFile(self.path)
        except (OSError, pa.ArrowInvalid) as e:
            raise UserError(f"{self.path}: not a readable parquet file ({e})") from None
        check_columns(self.path, file.schema_arrow.names)
        self.starts = np.cumsum([0, *(file.metadata.row_group(g).num_rows for g in range(file.num_row_groups))])
        self.file, self.group, self.rows = None, -1, []

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __getstate__(self) -> dict:  # a worker opens its own file and keeps its own row group
        return {**self.__dict__, "file": None, "group": -1, "rows": []}

    def raw(self, i: int) -> dict:
        """Row `i` as stored: images as {bytes, path} structs."""
        group = int(np.searchsorted(self.starts, i, side="right")) - 1
        if group != self.group:
            self.file = self.file or pq.ParquetFile(self.path)
            self.group, self.rows = group, self.file.read_row_group(group).to_pylist()
        row = self.rows[i - self.starts[group]]
        return {**row, "prompt": row["prompt"] + self.instruction} if self.instruction else row

    def where(self, row: dict) -> str:
        return f"{self.path}: row idx={row['idx']}"

    def __getitem__(self, i: int) -> dict:
        row = self.raw(i)
        return as_decoded(row, *decode_row(row, self.where(row), self.split))

    def header(self, i: int) -> dict:
        """Row `i` with its images opened, not decoded: their sizes, for counting tokens."""
        row, images = self.raw(i), []
        for column in IMAGE_COLUMNS:
            cell = row.get(column)
            if cell and (cell.get("bytes") is not None or cell.get("path")):
                try:
                    data = cell["bytes"] if cell.get("bytes") is not None else Path(cell["path"]).read_bytes()
                    images.append(Image.open(io.BytesIO(data)))
                except Exception as e:  # PIL raises many types for corrupt data
                    problem = f"{column} does not decode as an image ({type(e).__name__})"
                    raise UserError(f"{self.where(row)}: {problem}") from None
        return {**row, "images": images}

    def text(self, columns: list[str]) -> list[dict]:
        """Some text columns of every row, without reading an image."""
        return pq.read_table(self.path, columns=columns).to_pylist()


class Encoded(torch.utils.data.Dataset):
    """Row i -> (example, status, error), status "", "resized" or "skipped" (amvl/data/budget.py).

    A skipped row's place is taken by the next row of the file that fits (a pure function of i),
    so every micro-batch keeps its size and every rank its step. A bad row gives its one-line
    error instead of raising: raised in a DataLoader worker it would reach the user as a traceback."""

    def __init__(self, rows: Rows, tokenizer, image_processor, answer_format: str, max_tokens: int, key: str,
                 rationale: bool = False, plans: dict | None = None):  # fmt: skip
        self.rows, self.tokenizer, self.image_processor = rows, tokenizer, image_processor
        self.answer_format, self.max_tokens, self.key, self.rationale = answer_format, max_tokens, key, rationale
        self.plans = plans or {}  # row -> budget.plan, where a header pass decided it (`within_budget`)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> tuple[Example | None, str, str]:
        try:
            for tried in range(min(len(self.rows), STAND_INS)):
                row = self.rows[(i + tried) % len(self.rows)]
                example, status = budget.fit(
                    row, self.tokenizer, self.image_processor, self.answer_format, self.max_tokens, self.rationale,
                    self.plans.get((i + tried) % len(self.rows)),
                )
                if example is not None:
                    return example, "skipped" if tried else status, ""
            raise UserError(
                f"{self.rows.where(self.rows.raw(i))} and the {STAND_INS - 1} rows after it are over "
                f"{self.key} ({self.max_tokens}) even with their images at min_pixels; raise it"
            )
        except UserError as e:
            return None, "", str(e)


def train_batch(items: list[tuple]) -> tuple[dict | None, Counter, str]:
    """collate_fn of training (run in the worker): the batch, how many of its examples were resized
    or skipped, and the first error."""
    errors = [error for _, _, error in items if error]
    if errors:
        return None, Counter(), errors[0]
    return collate([example for example, _, _ in items]), Counter(status for _, status, _ in items if status), ""


def as_list(items: list) -> list:
    return items


class StepBatches(torch.utils.data.Sampler):
    """The micro-batches of steps `start` .. `steps` - 1 in training order, `grad_accum` a step,
    each `indices(step, micro)`."""

    def __init__(self, start: int, steps: int, grad_accum: int, indices):
        self.start, self.steps, self.grad_accum, self.indices = start, steps, grad_accum, indices

    def __len__(self) -> int:
        return (self.steps - self.start) * self.grad_accum

    def __iter__(self):
        for step in range(self.start, self.steps):
            for micro in range(self.grad_accum):
                yield self.indices(step, micro)


def loader(dataset, batches, collate_fn, workers: int) -> torch.utils.data.DataLoader:
    """Batches in the order given, encoded in `workers` processes (0: this one). It has its own
    generator: starting a DataLoader draws a seed, which must not move the global RNG."""
    return torch.utils.data.DataLoader(
        dataset, batch_sampler=batches, collate_fn=collate_fn, num_workers=workers, generator=torch.Generator()
    )


def padding(batch: dict) -> float:
    """Fraction of the batch's [x | y] layout that is padding (prompts left-, answers right-padded)."""
    prompts, answers = [len(p) for p in batch["prompt_ids"]], [len(a) for a in batch["answer_ids"]]
    return 1 - (sum(prompts) + sum(answers)) / (len(prompts) * (max(prompts) + max(answers)))


def lengths(rows: Rows, tokenizer, image_processor, answer_format: str, max_tokens: int) -> np.ndarray:
    """Tokens of every row (the limit where over it), from one pass over the file that reads the
    text and each image's header, not its pixels."""
    high, out = budget.caps(image_processor)[1], []
    for i in track(range(len(rows)), "measuring lengths", "rows"):
        row = rows.header(i)
        text = budget.text_tokens(row, tokenizer, answer_format)
        out.append(text + budget.image_tokens(row["images"], image_processor, high))
    return np.minimum(out, max_tokens) if max_tokens else np.array(out)


def within_budget(rows: Rows, indices: list[int], tokenizer, image_processor, answer_format: str, max_tokens: int):
    """Each of `indices`' budget.plan, from a header pass (only when there is a limit), decided once:
    encoding then follows it, and every pass over the kept rows holds the same examples."""
    if not max_tokens:
        return {i: ("", None) for i in indices}
    return {i: budget.plan(rows.header(i), tokenizer, image_processor, answer_format, max_tokens)
            for i in track(indices, "checking the token budget", "rows")}  # fmt: skip


class Examples:
    """Some rows of a split as examples, in order, for repeated passes (evaluation, diagnostics).

    `chunks(size)` gives them whole, streamed through the DataLoader; when the first pass finds
    their pixel values within CACHE_BYTES it keeps them, and later passes decode nothing. Indexing
    and iteration give them without pixel values, for what reads only their tokens."""

    def __init__(self, dataset: Encoded, indices: list[int], workers: int, light=None, cache=None):
        self.dataset, self.indices, self.workers = dataset, list(indices), workers
        self.light, self.cache = light, cache  # row index -> Example (light: pixel_values None)

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self):
        if self.light is None:
            for _ in self.chunks(32):  # one pass to learn the tokens
                pass
        return (self.light[i] for i in self.indices)

    def __getitem__(self, position):
        return list(self)[position]

    def subset(self, indices: list[int]) -> Examples:
        return Examples(self.dataset, indices, self.workers, self.light, self.cache)

    def chunks(self, size: int):
        batches = [self.indices[start : start + size] for start in range(0, len(self.indices), size)]
        if self.cache is not None:
            yield from ([self.cache[i] for i in batch] for batch in batches)
            return
        light, cache, held = {}, {}, 0
        for batch, items in zip(batches, loader(self.dataset, batches, as_list, self.workers)):
            for example, _, error in items:
                if error:
                    raise UserError(error)
            chunk = [example for example, _, _ in items]
            for i, example in zip(batch, chunk):
                light[i] = dataclasses.replace(example, pixel_values=None)
                held += example.pixel_values.numel() * example.pixel_values.element_size()
                if held > CACHE_BYTES:
                    cache = None
                elif cache is not None:
                    cache[i] = example
            yield chunk
        self.light, self.cache = light, cache
