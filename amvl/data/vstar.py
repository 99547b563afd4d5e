"""V* Bench (Wu & Xie 2023, "V*: Guided Visual Search as a Core Mechanism in Multimodal LLMs"):
191 multiple-choice questions on high-resolution images, read from a local snapshot of the
Hugging Face dataset repo craigwu/vstar_bench. Nothing is downloaded.

Layout (HF tree at d9ae62c; penghao-wu/vstar README.md "Benchmark" and vstar_bench_eval.py):
    <root>/test_questions.jsonl        one JSON object a line: question_id, image
                                        ("direct_attributes/sa_4690.jpg"), text, category, label ("A")
    <root>/direct_attributes/*.jpg     115 questions, 4 options (attribute recognition)
    <root>/relative_position/*.jpg      76 questions, 2 options (spatial relationship)
    <root>/<category>/<name>.json      next to each image: target_object, bbox, question, options;
                                        options[0] is the correct one
    <root>/OCR/, <root>/GPT4V-hard/     extra folders, not among the 191 and not in the jsonl
`label` came with the snapshot's last commit ("Uploading ground truth labels", PR #3); in an
older snapshot without it the answer is the paired JSON's options[0], found among the options.
The field names are those V* eval scripts read from it (e.g. the r1_vlm project's: text, image,
category, label, question_id); a BLINK-style converter of it documents the `text` layout below.

Prompt: `text` verbatim, as the authors wrote it: the question, one "(A) option" line per
option, then "Answer with the option's letter from the given choices directly."
("Question?\\n(A) opt1\\n(B) opt2\\n...\\nAnswer with..."). lmms-eval
(tasks/vstar_bench/utils.py, _default_template_yaml) reads a re-upload (lmms-lab-encoder/vstar-bench)
and reformats the options as "A. option" with the same instruction after them. The authors'
own eval (vstar_bench_eval.py) instead ranks the options by likelihood: correct iff options[0] wins.

Scoring: accuracy per category and over all 191 questions ("micro"): vstar_bench_eval.py prints
np.mean per test_type, then np.mean(all_acc); lmms-eval vstar_aggregate_results returns the
overall mean too. The AMVL paper's 76.44 and 84.29 are 146/191 and 161/191. Chance: 1/4 on
direct_attributes, 1/2 on relative_position (35% overall: 66.75/191).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

from amvl.data.blink import LETTERS, letter
from amvl.errors import UserError

QUESTIONS = "test_questions.jsonl"
CATEGORIES = ("direct_attributes", "relative_position")
HOW_TO_GET = (
    "put a snapshot of the Hugging Face dataset repo craigwu/vstar_bench there "
    "(<root>/test_questions.jsonl, <root>/direct_attributes/*.jpg, <root>/relative_position/*.jpg)"
)
FIELDS = ("question_id", "image", "text", "category")
# "(A) option": one a line in craigwu/vstar_bench; re-uploads also put them inline, one after another.
OPTION = re.compile(r"\(([A-H])\)[ \t]*([^\n]*?)(?=[ \t]*\([A-H]\)|\n|$)")


def looks_like(root: Path) -> bool:
    root = Path(root)
    return (root / QUESTIONS).is_file() and any((root / c).is_dir() for c in CATEGORIES)


def split_text(text: str) -> tuple[str, list[str], list[str]]:
    """(question, option letters, option texts) of a `text` field."""
    found = list(OPTION.finditer(text))
    question = text[: found[0].start()] if found else text
    return question.strip(), [m.group(1) for m in found], [m.group(2).strip() for m in found]


def iter_rows(root: Path) -> Iterator[tuple[dict, str, list[str]]]:
    """(row in BLINK's schema, where, problems) per line of test_questions.jsonl, images read from disk."""
    root = Path(root)
    path = root / QUESTIONS
    if not path.is_file():
        raise UserError(f"{path}: V* question file not found; {HOW_TO_GET}")
    try:
        with path.open(encoding="utf-8") as lines:
            for n, line in enumerate(lines, 1):
                if line.strip():
                    yield question_row(root, path, n, line)
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not readable ({e})") from None


def question_row(root: Path, path: Path, n: int, line: str) -> tuple[dict, str, list[str]]:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        record = {"_error": f"not a JSON object ({e.msg})"}
    if not isinstance(record, dict):
        record = {"_error": "not a JSON object"}
    idx = str(record.get("question_id", n))
    where = f"{path}: row {n} (id={idx})"
    problems = [f"{where}: {record['_error']}"] if "_error" in record else []
    problems += [f"{where}: missing field {name!r}" for name in FIELDS if name not in record and "_error" not in record]
    text = str(record.get("text") or "")
    question, letters, choices = split_text(text)
    if not choices and text:
        problems.append(f'{where}: no options "(A) ..." in text')
    elif letters != list(LETTERS[: len(letters)]):
        problems.append(f"{where}: options lettered {', '.join(letters)}, not A, B, ... in order")
    row = {
        "idx": idx,
        "question": question,
        "sub_task": str(record.get("category") or ""),
        "image_1": image_cell(root, record.get("image"), where, problems),
        "image_2": None,
        "image_3": None,
        "image_4": None,
        "choices": choices,
        "answer": answer_of(root, record, choices, where, problems),
        "prompt": text,
        "explanation": "",
    }
    return row, where, problems


def image_cell(root: Path, relative, where: str, problems: list[str]) -> dict | None:
    if not relative:
        return None
    try:
        return {"bytes": (root / relative).read_bytes(), "path": str(relative)}
    except OSError as e:
        problems.append(f"{where}: image {relative} not readable ({e.strerror or e})")
        return None


def answer_of(root: Path, record: dict, choices: list[str], where: str, problems: list[str]) -> str:
    """The answer letter: `label`, or (older snapshots) the paired JSON's options[0] among the choices."""
    if "label" in record:
        label = str(record["label"]).strip().strip("()").upper()
        if len(label) == 1 and label in LETTERS[: len(choices)]:
            return letter(LETTERS.index(label))
        problems.append(f"{where}: answer {record['label']!r} is not among the {len(choices)} options")
        return f"({label})" if len(label) == 1 else str(record["label"])
    annotation = root / Path(str(record.get("image") or "missing")).with_suffix(".json")
    try:
        correct = str(json.loads(annotation.read_text(encoding="utf-8"))["options"][0]).strip()
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        problems.append(f"{where}: no label, and {annotation} gives no options[0] to find the answer by")
        return ""
    if correct in choices:
        return letter(choices.index(correct))
    problems.append(f"{where}: answer {correct!r} (options[0] of {annotation.name}) is not among the options")
    return ""
