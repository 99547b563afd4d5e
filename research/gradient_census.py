"""Which loss term trains which part of a latent model? The gradient norm of each term of a run's
objective on each group of parameters, on training batches, at the run's final weights.

    python research/gradient_census.py --config config/science.yaml --run amvl_s0 [--batches 4]

Reads the converted model (models/<experiment>/<run>) and the run's training split; the KL
weights are those of the last step. Prints, per term, the gradient norm (summed over the batches'
mean) on the language model, the vision tower, the prior head, the posterior head, the injector
and the rationale readout, and the clip the whole step would see (train.grad_clip). This is how
docs/METHOD.md section 5f says where the forward KL's gradient goes.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch

from amvl import config as amvl_config
from amvl.config import Section
from amvl.data import stream
from amvl.data.collate import collate, encode
from amvl.model.backbone import load_processors
from amvl.model.latent import LatentReasoner
from amvl.objectives import build_objective

GROUPS = {  # parameter-name prefix -> group
    "backbone.model.visual": "vision",
    "backbone": "language model",
    "prior_head": "prior head",
    "posterior_head": "posterior head",
    "injector": "injector",
    "rationale_head": "rationale readout",
}


def group_of(name: str) -> str:
    return next(group for prefix, group in GROUPS.items() if name.startswith(prefix))


def census(model, objective, batches: list[dict], step: int) -> dict[str, dict[str, float]]:
    """term -> group -> gradient norm of the term's weighted loss, averaged over `batches`."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    norms: dict[str, dict[str, float]] = {}
    for i, batch in enumerate(batches):
        torch.manual_seed(i)  # the posterior's noise
        out = model(batch, latents=objective.latents, prior_answer=bool(objective.aux_weights["prior_answer"]))
        terms = objective(out["ntp_loss"], out["prior"], out["posterior"], step, out)
        weights = {"ntp": 1.0, **objective.aux_weights, "kl_forward": float(terms["beta"]),
                   "kl_joint": float(terms["beta"]), "kl_reverse": float(terms["gamma"])}  # fmt: skip
        for term, weight in weights.items():
            if term not in terms or not weight:
                continue
            grads = torch.autograd.grad(weight * terms[term], [p for _, p in named], retain_graph=True, allow_unused=True)
            squares: dict[str, float] = {}
            for (name, _), grad in zip(named, grads):
                if grad is not None:
                    squares[group_of(name)] = squares.get(group_of(name), 0.0) + grad.float().pow(2).sum().item()
            for group, square in squares.items():
                norms.setdefault(term, {}).setdefault(group, 0.0)
                norms[term][group] += square**0.5 / len(batches)
    return norms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", nargs="+", required=True, help="config files, as snakemake --configfile takes them")
    parser.add_argument("--run", required=True)
    parser.add_argument("--batches", type=int, default=4)
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("THREADS", "1")))
    config = amvl_config.load(*args.config)
    cfg = Section(amvl_config.resolve_run(config, args.run))
    folder = Path(f"models/{config['experiment']}/{args.run}")
    model = LatentReasoner.load(folder).train()
    tokenizer, image_processor = load_processors(folder)
    rows = stream.Rows(Path(f"data/{config['dataset']}/train.parquet"), split="train")
    objective = build_objective(**cfg.objective)
    size = cfg.train.batch_size
    batches = [
        collate([encode(rows[j], tokenizer, image_processor, cfg.model.answer_format, rationale=model.reads_rationale)
                 for j in range(i * size, (i + 1) * size)])
        for i in range(args.batches)
    ]  # fmt: skip
    norms = census(model, objective, batches, cfg.train.steps)
    groups = [g for g in dict.fromkeys(GROUPS.values()) if any(g in n for n in norms.values())]
    print(f"{'term':>16} | " + " | ".join(f"{g:>17}" for g in groups))
    for term, by_group in norms.items():
        print(f"{term:>16} | " + " | ".join(f"{by_group.get(g, 0.0):17.4g}" for g in groups))
    print(f"(train.grad_clip {cfg.train.grad_clip}: the whole step's gradient is scaled to that norm when above it)")


if __name__ == "__main__":
    main()
