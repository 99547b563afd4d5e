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


@pytest.mark.parametrize("hops", [1, 2, 3, 4])
def test_pointer_chasing_follows_the_arrows_drawn(hops):
    rows = synthetic.generate(f"Pointer_{hops}hop", "train", 40, seed=0, image_size=84)
    names, by_rgb = list(synthetic.POINTER_COLORS), {rgb: n for n, rgb in synthetic.POINTER_COLORS.items()}
    by_rgb[synthetic.GREY] = "grey"
    for row in rows:
        pixels = row["image_1"].load()
        cells = [(c * 28, r * 28 + 14) for r in range(3) for c in range(3)]
        halves = [(pixels[x + 7, y], pixels[x + 21, y]) for x, y in cells]
        arrows = {by_rgb[key]: by_rgb[target] for key, target in halves}  # read back from the pixels
        assert sorted(arrows) == sorted(names + ["grey"]) and all(k != v for k, v in arrows.items())
        passed = ["grey"]
        for _ in range(hops):
            passed.append(arrows[passed[-1]])
        colour = passed[-1]
        assert row["choices"] == names and row["answer"] == f"({'ABCDEFGH'[names.index(colour)]})"
        assert len(set(passed)) == hops + 1  # stopping a hop short is a wrong answer
        steps = [f"{a} points to {b}." for a, b in zip(passed, passed[1:-1])]
        assert row["explanation"] == " ".join(steps) and colour not in row["explanation"]
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
    examples = [encode(r, tokenizer, image_processor, "letter_and_option", rationale=True) for r in rows]
    assert all(e.rationale_ids for e in examples)
    unread = encode(rows[0], tokenizer, image_processor, "letter_and_option")  # nothing reads them: not tokenized
    assert unread.rationale_ids == [] and unread.step_ids == []
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
    batch = collate([encode(r, tokenizer, image_processor, "letter_and_option", rationale=True) for r in rows])
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
    blocks = science_blocks(runs)
    assert "(Pointer 2hop)" in markdown(blocks)  # only the multi-hop subtasks count
    answers = {row[0]: row for row in blocks[-1][1][1:]}  # the three answers, a row per latent method
    assert answers["amvl (3 seeds)"] == ["amvl (3 seeds)", "61.0 ± 0.8", "30.0 ± 0.0", "used", "0.0 ± 0.8",
                                         "10.0 ± 0.0 (10.0 ± 0.0)", "no", "ntp, elbo", "none"]  # fmt: skip
    elbo = answers["elbo (3 seeds)"]
    assert elbo[3] == "not used" and elbo[4] == "39.0 ± 0.8" and elbo[-2:] == ["ntp", "amvl (-2.0)"]
    assert science_blocks({"ntp": metrics(0.4)}) == []  # nothing with latents: no section
    # latent_det trains no posterior: its oracle and follow-wrong read an untrained head, so it cannot leak
    runs = {f"latent_det_s{i}": metrics(0.70, zero=0.30, oracle=0.10) for i in range(2)}
    blocks = science_blocks(runs, no_posterior={"latent_det"})
    assert blocks[2][1][1][1] == "70.0 ± 0.0 / 30.0 ± 0.0 / no posterior"
    assert blocks[-1][1][1][3:7] == ["used", "no posterior", "no posterior", "no (no posterior)"]


