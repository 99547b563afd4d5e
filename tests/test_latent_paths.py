"""The latent model's passes: cache reuse, layouts, baselines, inference paths agree with training;
the first three for every backbone family (amvl/model/families/)."""

import pytest
import torch

from amvl.config import Section, validate
from amvl.data.blink import read_split
from amvl.data.collate import collate, encode
from amvl.model.backbone import build_image_processor, build_small_qwen, build_tokenizer
from amvl.model.families import FAMILIES
from amvl.model.latent import wrap_backbone


def tokenized(prepared_data, family: str):
    rows = read_split(prepared_data / "val.parquet")
    tokenizer = build_tokenizer([r["prompt"] + r["answer"] for r in rows], 320, 4, family)
    image_processor = build_image_processor(rows[0]["images"][0].width, family)
    return tokenizer, [encode(r, tokenizer, image_processor) for r in rows], family


@pytest.fixture(scope="module")
def data(prepared_data):
    return tokenized(prepared_data, "qwen2_5_vl")


@pytest.fixture(scope="module", params=list(FAMILIES))
def family_data(prepared_data, request):
    return tokenized(prepared_data, request.param)


def make_model(tokenizer, slot_kind="latent", layout="suffix", family="qwen2_5_vl"):
    cfg = Section(validate({"model": {"vocab_size": 320, "posterior_layout": layout, "family": family}}))
    return wrap_backbone(build_small_qwen(cfg.model, tokenizer), tokenizer, cfg.model, slot_kind).eval()


def two_images_and_one(examples):
    """A batch mixing image counts and prompt lengths, so padding and positions matter."""
    several = [e for e in examples if len(e.image_grid_thw) > 1][:2]
    single = [e for e in examples if len(e.image_grid_thw) == 1][:2]
    return several + single


@pytest.mark.parametrize("layout", ["suffix", "pooled"])
@pytest.mark.parametrize("latents", ["posterior", "prior_mean"])
def test_prefix_cache_reuse_changes_nothing(family_data, layout, latents):
    tokenizer, examples, family = family_data
    model, batch = make_model(tokenizer, layout=layout, family=family), collate(two_images_and_one(examples))
    outs = []
    for reuse in (True, False):
        model.reuse_prefix_cache = reuse
        torch.manual_seed(0)
        with torch.no_grad():
            outs.append(model(batch, latents=latents))
    cached, full = outs
    assert torch.allclose(cached["ntp_loss"], full["ntp_loss"], atol=1e-5)
    assert torch.allclose(cached["prior"].mean, full["prior"].mean, atol=1e-5)
    if latents == "posterior":
        assert torch.allclose(cached["posterior"].logvar, full["posterior"].logvar, atol=1e-5)


@pytest.mark.parametrize("layout", ["suffix", "pooled"])
@pytest.mark.parametrize("latents", ["posterior", "prior_mean"])
def test_gradient_checkpointing_keeps_the_prefix_cache_and_changes_no_gradient(family_data, layout, latents):
    """Checkpointed layers keep reading x's cache: x runs once in forward and once more in backward
    (the recompute), and every gradient is bit-identical to the run without checkpointing."""
    tokenizer, examples, family = family_data
    batch, grads, calls = collate(two_images_and_one(examples)), [], []
    for checkpointing in (False, True):
        model = make_model(tokenizer, layout=layout, family=family).train()
        if checkpointing:
            model.enable_gradient_checkpointing()
        attention = model.backbone.model.language_model.layers[0].self_attn
        columns = []  # query columns per call of the first layer's attention
        attention.register_forward_hook(
            lambda _module, _args, kwargs, _out: columns.append(kwargs["hidden_states"].shape[1]), with_kwargs=True
        )
        torch.manual_seed(0)
        out = model(batch, latents=latents)
        loss = out["ntp_loss"] + out["prior"].logvar.mean()
        if out["posterior"] is not None:
            loss = loss + out["posterior"].mean.mean()
        loss.backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
        calls.append(columns)
    forward = calls[0]  # x, then the variational and decode passes over their own columns
    assert len(forward) == 3 and forward[0] == max(len(p) for p in batch["prompt_ids"])
    assert calls[1] == forward + forward[::-1]  # each pass recomputed once, over its own columns only
    assert torch.equal(grads[0], grads[1])


