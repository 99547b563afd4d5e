"""Real BLINK layouts, built here with `datasets` exactly as the Hugging Face repo stores them."""

import json
import subprocess
import sys

import datasets
import pytest
from conftest import tool_env

from amvl.config import validate
from amvl.data import synthetic
from amvl.data.blink import features, png_image, read_table
from amvl.data.blink_local import SUBTASKS, split_files, subtask_dirs, with_disclaimer
from amvl.data.inspect import inspect
from amvl.errors import UserError

VAL_PER_TASK, TEST_PER_TASK = 3, 2


def blink_rows(subtask: str, split: str, n: int, images: int = 1) -> list[dict]:
    """Rows in BLINK's schema: synthetic pictures, BLINK's subtask names and answer conventions."""
    source = "Visual_Similarity" if images == 3 else "Counting"
    rows = synthetic.generate(source, "val", n, seed=1, image_size=56)
    for i, row in enumerate(rows):
        row.update(idx=f"{split}_{subtask}_{i + 1}", sub_task=subtask)
        if split == "test":
            row["answer"] = "hidden"
        for column in ("image_1", "image_2", "image_3", "image_4"):
            row[column] = png_image(row[column]) if row.get(column) is not None else None
    return rows


def to_dataset(rows):
    return datasets.Dataset.from_list(rows, features=features())


@pytest.fixture(scope="module")
def blink_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("BLINK")
    for subtask in SUBTASKS:
        folder = root / subtask
        folder.mkdir()
        images = 3 if subtask == "Visual_Similarity" else 1
        to_dataset(blink_rows(subtask, "val", VAL_PER_TASK, images)).to_parquet(
            str(folder / "val-00000-of-00001.parquet")
        )
        to_dataset(blink_rows(subtask, "test", TEST_PER_TASK, images)).to_parquet(
            str(folder / "test-00000-of-00001.parquet")
        )
    return root


def test_inspect_counts_every_subtask_and_split(blink_root):
    summary, problems = inspect(blink_root)
    assert problems == []
    assert sorted(summary["val"]) == sorted(SUBTASKS) and sorted(summary["test"]) == sorted(SUBTASKS)
    assert all(s["questions"] == VAL_PER_TASK for s in summary["val"].values())
    assert sum(s["questions"] for s in summary["test"].values()) == TEST_PER_TASK * 14
    assert summary["val"]["Visual_Similarity"]["images"] == {3: VAL_PER_TASK}
    assert summary["val"]["Counting"]["options"] == {4: VAL_PER_TASK}


def test_save_to_disk_and_cache_layouts_are_found(tmp_path):
    rows = blink_rows("Jigsaw", "val", 2)
    datasets.DatasetDict({"val": to_dataset(rows)}).save_to_disk(str(tmp_path / "saved" / "Jigsaw"))
    files = split_files(tmp_path / "saved" / "Jigsaw", "val")
    assert files and read_table(files[0]).num_rows == 2

    cache = tmp_path / "cache" / "Jigsaw" / "0.0.0" / "abc123"
    cache.mkdir(parents=True)
    # An Arrow stream, the way `load_dataset` caches a split.
    writer = datasets.arrow_writer.ArrowWriter(path=str(cache / "blink-val.arrow"), features=features())
    writer.write_batch({k: [r[k] for r in rows] for k in rows[0]})
    writer.finalize()
    files = split_files(tmp_path / "cache" / "Jigsaw", "val")
    assert [f.name for f in files] == ["blink-val.arrow"] and read_table(files[0]).num_rows == 2


def test_missing_subtask_folder_says_what_to_put_where(tmp_path):
    with pytest.raises(UserError, match="no folder for subtask Jigsaw; put a snapshot"):
        subtask_dirs(tmp_path, ["Jigsaw"])
    with pytest.raises(UserError, match="BLINK folder not found"):
        subtask_dirs(tmp_path / "nowhere")


def test_disclaimer_is_prepended_only_for_its_three_subtasks():
    disclaimer = validate({})["data"]["disclaimer"]
    assert disclaimer.startswith("Disclaimer: This is not to make unfair assumptions") and disclaimer.endswith(
        "gave you.\n\n"
    )
    row = {"sub_task": "Jigsaw", "prompt": "Which piece?"}
    assert with_disclaimer(row, disclaimer)["prompt"] == disclaimer + "Which piece?"
    assert with_disclaimer({**row, "sub_task": "Counting"}, disclaimer)["prompt"] == "Which piece?"


