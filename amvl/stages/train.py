"""train: the latent Qwen2.5-VL on the prepared train split, through a DeepSpeed engine.

runs/<experiment>/<run>/
  skeleton/          tokenizer, image processor, model configs (what `convert` rebuilds from)
  checkpoints/       resumable DeepSpeed checkpoints, the last `keep_checkpoints` of them
  train_log.jsonl    one line per `log_every` steps: every loss term, beta, gamma, lr, speed
  train_summary.json written last: the final checkpoint and metrics (the rule's output)

Rerunning after a kill resumes from the newest checkpoint. Batches and latent noise are pure
functions of (seed, step), so a resumed run sees exactly what an uninterrupted one would.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import math
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from amvl.config import STAGE_SECTIONS, Section
from amvl.data.blink import read_split
from amvl.data.collate import collate, encode
from amvl.distributed import check_checkpoint_safe, import_deepspeed, latest_tag
from amvl.errors import UserError
from amvl.io import atomic_dir, write_json, write_text
from amvl.model.backbone import (
    build_image_processor,
    build_small_qwen,
    build_tokenizer,
    load_pretrained,
    save_processors,
)
from amvl.model.latent import save_skeleton, wrap_backbone
from amvl.objectives import build_objective
from amvl.progress import Progress


@functools.lru_cache(maxsize=4)
def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(n)


def batch_indices(step: int, micro: int, cfg, n: int, rank: int = 0, world: int = 1) -> list[int]:
    """Rows of micro-batch `micro` of optimizer step `step` on `rank`: consecutive slices of an
    endless stream of seeded epochs, so one process sees what `world` processes see together."""
    first = ((step * cfg.grad_accum + micro) * world + rank) * cfg.batch_size
    positions = [divmod(position, n) for position in range(first, first + cfg.batch_size)]
    return [int(epoch_order(cfg.seed, epoch, n)[offset]) for epoch, offset in positions]


def lr_factor(step: int, cfg) -> float:
    """Linear warm-up, then cosine decay to 10% of the peak."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def deepspeed_config(cfg, run_dir: Path) -> dict:
    """The DeepSpeed JSON with what the `train` section decides: batch, clipping, precision, monitor."""
    path = Path(cfg.deepspeed_config)
    try:
        ds = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"train.deepspeed_config: {path} not found") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not valid JSON ({e})") from None
    ds.update(
        train_micro_batch_size_per_gpu=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        gradient_clipping=cfg.grad_clip,
        steps_per_print=10**9,
        bf16={**ds.get("bf16", {}), "enabled": cfg.precision == "bf16"},
    )
    if cfg.monitor == "tensorboard" and importlib.util.find_spec("tensorboard") is None:
        raise UserError("train.monitor: tensorboard is not installed (pip install tensorboard), or use csv")
    if cfg.monitor != "none":  # DeepSpeed's own monitor, beside train_log.jsonl
        ds[{"csv": "csv_monitor", "tensorboard": "tensorboard"}[cfg.monitor]] = {
            "enabled": True,
            "output_path": str(run_dir / "monitor"),
            "job_name": "train",
        }
    return ds


def build(cfg: Section, rows: list[dict], run_dir: Path, slot_kind: str, write: bool = True):
    """Tokenizer, image processor and model: a small one, deterministic from the config and the
    data, or a pretrained Qwen2.5-VL / Qwen2-VL from a local folder."""
    if cfg.model.backbone == "pretrained":
        backbone, tokenizer, image_processor = load_pretrained(Path(cfg.model.pretrained_path), cfg.model.latent_slots)
    else:
        corpus = [row["prompt"] + row["answer"] for row in rows]
        tokenizer = build_tokenizer(corpus, cfg.model.vocab_size, cfg.model.latent_slots)
        image_processor = build_image_processor(max(image.width for image in rows[0]["images"]))
        backbone = build_small_qwen(cfg.model, tokenizer)
    model = wrap_backbone(backbone, tokenizer, cfg.model, slot_kind)
    if cfg.train.gradient_checkpointing:
        backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        # Checkpointed layers drop the key/value cache, so the passes run over whole sequences.
        model.reuse_prefix_cache = False
    if write:
        with atomic_dir(run_dir / "skeleton") as folder:
            save_processors(folder, tokenizer, image_processor)
            save_skeleton(model, folder)
    return tokenizer, image_processor, model


