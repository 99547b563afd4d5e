"""Streamed data (amvl/data/stream.py) and token budgets (amvl/data/budget.py): the stream gives
the batches the in-memory path gave, and examples over a budget are resized or skipped, counted."""

import io
import json
import random

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from amvl.config import Section, validate
from amvl.data import budget, stream, synthetic
from amvl.data.blink import ROW_GROUP, png_image, read_split, write_rows
from amvl.data.collate import collate, encode, tokens
from amvl.errors import ConfigError, UserError
from amvl.evaluation import diagnostics
from amvl.model.backbone import build_image_processor, build_small_qwen, build_tokenizer
from amvl.model.latent import wrap_backbone
from amvl.stages import convert, evaluate, prepare, train

FORMAT = "letter_and_option"


@pytest.fixture(scope="module")
def built(prepared_data):
    """The train split in memory, and the tokenizer and image processor training builds from it."""
    rows = read_split(prepared_data / "train.parquet", split="train")
    tokenizer = build_tokenizer([r["prompt"] + r["answer"] for r in rows], 320, 4)
    return rows, tokenizer, build_image_processor(rows[0]["images"][0].width)


def same_batch(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        torch.equal(a[k], b[k]) if isinstance(a[k], torch.Tensor) else a[k] == b[k] for k in a
    )


@pytest.mark.parametrize("workers", [0, 2])
def test_streamed_batches_are_the_in_memory_ones(prepared_data, built, workers):
    """Every micro-batch over three epochs (36 rows, 5 a batch: batches straddle epochs), on rank 1
    of 2, from step 0 and resumed at step 5: the rows, token ids and pixel values of before."""
    rows, tokenizer, image_processor = built
    examples = [encode(r, tokenizer, image_processor, FORMAT) for r in rows]
    cfg = Section(validate({"train": {"batch_size": 5, "grad_accum": 2}})).train
    rows_stream = stream.Rows(prepared_data / "train.parquet", split="train")
    dataset = stream.Encoded(rows_stream, tokenizer, image_processor, FORMAT, 0, "train.max_tokens")
    indices = lambda step, micro: stream.batch_indices(step, micro, cfg, len(rows), 1, 2)  # noqa: E731
    for start in (0, 5):
        batches = stream.StepBatches(start, 11, cfg.grad_accum, indices)
        streamed = list(stream.loader(dataset, batches, stream.train_batch, workers))
        expected = [collate([examples[i] for i in indices(s, m)]) for s in range(start, 11) for m in range(2)]
        assert len(streamed) == len(expected) == 2 * (11 - start)
        assert all(error == "" and not counts for _, counts, error in streamed)
        assert all(same_batch(got, want) for (got, _, _), want in zip(streamed, expected))
    assert train.batch_indices is stream.batch_indices  # training samples with this one function


def test_training_reads_text_and_one_image_not_the_split(prepared_data, built):
    rows, _, _ = built
    inputs = train.build_inputs(stream.Rows(prepared_data / "train.parquet", split="train"), Section(validate({})))
    assert [r["prompt"] + r["answer"] for r in inputs] == [r["prompt"] + r["answer"] for r in rows]
    assert [i.tobytes() for i in inputs[0]["images"]] == [i.tobytes() for i in rows[0]["images"]]
    assert all("images" not in r for r in inputs[1:])


def test_rows_read_lazily_across_row_groups_equal_read_split(tmp_path):
    generated = synthetic.generate("Jigsaw", "val", 2 * ROW_GROUP + 5, seed=0, image_size=84)
    cells = [{**r, **{c: png_image(r[c]) for c in ("image_1", "image_2", "image_3")}} for r in generated]
    path = tmp_path / "val.parquet"
    assert write_rows(iter(cells), path) == len(cells)
    assert pq.ParquetFile(path).metadata.num_row_groups == 3
    assert b"huggingface" in pq.read_schema(path).metadata  # `datasets` reads the images back as Images
    expected, rows = read_split(path), stream.Rows(path)
    for i in random.Random(0).sample(range(len(expected)), len(expected)):  # shuffled: a new group each time
        got = rows[i]
        assert [im.tobytes() for im in got.pop("images")] == [im.tobytes() for im in expected[i]["images"]]
        assert got == {k: v for k, v in expected[i].items() if k != "images"}


