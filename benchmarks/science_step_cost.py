"""Training-step time of each method of config/science.yaml against ntp, side by side in one run:
the ratios that set the compute-matched ntp's steps (steps x the largest ratio).

    python benchmarks/science_step_cost.py     # about a minute on 2 CPU cores

The science grid's model (2 layers, width 64, 4 slots of 16) on a batch of 16 pointer-chasing
questions (hops 1-3). A step is forward (every pass the method makes), loss, backward and an
AdamW update. The methods alternate step by step on copies of one backbone, so drift in machine
speed hits all alike; medians over repeats are compared.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
import yaml

from amvl.config import Section, deep_merge, validate
from amvl.data import synthetic
from amvl.data.collate import collate, encode
from amvl.model.backbone import build_image_processor, build_small_qwen, build_tokenizer
from amvl.model.latent import wrap_backbone
from amvl.objectives import build_objective
from amvl.stages.train import readout_vocab

SCIENCE = Path(__file__).resolve().parent.parent / "config" / "science.yaml"


def method_configs(path: Path = SCIENCE) -> dict[str, Section]:
    """The first seed of each method in a config (config/science.yaml), resolved, warm starts
    dropped (the step costs the same from any start)."""
    config = yaml.safe_load(path.read_text())
    base = {k: v for k, v in config.items() if k != "runs"}
    methods = {}
    for run, overrides in config["runs"].items():
        method = run.rsplit("_s", 1)[0]
        if method not in methods:
            merged = deep_merge(base, overrides)
            merged["model"].pop("init_from", None)
            methods[method] = Section(validate(merged))
    return methods


def pointer_rows(count: int = 16) -> list[dict]:
    """`count` pointer-chasing training questions, hops 1-3 in turn."""
    rows = [
        {**r, "images": [r["image_1"]]}
        for hops in (1, 2, 3)
        for r in synthetic.generate(f"Pointer_{hops}hop", "train", 6, seed=0, image_size=84)
    ]
    return rows[:count]


def training_steps(methods: dict[str, Section], rows: list[dict]) -> dict[str, tuple]:
    """Per method: its model (one backbone initialisation), objective, an AdamW and the batch of `rows`."""
    any_cfg = next(iter(methods.values()))
    corpus = [r["prompt"] + r["answer"] + r["explanation"] for r in rows]
    tokenizer = build_tokenizer(corpus, any_cfg.model.vocab_size, any_cfg.model.latent_slots)
    image_processor = build_image_processor(84)
    steps = {}
    for name, cfg in methods.items():
        objective = build_objective(**cfg.objective)
        backbone = build_small_qwen(cfg.model, tokenizer)
        vocab = readout_vocab(cfg, backbone, objective.slot_kind)
        model = wrap_backbone(backbone, tokenizer, cfg.model, objective.slot_kind, rationale_vocab=vocab).train()
        examples = [encode(r, tokenizer, image_processor, cfg.model.answer_format, rationale=model.reads_rationale)
                    for r in rows]  # fmt: skip
        batch = collate(examples)
        steps[name] = (model, objective, torch.optim.AdamW(model.parameters(), lr=1e-4), batch)
    return steps


def timed_step(model, objective, optimizer, batch, **forward) -> float:
    """Seconds of one training step: forward (with `forward`'s options), loss, backward, update."""
    start = time.perf_counter()
    out = model(batch, latents=objective.latents, **forward)
    terms = objective(out["ntp_loss"], out["prior"], out["posterior"], 100, out)
    optimizer.zero_grad(set_to_none=True)
    terms["loss"].backward()
    optimizer.step()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=11)
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(1)  # as the grid trains: one thread a run, two runs side by side
    steps = training_steps(method_configs(), pointer_rows())
    times = {name: [] for name in steps}
    for repeat in range(args.repeats + 1):  # the first round warms up and is dropped
        for name, step in steps.items():
            seconds = timed_step(*step)
            if repeat:
                times[name].append(seconds)
    medians = {name: statistics.median(t) for name, t in times.items()}
    for name, t in medians.items():
        print(f"{name:>12}: median step {1000 * t:6.1f} ms, {t / medians['ntp']:.2f} x ntp")
    latent = [t for name, t in medians.items() if steps[name][1].slot_kind == "latent"]
    ratio = max(latent) / medians["ntp"]
    print(f"largest ratio to ntp of a method with latents (the compute-matched ntp's factor): {ratio:.2f}")


if __name__ == "__main__":
    main()
