"""`amvl data inspect PATH`: counts per split and subtask, and every problem, one line each.

PATH is a BLINK root (see amvl/data/blink_local.py), a prepared dataset folder (data/<dataset>/
with train/val parquet files), one file: a BLINK-schema split (.parquet, .arrow) or a
training-record file (.jsonl, .parquet; see amvl/data/records.py), or the local copy of a
benchmark of amvl/data/benchmarks.py (V* Bench, HR-Bench, VisualPuzzles), recognised by its layout.

`--show-prompt N` prints instead the exact prompt of the first N questions of each subtask: the
chat template and image token counts of `--model` (default: the released Qwen2.5-VL's).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from amvl.data import benchmarks, records
from amvl.data.blink import IMAGE_COLUMNS, as_decoded, checked_rows, decode_row, read_batches
from amvl.data.blink_local import HOW_TO_GET, SPLITS, SUBTASKS, split_files, subtask_dirs
from amvl.errors import UserError

TAKES = (
    "inspect takes a BLINK root (one folder per subtask), a prepared data/<dataset>/, "
    "a BLINK-schema split file (.parquet, .arrow) or a training-record file (.jsonl, .parquet)"
)


def prepared_files(path: Path) -> dict[str, list[Path]]:
    return {
        split: [path / f"{split}.parquet"] for split in ("train", "val", "test") if (path / f"{split}.parquet").exists()
    }


def blink_files(path: Path) -> dict[str, list[Path]]:
    files = defaultdict(list)
    for subtask_dir in subtask_dirs(path).values():
        for split in SPLITS:
            files[split] += split_files(subtask_dir, split)
    return dict(files)


def split_of(file: Path) -> str:
    """The split a file holds, from its name: val-00000-of-00001.parquet, train.parquet,
    val/data-00000-of-00001.arrow, blink-test.arrow."""
    for split in ("train", "val", "test"):
        if file.name.startswith(split) or file.parent.name == split or f"-{split}" in file.name:
            return split
    return "val"  # unknown: checked as strictly as an evaluation split


def holds_records(file: Path) -> bool:
    """Whether a file holds training records (an `images` list) rather than BLINK-schema rows."""
    if file.suffix != ".parquet":
        return file.suffix != ".arrow"
    try:
        return "images" in pq.read_schema(file).names
    except (OSError, pa.ArrowInvalid):
        return False  # unreadable: reading it as a split reports that


def count(summary: dict, split: str, row: dict) -> None:
    stats = summary.setdefault(split, {}).setdefault(
        row["sub_task"], {"questions": 0, "images": Counter(), "options": Counter()}
    )
    stats["questions"] += 1
    stats["images"][sum(row.get(c) is not None for c in IMAGE_COLUMNS)] += 1
    stats["options"][len(row.get("choices") or [])] += 1


def inspect_records(file: Path) -> tuple[dict, list[str]]:
    """A training-record file, each record checked as `prepare` reads it, and its images decoded."""
    summary: dict = {}
    problems: list[str] = []
    seen = set()
    for number, record in enumerate(records.load(file), 1):
        named = isinstance(record, dict) and record.get("id")
        where = f"{file}: record {number}" + (f" (id={record['id']})" if named else "")
        try:
            if not isinstance(record, dict):
                raise UserError(f"{where}: expected a JSON object")
            row = records.to_row(record, file.parent, where)
        except UserError as e:  # one problem per record: go on with the next
            problems.append(str(e))
            continue
        problems += decode_row(row, where, "train")[1]
        if row["idx"] in seen:
            problems.append(f"{where}: duplicate id")
        seen.add(row["idx"])
        count(summary, "train", row)
    if not summary and not problems:
        problems.append(f"{file}: no records")
    return summary, problems


def split_files_in(path: Path) -> dict[str, list[Path]]:
    """Split -> the BLINK-schema files holding it, in a file, a prepared folder or a BLINK root."""
    if path.is_file():
        return {split_of(path): [path]}
    if prepared_files(path):
        return prepared_files(path)
    if not any((path / subtask).is_dir() for subtask in SUBTASKS):
        raise UserError(
            f"{path}: a folder with neither train/val/test.parquet nor BLINK subtask folders "
            f"({', '.join(SUBTASKS[:2])}, ...); {TAKES}"
        )
    files = blink_files(path)
    if not any(files.values()):
        raise UserError(f"{path}: BLINK subtask folders without val or test files; {HOW_TO_GET}")
    return files


def inspect(path: Path) -> tuple[dict, list[str]]:
    """{split: {subtask: {"questions", "images", "options"}}} and the list of problems.

    `images` and `options` map a count (images or options per question) to how many questions have it.
    """
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: not found; {TAKES}")
    if path.is_file() and path.suffix not in (".parquet", ".arrow", ".jsonl", ".json"):
        raise UserError(f"{path}: a {path.suffix or 'suffix-less'} file; {TAKES}")
    if path.is_file() and holds_records(path) and not benchmarks.detect(path):
        return inspect_records(path)
    summary: dict = {}
    problems: list[str] = []
    name = benchmarks.detect(path)
    if name:  # a benchmark's local copy: its one split, as prepare reads it
        for row, row_problems in benchmarks.checked_rows(name, path):
            problems += row_problems
            count(summary, name, row)
        return summary, problems
    for split, paths in split_files_in(path).items():
        seen: dict[str, Path] = {}
        for file in paths:
            try:
                rows = list(checked_rows(file, split))
            except UserError as e:  # a file-level problem: report it, go on with the next file
                problems.append(str(e))
                continue
            for row, _, row_problems in rows:
                if row["idx"] in seen:
                    problems.append(f"{file}: row idx={row['idx']}: duplicate idx (also in {seen[row['idx']]})")
                seen[row["idx"]] = file
                problems += row_problems
                count(summary, split, row)
    return summary, problems


def format_summary(summary: dict) -> str:
    counts = lambda counter: ", ".join(f"{n}:{c}" for n, c in sorted(counter.items()))  # noqa: E731
    lines = [f"{'split':<6} {'subtask':<26} {'questions':>9}  images/question  options/question"]
    for split, tasks in summary.items():
        for task, stats in sorted(tasks.items()):
            lines.append(
                f"{split:<6} {task:<26} {stats['questions']:>9}  {counts(stats['images']):<15}  {counts(stats['options'])}"
            )
        lines.append(f"{split:<6} {'total':<26} {sum(s['questions'] for s in tasks.values()):>9}")
    return "\n".join(lines)


def questions(path: Path, per_subtask: int):
    """The first `per_subtask` questions of each subtask of every split at `path`; only their
    images are decoded (a UserError names the first problem of one)."""
    path, taken = Path(path), Counter()
    name = benchmarks.detect(path) if path.exists() else None
    if name:
        sources = {name: [(row for row, _, _ in benchmarks.BENCHMARKS[name].iter_rows(path))]}
    else:
        sources = {
            split: [(row for batch in read_batches(file) for row in batch.to_pylist()) for file in files]
            for split, files in split_files_in(path).items()
        }
    for split, readers in sources.items():
        for reader in readers:
            for row in reader:
                if taken[split, row["sub_task"]] < per_subtask:
                    taken[split, row["sub_task"]] += 1
                    yield split, as_decoded(row, *decode_row(row, f"{path}: row idx={row['idx']}", split))


def released_processors():
    """A tokenizer carrying Qwen's chat template, and Qwen2.5-VL-7B-Instruct's image sizes (its
    preprocessor_config.json): what the released model's prompt is made of, without its files."""
    from amvl.model.backbone import MERGE, PATCH, build_tokenizer
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    image_processor = Qwen2VLImageProcessorPil(
        patch_size=PATCH, merge_size=MERGE, temporal_patch_size=2, min_pixels=3136, max_pixels=12845056
    )
    return build_tokenizer(["Select from the following choices."], 300, 0), image_processor


def show_prompts(path: Path, per_subtask: int, model: Path | None = None, instruction: str = "") -> str:
    """The exact prompt text of the first questions per subtask, each run of image pads shortened
    to `<|image_pad|>×N` (N: the image's visual tokens)."""
    import re

    from amvl.data.collate import prompt_text
    from amvl.model.backbone import IMAGE_PAD, load_processors

    tokenizer, image_processor = load_processors(model) if model else released_processors()
    source = f"{model}'s chat template" if model else "the released Qwen2.5-VL-7B-Instruct's format"
    out = [f"prompts as the model is given them ({source}); the answer follows the last line"]
    for split, row in questions(path, per_subtask):
        grids = image_processor(images=row["images"], return_tensors="pt")["image_grid_thw"]
        text = prompt_text(tokenizer, row["prompt"] + instruction, grids, image_processor.merge_size)
        text = re.sub(f"(?:{re.escape(IMAGE_PAD)})+", lambda m: f"{IMAGE_PAD}×{len(m[0]) // len(IMAGE_PAD)}", text)
        out += [f"----- {split} {row['sub_task']} idx={row['idx']} (answer {row['answer']})", text]
    return "\n".join(out)
