"""BLINK's parquet schema: write it, read it back, and reject rows that break it.

A row has `idx, question, sub_task, image_1..image_4, choices, answer, prompt, explanation`.
Images are Hugging Face `datasets` Image features: a struct of `bytes` and `path`, null where a
question has fewer than four images. Answers are "(A)", "(B)", ... indexing `choices`.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from amvl.errors import UserError

IMAGE_COLUMNS = [f"image_{i}" for i in range(1, 5)]
COLUMNS = ["idx", "question", "sub_task", *IMAGE_COLUMNS, "choices", "answer", "prompt", "explanation"]
LETTERS = "ABCDEFGH"
# Rows per parquet row group in files `write_rows` writes. Training reads rows in shuffled order, one
# row group at a time (amvl/data/stream.py), so nearly every example costs one group read: 32 rows
# of Monet-size images (1-4 JPEGs of 50-200 KB) is a few MB, read in milliseconds against tens of
# milliseconds to decode and process the example itself, while the footer (one entry per group and
# column, parsed by every DataLoader worker) stays small: 125K rows are 4K groups. It also bounds
# what prepare holds while writing.
ROW_GROUP = 32


def letter(index: int) -> str:
    """0 -> "(A)"."""
    return f"({LETTERS[index]})"


def blink_prompt(question: str, choices: list[str]) -> str:
    """The prompt BLINK stores in its `prompt` column."""
    options = "\n".join(f"{letter(i)} {choice}" for i, choice in enumerate(choices))
    return f"{question}\nSelect from the following choices.\n{options}"


def features():
    import datasets  # imported here: it is slow to import and only writing needs it

    image = datasets.Image()
    return datasets.Features(
        {
            "idx": datasets.Value("string"),
            "question": datasets.Value("string"),
            "sub_task": datasets.Value("string"),
            **{column: image for column in IMAGE_COLUMNS},
            "choices": datasets.Sequence(datasets.Value("string")),
            "answer": datasets.Value("string"),
            "prompt": datasets.Value("string"),
            "explanation": datasets.Value("string"),
        }
    )


def png_image(image: Image.Image) -> dict:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return {"bytes": buffer.getvalue(), "path": None}


def write_split(rows: list[dict], path: Path) -> None:
    """Write rows (images as PIL, {bytes, path} structs or None) to `path` atomically, in the
    Hugging Face layout, through `datasets` (the generated benchmark, small: `write_rows` streams)."""
    import datasets

    columns = {name: [] for name in COLUMNS}
    for row in rows:
        for name in COLUMNS:
            value = row.get(name)
            if name in IMAGE_COLUMNS and isinstance(value, Image.Image):
                value = png_image(value)
            columns[name].append(value)
    table = datasets.Dataset.from_dict(columns, features=features())
    tmp = path.with_name(path.name + ".tmp")
    table.to_parquet(str(tmp))
    os.replace(tmp, path)


def write_rows(rows: Iterable[dict], path: Path, group: int = ROW_GROUP) -> int:
    """Write rows as they come (images as {bytes, path} structs or None), `group` at a time, to
    `path` atomically in the Hugging Face layout; memory holds one row group. Returns the count."""
    schema = features().arrow_schema  # with the `huggingface` metadata: `datasets` reads the images back as Images
    tmp, count, buffer = path.with_name(path.name + ".tmp"), 0, []
    # Statistics of image bytes are useless to readers and would bloat the footer every worker parses.
    with pq.ParquetWriter(tmp, schema, write_statistics=["idx", "sub_task", "answer"]) as writer:
        for row in rows:
            buffer.append({name: row.get(name) for name in COLUMNS})
            if len(buffer) == group:
                writer.write_table(pa.Table.from_pylist(buffer, schema=schema))
                count, buffer = count + len(buffer), []
        if buffer:
            writer.write_table(pa.Table.from_pylist(buffer, schema=schema))
            count += len(buffer)
    os.replace(tmp, path)
    return count


def decode_row(row: dict, where: str, split: str = "val") -> tuple[list[Image.Image], list[str]]:
    """The row's images (image_1..image_4 in order, RGB) and every problem found, each a line.

    A row with choices answers with one of their letters (a test row may also say BLINK's
    "hidden"). Only training rows may instead have no choices and a free-text answer.
    """
    problems = []
    choices = row.get("choices") or []
    valid = [letter(i) for i in range(len(choices))]
    if not choices and split != "train":
        problems.append(f"{where}: empty choices")
    elif not choices and not (row.get("answer") or "").strip():
        problems.append(f"{where}: empty answer")
    elif choices and row.get("answer") not in valid and not (split == "test" and row.get("answer") == "hidden"):
        problems.append(f"{where}: answer {row.get('answer')!r} is not one of {', '.join(valid)}")
    images, cells = [], 0
    for column in IMAGE_COLUMNS:
        cell = row.get(column)
        if cell is None or (cell.get("bytes") is None and cell.get("path") is None):
            continue
        cells += 1
        try:
            data = cell["bytes"] if cell.get("bytes") is not None else Path(cell["path"]).read_bytes()
            image = Image.open(io.BytesIO(data))
            image.load()
            images.append(image.convert("RGB"))
        except Exception as e:  # PIL raises many types for corrupt data
            problems.append(f"{where}: {column} does not decode as an image ({type(e).__name__})")
    if cells == 0:
        problems.append(f"{where}: no images")
    return images, problems


def read_table(path: Path) -> pa.Table:
    """A parquet file, or an Arrow stream file as the `datasets` library writes them."""
    path = Path(path)
    try:
        if path.suffix == ".arrow":
            with pa.memory_map(str(path)) as source:
                return pa.ipc.open_stream(source).read_all()
        return pq.read_table(path)
    except (OSError, ValueError, pa.ArrowInvalid) as e:
        raise UserError(f"{path}: not a readable {path.suffix[1:]} file ({e})") from None


def checked_rows(path: Path, split: str) -> Iterator[tuple[dict, list[Image.Image], list[str]]]:
    """Each row of a BLINK-schema file with its decoded images and its problems (`decode_row`).

    A missing column is a problem of the whole file: it raises UserError naming the file.
    """
    for batch in read_batches(path):
        for row in batch.to_pylist():
            yield row, *decode_row(row, f"{path}: row idx={row['idx']}", split)


def check_columns(path: Path, names: list[str]) -> None:
    missing = [c for c in COLUMNS if c not in names and c != "explanation"]
    if missing:
        raise UserError(f"{path}: missing column {', '.join(missing)}")


def read_batches(path: Path, size: int = ROW_GROUP) -> Iterator[pa.RecordBatch]:
    """A parquet or Arrow stream file a few rows at a time, columns checked first (UserError naming
    the file), so a reader of a large split holds one batch, not the file."""
    path = Path(path)
    try:
        if path.suffix == ".arrow":
            with pa.memory_map(str(path)) as source:
                reader = pa.ipc.open_stream(source)
                check_columns(path, reader.schema.names)
                yield from reader
            return
        file = pq.ParquetFile(path)
        check_columns(path, file.schema_arrow.names)
        yield from file.iter_batches(batch_size=size)
    except (OSError, ValueError, pa.ArrowInvalid) as e:
        raise UserError(f"{path}: not a readable {path.suffix[1:]} file ({e})") from None


def read_split(path: Path, split: str = "val") -> list[dict]:
    """Rows of a BLINK-layout parquet file, images decoded to RGB PIL images under `images`.

    Raises UserError naming the file and row for the first problem (see `decode_row`). Holds the
    whole split: the stages stream instead (amvl/data/stream.py).
    """
    return [as_decoded(row, images, problems) for row, images, problems in checked_rows(path, split)]


def as_decoded(row: dict, images: list[Image.Image], problems: list[str]) -> dict:
    """The row as the model reads it: image columns replaced by `images`; UserError for its first problem."""
    if problems:
        raise UserError(problems[0])
    row = {k: v for k, v in row.items() if k not in IMAGE_COLUMNS}
    row["images"] = images
    row.setdefault("explanation", "")
    return row
