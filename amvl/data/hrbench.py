"""HR-Bench 4K and 8K (Wang et al. 2024, "Divide, Conquer and Combine: A Training-Free Framework
for High-Resolution Image Perception in MLLMs"): 800 multiple-choice questions each, read from a
local copy of the Hugging Face dataset repo DreamMr/HR-Bench. Nothing is downloaded.

Layout (HF tree of DreamMr/HR-Bench; VLMEvalKit vlmeval/dataset/image_mcq.py HRBenchDataset URLs):
    <root>/hr_bench_4k.tsv   (1.9 GB)   VLMEvalKit TSV: index, question, answer ("A".."D"),
    <root>/hr_bench_8k.tsv   (4.6 GB)   category, A, B, C, D, cycle_category, image (base64)
    <root>/hr_bench_4k.parquet, hr_bench_8k.parquet   the same columns (lmms-eval reads these:
                                        tasks/hrbench/hrbench4k.yaml, split hrbench_4k)
The TSV is read when both are there (it is what the authors' harness downloads, with an MD5).
A root (or the file itself) may hold either variant or both. As everywhere in VLMEvalKit
(image_base.py in DreamMr/HR-Bench), an `image` of at most 64 characters is not an image but the
`index` of the row whose image it shares. 200 questions (FSP 100, FCP 100, HR-Bench README) are
each asked 4 times with the options rotated (`cycle_category`): 800 rows.

Categories: `category` is "single" (Fine-grained Single-instance Perception, FSP) or "cross"
(Fine-grained Cross-instance Perception, FCP): the names of lmms-eval's metrics
(tasks/hrbench/utils.py returns {category: ...}, hrbench4k.yaml lists single, cross, average).
`sub_task` is "FSP" / "FCP", as the paper names them.

Prompt: VLMEvalKit's ImageMCQDataset.build_prompt, which the HR-Bench repo's own harness
(hrbench/vlmeval/dataset/image_mcq.py) inherits: "Question: <q>\\nOptions:\\nA. <A>\\n...D. <D>\\n"
"Please select the correct answer from the options above. \\n" (trailing space and newline kept).
lmms-eval (tasks/hrbench/utils.py) writes "<q>\\nA. <A>\\n...Answer the option letter directly.".

Scoring: accuracy per cycle, averaged over the 4 cycles (HR-Bench hrbench/vlmeval/dataset/image_mcq.py
`evaluate`; VLMEvalKit utils/hrbench.py report_acc_hrbench; lmms-eval hrbench_aggregate_results),
for FSP, FCP and all. Cycles and categories are equal-sized, so this is the accuracy over all 800
rows ("micro"), and also the mean of FSP and FCP. The AMVL paper's 68.00/72.12 (4K) and
63.75/68.50 (8K) are counts out of 800. The authors judge a free-form reply with an LLM; here
the reply is matched to a letter. Chance: 1/4.
"""

from __future__ import annotations

import base64
import binascii
import csv
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from amvl.data.blink import LETTERS, letter
from amvl.errors import UserError

VARIANTS = ("4k", "8k")
COLUMNS = ("index", "question", "answer", "category", "image")
OPTION_COLUMNS = tuple("ABCDEFGH")
SUB_TASKS = {"single": "FSP", "cross": "FCP"}
REFERENCE_LENGTH = 64  # VLMEvalKit: an image field this short is another row's index
INSTRUCTION = "Please select the correct answer from the options above. \n"
HOW_TO_GET = (
    "put hr_bench_4k.tsv and/or hr_bench_8k.tsv from the Hugging Face dataset repo DreamMr/HR-Bench "
    "there (<root>/hr_bench_4k.tsv; the .parquet files of the same repo work too)"
)


def file_names(variant: str | None) -> list[str]:
    variants = [variant] if variant else list(VARIANTS)
    return [f"hr_bench_{v}.{ext}" for v in variants for ext in ("tsv", "parquet")]


def source(root: Path, variant: str | None = None) -> Path | None:
    """The file holding `variant` (either, when None and only one is there) under root, or root itself."""
    root = Path(root)
    if root.is_file():
        return root if root.name in file_names(variant) else None
    present = [root / name for name in file_names(variant) if (root / name).is_file()]
    if not variant and len({p.stem for p in present}) > 1:
        raise UserError(f"{root}: holds both HR-Bench 4K and 8K; say which (variant '4k' or '8k')")
    return present[0] if present else None


def looks_like(root: Path, variant: str | None = None) -> bool:
    root = Path(root)
    return any((root / name).is_file() for name in file_names(variant)) or (
        root.is_file() and root.name in file_names(variant)
    )


