"""The V* Bench, HR-Bench and VisualPuzzles readers turn each published layout into BLINK-schema
rows, name the file and row of every bad question, and reject bad files with one line."""

import inspect
import io
import json

import pytest
from benchmark_fixtures import write_hrbench, write_visualpuzzles, write_vstar
from PIL import Image

from amvl.data import hrbench, visualpuzzles, vstar
from amvl.data.benchmarks import BENCHMARKS, checked_rows, detect
from amvl.data.blink import COLUMNS, decode_row
from amvl.errors import UserError


def rows_of(name, root):
    rows = list(checked_rows(name, root))
    return [row for row, _ in rows], [p for _, problems in rows for p in problems]


def clean_rows(name, root):
    """The rows of a fixture without problems, each checked against BLINK's schema."""
    rows, problems = rows_of(name, root)
    assert problems == []
    for row in rows:
        assert_schema(row)
    return rows


def assert_schema(row):
    assert set(row) == set(COLUMNS)
    assert isinstance(row["idx"], str) and row["explanation"] == ""
    assert row["image_2"] is row["image_3"] is row["image_4"] is None
    Image.open(io.BytesIO(row["image_1"]["bytes"])).load()
    assert decode_row(row, "here", "val")[1] == []


# V* Bench


def test_vstar_rows_keep_the_authors_prompt(tmp_path):
    write_vstar(tmp_path, n=4)
    rows = clean_rows("vstar", tmp_path)
    first, second = rows[0], rows[1]
    assert first["idx"] == "0" and first["sub_task"] == "direct_attributes"
    assert first["question"] == "What is the color of the umbrella?"
    assert first["choices"] == ["red", "blue", "green", "white"] and first["answer"] == "(A)"
    assert first["prompt"] == (
        "What is the color of the umbrella?\n(A) red\n(B) blue\n(C) green\n(D) white\n"
        "Answer with the option's letter from the given choices directly."
    )
    assert first["image_1"]["path"] == "direct_attributes/sa_1000.jpg"
    assert second["sub_task"] == "relative_position" and second["choices"] == ["left", "right"]
    assert second["answer"] == "(B)"
    assert [r["answer"] for r in rows] == ["(A)", "(B)", "(C)", "(B)"]


def test_vstar_without_labels_answers_with_the_annotations_first_option(tmp_path):
    write_vstar(tmp_path, n=4, labels=False)
    rows, problems = rows_of("vstar", tmp_path)
    assert problems == [] and [r["answer"] for r in rows] == ["(A)", "(B)", "(C)", "(B)"]


def test_vstar_splits_options_written_inline():
    question, letters, choices = vstar.split_text("Is the cup left or right? (A) left (B) right")
    assert question == "Is the cup left or right?" and letters == ["A", "B"] and choices == ["left", "right"]


def test_vstar_bad_rows_name_file_and_row(tmp_path):
    write_vstar(tmp_path, n=4, corrupt_row=1, bad_answer_row=2)
    rows, problems = rows_of("vstar", tmp_path)
    assert len(rows) == 4 and len(problems) == 2
    jsonl = tmp_path / "test_questions.jsonl"
    assert problems[0].startswith(f"{jsonl}: row 2 (id=1): image_1 does not decode")
    assert problems[1] == f"{jsonl}: row 3 (id=2): answer 'E' is not among the 4 options"


def test_vstar_missing_image_and_broken_line_are_row_problems(tmp_path):
    write_vstar(tmp_path, n=2)
    (tmp_path / "relative_position" / "sa_1001.jpg").unlink()
    with (tmp_path / "test_questions.jsonl").open("a") as f:
        f.write("{not json\n")
    _, problems = rows_of("vstar", tmp_path)
    assert any("row 2 (id=1): image relative_position/sa_1001.jpg not readable" in p for p in problems)
    assert any("row 3 (id=3): not a JSON object" in p for p in problems)


def test_vstar_missing_question_file_raises_naming_it(tmp_path):
    write_vstar(tmp_path, n=2)
    (tmp_path / "test_questions.jsonl").unlink()
    with pytest.raises(UserError, match=r"test_questions\.jsonl: V\* question file not found; put a snapshot"):
        list(checked_rows("vstar", tmp_path))


# HR-Bench


def test_hrbench_rows_prompt_and_categories(tmp_path):
    write_hrbench(tmp_path, n=4, variant="4k")
    rows = clean_rows("hrbench_4k", tmp_path)
    assert [r["idx"] for r in rows] == ["100", "101", "102", "103"]
    assert [r["sub_task"] for r in rows] == ["FSP", "FCP", "FSP", "FCP"]
    assert [r["answer"] for r in rows] == ["(A)", "(B)", "(C)", "(D)"]
    assert rows[0]["question"] == 'What is written on the "sign" number 0?'
    assert rows[0]["choices"] == ["option A0", "option B0", "option C0", "option D0"]
    assert rows[0]["prompt"] == (
        'Question: What is written on the "sign" number 0?\nOptions:\nA. option A0\nB. option B0\n'
        "C. option C0\nD. option D0\nPlease select the correct answer from the options above. \n"
    )


def test_hrbench_reads_each_variant_of_a_shared_root(tmp_path):
    write_hrbench(tmp_path, n=2, variant="8k")
    assert detect(tmp_path) == "hrbench_8k"
    write_hrbench(tmp_path, n=3, variant="4k")
    assert detect(tmp_path) == "hrbench_4k"
    assert len(rows_of("hrbench_4k", tmp_path)[0]) == 3 and len(rows_of("hrbench_8k", tmp_path)[0]) == 2
    with pytest.raises(UserError, match="holds both HR-Bench 4K and 8K"):
        next(hrbench.iter_rows(tmp_path))
    assert [r["idx"] for r, _, _ in hrbench.iter_rows(tmp_path / "hr_bench_8k.tsv")] == ["100", "101"]


