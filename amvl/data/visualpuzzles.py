"""VisualPuzzles (Song et al. 2025, "VisualPuzzles: Decoupling Multimodal Reasoning Evaluation
from Domain Knowledge"): 1168 multiple-choice puzzles, read from a local snapshot of the Hugging
Face dataset repo neulab/VisualPuzzles. Nothing is downloaded.

Layout (HF dataset card of neulab/VisualPuzzles: configs data_files path: data.parquet; its
refs/pr/2 had data/train-*.parquet with a `difficulty` column as well):
    <root>/data.parquet          id (int64), category, image ({bytes, path}), question,
    (or <root>/data/*.parquet)   options (4 strings, or null), answer ("A".."D")
`options` is null for puzzles whose options are drawn in the image; those rows get four empty
option texts (the letters stand alone) and the prompt says so.

Prompt: lmms-eval's VisualPuzzles task, which the authors evaluate with (neulab/VisualPuzzles
README "Experiments"; lmms-eval/lmms_eval/tasks/VisualPuzzles/utils.py VisualPuzzles_doc_to_text):
"Question: <q>\\nOptions:\\n(A) <o1>\\n(B) <o2>\\n(C) <o3>\\n(D) <o4>\\n<instruction>", or
"Question: <q>\\nOptions: Choose from (A) (B) (C) (D) in the image.\\n<instruction>", with the
instruction of VisualPuzzles_direct.yaml (MULTI_CHOICE_DIRECT_PROMPT, below).
VisualPuzzles_cot.yaml (COT_PROMPT) and VLMEvalKit (image_mcq.py VisualPuzzles.build_prompt)
ask for step-by-step reasoning ending in "Answer: $LETTER" instead.

Scoring: exact match of the letter, averaged over all 1168 puzzles ("micro"; lmms-eval metric
exact_match, aggregation mean; VLMEvalKit utils/visualpuzzles.py VisulPuzzles_acc reports
"overall" and per category and difficulty). Categories: algorithmic, analogical, deductive,
inductive, spatial. The AMVL paper's 33.90 is 396/1168. Chance: 1/4.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from amvl.data.blink import LETTERS, letter
from amvl.errors import UserError

COLUMNS = ("id", "category", "image", "question", "options", "answer")
CATEGORIES = ("algorithmic", "analogical", "deductive", "inductive", "spatial")
INSTRUCTION = "Answer the question with the option's letter from the given choices directly."
OPTIONS_IN_IMAGE = "Options: Choose from (A) (B) (C) (D) in the image."
HOW_TO_GET = "put a snapshot of the Hugging Face dataset repo neulab/VisualPuzzles there (<root>/data.parquet)"


def files(root: Path) -> list[Path]:
    root = Path(root)
    if root.is_file():
        return [root] if root.suffix == ".parquet" else []
    if (root / "data.parquet").is_file():
        return [root / "data.parquet"]
    return sorted((root / "data").glob("*.parquet"))


def looks_like(root: Path) -> bool:
    """A data.parquet (or data/*.parquet) whose columns are VisualPuzzles' (reads only the footer)."""
    paths = files(root)
    try:
        return bool(paths) and all(c in pq.read_schema(p).names for p in paths for c in COLUMNS)
    except (OSError, pa.ArrowException):
        return False


def iter_rows(root: Path) -> Iterator[tuple[dict, str, list[str]]]:
    """(row in BLINK's schema, where, problems) per puzzle, a few rows in memory at a time."""
    paths = files(root)
    if not paths:
        raise UserError(f"{Path(root) / 'data.parquet'}: VisualPuzzles file not found; {HOW_TO_GET}")
    for path in paths:
        try:
            file = pq.ParquetFile(path)
            missing = [c for c in COLUMNS if c not in file.schema_arrow.names]
            if missing:
                raise UserError(f"{path}: missing column {', '.join(missing)}; {HOW_TO_GET}")
            n = 0
            for batch in file.iter_batches(batch_size=16):
                for record in batch.to_pylist():
                    n += 1
                    yield puzzle_row(record, f"{path}: row {n} (id={record['id']})")
        except (OSError, pa.ArrowException) as e:
            raise UserError(f"{path}: not a readable parquet file ({e})") from None


def puzzle_row(record: dict, where: str) -> tuple[dict, str, list[str]]:
    problems = [f"{where}: missing {name}" for name in ("question", "category", "answer") if not record[name]]
    question = (record["question"] or "").strip()
    if record["options"] is None:  # drawn in the image
        choices, listed = [""] * 4, OPTIONS_IN_IMAGE
    else:
        choices = [str(o) for o in record["options"]]
        listed = "Options:\n" + "\n".join(f"{letter(i)} {o}" for i, o in enumerate(choices))
        if not choices:
            problems.append(f"{where}: options missing (an empty list)")
    image = record["image"] if isinstance(record["image"], dict) else {"bytes": record["image"]}
    if not image.get("bytes"):
        problems.append(f"{where}: image has no bytes")
    row = {
        "idx": str(record["id"]),
        "question": question,
        "sub_task": str(record["category"] or ""),
        "image_1": {"bytes": image["bytes"], "path": image.get("path")} if image.get("bytes") else None,
        "image_2": None,
        "image_3": None,
        "image_4": None,
        "choices": choices,
        "answer": answer_of(record["answer"], choices, where, problems),
        "prompt": f"Question: {question}\n{listed}\n{INSTRUCTION}",
        "explanation": "",
    }
    return row, where, problems


def answer_of(answer, choices: list[str], where: str, problems: list[str]) -> str:
    label = str(answer or "").strip().strip("()").upper()
    if len(label) == 1 and label in LETTERS[: len(choices)]:
        return letter(LETTERS.index(label))
    if answer:  # a missing answer is already reported
        problems.append(f"{where}: answer {answer!r} is not among the {len(choices)} options")
    return f"({label})" if len(label) == 1 else label