def test_prepare_from_blink_writes_val_and_test_with_the_official_prompts(blink_root, tmp_path):
    from test_records import good_records, write_jsonl

    from amvl.data.blink import read_split
    from amvl.stages import prepare

    images = tmp_path / "records" / "images"
    images.mkdir(parents=True)
    for i in range(3):
        synthetic.filled(56, list(synthetic.COLORS.values())[i]).save(images / f"{i}.png")
    records = write_jsonl(tmp_path / "records", good_records())
    cfg = validate(
        {
            "data": {
                "source": "blink",
                "blink_root": str(blink_root),
                "train_records": str(records),
                "blink_subtasks": ["Jigsaw", "Counting"],
            }
        }
    )
    prepare.run(cfg, tmp_path / "data")
    val = read_split(tmp_path / "data" / "val.parquet")
    assert sorted({r["sub_task"] for r in val}) == ["Counting", "Jigsaw"] and len(val) == 2 * VAL_PER_TASK
    jigsaw = next(r for r in val if r["sub_task"] == "Jigsaw")
    assert jigsaw["prompt"].startswith(cfg["data"]["disclaimer"] + jigsaw["question"])
    assert all(r["prompt"].startswith(r["question"]) for r in val if r["sub_task"] == "Counting")
    test = read_split(tmp_path / "data" / "test.parquet", split="test")
    assert {r["answer"] for r in test} == {"hidden"}

    # Train on the records, then answer BLINK's hidden test split: a submission file.
    from amvl.stages import convert, evaluate, train

    cfg["train"].update(steps=2, batch_size=2, warmup_steps=1, checkpoint_every=2)
    cfg["model"]["vocab_size"] = 320
    cfg["evaluate"].update(split="test", max_new_tokens=4)
    train.run(cfg, tmp_path / "data", tmp_path / "run")
    convert.run(cfg, tmp_path / "run", tmp_path / "model")
    metrics = evaluate.run(cfg, tmp_path / "model", tmp_path / "data", tmp_path / "results")
    submission = json.loads((tmp_path / "results" / "submission.json").read_text())
    assert sorted(submission) == sorted(r["idx"] for r in test) and metrics["questions"] == len(test)
    assert set(submission.values()) <= {"(A)", "(B)", "(C)", "(D)", "(E)", "(Z)"} and "macro_accuracy" not in metrics
    assert json.loads((tmp_path / "results" / "Jigsaw.json").read_text())["test"][0]["answer"] == "hidden"


def test_blink_source_needs_a_root_and_training_records(tmp_path):
    from amvl.errors import ConfigError
    from amvl.stages import prepare

    with pytest.raises(ConfigError, match="data.train_records: BLINK has no training split"):
        prepare.run(validate({"data": {"source": "blink", "blink_root": str(tmp_path)}}), tmp_path / "d")
    with pytest.raises(ConfigError, match="data.blink_root: empty"):
        prepare.run(validate({"data": {"source": "blink", "train_records": "x.jsonl"}}), tmp_path / "d")


@pytest.fixture
def broken_root(tmp_path):
    """One subtask folder with one of each problem `inspect` must report."""
    rows = blink_rows("Counting", "val", 6)
    rows[1]["answer"] = "(E)"  # only four choices
    rows[2]["image_1"] = {"bytes": b"not an image", "path": None}
    rows[3]["idx"] = rows[0]["idx"]  # duplicate
    rows[4]["choices"] = []
    folder = tmp_path / "Counting"
    folder.mkdir()
    to_dataset(rows).to_parquet(str(folder / "val-00000-of-00001.parquet"))
    bad = tmp_path / "Jigsaw"
    bad.mkdir()
    datasets.Dataset.from_dict({"idx": ["j1"], "question": ["q"]}).to_parquet(str(bad / "val-00000-of-00001.parquet"))
    return tmp_path


def test_inspect_reports_each_problem_with_file_and_row(broken_root):
    _, problems = inspect(broken_root)
    counting = str(broken_root / "Counting" / "val-00000-of-00001.parquet")
    jigsaw = str(broken_root / "Jigsaw" / "val-00000-of-00001.parquet")
    expected = [
        f"{counting}: row idx=val_Counting_2: answer '(E)' is not one of (A), (B), (C), (D)",
        f"{counting}: row idx=val_Counting_3: image_1 does not decode as an image (UnidentifiedImageError)",
        f"{counting}: row idx=val_Counting_1: duplicate idx (also in {counting})",
        f"{counting}: row idx=val_Counting_5: empty choices",
        f"{jigsaw}: missing column sub_task, image_1, image_2, image_3, image_4, choices, answer, prompt",
    ]
    for line in expected:
        assert line in problems, line
    assert not any(p.startswith(f"{counting}: row idx=val_Counting_6") for p in problems)


def run_inspect(path):
    return subprocess.run(
        [sys.executable, "-m", "amvl", "data", "inspect", str(path)], env=tool_env(), capture_output=True, text=True
    )


def test_inspect_command_exit_codes(blink_root, broken_root):
    good = run_inspect(blink_root)
    assert good.returncode == 0 and "Visual_Similarity" in good.stdout and good.stderr == ""
    bad = run_inspect(broken_root)
    assert bad.returncode != 0 and "Traceback" not in bad.stderr
    assert all(line.startswith(str(broken_root)) for line in bad.stderr.strip().splitlines())
