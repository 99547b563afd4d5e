import collections

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from amvl.config import validate
from amvl.data import synthetic
from amvl.data.blink import COLUMNS, read_split, write_split
from amvl.errors import ConfigError, UserError
from amvl.stages import prepare


def test_prepare_is_deterministic_to_the_byte(tmp_path):
    cfg = validate({"data": {"train_size": 4, "val_size": 3, "seed": 7}})
    prepare.run(cfg, tmp_path / "a")
    prepare.run(cfg, tmp_path / "b")
    for split in ("train", "val"):
        assert (tmp_path / "a" / f"{split}.parquet").read_bytes() == (tmp_path / "b" / f"{split}.parquet").read_bytes()
    other = validate({"data": {"train_size": 4, "val_size": 3, "seed": 8}})
    prepare.run(other, tmp_path / "c")
    assert (tmp_path / "a" / "val.parquet").read_bytes() != (tmp_path / "c" / "val.parquet").read_bytes()


def test_parquet_has_blink_schema_with_image_structs(prepared_data):
    table = pq.read_table(prepared_data / "val.parquet")
    assert table.column_names == COLUMNS
    assert table.schema.field("image_1").type == pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    rows = read_split(prepared_data / "val.parquet")
    similarity = [r for r in rows if r["sub_task"] == "Visual_Similarity"]
    assert all(len(r["images"]) == 3 for r in similarity)
    assert all(r["prompt"].startswith(r["question"] + "\nSelect from the following choices.\n(A) ") for r in rows)


@pytest.mark.parametrize("subtask", sorted(synthetic.SUBTASKS))
def test_answer_letters_are_balanced_and_valid(subtask):
    _, options = synthetic.SUBTASKS[subtask]
    rows = synthetic.generate(subtask, "train", 8 * options, seed=0, image_size=112)
    letters = collections.Counter(r["answer"] for r in rows)
    assert len(letters) == options and len(set(letters.values())) == 1
    assert all(len(r["choices"]) == options and len(set(r["choices"])) == options for r in rows)


def test_unknown_subtask_names_the_key(tmp_path):
    with pytest.raises(ConfigError, match="data.subtasks: unknown subtask 'Nope'"):
        prepare.run(validate({"data": {"subtasks": ["Nope"]}}), tmp_path / "d")


def write_bad(tmp_path, mutate):
    rows = synthetic.generate("Counting", "val", 3, seed=0, image_size=112)
    mutate(rows)
    path = tmp_path / "bad.parquet"
    write_split(rows, path)
    return path


def test_answer_outside_the_choices_names_the_row(tmp_path):
    path = write_bad(tmp_path, lambda rows: rows[1].update(answer="(E)"))
    with pytest.raises(UserError, match=r"row idx=val_Counting_2: answer '\(E\)' is not one of"):
        read_split(path)


def test_corrupt_image_names_the_row_and_column(tmp_path):
    path = tmp_path / "bad.parquet"
    rows = synthetic.generate("Counting", "val", 2, seed=0, image_size=112)
    write_split(rows, path)
    table = pq.read_table(path).to_pylist()
    table[0]["image_1"] = {"bytes": b"not a png", "path": None}
    pq.write_table(pa.Table.from_pylist(table, schema=pq.read_schema(path)), path)
    with pytest.raises(UserError, match="row idx=val_Counting_1: image_1 does not decode"):
        read_split(path)


def test_missing_column_names_the_file(tmp_path):
    path = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"idx": ["1"], "question": ["q"]}), path)
    with pytest.raises(UserError, match="bad.parquet: missing column sub_task"):
        read_split(path)


def test_images_decode_to_the_configured_size(prepared_data):
    row = read_split(prepared_data / "val.parquet")[0]
    assert isinstance(row["images"][0], Image.Image)
    assert row["images"][0].size == (validate({})["data"]["image_size"],) * 2


def cell_colours(image, grid=3):
    """Colour name (or None) at the centre of each 28-pixel cell, in reading order."""
    names = {v: k for k, v in synthetic.COLORS.items()}
    return [names.get(image.getpixel((c * 28 + 14, r * 28 + 14))) for r in range(grid) for c in range(grid)]


def answer_text(row):
    return row["choices"]["ABCD".index(row["answer"][1])]


def test_iq_test_answer_continues_the_visible_cycle():
    for row in synthetic.generate("IQ_Test", "val", 30, seed=3, image_size=84):
        colours = cell_colours(row["image_1"])
        visible, last = colours[:-1], colours[-1]
        assert last is None
        periods = [p for p in (2, 3) if all(visible[i] == visible[i + p] for i in range(len(visible) - p))]
        assert periods, visible
        assert visible[len(visible) - periods[0]] == answer_text(row)


def test_jigsaw_answer_has_the_bottom_rows_colour():
    for row in synthetic.generate("Jigsaw", "val", 20, seed=3, image_size=84):
        colours = cell_colours(row["image_1"])
        assert colours[-1] is None and colours[6] == colours[7]
        chosen = row["image_2"] if row["answer"] == "(A)" else row["image_3"]
        assert cell_colours(chosen)[0] == colours[6]


def test_relative_depth_answer_is_the_larger_square():
    for row in synthetic.generate("Relative_Depth", "val", 20, seed=3, image_size=84):
        pixels = list(row["image_1"].getdata())
        areas = {name: pixels.count(rgb) for name, rgb in synthetic.COLORS.items()}
        assert f"the {max(areas, key=areas.get)} square" == answer_text(row)
