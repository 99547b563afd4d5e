"""Read BLINK from the local copies people have; nothing is downloaded.

Three layouts under a root folder, one subfolder per subtask:
- a snapshot of the Hugging Face dataset repo:     <root>/<Subtask>/val-*.parquet, test-*.parquet
- `save_to_disk` of each subtask's DatasetDict:     <root>/<Subtask>/val/{dataset_info.json,data-*.arrow}
- a `datasets` cache (from `load_dataset`):        <root>/<Subtask>/**/*-val.arrow
"""

from __future__ import annotations

from pathlib import Path

from amvl.errors import UserError

SUBTASKS = [
    "Art_Style", "Counting", "Forensic_Detection", "Functional_Correspondence", "IQ_Test", "Jigsaw",
    "Multi-view_Reasoning", "Object_Localization", "Relative_Depth", "Relative_Reflectance",
    "Semantic_Correspondence", "Spatial_Relation", "Visual_Correspondence", "Visual_Similarity",
]  # fmt: skip
SPLITS = ("val", "test")
# The official evaluation prepends a disclaimer (config `data.disclaimer`) to these subtasks' prompts.
DISCLAIMER_SUBTASKS = ("Forensic_Detection", "Jigsaw", "Art_Style")

HOW_TO_GET = (
    "put a snapshot of the Hugging Face dataset repo BLINK-Benchmark/BLINK there "
    "(<root>/<Subtask>/val-*.parquet), or save_to_disk each subtask to <root>/<Subtask>"
)


def split_files(subtask_dir: Path, split: str) -> list[Path]:
    """The files holding one split of one subtask, whatever the layout."""
    parquet = sorted(subtask_dir.glob(f"{split}-*.parquet"))
    if parquet:
        return parquet
    saved = subtask_dir / split
    if (saved / "dataset_info.json").exists():
        return sorted(saved.glob("data-*.arrow"))
    return sorted(p for p in subtask_dir.rglob(f"*-{split}*.arrow") if "cache-" not in p.name)


def subtask_dirs(root: Path, subtasks: list[str] | None = None) -> dict[str, Path]:
    """Subtask name -> folder; every requested subtask must be there."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"{root}: BLINK folder not found; {HOW_TO_GET}")
    present = {p.name: p for p in sorted(root.iterdir()) if p.is_dir() and p.name in SUBTASKS}
    wanted = subtasks or list(present)
    missing = [s for s in wanted if s not in present]
    if missing:
        raise UserError(f"{root}: no folder for subtask {', '.join(missing)}; {HOW_TO_GET}")
    if not wanted:
        raise UserError(f"{root}: no BLINK subtask folders ({', '.join(SUBTASKS[:2])}, ...); {HOW_TO_GET}")
    return {name: present[name] for name in wanted}


def with_disclaimer(row: dict, disclaimer: str) -> dict:
    """The row with the official evaluation's disclaimer before the prompt, where it applies."""
    if row["sub_task"] in DISCLAIMER_SUBTASKS and disclaimer:
        return {**row, "prompt": disclaimer + row["prompt"]}
    return row
