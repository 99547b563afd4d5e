"""evaluate: answer a split with latents from the prior only, as BLINK's official protocol does.

Each question is prompted through the model's chat template with its row's images in order, then
its prompt (the disclaimer, where the official evaluation adds one, was put in at prepare) and
evaluate.instruction. `evaluate.mode`:
- `generate`: greedy answer after thinking with Z from the prior at temperature tau, up to an end
  token or max_new_tokens, parsed by `extract_choice` (the official order, then offline rules in
  place of the official GPT matcher);
- `likelihood`: the option whose answer ("(A)", or "(A) <option>") has the highest log-likelihood.

The model is a folder written by `amvl convert`, or a Hugging Face Qwen2.5-VL / Qwen2-VL / Qwen3-VL folder
evaluated as it is (zero-shot). Under a launcher (evaluate.launcher) the batches are dealt out
over the processes and rank 0 writes what one process would.

results/<experiment>/<run>/[<benchmark>/]
  <Subtask>.json    {"<split>": [{"idx", "answer", "full_prediction", "prediction"}]}, the official layout
  submission.json   test split only: {idx: "(X)"} over every subtask, for the BLINK leaderboard
  metrics.json      macro (BLINK's official score) and micro accuracy, per subtask, chance, fallback
                    rate; a benchmark's headline `score`; the leakage diagnostics (the dataset's
                    val split); written last
"""

from __future__ import annotations

import math
import os
from collections import defaultdict
from pathlib import Path

import torch

from amvl.config import Section
from amvl.data import benchmarks, budget, stream
from amvl.data.blink import letter
from amvl.data.collate import collate
from amvl.distributed import PRECISIONS, device
from amvl.evaluation import diagnostics
from amvl.evaluation.extract import extract_choice_route
from amvl.evaluation.metrics import accuracy_table
from amvl.io import write_json
from amvl.model.backbone import load_processors
from amvl.model.latent import LATENT_CONFIG, LatentReasoner
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


def questions(cfg, split: stream.Rows, rows: list[dict], tokenizer, image_processor, answer_format: str,
              rationale: bool = False):  # fmt: skip
    """(rows to answer, rows skipped, their examples, streamed): the images capped at
    evaluate.min/max_pixels where set; with evaluate.max_tokens, questions over it are resized
    down, and those that do not fit even at min_pixels are skipped. `rationale`: the model reads
    the rows' rationales (a privileged posterior's oracle), so they are tokenized too."""
    budget.set_caps(image_processor, cfg.min_pixels, cfg.max_pixels, "evaluate")
    plans = stream.within_budget(split, [row["row"] for row in rows], tokenizer, image_processor, answer_format,
                                 cfg.max_tokens)  # fmt: skip
    answered = [r for r in rows if plans[r["row"]][0] != "skipped"]
    skipped = [r for r in rows if plans[r["row"]][0] == "skipped"]
    dataset = stream.Encoded(split, tokenizer, image_processor, answer_format, cfg.max_tokens, "evaluate.max_tokens",
                             rationale, plans)  # fmt: skip
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


def rank_and_world() -> tuple[int, int]:
    """This process's place among the evaluation processes a launcher (evaluate.launcher) started;
    (0, 1) without one. Their group is set up here: gloo on the CPU, NCCL between GPUs."""
    world = int(os.environ.get("WORLD_SIZE", 1))
    if world > 1 and not torch.distributed.is_initialized():
        if torch.cuda.is_available():  # GPU LOCAL_RANK of this node (RANK counts every node's processes): NCCL's
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))  # gather_object and device cuda take it
        torch.distributed.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return int(os.environ.get("RANK", 0)), world


def my_batches(rows: list[dict], batch_size: int, rank: int, world: int) -> list[dict]:
    """The rows of every `world`-th batch from batch `rank` on: the batches one process would make,
    dealt out whole, so each question is answered in the same batch (hence the same bits) either way."""
    batches = [rows[start : start + batch_size] for start in range(0, len(rows), batch_size)]
    return [row for batch in batches[rank::world] for row in batch]


