"""prepare: write the train, val (and, for BLINK, test) splits to data/<dataset>/ in BLINK's schema.

Sources of the benchmark (`data.source`):
- `synthetic`: the generated mini-BLINK, train and val, from `data.seed`;
- `blink`: a local BLINK copy under `data.blink_root`, val and test as the official evaluation
  prompts them (the disclaimer before the three subtasks that get it). BLINK has no training
  split, so `data.train_records` must name one.
`data.train_records`, when set, is the train split in either case: a record file or a local
Monet-SFT-125K folder.

`benchmark` prepares one of config `benchmarks` (V* Bench, HR-Bench, VisualPuzzles) from its
local copy into data/benchmarks/<name>/val.parquet, in the same schema: its one split, scored.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from amvl.config import Section
from amvl.data import benchmarks, blink_local, synthetic
from amvl.data.blink import checked_rows, write_rows, write_split
from amvl.data.records import iter_records
from amvl.errors import ConfigError, UserError
from amvl.io import atomic_dir, write_json
from amvl.progress import track


def synthetic_split(data, split: str) -> list[dict]:
    unknown = [s for s in data.subtasks if s not in synthetic.SUBTASKS]
    if unknown:
        raise ConfigError(f"data.subtasks: unknown subtask {unknown[0]!r} (known: {', '.join(synthetic.SUBTASKS)})")
    size = data.train_size if split == "train" else data.val_size
    rows = []
    for subtask in track(data.subtasks, f"generating {split}", "subtasks"):
        rows += synthetic.generate(subtask, split, size, data.seed, data.image_size)
    return rows


def blink_split(data, split: str) -> Iterator[dict]:
    """One split of the local BLINK copy, checked row by row as it is read, prompts as officially
    evaluated."""
    folders = blink_local.subtask_dirs(Path(data.blink_root), list(data.blink_subtasks))
    for subtask, folder in track(list(folders.items()), f"reading BLINK {split}", "subtasks"):
        files = blink_local.split_files(folder, split)
        if not files and split == "val":
            raise UserError(f"{folder}: no {split} split; {blink_local.HOW_TO_GET}")
        for file in files:
            for row, _, problems in checked_rows(file, split):
                if problems:
                    raise UserError(f"{problems[0]} (`amvl data inspect {data.blink_root}` lists every problem)")
                yield blink_local.with_disclaimer(row, data.disclaimer)


def run(cfg: dict, out_dir: Path, experiment: str = "") -> None:
    data = Section(cfg).data
    if data.source == "blink" and not data.blink_root:
        raise ConfigError(f"data.blink_root: empty; {blink_local.HOW_TO_GET}")
    unknown = [s for s in data.blink_subtasks if s not in blink_local.SUBTASKS]
    if data.source == "blink" and unknown:
        raise ConfigError(
            f"data.blink_subtasks: unknown subtask {unknown[0]!r} (known: {', '.join(blink_local.SUBTASKS)})"
        )
    if data.source == "blink" and not data.train_records:
        raise ConfigError(
            "data.train_records: BLINK has no training split; name a training-record file (amvl/data/records.py)"
        )
    with atomic_dir(out_dir) as tmp:
        counts = {}
        for split in ("train", "val", "test"):
            path = tmp / f"{split}.parquet"
            # Records and BLINK stream into the file, a row group at a time, each row checked (its
            # images decoded once) on the way: training then reads them lazily.
            if split == "train" and data.train_records:
                count = write_rows(iter_records(Path(data.train_records), list(data.train_subsets)), path)
            elif data.source == "blink":
                count = write_rows(blink_split(data, split), path)
            elif split != "test":
                rows = synthetic_split(data, split)  # small: written through `datasets`, as always
                write_split(rows, path)
                count = len(rows)
            else:
                continue  # the synthetic benchmark has no hidden-answer split
            if count:
                counts[split] = count
            else:
                path.unlink()  # a split the BLINK copy does not have (test)
        # Who prepared it, and from which settings: config.check_dataset stops another experiment
        # with other data settings from preparing over it.
        meta = {"source": data.source, "train_records": data.train_records, "rows": counts}
        write_json(tmp / "dataset.json", {**meta, "experiment": experiment, "data": cfg["data"]})


def benchmark(name: str, root: Path, out_dir: Path) -> None:
    """One benchmark's local copy -> `out_dir`/val.parquet, each row checked as it is read."""
    if name not in benchmarks.BENCHMARKS:
        raise ConfigError(f"benchmarks.{name}: unknown benchmark (known: {', '.join(benchmarks.BENCHMARKS)})")

    def rows() -> Iterator[dict]:
        for row, problems in benchmarks.checked_rows(name, Path(root)):
            if problems:
                raise UserError(f"{problems[0]} (`amvl data inspect {root}` lists every problem)")
            yield row

    with atomic_dir(out_dir) as tmp:
        count = write_rows(rows(), tmp / "val.parquet")
        write_json(tmp / "dataset.json", {"benchmark": name, "root": str(root), "rows": {"val": count}})
