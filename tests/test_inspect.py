"""`amvl data inspect` on what people give it: files as well as folders, and messages that say what was given."""

import shutil
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import tool_env
from test_records import good_records, record_dir, write_jsonl  # noqa: F401 (record_dir: a fixture)

from amvl.data.inspect import inspect
from amvl.errors import UserError


def test_a_prepared_split_file_is_inspected_as_its_split(prepared_data, tmp_path):
    summary, problems = inspect(prepared_data / "val.parquet")
    assert problems == [] and list(summary) == ["val"]
    assert sum(s["questions"] for s in summary["val"].values()) == 4 * len(summary["val"])
    blink_named = tmp_path / "test-00000-of-00001.parquet"  # the split comes from BLINK's file names
    shutil.copy(prepared_data / "val.parquet", blink_named)
    assert list(inspect(blink_named)[0]) == ["test"]


def test_a_training_record_file_reports_each_bad_record(record_dir):  # noqa: F811
    records = good_records()
    records[1]["images"] = []
    records.append({**good_records()[0], "id": "c", "question": None})
    summary, problems = inspect(write_jsonl(record_dir, records))
    path = record_dir / "train.jsonl"
    assert problems == [
        f"{path}: record 2 (id=b): 'images' is empty (each record needs 1 to 4 images)",
        f"{path}: record 3 (id=c): missing 'question'",
    ]
    assert [s["questions"] for s in summary["train"].values()] == [1]


def test_a_parquet_record_file_is_read_as_records(record_dir):  # noqa: F811
    records = good_records()
    records[0]["images"] = [{"bytes": b"not an image", "path": "x.png"}]
    images = records[1]["images"]
    records[1]["images"] = [{"bytes": (record_dir / image).read_bytes(), "path": image} for image in images]
    path = record_dir / "records.parquet"
    pq.write_table(pa.Table.from_pylist(records), path)
    summary, problems = inspect(path)
    assert problems == [f"{path}: record 1 (id=a): image_1 does not decode as an image (UnidentifiedImageError)"]
    assert sum(s["questions"] for s in summary["train"].values()) == 2


@pytest.mark.parametrize(
    "name, message",
    [
        ("notes.txt", "notes.txt: a .txt file; inspect takes a BLINK root"),
        ("absent", "absent: not found; inspect takes a BLINK root"),
        ("empty_folder", "empty_folder: a folder with neither train/val/test.parquet nor BLINK subtask folders"),
    ],
)
def test_what_cannot_be_inspected_is_named_for_what_it_is(tmp_path, name, message):
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "empty_folder").mkdir()
    with pytest.raises(UserError, match=message):
        inspect(tmp_path / name)


def test_inspect_command_on_a_file(tmp_path, prepared_data):
    (tmp_path / "notes.txt").write_text("hello")
    run = lambda path: subprocess.run(  # noqa: E731
        [sys.executable, "-m", "amvl", "data", "inspect", str(path)], env=tool_env(), capture_output=True, text=True
    )
    bad = run(tmp_path / "notes.txt")
    assert bad.returncode == 2 and "a .txt file; inspect takes" in bad.stderr
    assert "BLINK folder not found" not in bad.stderr
    good = run(prepared_data / "train.parquet")
    assert good.returncode == 0 and good.stderr == "" and "train " in good.stdout