def run(cfg: dict, model_dir: Path, data_dir: Path, out_dir: Path, threads: int | None = None, benchmark=None):
    """Answer the split and write the results; the metrics, or None on a rank other than 0.
    `benchmark`: the prepared folder holds this benchmark of config `benchmarks` (amvl/data/benchmarks.py)."""
    cfg = Section(cfg).evaluate
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)  # tau > 0 draws noise; the same draws every time
    rank, world = rank_and_world()
    split_name = "val" if benchmark else cfg.split  # a benchmark's one split, answers known
    split = stream.Rows(Path(data_dir) / f"{split_name}.parquet", split=split_name, instruction=cfg.instruction)
    rows = limit_per_task([dict(r, row=i) for i, r in enumerate(split.text(QUESTION_COLUMNS))], cfg.limit)
    dtype = None if cfg.precision == "auto" else PRECISIONS[cfg.precision]  # auto: the training precision
    model = LatentReasoner.load(model_dir, device(cfg.device), dtype).eval()
    tokenizer, image_processor = load_processors(model_dir)
    rows, skipped, examples = questions(cfg, split, rows, tokenizer, image_processor, model.cfg.answer_format,
                                        model.reads_rationale)  # fmt: skip
    mine = my_batches(rows, cfg.batch_size, rank, world)

    records = [record(row, "(Z)", "", "skipped") for row in skipped]  # over evaluate.max_tokens: scored wrong
    label = f"evaluate ({cfg.mode})" + (f", rank {rank} of {world}" if world > 1 else "")
    with Progress(label, len(mine), "questions") as progress:
        chunks = examples.subset([row["row"] for row in mine]).chunks(cfg.batch_size)
        for start, chunk in zip(range(0, len(mine), cfg.batch_size), chunks):
            chunk_rows = mine[start : start + cfg.batch_size]
            for row, answered in zip(chunk_rows, answer(model, tokenizer, chunk, chunk_rows, cfg)):
                records.append(record(row, *answered))
            progress.update(len(records) - len(skipped))
    if world > 1:  # rank 0 merges every rank's answers, then scores and diagnoses alone
        gathered = [None] * world if rank == 0 else None
        torch.distributed.gather_object(records[len(skipped) :], gathered)
        if rank != 0:
            return None
        records = records[: len(skipped)] + [r for part in gathered for r in part]
    records = sorted(records, key=lambda r: r.pop("row"))  # file order, skipped questions in their place

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for task in sorted({r["sub_task"] for r in records}):
        official = [
            {k: r[k] for k in ("idx", "answer", "full_prediction", "prediction")}
            for r in records
            if r["sub_task"] == task
        ]
        write_json(out_dir / f"{task}.json", {split_name: official})
    metrics = {"split": split_name, "mode": cfg.mode, "tau": cfg.tau, "latents": "prior", "questions": len(records)}
    # A Hugging Face folder evaluated as it is (objective none, or `amvl evaluate --model` on anyone's model)
    metrics["model"] = {"path": str(model_dir), "zero_shot": not (Path(model_dir) / LATENT_CONFIG).exists()}
    if cfg.instruction:
        metrics["instruction"] = cfg.instruction
    if cfg.max_tokens:
        metrics["skipped"] = len(skipped)  # over evaluate.max_tokens even at min_pixels: scored wrong
    weights = model.backbone.get_input_embeddings().weight  # where and in what the answers were computed
    metrics.update(device=weights.device.type, dtype=str(weights.dtype).removeprefix("torch."), processes=world)
    if split_name == "test":  # answers hidden: nothing to score, a file to submit
        write_json(out_dir / "submission.json", {r["idx"]: r["prediction"] for r in records})
    else:
        metrics.update(accuracy_table(records))
        fallback = defaultdict(list)
        for r in records:
            fallback[r["sub_task"]].append(r["route"] == "fallback")
        metrics["fallback_rate"] = {task: sum(f) / len(f) for task, f in sorted(fallback.items())}
        if benchmark:
            kind = benchmarks.BENCHMARKS[benchmark].score
            metrics.update(benchmark=benchmark, score_kind=kind, score=metrics[f"{kind}_accuracy"])
        elif cfg.diagnostics and model.cfg.slot_kind == "latent":
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
