"""The Z-use probe (train.z_probe_every): a decoder that reads Z shows a gain, one cut off from Z shows
none, and probing changes nothing the training computes."""

import json

import pytest
import torch
from PIL import Image

from amvl.config import validate
from amvl.data.collate import collate, encode
from amvl.data.stream import Rows
from amvl.model.backbone import load_processors
from amvl.model.latent import LatentReasoner
from amvl.stages import convert, prepare, train
from amvl.stages.report import z_read_from


@pytest.fixture(scope="module")
def coin_data(tmp_path_factory):
    """A question nothing in x answers: one blank image, one question, a coin's side as the answer.
    Each record's rationale names the side ("The coin shows heads."): a posterior that reads it
    holds the answer, the only place the decoder can find it."""
    folder = tmp_path_factory.mktemp("coin")
    Image.new("RGB", (56, 56), (128, 128, 128)).save(folder / "blank.png")
    sides = torch.randint(2, (64,), generator=torch.Generator().manual_seed(0)).tolist()
    with open(folder / "coin.jsonl", "w") as f:
        for i, side in enumerate(sides):
            record = {"id": f"coin-{i}", "images": ["blank.png"], "question": "Which side did the coin land on?",
                      "choices": ["heads", "tails"], "answer": ["(A)", "(B)"][side],
                      "rationale": f"The coin shows {['heads', 'tails'][side]}."}  # fmt: skip
            f.write(json.dumps(record) + "\n")
    data = folder / "data"
    prepare.run(validate({"data": {"train_records": str(folder / "coin.jsonl"), "val_size": 2}}), data)
    return data


@pytest.fixture(scope="module")
def reads_z(coin_data, tmp_path_factory):
    """A KL-free posterior reading the rationale, its latent named after it (rationale_weight): the
    decoder learns to read the coin's side from Z within about 150 steps."""
    cfg = validate({
        "model": {"vocab_size": 320, "freeze_vision": False, "posterior_input": "rationale"},
        "objective": {"name": "elbo", "beta": {"max": 0.0}, "rationale_weight": 1.0},
        "train": {"steps": 250, "batch_size": 8, "warmup_steps": 5, "checkpoint_every": 250, "log_every": 10},
    })  # fmt: skip
    run_dir = tmp_path_factory.mktemp("runs") / "reads_z"
    summary = train.run(cfg, coin_data, run_dir)
    return run_dir, summary


def test_a_decoder_that_learns_to_read_z_shows_a_gain_in_the_log(reads_z):
    run_dir, summary = reads_z
    records = [json.loads(line) for line in (run_dir / "train_log.jsonl").read_text().splitlines()]
    probed = [r for r in records if "z_gain" in r]
    assert [r["step"] for r in probed] == list(range(10, 251, 10))  # every log_every steps by default
    for r in probed:
        assert set(r) >= {"ntp_zero_z", "ntp_shuffled_z", "ntp_prior_z", "z_gain", "z_gain_shuffled", "z_gain_prior"}
        assert r["z_gain"] == pytest.approx(r["ntp_zero_z"] - r["ntp"], abs=2e-6)
    assert probed[0]["z_gain_shuffled"] < 0.05  # not yet read at step 10
    assert summary["z_use"]["probes"] == 10 and summary["z_use"]["z_gain_shuffled"] > 0.1  # read by the end
    assert summary["z_use"]["z_gain"] > 0.1
    assert summary["final"]["ntp"] < 0.05  # the coin is guessed right only through Z
    onset = z_read_from(records)  # the report's "Z read from step"
    assert onset != "never" and 10 < int(onset) < 250
    assert z_read_from([{**r, "z_gain_shuffled": 0.0} for r in records]) == "never"
    assert z_read_from([{"step": 1, "ntp": 0.5}]) == ""  # no probe: nothing to say


def test_a_decoder_cut_off_from_z_shows_no_gain(reads_z, coin_data, tmp_path):
    run_dir, _ = reads_z
    convert.run({}, run_dir, tmp_path / "model")
    model = LatentReasoner.load(tmp_path / "model").eval()
    tokenizer, image_processor = load_processors(tmp_path / "model")
    rows = Rows(coin_data / "train.parquet", split="train")
    batch = collate([encode(rows[i], tokenizer, image_processor, "letter_and_option", rationale=True) for i in range(8)])
    with torch.no_grad():
        torch.manual_seed(0)
        out = model(batch, z_probe=True)
        assert out["z_probe"]["ntp_shuffled_z"] > out["ntp_loss"] + 0.1  # the same model, Z read
        model.injector.proj.weight.zero_()  # inj(Z) is now the same for every Z: the decoder cannot see it
        torch.manual_seed(0)
        cut = model(batch, z_probe=True)
    for loss in cut["z_probe"].values():
        assert loss == pytest.approx(cut["ntp_loss"].item(), abs=1e-6)


def test_probing_changes_nothing_the_training_computes(prepared_data, tmp_path):
    runs = {}
    for every in (1, 0):  # every step, never
        cfg = validate({
            "model": {"vocab_size": 320, "freeze_vision": False, "sequential_slots": True},
            "train": {"steps": 3, "batch_size": 2, "warmup_steps": 1, "checkpoint_every": 3, "log_every": 1,
                      "z_probe_every": every},
        })  # fmt: skip
        summary = train.run(cfg, prepared_data, tmp_path / str(every))
        runs[every] = [json.loads(line) for line in (tmp_path / str(every) / "train_log.jsonl").read_text().splitlines()]
        assert ("z_gain" in summary["final"]) == bool(every) and bool(summary["z_use"]) == bool(every)
    assert [r["loss"] for r in runs[1]] == [r["loss"] for r in runs[0]]
    weights = [
        torch.load(tmp_path / str(every) / "checkpoints" / "step_0000003" / "mp_rank_00_model_states.pt",
                   weights_only=True)["module"] for every in (1, 0)
    ]  # fmt: skip
    assert all(torch.equal(weights[0][name], weights[1][name]) for name in weights[0])
