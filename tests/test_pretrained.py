"""Wrapping a pretrained Qwen2.5-VL / Qwen2-VL from a local folder (tiny random ones here; Qwen3-VL: test_families)."""

import pytest
import torch
from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

from amvl.config import Section, validate
from amvl.data.blink import read_split
from amvl.data.collate import collate, encode
from amvl.errors import UserError
from amvl.model.backbone import (
    IMAGE_PAD,
    QWEN_SPECIALS,
    build_image_processor,
    build_small_qwen,
    build_tokenizer,
    load_pretrained,
    save_processors,
    slot_tokens,
)
from amvl.model.latent import LatentReasoner, wrap_backbone

CFG = Section(validate({"model": {"vocab_size": 320}}))


def tiny_qwen2_vl(tokenizer):
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_SPECIALS}
    config = Qwen2VLConfig(
        text_config=dict(
            vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, rope_parameters={
                "rope_type": "default", "rope_theta": 1e4, "mrope_section": [4, 2, 2]},
        ),
        vision_config=dict(depth=1, embed_dim=32, hidden_size=64, num_heads=2, mlp_ratio=2),
        image_token_id=ids[IMAGE_PAD], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
    )  # fmt: skip
    torch.manual_seed(0)
    return Qwen2VLForConditionalGeneration(config)


@pytest.fixture(scope="module")
def rows(prepared_data):
    return read_split(prepared_data / "val.parquet")


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen2_vl"])
def test_pretrained_folder_gets_slot_tokens_and_trains(rows, tmp_path, family):
    # a "released" checkpoint: its tokenizer knows nothing of latent slots
    tokenizer = build_tokenizer([r["prompt"] + r["answer"] for r in rows], 320, k=0)
    backbone = build_small_qwen(CFG.model, tokenizer) if family == "qwen2_5_vl" else tiny_qwen2_vl(tokenizer)
    backbone.save_pretrained(tmp_path)
    save_processors(tmp_path, tokenizer, build_image_processor(84))
    rows_before = backbone.get_input_embeddings().weight.shape[0]

    loaded, tokenizer, image_processor = load_pretrained(tmp_path, k=4)
    assert loaded.config.model_type == family
    prior, posterior = slot_tokens(4)
    new_ids = tokenizer.convert_tokens_to_ids(prior + posterior)
    table = loaded.get_input_embeddings().weight.detach()
    assert table.shape[0] == rows_before + 8 and sorted(new_ids) == list(range(rows_before, rows_before + 8))
    known_norm = table[:rows_before].norm(dim=-1).mean()
    assert torch.allclose(table[new_ids].norm(dim=-1), known_norm.expand(8), rtol=1e-4)
    assert torch.equal(table[:rows_before], backbone.get_input_embeddings().weight.detach())
    assert len({tuple(row.tolist()) for row in table[new_ids]}) == 8  # distinct slots

    model = wrap_backbone(loaded, tokenizer, CFG.model)
    examples = [encode(r, tokenizer, image_processor) for r in rows[:2]]
    out = model(collate(examples))
    out["ntp_loss"].backward()
    assert torch.isfinite(out["ntp_loss"]) and model.injector.proj.weight.grad.abs().sum() > 0
    assert loaded.model.visual.patch_embed.proj.weight.grad is None  # frozen by default

    model.eval().save(tmp_path / "out")
    again = LatentReasoner.load(tmp_path / "out").eval()
    batch = collate(examples)
    choices = [e.choice_ids for e in examples]
    assert torch.equal(model.score_choices(batch, choices), again.score_choices(batch, choices))


def test_missing_or_foreign_weights_say_what_to_put_where(tmp_path):
    with pytest.raises(UserError, match="no config.json and \\*.safetensors; put a local copy of Qwen/Qwen2.5-VL-7B"):
        load_pretrained(tmp_path / "nowhere", k=4)
    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(UserError, match="model_type 'llama' is not a family amvl knows; supported: qwen2_5_vl, qwen2_vl, qwen3_vl"):
        load_pretrained(tmp_path, k=4)


def test_train_convert_evaluate_from_a_pretrained_folder(rows, prepared_data, tmp_path):
    """model.backbone: pretrained through the real stages (DeepSpeed included), in bf16: loaded in
    bf16 (never float32 first), converted to the fp32 master weights, evaluated in bf16."""
    import json

    from safetensors import safe_open

    from amvl.stages import convert, evaluate, train

    tokenizer = build_tokenizer([r["prompt"] + r["answer"] for r in rows], 320, k=0)
    build_small_qwen(CFG.model, tokenizer).save_pretrained(tmp_path / "qwen")
    save_processors(tmp_path / "qwen", tokenizer, build_image_processor(84))
    cfg = validate(
        {
            "model": {"backbone": "pretrained", "pretrained_path": str(tmp_path / "qwen")},
            "objective": {"name": "latent_det"},
            "train": {
                **{"steps": 2, "batch_size": 2, "warmup_steps": 1, "checkpoint_every": 2, "log_every": 1},
                **{"precision": "bf16", "gradient_checkpointing": True},
            },
            "evaluate": {"limit": 1},
        }
    )
    summary = train.run(cfg, prepared_data, tmp_path / "run")
    assert summary["objective"] == "latent_det" and "kl_forward" not in summary["final"]
    assert json.loads((tmp_path / "run" / "skeleton" / "config.json").read_text())["dtype"] == "bfloat16"
    convert.run(cfg, tmp_path / "run", tmp_path / "model")
    with safe_open(tmp_path / "model" / "model.safetensors", "pt") as weights:
        assert weights.get_tensor("lm_head.weight").dtype == torch.float32
    metrics = evaluate.run(cfg, tmp_path / "model", prepared_data, tmp_path / "results")
    assert 0 <= metrics["macro_accuracy"] <= 1 and metrics["dtype"] == "bfloat16"


def test_the_new_modules_of_a_pretrained_backbone_follow_model_init_seed(rows, tmp_path):
    """A warm start (model.init_from) or a released model: the heads and injector come from
    model.init_seed, whatever ran before in the process."""
    from amvl.stages.train import build

    tokenizer = build_tokenizer([r["prompt"] + r["answer"] for r in rows], 320, k=0)
    build_small_qwen(CFG.model, tokenizer).save_pretrained(tmp_path / "qwen")
    save_processors(tmp_path / "qwen", tokenizer, build_image_processor(84))
    heads = []
    for seed, noise in ((0, 1), (0, 5), (1, 1)):
        cfg = Section(validate({"model": {"backbone": "pretrained", "pretrained_path": str(tmp_path / "qwen"),
                                          "init_seed": seed}}))  # fmt: skip
        torch.rand(noise)  # other work drew from the global generator first
        heads.append(build(cfg, [], tmp_path / "run", "latent", write=False)[2].prior_head.proj.weight)
    assert torch.equal(heads[0], heads[1]) and not torch.equal(heads[0], heads[2])
