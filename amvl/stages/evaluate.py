"""evaluate: answer a split with latents from the prior only, as BLINK's official protocol does.

Each question is prompted with its row's prompt and images in order (the disclaimer, where the
official evaluation adds one, was put in at prepare). `evaluate.mode`:
- `generate`: greedy answer after thinking with Z from the prior at temperature tau, parsed
  by `extract_choice` in the official order (with an offline fallback for the GPT matcher);
- `likelihood`: the option whose answer ("(A)", or "(A) <option>") has the highest log-likelihood.

results/<experiment>/<run>/
  <Subtask>.json    {"<split>": [{"idx", "answer", "full_prediction", "prediction"}]}, the official layout
  submission.json   test split only: {idx: "(X)"} over every subtask, for the BLINK leaderboard
  metrics.json      macro (the official score) and micro accuracy, per subtask, chance, fallback
                    rate, and the leakage diagnostics (val split); written last
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

import torch

from amvl.config import Section
from amvl.data import budget, stream
from amvl.data.blink import letter
from amvl.data.collate import collate
from amvl.distributed import PRECISIONS, device
from amvl.evaluation import diagnostics
from amvl.evaluation.extract import extract_choice_route
from amvl.evaluation.metrics import accuracy_table
from amvl.io import write_json
from amvl.model.backbone import load_processors
from amvl.model.latent import LatentReasoner
from amvl.progress import Progress


def limit_per_task(rows: list[dict], limit: int) -> list[dict]:
    if not limit:
        return rows
    seen = defaultdict(int)
    kept = []
    for row in rows:
        seen[row["sub_task"]] += 1
        if seen[row["sub_task"]] <= limit:
            kept.append(row)
    return kept


class Counted:
    """The model as `diagnostics.leakage` sees it: each batch it runs (forward or score_choices)
    advances `progress` by one. A wrapper, since the diagnostics take no progress callback."""

    def __init__(self, model, progress: Progress):
        self.model, self.progress = model, progress

    def __getattr__(self, name):
        return getattr(self.model, name)

    def __call__(self, *args, **kwargs):
        out = self.model(*args, **kwargs)
        self.progress.advance()
        return out

    def score_choices(self, *args, **kwargs):
        out = self.model.score_choices(*args, **kwargs)
        self.progress.advance()
        return out


QUESTION_COLUMNS = ["idx", "sub_task", "answer", "choices"]  # what records need: read without the images


def questions(cfg, split: stream.Rows, rows: list[dict], tokenizer, image_processor, answer_format: str):
    """(rows to answer, rows skipped, their examples, streamed): the images capped at
    evaluate.min/max_pixels where set; with evaluate.max_tokens, questions over it are resized
    down, and those that do not fit even at min_pixels are skipped."""
    budget.set_caps(image_processor, cfg.min_pixels, cfg.max_pixels, "evaluate")
    indices = [row["row"] for row in rows]
    kept = set(stream.within_budget(split, indices, tokenizer, image_processor, answer_format, cfg.max_tokens)[0])
    answered, skipped = [r for r in rows if r["row"] in kept], [r for r in rows if r["row"] not in kept]
    dataset = stream.Encoded(split, tokenizer, image_processor, answer_format, cfg.max_tokens, "evaluate.max_tokens")
    return answered, skipped, stream.Examples(dataset, [r["row"] for r in answered], cfg.workers)


def record(row: dict, prediction: str, full: str, route: str) -> dict:
    """One answered question; `row` is its place in the split file, to put records back in order."""
    return {
        **{k: row[k] for k in ("idx", "sub_task", "answer", "row")},
        **{"full_prediction": full, "prediction": prediction, "route": route, "options": len(row["choices"])},
    }


def diagnostic_batches(examples, batch_size: int, taus: list[float]) -> int:
    """How many batches `diagnostics.leakage` runs, for the progress total: posterior passes for
    the gold answer, a wrong one, each option and two perturbations; option-scoring passes for
    the prior and oracle means, the wrong answer's posterior, three ablations and each tau > 0."""
    passes = 4 + max(len(e.choice_ids) for e in examples) + 6 + sum(tau != 0 for tau in taus)
    return passes * math.ceil(len(examples) / batch_size)


