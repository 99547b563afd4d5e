"""Tiny copies of V* Bench, HR-Bench and VisualPuzzles in the layouts they are published in
(see amvl/data/vstar.py, hrbench.py, visualpuzzles.py), with small images.

`corrupt_row` (0-based) writes bytes that are no image for that question; `bad_answer_row` gives
it an answer outside its options.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

NOT_AN_IMAGE = b"this is not an image" * 8


def image_bytes(seed: int, size: int = 56, fmt: str = "JPEG", noise: bool = False) -> bytes:
    """A size x size image: one colour per seed, or random noise (which barely compresses)."""
    if noise:
        image = Image.frombytes("RGB", (size, size), random.Random(seed).randbytes(size * size * 3))
    else:
        image = Image.new("RGB", (size, size), ((seed * 53) % 256, (seed * 97) % 256, (seed * 31) % 256))
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


VSTAR_QUESTIONS = {
    "direct_attributes": ("What is the color of the {}?", ["red", "blue", "green", "white"], "umbrella"),
    "relative_position": ("Is the {} on the left or right side of the dog?", ["left", "right"], "cup"),
}


def write_vstar(root: Path, n: int = 4, corrupt_row=None, bad_answer_row=None, labels: bool = True) -> Path:
    """craigwu/vstar_bench: test_questions.jsonl and <category>/<name>.jpg + .json; even rows are
    direct_attributes (4 options), odd rows relative_position (2 options). Row i's answer is
    option i % options (the annotation JSON lists it first). `labels=False`: a snapshot from
    before the jsonl had `label`."""
    root = Path(root)
    lines = []
    for i in range(n):
        category = "direct_attributes" if i % 2 == 0 else "relative_position"
        template, options, target = VSTAR_QUESTIONS[category]
        folder = root / category
        folder.mkdir(parents=True, exist_ok=True)
        name = f"sa_{1000 + i}"
        data = NOT_AN_IMAGE if i == corrupt_row else image_bytes(i)
        (folder / f"{name}.jpg").write_bytes(data)
        answer = i % len(options)
        first_correct = [options[answer]] + [o for j, o in enumerate(options) if j != answer]
        annotation = {"target_object": [target], "bbox": [[1, 2, 3, 4]], "question": template.format(target),
                      "options": first_correct}  # fmt: skip
        (folder / f"{name}.json").write_text(json.dumps(annotation))
        listed = "\n".join(f"({'ABCD'[j]}) {o}" for j, o in enumerate(options))
        text = f"{template.format(target)}\n{listed}\nAnswer with the option's letter from the given choices directly."
        line = {"question_id": i, "image": f"{category}/{name}.jpg", "text": text, "category": category}
        if labels:
            line["label"] = "E" if i == bad_answer_row else "ABCD"[answer]
        lines.append(json.dumps(line))
    (root / "test_questions.jsonl").write_text("\n".join(lines) + "\n")
    return root


HRBENCH_COLUMNS = ["index", "question", "answer", "category", "A", "B", "C", "D", "cycle_category", "image"]


def hrbench_records(n: int, corrupt_row=None, bad_answer_row=None, bad_base64_row=None, pointer_row=None,
                    image_size: int = 56, noise: bool = False) -> list[dict]:  # fmt: skip
    """Rows of hr_bench_<variant>: even rows FSP ("single"), odd rows FCP ("cross"); row i's
    answer is "ABCD"[i % 4]. `pointer_row`'s image is row 0's index, as VLMEvalKit saves space."""
    records = []
    for i in range(n):
        data = NOT_AN_IMAGE if i == corrupt_row else image_bytes(i, image_size, "PNG", noise)
        image = base64.b64encode(data).decode()
        if i == bad_base64_row:
            image = "%%% not base64 %%%" * 8
        if i == pointer_row:
            image = "100"
        records.append({
            "index": 100 + i,
            "question": f'What is written on the "sign" number {i}?',
            "answer": "F" if i == bad_answer_row else "ABCD"[i % 4],
            "category": "single" if i % 2 == 0 else "cross",
            **{c: f"option {c}{i}" for c in "ABCD"},
            "cycle_category": f"cycle{i % 4}",
            "image": image,
        })  # fmt: skip
    return records


def write_hrbench(root: Path, n: int = 4, variant: str = "4k", fmt: str = "tsv", drop_column=None, **options) -> Path:
    """hr_bench_<variant>.tsv as VLMEvalKit writes it (pandas to_csv, tab-separated), or .parquet."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    records = hrbench_records(n, **options)
    columns = [c for c in HRBENCH_COLUMNS if c != drop_column]
    path = root / f"hr_bench_{variant}.{fmt}"
    if fmt == "parquet":
        pq.write_table(pa.Table.from_pylist([{c: r[c] for c in columns} for r in records]), path)
        return path
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, delimiter="\t", lineterminator="\n")
        writer.writerow(columns)
        writer.writerows([[r[c] for c in columns] for r in records])
    return path


VISUALPUZZLES_CATEGORIES = ["algorithmic", "analogical", "deductive", "inductive", "spatial"]


def write_visualpuzzles(root: Path, n: int = 4, corrupt_row=None, bad_answer_row=None, drop_column=None) -> Path:
    """neulab/VisualPuzzles: <root>/data.parquet. Odd rows have their options drawn in the image
    (options null); row i's answer is "ABCD"[i % 4] and its category cycles through the five."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    image = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    schema = pa.schema([("id", pa.int64()), ("category", pa.string()), ("image", image), ("question", pa.string()),
                        ("options", pa.list_(pa.string())), ("answer", pa.string())])  # fmt: skip
    rows = [
        {
            "id": i + 1,
            "category": VISUALPUZZLES_CATEGORIES[i % 5],
            "image": {"bytes": NOT_AN_IMAGE if i == corrupt_row else image_bytes(i, fmt="PNG"), "path": f"{i}.png"},
            "question": f"  Which figure completes pattern {i}?  ",
            "options": None if i % 2 else [f"{10 * i + j}" for j in range(4)],
            "answer": "E" if i == bad_answer_row else "ABCD"[i % 4],
        }
        for i in range(n)
    ]
    table = pa.Table.from_pylist(rows, schema=schema)
    if drop_column:
        table = table.drop_columns([drop_column])
    path = root / "data.parquet"
    pq.write_table(table, path)
    return path