def test_pooled_posterior_sees_the_answer_and_the_prior_does_not(data):
    tokenizer, examples, _ = data
    model = make_model(tokenizer, layout="pooled")
    batch = collate(examples[:2])
    other = dict(batch, answer_ids=[e.choice_ids[-1] if e.answer_index == 0 else e.choice_ids[0] for e in examples[:2]])
    with torch.no_grad():
        a, b = model(batch), model(other)
    assert torch.allclose(a["prior"].mean, b["prior"].mean)
    assert not torch.allclose(a["posterior"].mean, b["posterior"].mean)
    assert model.posterior_head.proj.in_features == 2 * model.prior_head.proj.in_features


@pytest.mark.parametrize("slot_kind, latents", [("latent", "prior_mean"), ("pause", "pause"), ("none", "none")])
def test_inference_scores_agree_with_the_training_pass(family_data, slot_kind, latents):
    """score_choices (cache, positions continued by hand) and the training pass (whole layout,
    Qwen's own position index) give the gold answers the same log-likelihood."""
    tokenizer, examples, family = family_data
    model, chunk = make_model(tokenizer, slot_kind, family=family), two_images_and_one(examples)
    scores = model.score_choices(collate(chunk), [e.choice_ids for e in chunk])
    gold = scores[range(len(chunk)), [e.answer_index for e in chunk]]
    with torch.no_grad():
        loss = model(collate(chunk), latents=latents)["ntp_loss"]
    tokens = sum(len(e.answer_ids) for e in chunk)
    assert torch.allclose(-gold.sum() / tokens, loss, atol=1e-5)


def test_baselines_lay_out_their_slots(data):
    tokenizer, examples, _ = data
    pause, plain = make_model(tokenizer, "pause"), make_model(tokenizer, "none")
    batch = collate(examples[:2])
    assert pause.layout(batch["prompt_ids"], None, pause.slot_ids()).k == 4
    assert plain.layout(batch["prompt_ids"], None, plain.slot_ids()).k == 0
    out = plain(batch, latents="none")
    assert out["prior"] is None and out["posterior"] is None and torch.isfinite(out["ntp_loss"])


def test_prior_temperature_zero_is_the_mean(data):
    tokenizer, examples, _ = data
    model = make_model(tokenizer)
    batch = collate(examples[:3])
    thought = model.think(batch, tau=0.0)
    again = model.think(batch, tau=0.0, z=thought.prior.mean)
    assert torch.equal(thought.last_hidden, again.last_hidden)
    noisy = model.think(batch, tau=1.0)
    assert not torch.allclose(thought.last_hidden, noisy.last_hidden)


def test_generation_is_greedy_batched_and_stops(data):
    tokenizer, examples, _ = data
    model = make_model(tokenizer)
    chunk = two_images_and_one(examples)
    together = model.generate(collate(chunk), max_new_tokens=5)
    alone = [model.generate(collate([e]), max_new_tokens=5)[0] for e in chunk]
    assert together == alone and all(len(a) <= 5 for a in together)
    assert all(model.cfg.eos_id not in answer for answer in together)
    # greedy: each generated token beats every other token after the same prefix
    first = together[0]
    assert len(first) >= 2
    for j in (0, 1):
        options = [first[: j + 1]] + [first[:j] + [t] for t in range(0, 300, 7) if t != first[j]]
        scores = model.score_choices(collate(chunk[:1]), [options])
        assert scores[0, 0] >= scores[0].max() - 1e-5