def test_a_bad_row_stops_training_with_one_line_naming_it(prepared_data, tmp_path, tiny_cfg):
    data = tmp_path / "data"
    data.mkdir()
    table = pq.read_table(prepared_data / "train.parquet").to_pylist()
    for row in table[1:]:  # row 0 must decode: it sizes the image processor
        row["image_1"] = {"bytes": b"not a png", "path": None}
    pq.write_table(pa.Table.from_pylist(table, schema=pq.read_schema(prepared_data / "train.parquet")), data / "train.parquet")
    cfg = json.loads(json.dumps(tiny_cfg))
    cfg["train"]["workers"] = 1  # raised in a worker, it still reaches the user as one line
    with pytest.raises(UserError, match=r"train.parquet: row idx=train_\w+_\d+: image_1 does not decode") as error:
        train.run(cfg, data, tmp_path / "run")
    assert "\n" not in str(error.value)


def big_row(prompt_words: int = 5) -> dict:
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (480, 640, 3), dtype=np.uint8))
    return {
        "idx": "big",
        "sub_task": "train",
        "images": [image, image.resize((320, 240))],
        "choices": ["yes", "no"],
        "answer": "(B)",
        "prompt": " ".join(["word"] * prompt_words),
    }


def test_token_counts_are_predicted_exactly(built):
    rows, tokenizer, image_processor = built
    for row in [*rows[:12], big_row()]:
        predicted = budget.text_tokens(row, tokenizer, FORMAT)
        predicted += budget.image_tokens(row["images"], image_processor, budget.caps(image_processor)[1])
        assert predicted == tokens(encode(row, tokenizer, image_processor, FORMAT))


def test_an_example_over_the_limit_is_resized_to_fit(built):
    tokenizer, image_processor = built[1], build_image_processor(640)  # keeps 640 x 480: 391 tokens
    row = big_row()
    whole = encode(row, tokenizer, image_processor, FORMAT)
    same, status = budget.fit(row, tokenizer, image_processor, FORMAT, tokens(whole))
    assert status == "" and torch.equal(same.pixel_values, whole.pixel_values)
    limit = tokens(whole) // 3
    resized, status = budget.fit(row, tokenizer, image_processor, FORMAT, limit)
    assert status == "resized" and 0.9 * limit <= tokens(resized) <= limit  # about as large as fits
    assert resized.answer_ids == whole.answer_ids and resized.choice_ids == whole.choice_ids  # nothing cut off
    assert (resized.image_grid_thw[:, 1:] < whole.image_grid_thw[:, 1:]).all()


def test_an_example_that_cannot_fit_is_skipped_and_the_next_row_stands_in(built, tmp_path):
    _, tokenizer, image_processor = built
    generated = synthetic.generate("Counting", "train", 3, seed=0, image_size=84)
    generated[0]["prompt"] = " ".join(["many words"] * 200)  # text alone over the limit
    path = tmp_path / "train.parquet"
    write_rows(({**r, "image_1": png_image(r["image_1"])} for r in generated), path)
    rows = stream.Rows(path, split="train")
    limit = tokens(encode(rows[1], tokenizer, image_processor, FORMAT)) + 10  # the next row fits
    assert budget.fit(rows[0], tokenizer, image_processor, FORMAT, limit) == (None, "skipped")
    dataset = stream.Encoded(rows, tokenizer, image_processor, FORMAT, limit, "train.max_tokens")
    example, status, error = dataset[0]
    assert (example.idx, status, error) == (generated[1]["idx"], "skipped", "")
    batch, counts, error = stream.train_batch([dataset[0], dataset[1]])
    assert counts == {"skipped": 1} and error == "" and len(batch["prompt_ids"]) == 2
    nothing_fits = stream.Encoded(rows, tokenizer, image_processor, FORMAT, 5, "train.max_tokens")
    assert nothing_fits[0][0] is None and "over train.max_tokens (5)" in nothing_fits[0][2]


def test_pixel_caps_override_the_processor_and_are_checked():
    image_processor = build_image_processor(84)
    own = budget.caps(image_processor)
    budget.set_caps(image_processor, 0, 0, "train")
    assert budget.caps(image_processor) == own
    budget.set_caps(image_processor, 0, 56 * 56, "train")
    assert budget.caps(image_processor) == (own[0], 56 * 56)
    grid = image_processor(images=[synthetic.filled(84, (0, 0, 0))], return_tensors="pt")["image_grid_thw"]
    assert grid.tolist() == [[1, 4, 4]]  # 56 x 56 pixels
    with pytest.raises(ConfigError, match="evaluate.min_pixels: 9999 is above max_pixels 3136"):
        budget.set_caps(image_processor, 9999, 0, "evaluate")


