"""Leakage diagnostics (docs/METHOD.md section 5): does Z carry the answer, and is Z used at all?

Every accuracy here scores the options by likelihood (deterministic, independent of how a
generated answer is parsed). On the evaluation split, for a model with latent slots:

- prior vs oracle accuracy: Z = prior mean (what exists at test time) vs the posterior mean
  given the gold answer; the leakage gap is oracle - prior;
- follow-wrong rate: Z = posterior mean given a wrong option; how often the prediction follows
  it, beside the rate expected if Z were ignored, (1 - prior accuracy) / (options - 1);
- answer-swap sensitivity: variance of the posterior mean across the candidate answers;
- answer readout: how often a linear readout, fitted on the other half of the split, names the
  answer from the posterior's (given the gold answer or rationale) or the prior's means;
- contamination: mean KL(q || p) given the gold answer, and the mean prior variance;
- latent ablations: Z zero, Gaussian noise, or another question's prior mean;
- a temperature sweep of the prior;
- the k x k cosine similarity of prior means, and how far each slot's prior mean moves when the
  image vs the text of the question is perturbed (relative to its norm).
"""

from __future__ import annotations

import dataclasses
import functools

import torch

from amvl.data.collate import Example, collate
from amvl.objectives import cat_gaussians, gaussian_kl


def chunks(items, size: int):
    """The examples `size` at a time, in order; a streamed set (amvl.data.stream.Examples) decodes
    them as it goes, and iterating over it gives only their tokens."""
    if hasattr(items, "chunks"):
        yield from items.chunks(size)
        return
    for start in range(0, len(items), size):
        yield items[start : start + size]


@torch.no_grad()
def latents(model, examples: list[Example], batch_size: int, answers: list[list[int]] | None = None, change=None):
    """Prior and posterior (given `answers`, default the gold ones) for every example, concatenated;
    `change` is applied to each example first."""
    priors, posteriors = [], []
    for i, chunk in enumerate(chunks(examples, batch_size)):
        if answers is not None:
            chunk = [dataclasses.replace(e, answer_ids=a) for e, a in zip(chunk, answers[i * batch_size :])]
        if change is not None:
            chunk = [change(e) for e in chunk]
        out = model(collate(chunk), latents="posterior", decode=False)
        priors.append(out["prior"])
        posteriors.append(out["posterior"])
    return {"prior": cat_gaussians(priors, dim=0), "posterior": cat_gaussians(posteriors, dim=0)}


@torch.no_grad()
def predictions(model, examples: list[Example], batch_size: int, tau: float = 0.0, z=None) -> torch.Tensor:
    """Index of the best-scoring option per example, with Z from the prior at `tau` or `z`."""
    picks = []
    for i, chunk in enumerate(chunks(examples, batch_size)):
        z_chunk = None if z is None else z[i * batch_size : i * batch_size + len(chunk)]
        scores = model.score_choices(collate(chunk), [e.choice_ids for e in chunk], tau=tau, z=z_chunk)
        picks.append(scores.argmax(-1).cpu())
    return torch.cat(picks)