def answer(model, tokenizer, chunk, rows, cfg) -> list[tuple[str, str, str]]:
    """(prediction, full prediction, route) per question of the chunk."""
    batch = collate(chunk)
    if cfg.mode == "likelihood":
        scores = model.score_choices(batch, [e.choice_ids for e in chunk], tau=cfg.tau)
        return [(letter(i), letter(i), "likelihood") for i in scores.argmax(-1).tolist()]
    generated = model.generate(batch, max_new_tokens=cfg.max_new_tokens, tau=cfg.tau)
    out = []
    for tokens, row in zip(generated, rows):
        text = tokenizer.decode(tokens, skip_special_tokens=True)
        choice, route = extract_choice_route(text, row["choices"])
        out.append((choice, text, route))
    return out


def run(cfg: dict, model_dir: Path, data_dir: Path, out_dir: Path, threads: int | None = None) -> dict:
    cfg = Section(cfg).evaluate
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)  # tau > 0 draws noise; the same draws every time
    split = stream.Rows(Path(data_dir) / f"{cfg.split}.parquet", split=cfg.split)  # read as answered
    rows = limit_per_task([dict(r, row=i) for i, r in enumerate(split.text(QUESTION_COLUMNS))], cfg.limit)
    dtype = None if cfg.precision == "auto" else PRECISIONS[cfg.precision]  # auto: the training precision
    model = LatentReasoner.load(model_dir, device(cfg.device), dtype).eval()
    tokenizer, image_processor = load_processors(model_dir)
    rows, skipped, examples = questions(cfg, split, rows, tokenizer, image_processor, model.cfg.answer_format)

    records = [record(row, "(Z)", "", "skipped") for row in skipped]  # over evaluate.max_tokens: scored wrong
    with Progress(f"evaluate ({cfg.mode})", len(examples), "questions") as progress:
        for start, chunk in zip(range(0, len(examples), cfg.batch_size), examples.chunks(cfg.batch_size)):
            chunk_rows = rows[start : start + cfg.batch_size]
            for row, answered in zip(chunk_rows, answer(model, tokenizer, chunk, chunk_rows, cfg)):
                records.append(record(row, *answered))
            progress.update(len(records) - len(skipped))
    records = sorted(records, key=lambda r: r.pop("row"))  # file order, skipped questions in their place

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for task in sorted({r["sub_task"] for r in records}):
        official = [
            {k: r[k] for k in ("idx", "answer", "full_prediction", "prediction")}
            for r in records
            if r["sub_task"] == task
        ]
        write_json(out_dir / f"{task}.json", {cfg.split: official})
    metrics = {"split": cfg.split, "mode": cfg.mode, "tau": cfg.tau, "latents": "prior", "questions": len(records)}
    if cfg.max_tokens:
        metrics["skipped"] = len(skipped)  # over evaluate.max_tokens even at min_pixels: scored wrong
    weights = model.backbone.get_input_embeddings().weight  # where and in what the answers were computed
    metrics.update(device=weights.device.type, dtype=str(weights.dtype).removeprefix("torch."))
    if cfg.split == "test":  # answers hidden: nothing to score, a file to submit
        write_json(out_dir / "submission.json", {r["idx"]: r["prediction"] for r in records})
    else:
        metrics.update(accuracy_table(records))
        fallback = defaultdict(list)
        for r in records:
            fallback[r["sub_task"]].append(r["route"] == "fallback")
        metrics["fallback_rate"] = {task: sum(f) / len(f) for task, f in sorted(fallback.items())}
        if cfg.diagnostics and model.cfg.slot_kind == "latent":
            specials = set(tokenizer.all_special_ids) | set(tokenizer.added_tokens_decoder)  # chat, vision, slots
            # About 15 passes over each question: evaluate.diagnostics_limit keeps a 7B model to a subset.
            probe = examples.subset([row["row"] for row in limit_per_task(rows, cfg.diagnostics_limit)])
            total = diagnostic_batches(probe, cfg.batch_size, cfg.taus)
            with Progress("diagnostics", total, "batches") as progress:
                counted = Counted(model, progress)
                metrics["diagnostics"] = diagnostics.leakage(counted, probe, cfg.batch_size, cfg.taus, specials)
            metrics["diagnostics"]["questions"] = len(probe)
    write_json(out_dir / "metrics.json", metrics)  # last: the rule's output marks completion
    return metrics
