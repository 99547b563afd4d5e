"""DeepSpeed as far as a CPU machine can take it: every ZeRO config, bf16, parameter groups,
gradient checkpointing, the monitor, a non-finite loss, and two processes through torchrun."""

import json
import subprocess
from pathlib import Path

import pytest
import torch
from conftest import BIN, REPO, tool_env
from transformers import AutoModelForImageTextToText

from amvl.config import validate
from amvl.data.blink import read_split
from amvl.data.collate import collate, encode
from amvl.distributed import load_fp32_state_dict
from amvl.errors import UserError
from amvl.model.backbone import load_processors
from amvl.model.latent import LatentReasoner, load_skeleton
from amvl.stages import convert, train

ZERO_CONFIGS = sorted(p.stem for p in (REPO / "config" / "deepspeed").glob("*.json"))


def config(**train_keys):
    steps = {"steps": 2, "batch_size": 2, "warmup_steps": 1, "checkpoint_every": 2, "log_every": 1}
    return validate({"model": {"vocab_size": 320}, "train": {**steps, **train_keys}})


def scores(model_dir: Path, prepared_data: Path, model=None) -> torch.Tensor:
    model = (model or LatentReasoner.load(model_dir)).eval()
    tokenizer, image_processor = load_processors(model_dir)
    examples = [encode(r, tokenizer, image_processor) for r in read_split(prepared_data / "val.parquet")[:4]]
    return model.score_choices(collate(examples), [e.choice_ids for e in examples])


@pytest.fixture(scope="module")
def converted(prepared_data, tmp_path_factory):
    """Every DeepSpeed config in config/deepspeed/, trained two steps and converted."""
    root, out = tmp_path_factory.mktemp("zero"), {}
    for name in ZERO_CONFIGS:
        cfg = config(deepspeed_config=str(REPO / "config" / "deepspeed" / f"{name}.json"))
        summary = train.run(cfg, prepared_data, root / "runs" / name)
        convert.run(cfg, root / "runs" / name, root / "models" / name)
        out[name] = (root / "runs" / name, root / "models" / name, summary)
    return out


def test_every_zero_config_trains_to_the_same_model(converted, prepared_data):
    assert {"zero0", "zero1", "zero2", "zero3", "zero3_offload"} <= set(converted)
    stages = {name: summary["zero_stage"] for name, (_, _, summary) in converted.items()}
    assert stages["zero0"] == 0 and stages["zero1"] == 1 and stages["zero3"] == 3 and stages["zero3_offload"] == 3
    reference = scores(converted["zero0"][1], prepared_data)
    for name, (_, model_dir, _) in converted.items():
        assert torch.allclose(scores(model_dir, prepared_data), reference, atol=1e-5), name


def test_zero3_round_trip_gives_identical_logits(converted, prepared_data):
    """ZeRO-3 shards -> model folder -> load: the same outputs as the consolidated fp32 weights,
    with heads and backbone in their own files."""
    run_dir, model_dir, summary = converted["zero3"]
    direct = load_skeleton(run_dir / "skeleton")
    direct.load_state_dict(load_fp32_state_dict(run_dir / "checkpoints", summary["tag"], 3), strict=False)
    assert torch.equal(scores(model_dir, prepared_data), scores(model_dir, prepared_data, model=direct))
    from safetensors.torch import load_file

    latent_keys = {key.split(".")[0] for key in load_file(model_dir / "latent_modules.safetensors")}
    assert latent_keys == {"prior_head", "posterior_head", "injector"}
    backbone = AutoModelForImageTextToText.from_pretrained(model_dir)
    assert torch.equal(backbone.lm_head.weight, direct.backbone.lm_head.weight)


def test_bf16_parameter_groups_checkpointing_and_monitor(prepared_data, tmp_path):
    cfg = config(precision="bf16", latent_lr=0.02, gradient_checkpointing=True, monitor="csv")
    train.run(cfg, prepared_data, tmp_path / "run")
    records = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert all(r["lr_latent"] == pytest.approx(10 * r["lr"]) for r in records)  # lr 0.002 by default
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in records)
    monitor = {p.name for p in (tmp_path / "run" / "monitor" / "train").glob("*.csv")}
    assert {"Train_ntp.csv", "Train_kl_forward.csv", "Train_sigma_prior.csv"} <= monitor


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(prepared_data, tmp_path):
    cfg = config(steps=6, lr=1e30, warmup_steps=0, checkpoint_every=1, grad_clip=0)
    with pytest.raises(UserError, match=r"non-finite loss at step \d; training stopped, the last good checkpoint is"):
        train.run(cfg, prepared_data, tmp_path / "run")
    checkpoints = tmp_path / "run" / "checkpoints"
    latest = (checkpoints / "latest").read_text()
    assert (checkpoints / latest).is_dir() and not (tmp_path / "run" / "train_summary.json").exists()


def test_two_processes_see_what_one_process_sees(prepared_data, tmp_path):
    """torchrun with 2 ranks x batch 2 ends where 1 rank x batch 4 ends (deterministic latent_det)."""
    two = config(steps=3, batch_size=2, threads=1)
    two["objective"]["name"] = "latent_det"
    two["model"]["answer_format"] = "letter"  # equal answer lengths: a mean of rank means is the global mean
    one = json.loads(json.dumps(two))
    one["train"]["batch_size"] = 4
    subprocess.run(
        [str(BIN / "torchrun"), "--nproc_per_node", "2", "--module", "amvl", "train", "--config-json",
         json.dumps(two), "--data", str(prepared_data), "--out", str(tmp_path / "two")],
        env=tool_env(), cwd=REPO, check=True, capture_output=True,
    )  # fmt: skip
    single = train.run(one, prepared_data, tmp_path / "one")
    parallel = json.loads((tmp_path / "two" / "train_summary.json").read_text())
    assert parallel["world_size"] == 2 and single["world_size"] == 1
    assert parallel["final"]["loss"] == pytest.approx(single["final"]["loss"], rel=1e-4)
