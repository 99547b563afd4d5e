"""The options of config/science.yaml: pointer chasing with its rationale, free bits, decoding from
the prior, a posterior that reads the rationale, and the chain-of-thought target."""

import pytest
import torch

from amvl.config import Section, validate
from amvl.data import synthetic
from amvl.data.collate import collate, encode
from amvl.model.backbone import build_image_processor, build_small_qwen, build_tokenizer
from amvl.model.latent import wrap_backbone
from amvl.objectives import DiagGaussian, build_objective


@pytest.mark.parametrize("hops", [0, 1, 2, 3])
def test_pointer_chasing_follows_the_colour_code(hops):
    rows = synthetic.generate(f"Pointer_{hops}hop", "train", 40, seed=0, image_size=84)
    names, by_rgb = list(synthetic.POINTER_COLORS), {rgb: n for n, rgb in synthetic.POINTER_COLORS.items()}
    for row in rows:
        pixels = row["image_1"].load()
        centres = [pixels[c * 28 + 14, r * 28 + 14] for r in range(3) for c in range(3)]
        assert centres[8] == synthetic.GREY  # nothing points to the ninth cell
        colour_of = [names.index(by_rgb[rgb]) for rgb in centres[:8]]  # each cell's colour, read back
        cell, passed = 0, []
        for _ in range(hops):
            passed.append(colour_of[cell])
            cell = colour_of[cell]
        answer = colour_of[cell]
        assert row["choices"] == names and row["answer"] == f"({'ABCDEFGH'[answer]})"
        assert answer not in passed  # a hop short, or a colour read on the way, is a wrong answer
        assert row["explanation"].endswith(f"cell {cell + 1} is {names[answer]}.")
        assert row["explanation"].count("go to cell") == hops
    assert sorted({r["answer"] for r in rows}) == [f"({x})" for x in "ABCDEFGH"]


def test_free_bits_leave_no_gradient_below_the_floor():
    g = torch.Generator().manual_seed(0)
    prior = DiagGaussian(torch.randn(4, 2, 3, generator=g, requires_grad=True), torch.zeros(4, 2, 3))
    posterior = DiagGaussian(prior.mean.detach() + 0.01, torch.zeros(4, 2, 3))  # KL about 1.5e-4 a slot
    for free_bits, expect_gradient in [(0.0, True), (0.5, False)]:
        prior.mean.grad = None
        objective = build_objective("fwd", beta={"max": 1.0}, free_bits=free_bits)
        terms = objective(torch.tensor(0.0), prior, posterior, step=0)
        terms["loss"].backward()
        assert (prior.mean.grad.abs().sum() > 0) == expect_gradient
        assert terms["kl_forward"] < 1e-3  # logged as it is, not floored
    far = DiagGaussian(prior.mean.detach() + 3.0, torch.zeros(4, 2, 3))  # above the floor: trained as without it
    prior.mean.grad = None
    build_objective("fwd", beta={"max": 1.0}, free_bits=0.5)(torch.tensor(0.0), prior, far, 0)["loss"].backward()
    assert prior.mean.grad.abs().sum() > 0


@pytest.fixture(scope="module")
def pointer():
    rows = [{**r, "images": [r["image_1"]]} for r in synthetic.generate("Pointer_2hop", "train", 4, 0, 84)]
    tokenizer = build_tokenizer([r["prompt"] + r["answer"] + r["explanation"] for r in rows], 400, 4)
    return rows, tokenizer, build_image_processor(84)


def model_for(tokenizer, **model):
    cfg = Section(validate({"model": {"vocab_size": 400, **model}})).model
    return wrap_backbone(build_small_qwen(cfg, tokenizer), tokenizer, cfg).eval()