def test_length_grouping_is_a_pure_function_of_seed_and_step_and_pads_less():
    n, cfg = 1000, Section(validate({"train": {"batch_size": 8, "grad_accum": 2}})).train
    lengths = np.random.default_rng(0).integers(10, 2000, n)
    grouped = [stream.batch_indices(s, m, cfg, n, r, 2, lengths) for s in range(32) for m in range(2) for r in range(2)]
    again = [stream.batch_indices(s, m, cfg, n, r, 2, lengths) for s in range(32) for m in range(2) for r in range(2)]
    plain = [stream.batch_indices(s, m, cfg, n, r, 2) for s in range(32) for m in range(2) for r in range(2)]
    assert grouped == again
    window = stream.GROUP_WINDOW
    for w in range(0, len(plain), window):  # two windows: each the same rows as the plain stream's, regrouped
        assert sorted(sum(grouped[w : w + window], [])) == sorted(sum(plain[w : w + window], []))
    pad = lambda batches: np.mean([1 - lengths[b].mean() / lengths[b].max() for b in batches])  # noqa: E731
    assert pad(grouped) < pad(plain) / 3
    assert [b[0] for b in grouped[:window]] != sorted([b[0] for b in grouped[:window]], key=lambda i: -lengths[i])


def test_budgets_in_training_and_evaluation(prepared_data, tmp_path, tiny_cfg):
    """Capped pixels go with the model into evaluation; resized and skipped examples are counted
    in the log, the summary and metrics.json; padding is logged; a DataLoader worker encodes."""
    cfg = json.loads(json.dumps(tiny_cfg))
    # 180 tokens: Visual_Similarity's text alone is over (skipped), Jigsaw's images are resized
    cfg["train"].update(max_pixels=56 * 56, max_tokens=180, workers=1, batch_size=4, steps=6)
    run_dir = tmp_path / "run"
    summary = train.run(cfg, prepared_data, run_dir)
    records = [json.loads(line) for line in (run_dir / "train_log.jsonl").read_text().splitlines()]
    assert all(0 < r["padding"] < 1 for r in records)
    assert summary["data"]["skipped"] == sum(r["skipped"] for r in records) > 0
    assert summary["data"]["resized"] == sum(r["resized"] for r in records) > 0
    saved = json.loads((run_dir / "skeleton" / "preprocessor_config.json").read_text())
    assert saved["size"]["longest_edge"] == 56 * 56

    convert.run({}, run_dir, tmp_path / "model")
    cfg["evaluate"].update(max_tokens=180, diagnostics=False)
    metrics = evaluate.run(cfg, tmp_path / "model", prepared_data, tmp_path / "results")
    assert metrics["skipped"] == 4 and metrics["questions"] == 24 and metrics["per_task"]["Visual_Similarity"] == 0
    skipped = json.loads((tmp_path / "results" / "Visual_Similarity.json").read_text())["val"]
    assert [(a["idx"], a["prediction"]) for a in skipped] == [(f"val_Visual_Similarity_{i}", "(Z)") for i in range(1, 5)]


def test_length_grouped_training_pads_less(prepared_data, tmp_path, tiny_cfg):
    cfg = json.loads(json.dumps(tiny_cfg))
    cfg["train"].update(group_by_length=True, batch_size=4, steps=3)
    train.run(cfg, prepared_data, tmp_path / "run")
    logged = [json.loads(line)["padding"] for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    rows = read_split(prepared_data / "train.parquet", split="train")
    lengths = [len(r["prompt"]) for r in rows]  # the character count orders these rows as tokens do
    ungrouped = [stream.batch_indices(s, 0, Section(cfg).train, len(rows)) for s in range(3)]
    assert max(logged) < 0.05 < np.mean([1 - np.mean([lengths[i] for i in b]) / max(lengths[i] for i in b) for b in ungrouped])


def test_diagnostics_on_a_streamed_split_equal_those_in_memory(prepared_data, monkeypatch):
    rows = read_split(prepared_data / "val.parquet")
    tokenizer = build_tokenizer([r["prompt"] + r["answer"] for r in rows], 320, 4)
    image_processor = build_image_processor(rows[0]["images"][0].width)
    cfg = Section(validate({"model": {"vocab_size": 320}}))
    model = wrap_backbone(build_small_qwen(cfg.model, tokenizer), tokenizer, cfg.model).eval()
    specials = set(tokenizer.all_special_ids) | set(tokenizer.added_tokens_decoder)
    examples = [encode(r, tokenizer, image_processor) for r in rows]
    in_memory = diagnostics.leakage(model, examples, 5, [0.0, 0.5], specials)
    monkeypatch.setattr(stream, "CACHE_BYTES", 0)  # nothing kept between passes: each decodes again
    split = stream.Rows(prepared_data / "val.parquet")
    streamed = stream.Examples(stream.Encoded(split, tokenizer, image_processor, "letter", 0, "k"), range(len(rows)), 0)
    assert diagnostics.leakage(model, streamed, 5, [0.0, 0.5], specials) == in_memory
    assert streamed.cache is None and all(e.pixel_values is None for e in streamed)