# Keys that change how training is run or watched, not what it computes: a checkpoint resumes across them.
OPERATIONAL_KEYS = ("launcher", "threads", "monitor", "log_every", "checkpoint_every", "keep_checkpoints")


def fingerprint(cfg: Section, world: int, train_file: Path) -> dict:
    """What a checkpoint must share with this run to be resumed: the config sections training
    reads (less operational keys), the number of processes (ZeRO shards by it) and the data."""
    trained_on = {section: dict(cfg[section]) for section in STAGE_SECTIONS["train"]}
    trained_on["train"] = {k: v for k, v in trained_on["train"].items() if k not in OPERATIONAL_KEYS}
    size = train_file.stat().st_size
    digest = hashlib.sha256()
    with open(train_file, "rb") as f:  # both ends: cheap on a large file, and parquet ends in its footer
        digest.update(f.read(1 << 20))
        f.seek(max(0, size - (1 << 20)))
        digest.update(f.read())
    return {
        "config": trained_on,
        "world_size": world,
        "train_file_size": size,
        "train_file_sha256_ends": digest.hexdigest(),
    }


def claim_checkpoints(checkpoint_dir: Path, identity: dict) -> None:
    """Keep checkpoints only if they were written for this exact config and data."""
    stamp = checkpoint_dir / "run_identity.json"
    if checkpoint_dir.exists() and (not stamp.exists() or json.loads(stamp.read_text()) != identity):
        print(f"{checkpoint_dir}: written for another config or dataset; training from scratch")
        shutil.rmtree(checkpoint_dir)
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    write_json(stamp, identity)


def resume(engine, checkpoint_dir: Path, log_path: Path, rank: int = 0) -> int:
    """Load the newest checkpoint if any; drop log lines written after it. Returns the next step."""
    tag = latest_tag(checkpoint_dir)
    if tag is None:
        if rank == 0:
            log_path.unlink(missing_ok=True)
        return 0
    check_checkpoint_safe(checkpoint_dir / tag)
    _, client_state = engine.load_checkpoint(str(checkpoint_dir), tag=tag)
    step = client_state["step"]
    if rank == 0:
        print(f"resuming from {checkpoint_dir / tag} (step {step})")
    if rank == 0 and log_path.exists():
        kept = [line for line in log_path.read_text().splitlines() if json.loads(line)["step"] <= step]
        write_text(log_path, "".join(line + "\n" for line in kept))
    return step


def save_checkpoint(engine, checkpoint_dir: Path, step: int, keep: int, rank: int = 0) -> str:
    """Every rank writes its shards; rank 0 then prunes all but the newest `keep`."""
    tag = f"step_{step:07d}"
    engine.save_checkpoint(str(checkpoint_dir), tag=tag, client_state={"step": step})  # writes `latest` last
    if rank == 0:
        for old in sorted(p for p in checkpoint_dir.glob("step_*") if p.is_dir())[:-keep]:
            shutil.rmtree(old)
    return tag


def log_record(step: int, terms: dict, out: dict, lrs: list[float], tokens_per_s: float) -> dict:
    """One train_log.jsonl line: every loss term, the KL weights, and where the sigmas sit."""
    return {
        "step": step,
        **{name: round(value.item(), 6) for name, value in terms.items()},
        **{f"sigma_{side}": out[side].std.mean().item() for side in ("prior", "posterior") if out[side] is not None},
        "lr": lrs[0],
        "lr_latent": lrs[1],
        "tokens_per_s": round(tokens_per_s, 1),
    }


def optimizer_groups(model, cfg) -> list[dict]:
    """Heads and injector at `latent_lr` (new, small modules), the backbone at `lr`."""
    latent = [p for n, p in model.named_parameters() if p.requires_grad and not n.startswith("backbone.")]
    backbone = [p for n, p in model.named_parameters() if p.requires_grad and n.startswith("backbone.")]
    return [{"params": backbone, "lr": cfg.lr}, {"params": latent, "lr": cfg.latent_lr or cfg.lr}]


def all_finite(loss: torch.Tensor, world: int) -> bool:
    """Whether every rank's loss is finite (ranks must agree to stop together)."""
    finite = torch.tensor([float(torch.isfinite(loss).item())], device=loss.device)
    if world > 1:
        import deepspeed.comm as dist

        dist.all_reduce(finite, op=dist.ReduceOp.MIN)
    return bool(finite.item())