def test_the_leakage_table_gives_each_method_its_mean_over_seeds():
    from amvl.stages.report import diagnostics_table

    def diagnostics(prior):
        return {"prior_accuracy": prior, "oracle_accuracy": 0.9, "leakage_gap": 0.9 - prior, "follow_wrong_rate": 0.2,
                "follow_wrong_if_ignored": 0.125, "answer_swap_variance": 0.01, "kl_posterior_prior": prior,
                "prior_variance": 1.0, "ablations": {"zero": 0.3, "noise": 0.3, "shuffled": prior},
                "tau_sweep": {"0": prior, "0.2": 0.5, "1.0": 0.4}}  # fmt: skip

    runs = {"amvl_s0": diagnostics(0.5), "amvl_s1": diagnostics(0.7), "fwd": diagnostics(0.6)}
    table = diagnostics_table({run: {"per_task": {"a": 1.0}, "diagnostics": d} for run, d in runs.items()} | {"ntp": {"per_task": {"a": 1.0}}})
    rows = {row[0]: row for row in table[1:]}
    assert list(rows) == ["amvl_s0", "amvl_s1", "amvl: mean ± std over 2 seeds", "fwd", "ntp"]  # one seed: no mean row
    mean = rows["amvl: mean ± std over 2 seeds"]
    assert mean[1:5] == ["60.0 ± 10.0", "90.0 ± 0.0", "30.0 ± 10.0", "20.0 ± 0.0 (12.5 ± 0.0)"]
    assert mean[6] == "0.6 ± 0.1" and mean[-1] == "60.0 ± 10.0 / 50.0 ± 0.0 / 40.0 ± 0.0"
    assert rows["amvl_s0"][1] == "50.0" and rows["ntp"][1] == "n/a (no latent slots)"


def test_sequential_slots_read_only_the_slots_before_them(pointer):
    rows, tokenizer, image_processor = pointer
    batch = collate([encode(r, tokenizer, image_processor, "letter_and_option", rationale=True) for r in rows])
    model = model_for(tokenizer, sequential_slots=True)
    z = torch.randn(len(rows), 4, 16, generator=torch.Generator().manual_seed(0))
    changed = z.clone()
    changed[:, 1] += 3.0  # slot 2's latent
    first, second = model.think(batch, z=z).prior, model.think(batch, z=changed).prior
    same = [torch.allclose(first.mean[:, t], second.mean[:, t]) for t in range(4)]
    assert same == [True, True, False, False]  # slots 1-2 read x and Z_<t only; slots 3-4 read slot 2
    # One-pass slots are side by side: no slot's prior reads any latent.
    one_pass = model_for(tokenizer)
    assert torch.equal(one_pass.think(batch, z=z).prior.mean, one_pass.think(batch, z=changed).prior.mean)


def test_sequential_prior_in_training_is_the_one_inference_rolls_out(pointer):
    rows, tokenizer, image_processor = pointer
    batch = collate([encode(r, tokenizer, image_processor, "letter_and_option", rationale=True) for r in rows])
    model = model_for(tokenizer, sequential_slots=True)
    with torch.no_grad():
        rolled = model(batch, latents="prior_mean", decode=False)["prior"]  # latent_det's training roll-out
        thought = model.think(batch, tau=0.0)
        teacher_forced = model(batch, latents="posterior", decode_from="posterior")
    assert torch.allclose(rolled.mean, thought.prior.mean, atol=1e-5)
    assert teacher_forced["prior"].mean.shape == rolled.mean.shape
    # Teacher forced, prior_1 reads x alone: the same as rolled out; later slots read q's Z_<t.
    assert torch.allclose(teacher_forced["prior"].mean[:, 0], rolled.mean[:, 0], atol=1e-5)
    assert not torch.allclose(teacher_forced["prior"].mean[:, 1:], rolled.mean[:, 1:], atol=1e-5)


