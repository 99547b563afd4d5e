import io
import json
import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from amvl.config import validate
from amvl.data import synthetic
from amvl.data.blink import read_split
from amvl.data.records import read_records
from amvl.errors import UserError
from amvl.stages import prepare


@pytest.fixture
def record_dir(tmp_path):
    (tmp_path / "images").mkdir()
    for i, colour in enumerate(synthetic.COLORS.values()):
        synthetic.filled(56, colour).save(tmp_path / "images" / f"{i}.png")
    return tmp_path


def write_jsonl(folder, records):
    path = folder / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def good_records():
    return [
        {
            "id": "a",
            "images": ["images/0.png"],
            "question": "What colour is it?",
            "choices": ["red", "blue"],
            "answer": "blue",
            "rationale": "It is blue.",
            "source": "colours",
        },
        {
            "id": "b",
            "images": ["images/1.png", "images/2.png"],
            "question": "Describe both.",
            "answer": "blue then green",
        },
    ]


def test_records_become_training_rows(record_dir):
    rows = read_records(write_jsonl(record_dir, good_records()))
    first, second = rows
    assert first["answer"] == "(B)" and first["prompt"].endswith("(A) red\n(B) blue") and first["sub_task"] == "colours"
    assert first["explanation"] == "It is blue." and first["image_1"]["bytes"][:4] == b"\x89PNG"
    assert second["choices"] == [] and second["answer"] == "blue then green" and second["prompt"] == "Describe both."
    assert second["image_2"] is not None and second["image_3"] is None


def test_parquet_records_with_image_bytes(record_dir):
    png = (record_dir / "images" / "0.png").read_bytes()
    path = record_dir / "train.parquet"
    pq.write_table(
        pa.Table.from_pylist(
            [
                {
                    "id": "p1",
                    "images": [{"bytes": png, "path": "x.png"}],
                    "question": "Q?",
                    "choices": ["yes", "no"],
                    "answer": "(A)",
                }
            ]
        ),
        path,
    )
    assert read_records(path)[0]["image_1"]["bytes"] == png


@pytest.mark.parametrize(
    "change, message",
    [
        (
            {"answer": "purple"},
            re.escape("record 1 (id=a): answer 'purple' is neither a letter of its 2 choices nor one of them"),
        ),
        ({"images": ["images/missing.png"]}, "image .*missing.png not found"),
        ({"images": ["images/0.png"] * 5}, "5 images; BLINK rows hold 1 to 4"),
        ({"question": ""}, "record 1 \\(id=a\\): 'question' is empty"),
        ({"question": None}, "record 1 \\(id=a\\): missing 'question'"),
        ({"images": []}, re.escape("record 1 (id=a): 'images' is empty (each record needs 1 to 4 images)")),
        ({"id": "b"}, "record 2 \\(id=b\\): duplicate id"),
    ],
)
def test_bad_records_name_the_record(record_dir, change, message):
    records = good_records()
    records[0].update(change)
    with pytest.raises(UserError, match=message):
        read_records(write_jsonl(record_dir, records))


def test_bad_json_line_names_the_line(record_dir):
    path = record_dir / "train.jsonl"
    path.write_text(json.dumps(good_records()[0]) + "\n{oops\n")
    with pytest.raises(UserError, match="line 2 is not JSON"):
        read_records(path)


def test_prepare_uses_records_as_the_train_split(record_dir, tmp_path):
    records = write_jsonl(record_dir, good_records())
    prepare.run(validate({"data": {"train_records": str(records), "val_size": 2}}), tmp_path / "data")
    train_rows = read_split(tmp_path / "data" / "train.parquet", split="train")
    assert [r["idx"] for r in train_rows] == ["a", "b"] and len(train_rows[1]["images"]) == 2
    val_rows = read_split(tmp_path / "data" / "val.parquet")
    assert len(val_rows) == 2 * len(validate({})["data"]["subtasks"])


def test_free_text_answers_train(record_dir):
    """A record without choices trains on its answer text."""
    import torch

    from amvl.config import Section
    from amvl.data.collate import collate, encode
    from amvl.model.backbone import build_image_processor, build_small_qwen, build_tokenizer
    from amvl.model.latent import wrap_backbone

    rows = read_records(write_jsonl(record_dir, good_records()))
    for row in rows:
        row["images"] = [
            Image.open(io.BytesIO(row[c]["bytes"])).convert("RGB") for c in ("image_1", "image_2") if row[c]
        ]
    cfg = Section(validate({"model": {"vocab_size": 320}}))
    tokenizer = build_tokenizer([r["prompt"] + r["answer"] for r in rows], 320, cfg.model.latent_slots)
    examples = [encode(r, tokenizer, build_image_processor(56)) for r in rows]
    assert examples[1].choice_ids == [] and tokenizer.decode(examples[1].answer_ids).startswith("blue then green")
    model = wrap_backbone(build_small_qwen(cfg.model, tokenizer), tokenizer, cfg.model)
    assert torch.isfinite(model(collate(examples))["ntp_loss"])