def records(path: Path) -> Iterator[dict]:
    """The file's rows as dicts, a few at a time: the 8K TSV is 4.6 GB of base64."""
    try:
        if path.suffix == ".parquet":
            file = pq.ParquetFile(path)
            check_columns(path, file.schema_arrow.names)
            for batch in file.iter_batches(batch_size=4):
                yield from batch.to_pylist()
            return
        # One 8K image is ~6 MB of base64: far beyond csv's default 128 KB field limit (process-wide).
        csv.field_size_limit(max(csv.field_size_limit(), 2**31 - 1))
        with path.open(encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f, delimiter="\t")  # pandas' to_csv quoting, as VLMEvalKit writes them
            check_columns(path, reader.fieldnames or [])
            yield from reader
    except (OSError, UnicodeDecodeError, csv.Error, pa.ArrowException) as e:
        raise UserError(f"{path}: not a readable HR-Bench {path.suffix[1:]} file ({e})") from None


def check_columns(path: Path, names: list[str]) -> None:
    missing = [c for c in (*COLUMNS, "A") if c not in names]
    if missing:
        raise UserError(f"{path}: missing column {', '.join(missing)}; {HOW_TO_GET}")


def iter_rows(root: Path, variant: str | None = None) -> Iterator[tuple[dict, str, list[str]]]:
    """(row in BLINK's schema, where, problems) per row of hr_bench_<variant>.tsv (or .parquet)."""
    path = source(root, variant)
    if path is None:
        raise UserError(f"{Path(root) / file_names(variant)[0]}: HR-Bench file not found; {HOW_TO_GET}")
    shared = None  # index -> image of rows that others point to, read on the first pointer met
    for n, record in enumerate(records(path), 1):
        idx = str(record.get("index"))
        where = f"{path}: row {n} (id={idx})"
        problems = [f"{where}: {name} missing" for name in ("question", "category") if not record.get(name)]
        image = record.get("image")
        if isinstance(image, str) and 0 < len(image) <= REFERENCE_LENGTH:
            shared = referenced_images(path) if shared is None else shared
            if image not in shared:
                problems.append(f"{where}: image points to row index={image}, which has no image")
            image = shared.get(image)
        choices = options(record, where, problems)
        row = {
            "idx": idx,
            "question": str(record.get("question") or ""),
            "sub_task": SUB_TASKS.get(str(record.get("category")).lower(), str(record.get("category"))),
            "image_1": image_cell(image, where, problems),
            "image_2": None,
            "image_3": None,
            "image_4": None,
            "choices": choices,
            "answer": answer_of(record.get("answer"), choices, where, problems),
            "prompt": prompt(str(record.get("question") or ""), choices),
            "explanation": "",
        }
        yield row, where, problems


def prompt(question: str, choices: list[str]) -> str:
    options = "".join(f"{LETTERS[i]}. {choice}\n" for i, choice in enumerate(choices))
    return f"Question: {question}\nOptions:\n{options}{INSTRUCTION}"


def options(record: dict, where: str, problems: list[str]) -> list[str]:
    """Option texts in letter order; the options stop at the first empty column."""
    texts = [record.get(c) for c in OPTION_COLUMNS]
    texts = ["" if t is None or str(t).lower() == "nan" else str(t) for t in texts]
    count = next((i for i, t in enumerate(texts) if not t), len(texts))
    if count == 0:
        problems.append(f"{where}: options missing (column A is empty)")
    elif any(texts[count:]):
        problems.append(f"{where}: option {OPTION_COLUMNS[count]} missing but later options given")
    return texts[:count]


def answer_of(answer, choices: list[str], where: str, problems: list[str]) -> str:
    label = str(answer or "").strip().upper()
    if len(label) == 1 and label in LETTERS[: len(choices)]:
        return letter(LETTERS.index(label))
    problems.append(f"{where}: answer {answer!r} is not among the {len(choices)} options")
    return f"({label})" if len(label) == 1 else label


def image_cell(image, where: str, problems: list[str]) -> dict | None:
    """{bytes, path} of a base64 string (TSV), raw bytes or an image struct (parquet)."""
    if isinstance(image, dict):
        image = image.get("bytes")
    if isinstance(image, bytes):
        return {"bytes": image, "path": None}
    if not image:
        problems.append(f"{where}: image missing")
        return None
    try:
        return {"bytes": base64.b64decode(image, validate=True), "path": None}
    except (binascii.Error, ValueError):
        problems.append(f"{where}: image is not valid base64")
        return None


def referenced_images(path: Path) -> dict[str, str]:
    """index -> image of every row another row points to: two more passes over the file, run
    only when a pointer is met (HR-Bench's own files hold every image in full)."""
    wanted = {r["image"] for r in records(path) if isinstance(r["image"], str) and len(r["image"]) <= REFERENCE_LENGTH}
    return {
        str(r["index"]): r["image"]
        for r in records(path)
        if str(r["index"]) in wanted and not (isinstance(r["image"], str) and len(r["image"]) <= REFERENCE_LENGTH)
    }