def test_rationale_loss_trains_each_slot_towards_its_step(pointer):
    rows, tokenizer, image_processor = pointer
    examples = [encode(r, tokenizer, image_processor, "letter_and_option", rationale=True) for r in rows]
    # Pointer_2hop: one step, "grey points to X.": slot 1 names X, the other slots are not scored
    for example, row in zip(examples, rows):
        assert tokenizer.decode(example.step_ids[0]).strip() == row["explanation"].split()[-1].rstrip(".")
    assert all(len(e.step_ids) == 1 for e in examples)
    batch = collate(examples)
    cfg = Section(validate({"model": {"vocab_size": 400}, "objective": {"rationale_weight": 1.0}}))
    backbone = build_small_qwen(cfg.model, tokenizer)
    vocab = backbone.get_input_embeddings().num_embeddings
    model = wrap_backbone(backbone, tokenizer, cfg.model, rationale_vocab=vocab)
    objective = build_objective("amvl", rationale_weight=1.0)
    out = model(batch)
    terms = objective(out["ntp_loss"], out["prior"], out["posterior"], 0, out)
    assert torch.isclose(terms["loss"], terms["ntp"] + terms["rationale"])  # beta and gamma are 0 by default
    terms["rationale"].backward(retain_graph=True)
    assert model.posterior_head.proj.weight.grad.abs().sum() > 0  # it trains the latents the decoder reads
    assert model.prior_head.proj.weight.grad is None or model.prior_head.proj.weight.grad.abs().sum() == 0
    out["rationale_prior_loss"].backward()  # objective.rationale_prior_weight: the prior's means read out too
    assert model.prior_head.proj.weight.grad.abs().sum() > 0
    without_steps = collate(examples)
    without_steps["step_ids"] = [[] for _ in examples]
    assert model(without_steps)["rationale_loss"].item() == 0.0


def test_answer_readout_finds_an_answer_held_in_the_latents_and_not_one_absent():
    from amvl.evaluation.diagnostics import answer_readout

    g = torch.Generator().manual_seed(0)
    labels = torch.arange(240) % 8
    noise = torch.randn(240, 4, 16, generator=g)
    holding = noise.clone()
    holding[:, 1, :8] += 5 * torch.nn.functional.one_hot(labels, 8)  # slot 2 names the answer
    assert answer_readout(holding, labels, 8).float().mean() > 0.9
    assert answer_readout(noise, labels, 8).float().mean() < 0.3  # chance is 0.125


@pytest.mark.parametrize("layout", ["suffix", "rollout"])
def test_kl_terms_train_the_heads_alone_when_kept_from_the_backbone(pointer, layout):
    rows, tokenizer, image_processor = pointer
    batch = collate([encode(r, tokenizer, image_processor, "letter_and_option", rationale=True) for r in rows])
    model = model_for(tokenizer, sequential_slots=True, posterior_layout=layout, posterior_input="rationale")
    layer = model.backbone.model.language_model.layers[0].mlp.up_proj.weight
    for to_backbone in (True, False):
        for term, head in (("kl_forward", model.prior_head), ("kl_reverse", model.posterior_head)):
            objective = build_objective("amvl", beta={"max": 1.0}, gamma={"max": 1.0}, kl_to_backbone=to_backbone)
            model.zero_grad()
            torch.manual_seed(0)
            out = model(batch)
            terms = objective(out["ntp_loss"], out["prior"], out["posterior"], 0, out)
            terms[term].backward()
            assert head.proj.weight.grad.abs().sum() > 0  # each term trains its own head either way
            reached = layer.grad is not None and layer.grad.abs().sum() > 0
            assert reached == to_backbone, (term, to_backbone)


