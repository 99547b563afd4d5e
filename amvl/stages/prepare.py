"""prepare: write the benchmark's train and val splits to data/<dataset>/ in BLINK's schema."""

from __future__ import annotations

from pathlib import Path

from rich.progress import track

from amvl.config import Section
from amvl.data import synthetic
from amvl.data.blink import write_split
from amvl.data.records import read_records
from amvl.errors import ConfigError
from amvl.io import atomic_dir, write_json

SPLITS = ("train", "val")


def run(cfg: dict, out_dir: Path) -> None:
    data = Section(cfg).data
    unknown = [s for s in data.subtasks if s not in synthetic.SUBTASKS]
    if unknown:
        raise ConfigError(f"data.subtasks: unknown subtask {unknown[0]!r} (known: {', '.join(synthetic.SUBTASKS)})")
    sizes = {"train": data.train_size, "val": data.val_size}
    with atomic_dir(out_dir) as tmp:
        counts = {}
        for split in SPLITS:
            rows = []
            if split == "train" and data.train_records:
                rows = read_records(Path(data.train_records))
            else:
                for subtask in track(data.subtasks, description=f"generating {split}"):
                    rows += synthetic.generate(subtask, split, sizes[split], data.seed, data.image_size)
            write_split(rows, tmp / f"{split}.parquet")
            counts[split] = len(rows)
        write_json(tmp / "dataset.json", {"source": data.source, "subtasks": list(data.subtasks),
                                          "train_records": data.train_records, "rows": counts})