def perturbed(example: Example, part: str, generator: torch.Generator, specials: set[int], vocab: int) -> Example:
    """The example with Gaussian noise on its pixels, or 20% of its text tokens replaced."""
    if part == "image":
        noise = torch.randn(example.pixel_values.shape, generator=generator) * 0.5
        return dataclasses.replace(example, pixel_values=example.pixel_values + noise)
    ids = list(example.prompt_ids)
    text_positions = [i for i, t in enumerate(ids) if t not in specials]
    count = max(1, len(text_positions) // 5)
    for j in torch.randperm(len(text_positions), generator=generator)[:count].tolist():
        ids[text_positions[j]] = int(torch.randint(vocab, (1,), generator=generator))
        while ids[text_positions[j]] in specials:
            ids[text_positions[j]] = int(torch.randint(vocab, (1,), generator=generator))
    return dataclasses.replace(example, prompt_ids=ids)


def answer_readout(features: torch.Tensor, labels: torch.Tensor, classes: int, folds: int = 2) -> torch.Tensor:
    """Does Z hold the answer itself? A linear readout (multinomial logistic regression on the
    standardised, flattened latents) of the answer's index, cross-fitted: each example is scored
    by a readout fitted on the other folds. Returns whether each example's answer was read out.
    A latent that carries only intermediate steps reads out at about chance (pointer chasing: the
    answer is the step's target in this image's random map, not a function of the step)."""
    x = features.flatten(1).float()
    x = (x - x.mean(0)) / x.std(0).clamp(min=1e-6)
    hits = torch.zeros(len(x), dtype=torch.bool)
    # folds drawn at random (a fixed draw): by position they would follow the answers, which cycle
    fold = torch.randperm(len(x), generator=torch.Generator().manual_seed(0)) % folds
    for held in range(folds):
        train, test = fold != held, fold == held
        weight = torch.zeros(x.shape[1], classes, requires_grad=True)
        bias = torch.zeros(classes, requires_grad=True)
        optimizer = torch.optim.LBFGS([weight, bias], max_iter=200, line_search_fn="strong_wolfe")

        def loss():
            optimizer.zero_grad()
            value = torch.nn.functional.cross_entropy(x[train] @ weight + bias, labels[train])
            value = value + 1e-2 * weight.pow(2).sum()  # ridge: more dimensions than examples per class
            value.backward()
            return value

        with torch.enable_grad():
            optimizer.step(loss)
        hits[test] = ((x[test] @ weight + bias).argmax(-1) == labels[test]).detach()
    return hits


def leakage(model, examples: list[Example], batch_size: int, taus: list[float], specials: set[int]) -> dict:
    """Every diagnostic of the module docstring, as plain numbers and lists (JSON-ready)."""
    torch.manual_seed(0)
    gold = torch.tensor([e.answer_index for e in examples])
    options = torch.tensor([len(e.choice_ids) for e in examples])
    accuracy = lambda picks: (picks == gold).float().mean().item()  # noqa: E731

    given_gold = latents(model, examples, batch_size)
    prior, posterior = given_gold["prior"], given_gold["posterior"]
    wrong = (gold + 1) % options
    given_wrong = latents(model, examples, batch_size, [e.choice_ids[w] for e, w in zip(examples, wrong.tolist())])

    prior_hits = predictions(model, examples, batch_size, z=prior.mean) == gold
    oracle_hits = predictions(model, examples, batch_size, z=posterior.mean) == gold
    followed = predictions(model, examples, batch_size, z=given_wrong["posterior"].mean) == wrong
    prior_accuracy, oracle_accuracy = prior_hits.float().mean().item(), oracle_hits.float().mean().item()
    follow_wrong = followed.float().mean()
    ignored_level = ((1 - prior_accuracy) / (options - 1).float()).mean()

    swap_means = [  # posterior mean given each candidate, (candidates, B, k, d) padded with the gold one
        latents(model, examples, batch_size, [e.choice_ids[min(j, len(e.choice_ids) - 1)] for e in examples])[
            "posterior"
        ].mean
        for j in range(int(options.max()))
    ]
    swap_variance = torch.stack(
        [torch.stack(swap_means[:n])[:, i].var(0, unbiased=False).mean() for i, n in enumerate(options.tolist())]
    ).mean()

    shuffled = prior.mean.roll(1, dims=0)  # each question gets its neighbour's latents
    zero_hits = predictions(model, examples, batch_size, z=torch.zeros_like(prior.mean)) == gold
    ablations = {
        "zero": zero_hits.float().mean().item(),
        "noise": accuracy(predictions(model, examples, batch_size, z=torch.randn_like(prior.mean))),
        "shuffled": accuracy(predictions(model, examples, batch_size, z=shuffled)),
    }
    tau_sweep = {  # tau 0 is the prior mean: already scored above
        str(tau): prior_accuracy if tau == 0 else accuracy(predictions(model, examples, batch_size, tau=tau))
        for tau in taus
    }

    unit = torch.nn.functional.normalize(prior.mean, dim=-1)
    slot_similarity = (unit @ unit.transpose(1, 2)).mean(0)
    generator = torch.Generator().manual_seed(0)
    vocab = model.backbone.get_input_embeddings().weight.shape[0]
    sensitivity = {}
    for part in ("image", "text"):
        # Perturbed chunk by chunk, in order: the same draws as perturbing every example first.
        change = functools.partial(perturbed, part=part, generator=generator, specials=specials, vocab=vocab)
        shift = (latents(model, examples, batch_size, change=change)["prior"].mean - prior.mean).norm(dim=-1)
        sensitivity[part] = (shift.mean(0) / prior.mean.norm(dim=-1).mean(0)).tolist()

    classes = int(options.max())
    readout = {side: answer_readout(given_gold[side].mean, gold, classes) for side in ("prior", "posterior")}
    per_task = {}  # the main numbers per subtask: where latents matter may be a few of them
    for task in sorted({e.sub_task for e in examples}):
        rows = torch.tensor([e.sub_task == task for e in examples])
        prior_task = prior_hits[rows].float().mean().item()
        per_task[task] = {
            "prior_accuracy": prior_task,
            "oracle_accuracy": oracle_hits[rows].float().mean().item(),
            "zero_accuracy": zero_hits[rows].float().mean().item(),
            "follow_wrong_rate": followed[rows].float().mean().item(),
            "follow_wrong_if_ignored": ((1 - prior_task) / (options[rows] - 1).float()).mean().item(),
            "answer_readout_prior": readout["prior"][rows].float().mean().item(),
            "answer_readout_posterior": readout["posterior"][rows].float().mean().item(),
        }
    return {
        "per_task": per_task,
        "prior_accuracy": prior_accuracy,
        "oracle_accuracy": oracle_accuracy,
        "leakage_gap": oracle_accuracy - prior_accuracy,
        "follow_wrong_rate": follow_wrong.item(),
        "follow_wrong_if_ignored": ignored_level.item(),
        "answer_swap_variance": swap_variance.item(),
        "answer_readout_prior": readout["prior"].float().mean().item(),
        "answer_readout_posterior": readout["posterior"].float().mean().item(),
        "kl_posterior_prior": gaussian_kl(posterior, prior).mean().item(),
        "prior_variance": prior.logvar.exp().mean().item(),
        "posterior_variance": posterior.logvar.exp().mean().item(),
        "ablations": ablations,
        "tau_sweep": tau_sweep,
        "slot_similarity": slot_similarity.tolist(),
        "modality_sensitivity": sensitivity,
    }