def test_rollout_posterior_reads_what_it_is_given_and_the_prior_never_does(pointer):
    rows, tokenizer, image_processor = pointer
    batch = collate([encode(r, tokenizer, image_processor, "letter_and_option", rationale=True) for r in rows])
    other_steps = {**batch, "step_ids": batch["step_ids"][1:] + batch["step_ids"][:1]}  # another row's steps
    other_answer = {**batch, "answer_ids": [ids[:1] + ids[2:] for ids in batch["answer_ids"]]}
    for reads, sees_steps, sees_answer in [("rationale", True, False), ("answer", False, True),
                                           ("rationale_and_answer", True, True)]:  # fmt: skip
        model = model_for(tokenizer, sequential_slots=True, posterior_layout="rollout", posterior_input=reads)
        with torch.no_grad():
            base = model(batch, decode=False)
            for changed, sees in ((other_steps, sees_steps), (other_answer, sees_answer)):
                out = model(changed, decode=False)
                assert (not torch.equal(out["posterior"].mean, base["posterior"].mean)) == sees, reads
                assert torch.equal(out["prior"].mean, base["prior"].mean)  # the prior's own roll-out: x alone
            # q_1 reads the state after x, as prior_1 does: with nothing privileged to see, its input is [h ; 0]
            assert torch.equal(model.privileged_inputs({**batch, "step_ids": [[]] * 4, "answer_ids": [[]] * 4}, 4),
                               torch.zeros(4, 4, 2 * model.backbone.config.text_config.hidden_size))  # fmt: skip


def test_rollout_layout_needs_sequential_slots():
    from amvl.config import check_runs
    from amvl.errors import ConfigError

    config = validate({"model": {"posterior_layout": "rollout"}, "runs": {"amvl": {}}})
    with pytest.raises(ConfigError, match="runs.amvl.model.posterior_layout: rollout reads a roll-out"):
        check_runs(config)


def test_hold_ties_the_slots_after_the_last_step_to_it(pointer):
    _, tokenizer, _ = pointer
    steps = [[5], [7, 8]]
    assert model_for(tokenizer).slot_steps(steps, 4) == [[5], [7, 8]]
    held = model_for(tokenizer, rationale_slots="hold")
    assert held.slot_steps(steps, 4) == [[5], [7, 8], [7, 8], [7, 8]]  # the last slot holds the last step
    assert held.slot_steps([], 4) == [] and held.slot_steps([[1]] * 6, 4) == [[1]] * 4


def test_vocabulary_injector_enters_the_token_embeddings_the_readout_names(pointer):
    rows, tokenizer, image_processor = pointer
    cfg = Section(validate({"model": {"vocab_size": 400, "injector": "vocabulary"}}))
    backbone = build_small_qwen(cfg.model, tokenizer)
    table = backbone.get_input_embeddings().weight
    model = wrap_backbone(backbone, tokenizer, cfg.model, rationale_vocab=table.shape[0])
    assert not hasattr(model, "injector")  # no linear projection to train
    with torch.no_grad():
        model.rationale_head.weight.zero_()
        model.rationale_head.bias.fill_(-30.0)
        model.rationale_head.bias[42] = 30.0  # the readout names token 42 whatever Z is
    injected = model.inject(torch.randn(2, 4, 16))
    assert torch.allclose(injected, table[42].detach().expand(2, 4, -1), atol=1e-5)


def test_prior_answer_loss_decodes_the_prior_roll_out_and_trains_it(pointer):
    rows, tokenizer, image_processor = pointer
    batch = collate([encode(r, tokenizer, image_processor, "letter_and_option", rationale=True) for r in rows])
    model = model_for(tokenizer, sequential_slots=True, posterior_layout="rollout", posterior_input="rationale")
    torch.manual_seed(0)
    out = model(batch, prior_answer=True)
    with torch.no_grad():
        thought_scores = model.score_choices(batch, [[ids] for ids in batch["answer_ids"]])  # inference: prior means
    # the same loss inference would give the gold answer, per token, averaged
    tokens = sum(len(ids) for ids in batch["answer_ids"])
    assert out["prior_answer_loss"].item() == pytest.approx(-thought_scores.sum().item() / tokens, rel=1e-4)
    objective = build_objective("amvl", prior_answer_weight=0.5)
    terms = objective(out["ntp_loss"], out["prior"], out["posterior"], 0, out)
    assert torch.isclose(terms["loss"], terms["ntp"] + 0.5 * terms["prior_answer"])
    out["prior_answer_loss"].backward()
    assert model.prior_head.proj.weight.grad.abs().sum() > 0  # the prior's roll-out is trained through the answer