def mean_over_ranks(terms: dict, world: int) -> dict:
    """Logged terms as the mean over every rank's micro-batch, not rank 0's alone."""
    if world == 1:
        return terms
    import deepspeed.comm as dist

    values = torch.stack([v.detach().float().reshape(()) for v in terms.values()])
    dist.all_reduce(values)
    return dict(zip(terms, values / world))


def run(cfg: dict, data_dir: Path, run_dir: Path, threads: int | None = None) -> dict:
    cfg = Section(cfg)
    train = cfg.train
    if train.threads or threads:
        torch.set_num_threads(train.threads or threads)
    deepspeed = import_deepspeed()
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    run_dir.mkdir(parents=True, exist_ok=True)
    checkpoint_dir, log_path = run_dir / "checkpoints", run_dir / "train_log.jsonl"

    train_file = Path(data_dir) / "train.parquet"
    rows = read_split(train_file, split="train")
    objective = build_objective(
        cfg.objective.name, cfg.objective.beta, cfg.objective.gamma, cfg.objective.kl_slot_reduction
    )
    tokenizer, image_processor, model = build(cfg, rows, run_dir, objective.slot_kind, write=rank == 0)
    examples = [encode(row, tokenizer, image_processor, cfg.model.answer_format) for row in rows]
    optimizer = torch.optim.AdamW(optimizer_groups(model, train), weight_decay=train.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, train))
    engine, _, _, _ = deepspeed.initialize(
        model=model, optimizer=optimizer, lr_scheduler=scheduler, config=deepspeed_config(train, run_dir)
    )
    if rank == 0:
        claim_checkpoints(checkpoint_dir, fingerprint(cfg, world, train_file))
    deepspeed.comm.barrier()
    start = resume(engine, checkpoint_dir, log_path, rank)

    terms, tag, tick, tokens = {}, latest_tag(checkpoint_dir), time.perf_counter(), 0
    progress = Progress("train", train.steps, "steps", start=start, enabled=rank == 0)
    with progress, open(log_path if rank == 0 else os.devnull, "a") as log:
        for step in range(start, train.steps):
            for micro in range(train.grad_accum):
                torch.manual_seed(train.seed * 1_000_003 + (step * train.grad_accum + micro) * world + rank)  # Z noise
                batch = collate([examples[i] for i in batch_indices(step, micro, train, len(examples), rank, world)])
                out = engine(batch, latents=objective.latents)
                terms = objective(out["ntp_loss"], out["prior"], out["posterior"], step)
                if not all_finite(terms["loss"], world):
                    raise UserError(
                        f"non-finite loss at step {step + 1}; training stopped, the last good checkpoint is "
                        f"{checkpoint_dir / str(tag)} (lower train.lr or check the data)"
                    )
                engine.backward(terms["loss"])
                engine.step()
                tokens += world * sum(len(p) + len(a) for p, a in zip(batch["prompt_ids"], batch["answer_ids"]))
            done = step + 1
            if done % train.log_every == 0 or done == train.steps:
                elapsed, tick = time.perf_counter() - tick, time.perf_counter()
                record = log_record(done, mean_over_ranks(terms, world), out, scheduler.get_last_lr(), tokens / elapsed)
                tokens = 0
                log.write(json.dumps(record) + "\n")
                log.flush()
                if engine.monitor.enabled:
                    engine.monitor.write_events([(f"Train/{k}", v, done) for k, v in record.items() if k != "step"])
                progress.status = f"loss {record['loss']:.3f} ntp {record['ntp']:.3f}"
            if done % train.checkpoint_every == 0 or done == train.steps:
                tag = save_checkpoint(engine, checkpoint_dir, done, train.keep_checkpoints, rank)
            progress.update(done)

    summary = {
        "steps": train.steps,
        "tag": latest_tag(checkpoint_dir),
        "zero_stage": engine.zero_optimization_stage(),
        "objective": cfg.objective.name,
        "world_size": world,
    }
    if rank == 0:
        records = [json.loads(line) for line in log_path.read_text().splitlines()]
        summary["final"] = records[-1] if records else {}
        write_json(run_dir / "train_summary.json", summary)
    return summary
