"""The Monet-SFT-125K adapter, on a fixture in the layout its training code reads."""

import json

import pytest

from amvl.config import validate
from amvl.data import synthetic
from amvl.data.blink import read_split
from amvl.data.records import read_records
from amvl.errors import UserError
from amvl.stages import prepare


def turn(role, *parts):
    content = [
        {"type": "image", "image": p[4:]} if p.startswith("img:") else {"type": "text", "text": p} for p in parts
    ]
    return {"role": role, "content": content}


def sample(sample_id, *turns):
    return {"metadata": {"sample_id": sample_id}, "data": [turn("system", "You are helpful."), *turns]}


@pytest.fixture
def monet_root(tmp_path):
    root = tmp_path / "Monet-SFT-125K"
    for subset in ("Visual_CoT", "Zebra_CoT_count"):
        (root / subset / "images").mkdir(parents=True)
        for i, colour in enumerate(synthetic.COLORS.values()):
            synthetic.filled(56, colour).save(root / subset / "images" / f"{i}.png")
    visual_cot = [
        sample(
            1,
            turn("user", "img:images/0.png", "What colour is the sign?"),
            turn("assistant", "Zoom in.", "img:images/1.png", "<observation>It is red.</observation> \\boxed{red}"),
        ),
        sample(2, turn("user", "No image here?"), turn("assistant", "\\boxed{no}")),  # skipped
    ]
    counting = [
        sample(
            7,
            turn("user", "img:images/1.png", "img:images/2.png", "How many squares?"),
            turn("assistant", "<abs_vis_token></abs_vis_token>Two on the left,\none on the right.\nSo 3"),
        )
    ]
    (root / "Visual_CoT" / "train.json").write_text(json.dumps(visual_cot))
    (root / "Zebra_CoT_count" / "train.json").write_text(json.dumps(counting))
    return root


def test_monet_samples_become_training_rows(monet_root, capsys):
    rows = read_records(monet_root)
    assert "skipped 1 samples (Visual_CoT: no input image)" in capsys.readouterr().out
    first, second = rows
    assert first["idx"] == "Visual_CoT-1" and first["sub_task"] == "Visual_CoT"
    assert first["question"] == "What colour is the sign?" and first["answer"] == "red"
    # the assistant's intermediate image is dropped; its text, without Monet's tags, is the rationale
    assert first["image_2"] is None and first["image_1"]["bytes"][:4] == b"\x89PNG"
    assert first["explanation"] == "Zoom in.\nIt is red. \\boxed{red}"
    assert second["answer"] == "So 3" and second["image_2"] is not None  # no \boxed: the last line
    assert "abs_vis_token" not in second["explanation"]
    assert [r["idx"] for r in read_records(monet_root, ["Zebra_CoT_count"])] == ["Zebra_CoT_count-7"]


@pytest.mark.parametrize(
    "break_it, message",
    [
        (lambda root: (root / "Visual_CoT" / "train.json").write_text("[{"), "Visual_CoT/train.json: not valid JSON"),
        (
            lambda root: (root / "Visual_CoT" / "train.json").write_text(json.dumps([{"data": "x"}])),
            "Visual_CoT/train.json: sample 0: expected an object with a 'data' list",
        ),
        (lambda root: (root / "Visual_CoT" / "images" / "0.png").unlink(), "sample 0: image .*0.png not found"),
    ],
)
def test_bad_monet_copies_name_file_and_sample(monet_root, break_it, message):
    break_it(monet_root)
    with pytest.raises(UserError, match=message):
        read_records(monet_root)


def test_missing_or_unknown_subsets(monet_root, tmp_path):
    with pytest.raises(UserError, match="ReFocus/train.json: not found; download .*Monet-SFT-125K"):
        read_records(monet_root, ["ReFocus"])
    with pytest.raises(UserError, match="data.train_subsets: unknown subset 'Nope'"):
        read_records(monet_root, ["Nope"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="a folder, but no Monet-SFT-125K copy"):
        read_records(tmp_path / "empty")


def test_prepare_trains_on_a_monet_copy(monet_root, tmp_path):
    cfg = {"data": {"train_records": str(monet_root), "train_subsets": ["Visual_CoT"], "val_size": 2}}
    prepare.run(validate(cfg), tmp_path / "data")
    assert [r["idx"] for r in read_split(tmp_path / "data" / "train.parquet", split="train")] == ["Visual_CoT-1"]


@pytest.mark.parametrize("chunk", [1, 5, 1 << 20])
def test_a_subset_file_is_read_a_chunk_at_a_time_as_json_reads_it(tmp_path, chunk):
    from amvl.data.monet import json_items

    items = [sample(i, turn("user", "img:images/0.png", "Q\n?"), turn("assistant", f"\\boxed{{{i}}}")) for i in range(20)]
    path = tmp_path / "train.json"
    path.write_text(json.dumps([*items, 2.5, -1e30, None], indent=1))
    assert [item for item, _ in json_items(path, chunk)] == json.loads(path.read_text())
    path.write_text('[{"a": 1},\n\n{"b": }]')
    with pytest.raises(UserError, match=r"train.json: not valid JSON \(Expecting value, line 3\)"):
        list(json_items(path, chunk))
    path.write_text("[1] [2]")
    with pytest.raises(UserError, match="Extra data"):
        list(json_items(path, chunk))
