import pytest
import torch
from PIL import Image
from transformers import Qwen2_5_VLForConditionalGeneration

from amvl.data.blink import read_split
from amvl.data.collate import collate, encode
from amvl.model.backbone import (
    build_image_processor,
    build_small_qwen,
    build_tokenizer,
    load_processors,
    save_processors,
)
from amvl.model.latent import LatentReasoner, wrap_backbone


@pytest.fixture(scope="module")
def built(prepared_data):
    from amvl.config import Section, validate

    cfg = Section(validate({"model": {"vocab_size": 320, "freeze_vision": False}}))
    rows = read_split(prepared_data / "val.parquet")
    tokenizer = build_tokenizer([r["prompt"] + r["answer"] for r in rows], 320, cfg.model.latent_slots)
    image_processor = build_image_processor(rows[0]["images"][0].width)
    model = wrap_backbone(build_small_qwen(cfg.model, tokenizer), tokenizer, cfg.model)
    examples = [encode(r, tokenizer, image_processor) for r in rows]
    return model, tokenizer, image_processor, examples


def test_forward_returns_prior_posterior_and_a_finite_loss(built):
    model, _, _, examples = built
    out = model(collate(examples[:3]))
    k, d = model.cfg.k, model.cfg.d
    assert out["prior"].mean.shape == out["posterior"].mean.shape == (3, k, d)
    assert torch.isfinite(out["ntp_loss"]) and out["ntp_loss"] > 0
    out["ntp_loss"].backward()
    assert model.posterior_head.proj.weight.grad.abs().sum() > 0  # through Z ~ q into L_ntp
    assert model.injector.proj.weight.grad.abs().sum() > 0
    model.zero_grad()


def test_prior_never_sees_the_answer(built):
    model, _, _, examples = built
    batch = collate(examples[:2])
    other = dict(batch, answer_ids=[examples[0].choice_ids[-1], examples[1].choice_ids[-1]])
    with torch.no_grad():
        a, b = model(batch), model(other)
    assert torch.allclose(a["prior"].mean, b["prior"].mean)
    assert not torch.allclose(a["posterior"].mean, b["posterior"].mean)


def test_injected_latents_have_the_norm_of_token_embeddings(built):
    model, *_ = built
    injected = model.injector(torch.randn(5, model.cfg.k, model.cfg.d) * 10)
    embedding_norm = model.backbone.get_input_embeddings().weight.norm(dim=-1).mean()
    assert torch.allclose(injected.norm(dim=-1), embedding_norm.expand(5, model.cfg.k), rtol=1e-4)


def test_scores_one_value_per_option_and_pads_the_rest(built):
    model, _, _, examples = built
    chunk = [e for e in examples if len(e.choice_ids) == 2][:1] + [e for e in examples if len(e.choice_ids) == 4][:1]
    scores = model.eval().score_choices(collate(chunk), [e.choice_ids for e in chunk])
    assert scores.shape == (2, 4)
    assert torch.isinf(scores[0, 2:]).all() and torch.isfinite(scores[1]).all() and (scores[:, :2] < 0).all()


def test_scoring_is_batch_independent(built):
    model, _, _, examples = built
    together = model.eval().score_choices(collate(examples[:4]), [e.choice_ids for e in examples[:4]])
    alone = model.score_choices(collate(examples[2:3]), [examples[2].choice_ids])
    width = len(examples[2].choice_ids)
    assert torch.allclose(together[2, :width], alone[0, :width], atol=1e-4)


def test_save_and_load_restore_identical_scores(built, tmp_path):
    model, tokenizer, image_processor, examples = built
    model.eval().save(tmp_path)
    save_processors(tmp_path, tokenizer, image_processor)
    loaded = LatentReasoner.load(tmp_path).eval()
    tokenizer2, processor2 = load_processors(tmp_path)
    batch = collate(examples[:3])
    assert torch.equal(
        model.score_choices(batch, [e.choice_ids for e in examples[:3]]),
        loaded.score_choices(batch, [e.choice_ids for e in examples[:3]]),
    )
    assert tokenizer2("(A)").input_ids == tokenizer("(A)").input_ids
    # The backbone alone is a standard Hugging Face checkpoint.
    backbone = Qwen2_5_VLForConditionalGeneration.from_pretrained(tmp_path)
    assert torch.equal(backbone.lm_head.weight, model.backbone.lm_head.weight)


def test_load_follows_the_training_precision_unless_told(built, tmp_path):
    """A model folder records train.precision; evaluation loads in it by default (bf16 here), heads
    included, with the KL-facing Gaussians still float32."""
    import json

    model, _, _, examples = built
    model.save(tmp_path)
    config = tmp_path / "amvl_config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "precision": "bf16"}))
    loaded = LatentReasoner.load(tmp_path).eval()
    assert {p.dtype for p in loaded.parameters()} == {torch.bfloat16}
    with torch.no_grad():
        out = loaded(collate(examples[:2]), latents="posterior")
    assert out["prior"].mean.dtype == out["posterior"].logvar.dtype == torch.float32
    assert torch.isfinite(out["ntp_loss"])
    assert {p.dtype for p in LatentReasoner.load(tmp_path, dtype=torch.float32).parameters()} == {torch.float32}


def test_processors_load_from_a_qwen_style_folder(built, tmp_path):
    """A real Qwen2.5-VL folder names the torchvision image processor; the PIL one reads it too."""
    import json

    from amvl.data.collate import IMAGE_PAD

    _, tokenizer, _, examples = built
    tokenizer.save_pretrained(tmp_path)
    (tmp_path / "preprocessor_config.json").write_text(
        json.dumps(
            {
                "min_pixels": 3136,
                "max_pixels": 12845056,
                "patch_size": 14,
                "temporal_patch_size": 2,
                "merge_size": 2,
                "image_mean": [0.48145466, 0.4578275, 0.40821073],
                "image_std": [0.26862954, 0.26130258, 0.27577711],
                "image_processor_type": "Qwen2VLImageProcessor",
                "processor_class": "Qwen2_5_VLProcessor",
            }
        )
    )
    tokenizer2, image_processor = load_processors(tmp_path)
    assert image_processor.size.longest_edge == 12845056 and image_processor.merge_size == 2
    pixels = image_processor(images=[Image.new("RGB", (84, 84))], return_tensors="pt")
    assert pixels["image_grid_thw"].tolist() == [[1, 6, 6]]
    pad = tokenizer2.convert_tokens_to_ids(IMAGE_PAD)
    assert examples[0].prompt_ids.count(pad) == int(examples[0].image_grid_thw.prod(-1).sum()) // 4
