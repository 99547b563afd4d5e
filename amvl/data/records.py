"""The training-record format: any training set, one JSON object (or parquet row) per sample.

    {"id": "gqa-17",                         # unique
     "images": ["images/17.jpg"],            # 1-4 images: paths (relative to the file's folder)
                                             #   or, in parquet, {"bytes": ..., "path": ...} structs
     "question": "What is left of the cup?",
     "choices": ["a fork", "a knife"],       # optional; with choices the answer is a letter or a choice
     "answer": "(B)",                        #   without choices, free text
     "rationale": "The knife lies ...",      # optional
     "source": "gqa"}                        # optional; becomes the row's sub_task

`read_records` also reads a local Monet-SFT-125K copy (amvl/data/monet.py). It checks every record and converts it to a training row in BLINK's schema, which
`prepare` writes as data/<dataset>/train.parquet.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq

from amvl.data import monet
from amvl.data.blink import IMAGE_COLUMNS, ROW_GROUP, blink_prompt, decode_row, letter
from amvl.errors import UserError
from amvl.progress import Progress


def load(path: Path) -> list[dict]:
    return list(iter_load(path))


def iter_load(path: Path) -> Iterator[dict]:
    """The records of a JSONL or parquet file, read as they are used (a parquet file a row group
    at a time), with a progress line per file."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: training-record file not found")
    if path.is_dir():
        raise UserError(f"{path}: a folder, but no Monet-SFT-125K copy; {monet.HOW_TO_GET}, or name a record file")
    if path.suffix == ".parquet":
        file = pq.ParquetFile(path)
        with Progress(f"reading {path.name}", file.metadata.num_rows, "records") as progress:
            for batch in file.iter_batches(batch_size=ROW_GROUP):
                yield from batch.to_pylist()
                progress.advance(batch.num_rows)
        return
    with open(path) as f:
        total = sum(1 for line in f if line.strip())
    with open(path) as f, Progress(f"reading {path.name}", total, "records") as progress:
        for number, line in enumerate(f, 1):
            if line.strip():
                try:
                    yield json.loads(line)
                except json.JSONDecodeError as e:
                    raise UserError(f"{path}: line {number} is not JSON ({e.msg})") from None
                progress.advance()


def image_cell(image, folder: Path, where: str) -> dict:
    """A `datasets` Image struct with the bytes read in, so prepared data stands alone."""
    if isinstance(image, str):
        image = {"path": image, "bytes": None}
    if not isinstance(image, dict) or (image.get("bytes") is None and not image.get("path")):
        raise UserError(f"{where}: images must be paths or {{bytes, path}} structs")
    if image.get("bytes") is not None:
        return {"bytes": image["bytes"], "path": image.get("path")}
    file = folder / image["path"]
    if not file.exists():
        raise UserError(f"{where}: image {file} not found")
    return {"bytes": file.read_bytes(), "path": image["path"]}


def to_row(record: dict, folder: Path, where: str) -> dict:
    for key in ("id", "images", "question", "answer"):
        if record.get(key) is None:
            raise UserError(f"{where}: missing {key!r}")
        if record[key] in ("", []):  # present, so "missing" would send people looking for a typo
            needs = f" (each record needs 1 to {len(IMAGE_COLUMNS)} images)" if key == "images" else ""
            raise UserError(f"{where}: {key!r} is empty{needs}")
    images = record["images"]
    if len(images) > len(IMAGE_COLUMNS):
        raise UserError(f"{where}: {len(images)} images; BLINK rows hold 1 to {len(IMAGE_COLUMNS)}")
    choices = [str(c) for c in record.get("choices") or []]
    answer = str(record["answer"])
    if choices:
        if answer in choices:  # the option's text stands for its letter
            answer = letter(choices.index(answer))
        if answer not in [letter(i) for i in range(len(choices))]:
            raise UserError(
                f"{where}: answer {answer!r} is neither a letter of its {len(choices)} choices nor one of them"
            )
    cells = [image_cell(image, folder, where) for image in images]
    return {
        "idx": str(record["id"]),
        "question": record["question"],
        "sub_task": record.get("source") or "train",
        **{column: cells[i] if i < len(cells) else None for i, column in enumerate(IMAGE_COLUMNS)},
        "choices": choices,
        "answer": answer,
        "prompt": blink_prompt(record["question"], choices) if choices else record["question"],
        "explanation": record.get("rationale") or "",
    }


def numbered(path: Path) -> Iterator[tuple[dict, str]]:
    for number, record in enumerate(iter_load(path), 1):
        named = isinstance(record, dict) and record.get("id")
        yield record, f"{path}: record {number}" + (f" (id={record['id']})" if named else "")


def read_records(path: Path, subsets: list[str] | None = None) -> list[dict]:
    """Training rows in BLINK's schema (images as {bytes, path}); UserError names file and record.

    `path` is a record file, or the folder of a local Monet-SFT-125K copy (amvl/data/monet.py),
    read from its `subsets` (empty = all present).
    """
    return list(iter_records(path, subsets))


def iter_records(path: Path, subsets: list[str] | None = None) -> Iterator[dict]:
    """`read_records` one row at a time, as prepare streams them into train.parquet: one row's
    images in memory at a time, and only the records read so far."""
    path = Path(path)
    if monet.is_monet_root(path):
        located, folder = monet.iter_monet(path, subsets), path
    else:
        located, folder = numbered(path), path.parent
    seen = set()
    for record, where in located:
        if not isinstance(record, dict):
            raise UserError(f"{where}: expected a JSON object")
        row = to_row(record, folder, where)
        problems = decode_row(row, where, "train")[1]  # its images decode: checked once, here, not in training
        if problems:
            raise UserError(problems[0])
        if row["idx"] in seen:
            raise UserError(f"{where}: duplicate id")
        seen.add(row["idx"])
        yield row
    if not seen:
        raise UserError(f"{path}: no records")