def test_hrbench_parquet_and_pointer_images(tmp_path):
    write_hrbench(tmp_path, n=3, fmt="parquet", pointer_row=2)
    rows, problems = rows_of("hrbench_4k", tmp_path)
    assert problems == [] and rows[2]["image_1"]["bytes"] == rows[0]["image_1"]["bytes"]


def test_hrbench_reads_images_beyond_the_csv_field_limit_lazily(tmp_path):
    write_hrbench(tmp_path, n=2, image_size=256, noise=True)
    rows = hrbench.iter_rows(tmp_path, "4k")
    assert inspect.isgenerator(rows)
    row, _, problems = next(rows)
    assert problems == [] and len(row["image_1"]["bytes"]) > 131072


def test_hrbench_bad_rows_name_file_and_row(tmp_path):
    path = write_hrbench(tmp_path, n=4, corrupt_row=0, bad_answer_row=1, bad_base64_row=3)
    rows, problems = rows_of("hrbench_4k", tmp_path)
    assert len(rows) == 4
    assert problems[0].startswith(f"{path}: row 1 (id=100): image_1 does not decode")
    assert problems[1] == f"{path}: row 2 (id=101): answer 'F' is not among the 4 options"
    assert problems[2] == f"{path}: row 4 (id=103): image is not valid base64"
    assert problems[3] == f"{path}: row 4 (id=103): no images"


def test_hrbench_missing_column_or_file_raises_naming_it(tmp_path):
    path = write_hrbench(tmp_path, n=2, drop_column="answer")
    with pytest.raises(UserError, match=rf"{path}: missing column answer"):
        list(checked_rows("hrbench_4k", tmp_path))
    with pytest.raises(UserError, match=r"hr_bench_8k\.tsv: HR-Bench file not found"):
        list(checked_rows("hrbench_8k", tmp_path))


# VisualPuzzles


def test_visualpuzzles_rows_with_listed_and_drawn_options(tmp_path):
    write_visualpuzzles(tmp_path, n=5)
    rows = clean_rows("visualpuzzles", tmp_path)
    assert [r["idx"] for r in rows] == ["1", "2", "3", "4", "5"]
    assert [r["sub_task"] for r in rows] == ["algorithmic", "analogical", "deductive", "inductive", "spatial"]
    assert [r["answer"] for r in rows] == ["(A)", "(B)", "(C)", "(D)", "(A)"]
    listed, drawn = rows[0], rows[1]
    assert listed["choices"] == ["0", "1", "2", "3"] and listed["question"] == "Which figure completes pattern 0?"
    assert listed["prompt"] == (
        "Question: Which figure completes pattern 0?\nOptions:\n(A) 0\n(B) 1\n(C) 2\n(D) 3\n"
        "Answer the question with the option's letter from the given choices directly."
    )
    assert drawn["choices"] == ["", "", "", ""]
    assert drawn["prompt"] == (
        "Question: Which figure completes pattern 1?\nOptions: Choose from (A) (B) (C) (D) in the image.\n"
        "Answer the question with the option's letter from the given choices directly."
    )


def test_visualpuzzles_bad_rows_name_file_and_row(tmp_path):
    path = write_visualpuzzles(tmp_path, n=4, corrupt_row=2, bad_answer_row=3)
    _, problems = rows_of("visualpuzzles", tmp_path)
    assert len(problems) == 2
    assert problems[0].startswith(f"{path}: row 3 (id=3): image_1 does not decode")
    assert problems[1] == f"{path}: row 4 (id=4): answer 'E' is not among the 4 options"


def test_visualpuzzles_missing_column_or_file_raises_naming_it(tmp_path):
    path = write_visualpuzzles(tmp_path, n=2, drop_column="options")
    assert detect(tmp_path) is None  # not its layout without the column
    with pytest.raises(UserError, match=rf"{path}: missing column options"):
        list(checked_rows("visualpuzzles", tmp_path))
    with pytest.raises(UserError, match=r"data\.parquet: VisualPuzzles file not found"):
        list(visualpuzzles.iter_rows(tmp_path / "elsewhere"))


# The registry


def test_detect_finds_each_layout_and_nothing_else(tmp_path):
    write_vstar(tmp_path / "vstar", n=2)
    write_hrbench(tmp_path / "hr", n=2, variant="8k")
    write_visualpuzzles(tmp_path / "vp", n=2)
    (tmp_path / "empty").mkdir()
    (tmp_path / "other.json").write_text(json.dumps({}))
    assert detect(tmp_path / "vstar") == "vstar"
    assert detect(tmp_path / "hr") == "hrbench_8k"
    assert detect(tmp_path / "hr" / "hr_bench_8k.tsv") == "hrbench_8k"
    assert detect(tmp_path / "vp") == "visualpuzzles"
    assert detect(tmp_path / "empty") is None and detect(tmp_path / "other.json") is None
    assert detect(tmp_path / "missing") is None


def test_registry_entries():
    assert list(BENCHMARKS) == ["vstar", "hrbench_4k", "hrbench_8k", "visualpuzzles"]
    assert {b.title for b in BENCHMARKS.values()} == {"V* Bench", "HR-Bench 4K", "HR-Bench 8K", "VisualPuzzles"}
    assert BENCHMARKS["vstar"].paper == {"Qwen2.5-VL-7B": 76.44, "AMVL": 84.29}
    assert all(b.score in ("micro", "macro") for b in BENCHMARKS.values())
    with pytest.raises(UserError, match="unknown benchmark 'blink'"):
        list(checked_rows("blink", "."))
