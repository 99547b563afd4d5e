"""AMVL training-step time against ntp on the same model and batch, side by side in one run.

    python benchmarks/step_cost.py            # about 1-2 minutes on 2 CPU cores

A step is forward (both passes for amvl), loss, backward and an AdamW update. The two objectives
alternate step by step on one backbone, so drift in machine speed hits both alike; the medians
of several repeats are compared. Two settings: the embedded default (84-pixel images, 1-3 per
question) and an image-heavy one (four 336-pixel images per question: 576 image tokens), where
encoding x once per step, rather than once per pass, is what keeps AMVL close to ntp. The
last line is the image-heavy ratio R and its token lower bound L = (|x| + 2k + 2|y|) / (|x| + |y|).

The same steps run again with gradient checkpointing (every decoder layer recomputed in
backward): amvl keeps its prefix cache there too, and "no cache reuse" shows what a step cost
when checkpointing switched the cache off (x then runs in both passes, and again in backward).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import statistics
import time

import torch

from amvl.config import Section, validate
from amvl.data import synthetic
from amvl.data.collate import collate, encode
from amvl.model.backbone import build_image_processor, build_small_qwen, build_tokenizer
from amvl.model.latent import LatentReasoner, wrap_backbone
from amvl.objectives import build_objective


def with_images(row: dict) -> dict:
    """A generated row as the model reads it: its images as a list."""
    return {**row, "images": [row[f"image_{n}"] for n in range(1, 5) if row.get(f"image_{n}") is not None]}


def image_heavy_rows(n: int, image_size: int) -> list[dict]:
    """Jigsaw-like questions with four large images each."""
    rows = [with_images(r) for r in synthetic.generate("Jigsaw", "train", n, seed=0, image_size=image_size)]
    return [{**r, "images": r["images"] + r["images"][:1]} for r in rows]


def default_rows(n: int) -> list[dict]:
    per_task = -(-n // len(synthetic.SUBTASKS))
    rows = [r for task in synthetic.SUBTASKS for r in synthetic.generate(task, "train", per_task, 0, 84)]
    return [with_images(r) for r in rows[:n]]


def models(rows: list[dict]):
    """ntp and amvl wrappers around one backbone, plus amvl without the prefix-cache reuse; the
    same three around a copy of the backbone with gradient checkpointing."""
    cfg = Section(validate({}))
    tokenizer = build_tokenizer([r["prompt"] + r["answer"] for r in rows], cfg.model.vocab_size, cfg.model.latent_slots)
    image_processor = build_image_processor(max(r["images"][0].width for r in rows))
    backbone = build_small_qwen(cfg.model, tokenizer)
    amvl = wrap_backbone(backbone, tokenizer, cfg.model, "latent")
    ntp = LatentReasoner(backbone, dataclasses.replace(amvl.cfg, slot_kind="none"))
    amvl_no_cache = LatentReasoner(backbone, amvl.cfg)
    amvl_no_cache.load_state_dict(amvl.state_dict())
    amvl_no_cache.reuse_prefix_cache = False
    named = {"ntp": ntp, "amvl": amvl, "amvl (no cache reuse)": amvl_no_cache}
    checkpointed = copy.deepcopy(named)
    checkpointed["amvl"].enable_gradient_checkpointing()  # on the copied backbone the three share
    named.update({f"{name} + checkpointing": model for name, model in checkpointed.items()})
    examples = [encode(r, tokenizer, image_processor) for r in rows]
    return named, examples, amvl.cfg.k


def step(model, objective, optimizer, batch) -> None:
    out = model(batch, latents=objective.latents)
    terms = objective(out["ntp_loss"], out["prior"], out["posterior"], step=100)
    optimizer.zero_grad(set_to_none=True)
    terms["loss"].backward()
    optimizer.step()


def measure(rows: list[dict], repeats: int) -> tuple[dict[str, float], float]:
    named, examples, k = models(rows)
    batch = collate(examples)
    objectives = {
        name: build_objective("ntp")
        if name.startswith("ntp")
        else build_objective("amvl", {"max": 0.05}, {"max": 0.05})
        for name in named
    }
    optimizers = {name: torch.optim.AdamW(m.parameters(), lr=1e-4) for name, m in named.items()}
    times = {name: [] for name in named}
    for repeat in range(repeats + 1):  # the first round warms up and is dropped
        for name, model in named.items():
            start = time.perf_counter()
            step(model.train(), objectives[name], optimizers[name], batch)
            if repeat:
                times[name].append(time.perf_counter() - start)
    x = statistics.mean(len(e.prompt_ids) for e in examples)
    y = statistics.mean(len(e.answer_ids) for e in examples)
    return {name: statistics.median(t) for name, t in times.items()}, (x + 2 * k + 2 * y) / (x + y)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=21)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    torch.manual_seed(0)
    settings = {
        "default (84 px, 1-3 images)": default_rows(args.batch),
        "image-heavy (4 x 336 px)": image_heavy_rows(args.batch, 336),
    }
    ratio = bound = None
    for setting, rows in settings.items():
        medians, bound = measure(rows, args.repeats)
        ratio = medians["amvl"] / medians["ntp"]
        print(f"{setting}: median step " + ", ".join(f"{n} {1000 * t:.0f} ms" for n, t in medians.items()))
        print(
            f"  amvl/ntp {ratio:.2f}, amvl without cache reuse/ntp "
            f"{medians['amvl (no cache reuse)'] / medians['ntp']:.2f}, token lower bound {bound:.2f}"
        )
        ntp, amvl = medians["ntp + checkpointing"], medians["amvl + checkpointing"]
        print(
            f"  with checkpointing: amvl/ntp {amvl / ntp:.2f}, without cache reuse/ntp "
            f"{medians['amvl (no cache reuse) + checkpointing'] / ntp:.2f}; checkpointing costs ntp "
            f"{ntp / medians['ntp']:.2f}x, amvl {amvl / medians['amvl']:.2f}x"
        )
    print(f"amvl/ntp step-time ratio: {ratio:.2f} (token lower bound {bound:.2f})")


if __name__ == "__main__":
    main()
