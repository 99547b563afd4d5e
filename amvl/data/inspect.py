"""`amvl data inspect PATH`: counts per split and subtask, and every problem, one line each.

PATH is a BLINK root (see amvl/data/blink_local.py) or a prepared dataset folder
(data/<dataset>/ with train/val parquet files).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path

from amvl.data.blink import IMAGE_COLUMNS, checked_rows
from amvl.data.blink_local import SPLITS, split_files, subtask_dirs
from amvl.errors import UserError


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


def inspect(path: Path) -> tuple[dict, list[str]]:
    """{split: {subtask: {"questions", "images", "options"}}} and the list of problems.

    `images` and `options` map a count (images or options per question) to how many questions have it.
    """
    path = Path(path)
    files = prepared_files(path) or blink_files(path)
    if not files:
        raise UserError(f"{path}: no BLINK subtask folders or prepared split files found")
    summary: dict = {}
    problems: list[str] = []
    for split, paths in files.items():
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
                stats = summary.setdefault(split, {}).setdefault(
                    row["sub_task"], {"questions": 0, "images": Counter(), "options": Counter()}
                )
                stats["questions"] += 1
                stats["images"][sum(row.get(c) is not None for c in IMAGE_COLUMNS)] += 1
                stats["options"][len(row.get("choices") or [])] += 1
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