def test_a_privileged_posterior_reads_the_rationale_and_the_decoder_does_not(pointer):
    rows, tokenizer, image_processor = pointer
    examples = [encode(r, tokenizer, image_processor, "letter_and_option") for r in rows]
    assert all(e.rationale_ids for e in examples)
    batch = collate(examples)
    other = collate(examples)
    other["rationale_ids"] = [ids[::-1] for ids in other["rationale_ids"]]  # another rationale, same answer
    for posterior_input, posterior_changes in [("answer", False), ("rationale", True), ("rationale_and_answer", True)]:
        model = model_for(tokenizer, posterior_input=posterior_input)
        torch.manual_seed(0)
        first = model(batch, decode_from="prior")
        torch.manual_seed(0)
        second = model(other, decode_from="prior")
        changed = not torch.equal(first["posterior"].mean, second["posterior"].mean)
        assert changed == posterior_changes
        assert torch.equal(first["prior"].mean, second["prior"].mean)  # the prior never sees y
        assert torch.equal(first["ntp_loss"], second["ntp_loss"])  # decoding from the prior: y alone
    # reading the rationale alone, q never sees the answer: another answer changes nothing
    model = model_for(tokenizer, posterior_input="rationale")
    other = collate(examples)
    other["answer_ids"] = [ids[:1] + ids[2:] for ids in other["answer_ids"]]
    assert torch.equal(model(batch, decode=False)["posterior"].mean, model(other, decode=False)["posterior"].mean)


def test_decoding_from_the_prior_uses_the_prior(pointer):
    rows, tokenizer, image_processor = pointer
    batch = collate([encode(r, tokenizer, image_processor, "letter_and_option") for r in rows])
    model = model_for(tokenizer)
    torch.manual_seed(0)
    with torch.no_grad():
        model.prior_head.proj.bias[:16] += 5.0  # the prior's means far from the posterior's
    losses = {}
    for source in ("posterior", "prior"):
        torch.manual_seed(0)
        losses[source] = model(batch, decode_from=source)["ntp_loss"].item()
    assert losses["posterior"] != losses["prior"]


def test_chain_of_thought_target_is_the_rationale_then_the_answer(pointer):
    rows, tokenizer, image_processor = pointer
    example = encode(rows[0], tokenizer, image_processor, "rationale_then_answer")
    text = tokenizer.decode(example.answer_ids)
    option = rows[0]["choices"]["ABCDEFGH".index(rows[0]["answer"][1])]
    assert text == f"{rows[0]['explanation']} The answer is {rows[0]['answer']} {option}<|im_end|>"
    assert tokenizer.decode(example.choice_ids[0]).startswith("The answer is (A)")


def test_the_report_answers_the_three_questions_from_the_numbers():
    from amvl.stages.report import markdown, science_blocks

    def metrics(accuracy, zero=None, oracle=None):
        tasks = {"Pointer_1hop": accuracy, "Pointer_2hop": accuracy}
        diagnostics = zero is not None and {
            "per_task": {t: {"prior_accuracy": accuracy, "zero_accuracy": zero, "oracle_accuracy": oracle,
                             "follow_wrong_rate": 0.1, "follow_wrong_if_ignored": 0.1} for t in tasks}}  # fmt: skip
        return {"per_task": tasks, **({"diagnostics": diagnostics} if diagnostics else {})}

    runs = {f"amvl_s{i}": metrics(0.60 + 0.01 * i, zero=0.30, oracle=0.61) for i in range(3)}
    runs |= {f"ntp_s{i}": metrics(0.40 + 0.01 * i) for i in range(3)}
    runs |= {f"elbo_s{i}": metrics(0.58 + 0.01 * i, zero=0.58, oracle=0.98) for i in range(3)}
    text = markdown(science_blocks(runs))
    assert "(Pointer 2hop)" in text  # only the multi-hop subtasks count
    assert "amvl: prior 61.0 ± 0.8 against zero-Z 30.0 ± 0.0, used" in text
    assert "elbo: prior 59.0 ± 0.8 against zero-Z 58.0 ± 0.0, not used" in text
    assert "elbo: oracle - prior 39.0 ± 0.8" in text
    assert "amvl 61.0 ± 0.8 vs ntp 41.0 ± 0.8: above by more than 2 sd" in text
    assert "amvl 61.0 ± 0.8 vs elbo 59.0 ± 0.8: above by more than 2 sd" in text
    assert science_blocks({"ntp": metrics(0.4)}) == []  # nothing with latents: no section
