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

import hashlib
import importlib.util
import json
import math
import os
import shutil
import statistics
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from amvl.config import STAGE_SECTIONS, Section
from amvl.data import budget, stream
from amvl.data.stream import batch_indices, epoch_order  # noqa: F401  (the sampler, as tests import it)
from amvl.distributed import PRECISIONS, check_checkpoint_safe, device, import_deepspeed, latest_tag
from amvl.errors import ConfigError, UserError
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


def reads_rationale_steps(cfg: Section) -> bool:
    """Whether the objective has a per-slot rationale loss."""
    return bool(cfg.objective.rationale_weight or cfg.objective.rationale_prior_weight)


def readout_vocab(cfg: Section, backbone, slot_kind: str) -> int:
    """The rationale readout's vocabulary: the backbone's embedding rows where a rationale loss or a
    vocabulary injector reads it, 0 (no readout made) otherwise; ntp and pause have no Z to read out."""
    wanted = reads_rationale_steps(cfg) or cfg.model.injector == "vocabulary"
    return backbone.get_input_embeddings().weight.shape[0] if wanted and slot_kind == "latent" else 0


def build(cfg: Section, rows: list[dict], run_dir: Path, slot_kind: str, write: bool = True):
    """Tokenizer, image processor and model: a small one, deterministic from the config and the
    data, or a pretrained model of a family amvl wraps from a local folder."""
    if cfg.model.backbone == "pretrained":
        # Straight into the training precision: a bf16 7B is 16.6 GB per rank, not 33 GB of fp32
        # that DeepSpeed would cast afterwards (the same bf16 values either way).
        backbone, tokenizer, image_processor = load_pretrained(
            Path(cfg.model.pretrained_path),
            cfg.model.latent_slots,
            PRECISIONS[cfg.train.precision],
            cfg.model.attn_implementation,
        )
        torch.manual_seed(cfg.model.init_seed)  # the new modules' initialisation (a small backbone seeds its own)
    else:
        corpus = [row["prompt"] + row["answer"] + row.get("explanation", "") for row in rows]
        tokenizer = build_tokenizer(corpus, cfg.model.vocab_size, cfg.model.latent_slots, cfg.model.family)
        image_processor = build_image_processor(max(image.width for image in rows[0]["images"]), cfg.model.family)
        backbone = build_small_qwen(cfg.model, tokenizer)  # initialised in fp32 whatever the precision
    vocab = readout_vocab(cfg, backbone, slot_kind)
    model = wrap_backbone(backbone, tokenizer, cfg.model, slot_kind, cfg.train.precision, rationale_vocab=vocab)
    if cfg.train.gradient_checkpointing:
        model.enable_gradient_checkpointing()
    if write:
        with atomic_dir(run_dir / "skeleton") as folder:
            save_processors(folder, tokenizer, image_processor)
            save_skeleton(model, folder)
    return tokenizer, image_processor, model


# Keys that change how training is run or watched, not what it computes: a checkpoint resumes across them.
OPERATIONAL_KEYS = (
    "launcher", "threads", "monitor", "log_every", "z_probe_every", "checkpoint_every", "keep_checkpoints", "workers"
)  # fmt: skip


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


def z_use(probe: dict, ntp: float) -> dict:
    """The Z-use fields of a log line from the model's `z_probe` losses (LatentReasoner.z_probe) and
    the step's answer loss `ntp`: each loss, and how much it rises when Z is zeroed or shuffled
    (z_gain, z_gain_shuffled) and when Z zeroed is set against the prior's Z (z_gain_prior)."""
    record = {name: round(loss.item(), 6) for name, loss in probe.items()}
    record["z_gain"] = round(record["ntp_zero_z"] - ntp, 6)
    record["z_gain_shuffled"] = round(record["ntp_shuffled_z"] - ntp, 6)
    if "ntp_prior_z" in record:
        record["z_gain_prior"] = round(record["ntp_zero_z"] - record["ntp_prior_z"], 6)
    return record


Z_GAINS = ("z_gain", "z_gain_shuffled", "z_gain_prior")


def z_use_summary(records: list[dict], last: int = 10) -> dict:
    """train_summary's `z_use`: each gain's mean over the last `last` probes (one batch each is noisy)."""
    probed = [r for r in records if "z_gain" in r][-last:]
    summary = {g: round(statistics.mean(r[g] for r in probed), 6) for g in Z_GAINS if probed and g in probed[-1]}
    return {**summary, "probes": len(probed)} if summary else {}


def z_use_sentence(gains: dict) -> str:
    """What the gains say, in words."""
    said = f"zeroing Z raises the answer loss by {gains['z_gain']:+.3f} nats, shuffling it {gains['z_gain_shuffled']:+.3f}"
    if "z_gain_prior" in gains:
        said += f"; against the prior's Z, zeroing raises it by {gains['z_gain_prior']:+.3f}"
    return said + " (0 if the decoder ignored Z)"


def build_inputs(rows: stream.Rows, cfg: Section) -> list[dict]:
    """What `build` reads of the data, without decoding the split: every prompt and answer (the
    tokenizer trains on them) and the first row's images (they size the image processor)."""
    if not len(rows):
        raise UserError(f"{rows.path}: no rows")
    # rationales too where the model reads or writes them (a privileged posterior, a chain of thought)
    uses_rationale = "rationale" in cfg.model.answer_format + cfg.model.posterior_input
    uses_rationale = uses_rationale or reads_rationale_steps(cfg)
    text = rows.text(["prompt", "answer", *(["explanation"] if uses_rationale else [])])
    text[0]["images"] = rows[0]["images"]
    return text


def training_data(train, rows, tokenizer, image_processor, answer_format: str, run_dir: Path, rank: int,
                  rationale: bool = False):  # fmt: skip
    """The examples (encoded when a batch needs them, within the token budget; their rationales
    too where the model reads them) and, for train.group_by_length, every row's length."""
    budget.set_caps(image_processor, train.min_pixels, train.max_pixels, "train")
    if rank == 0 and (train.min_pixels or train.max_pixels):  # convert and evaluate read the capped one
        image_processor.save_pretrained(run_dir / "skeleton")
    if train.workers:  # the workers fork after the tokenizer trained: no threads of its own in them
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    dataset = stream.Encoded(
        rows, tokenizer, image_processor, answer_format, train.max_tokens, "train.max_tokens", rationale
    )
    if not train.group_by_length:
        return dataset, None
    return dataset, stream.lengths(rows, tokenizer, image_processor, answer_format, train.max_tokens)


def data_record(paddings: list[float], fitted: Counter, world: int, device) -> dict:
    """The log window's padding fraction (mean over micro-batches and ranks) and how many examples
    were resized or skipped to fit train.max_tokens (summed over ranks)."""
    values = torch.tensor([sum(paddings), len(paddings), fitted["resized"], fitted["skipped"]], device=device)
    if world > 1:
        import deepspeed.comm as dist

        dist.all_reduce(values)
    total, batches, resized, skipped = values.tolist()
    return {"padding": round(total / batches, 4), "resized": int(resized), "skipped": int(skipped)}


def data_summary(records: list[dict], rows: int, train) -> dict:
    """train_summary's `data`: the train rows, and every example resized or skipped (from the log)."""
    resized, skipped = (sum(r.get(key, 0) for r in records) for key in ("resized", "skipped"))
    if resized or skipped:
        print(f"train: {resized} examples resized and {skipped} skipped to fit train.max_tokens ({train.max_tokens})")
    paddings = [r["padding"] for r in records if "padding" in r]
    padding = round(sum(paddings) / len(paddings), 4) if paddings else None
    return {"rows": rows, "resized": resized, "skipped": skipped, "mean_padding": padding}


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
    if cfg.objective.name == "none":
        raise ConfigError("objective.name: none trains nothing; evaluate model.pretrained_path with `amvl evaluate --model`")
    if train.threads or threads:
        torch.set_num_threads(train.threads or threads)
    deepspeed = import_deepspeed()
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    run_dir.mkdir(parents=True, exist_ok=True)
    checkpoint_dir, log_path = run_dir / "checkpoints", run_dir / "train_log.jsonl"

    train_file = Path(data_dir) / "train.parquet"
    rows = stream.Rows(train_file, split="train")  # read lazily, a row group at a time
    objective = build_objective(**cfg.objective)
    tokenizer, image_processor, model = build(cfg, build_inputs(rows, cfg), run_dir, objective.slot_kind, write=rank == 0)
    answer_format = cfg.model.answer_format
    dataset, lengths = training_data(train, rows, tokenizer, image_processor, answer_format, run_dir, rank, model.reads_rationale)
    # On a GPU, fused AdamW: one kernel over ZeRO's flat fp32 partition, where the default (foreach)
    # allocates temporaries of the partition's size. The CPU keeps the default.
    fused = True if device().type == "cuda" else None
    optimizer = torch.optim.AdamW(optimizer_groups(model, train), weight_decay=train.weight_decay, fused=fused)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, train))
    engine, _, _, _ = deepspeed.initialize(
        model=model, optimizer=optimizer, lr_scheduler=scheduler, config=deepspeed_config(train, run_dir)
    )
    if rank == 0:
        claim_checkpoints(checkpoint_dir, fingerprint(cfg, world, train_file))
    deepspeed.comm.barrier()
    start = resume(engine, checkpoint_dir, log_path, rank)
    indices = lambda step, micro: batch_indices(step, micro, train, len(rows), rank, world, lengths)  # noqa: E731
    batches = stream.StepBatches(start, train.steps, train.grad_accum, indices)
    data = iter(stream.loader(dataset, batches, stream.train_batch, train.workers))

    terms, tag, tick, tokens = {}, latest_tag(checkpoint_dir), time.perf_counter(), 0
    paddings, fitted, z_status = [], Counter(), ""  # of the log window; the last Z-use probe
    # train.z_probe_every: is Z used? (objectives with latents; `z_use` above)
    probe_every = train.log_every if train.z_probe_every is None else train.z_probe_every
    probe_every *= objective.slot_kind == "latent"
    progress = Progress("train", train.steps, "steps", start=start, enabled=rank == 0)
    with progress, open(log_path if rank == 0 else os.devnull, "a") as log:
        for step in range(start, train.steps):
            # train.prior_decode_fraction: this step's decoder reads Z from the prior (a function of seed and step)
            from_prior = np.random.default_rng([train.seed, step]).random() < train.prior_decode_fraction
            probing = bool(probe_every) and (step + 1) % probe_every == 0
            for micro in range(train.grad_accum):
                torch.manual_seed(train.seed * 1_000_003 + (step * train.grad_accum + micro) * world + rank)  # Z noise
                batch, counts, error = next(data)
                if error:
                    raise UserError(error)
                paddings.append(stream.padding(batch))
                fitted += counts
                out = engine(
                    batch,
                    latents=objective.latents,
                    decode_from="prior" if from_prior else "posterior",
                    z_probe=probing and micro == train.grad_accum - 1,  # on the step's last micro-batch
                    prior_answer=bool(objective.aux_weights["prior_answer"]),
                )
                terms = objective(out["ntp_loss"], out["prior"], out["posterior"], step, out)
                if not all_finite(terms["loss"], world):
                    raise UserError(
                        f"non-finite loss at step {step + 1}; training stopped, the last good checkpoint is "
                        f"{checkpoint_dir / str(tag)} (lower train.lr or check the data)"
                    )
                engine.backward(terms["loss"])
                engine.step()
                tokens += world * sum(len(p) + len(a) for p, a in zip(batch["prompt_ids"], batch["answer_ids"]))
            done = step + 1
            if done % train.log_every == 0 or done == train.steps or probing:
                elapsed, tick = time.perf_counter() - tick, time.perf_counter()
                record = log_record(done, mean_over_ranks(terms, world), out, scheduler.get_last_lr(), tokens / elapsed)
                record.update(data_record(paddings, fitted, world, terms["loss"].device))
                if engine.get_global_grad_norm() is not None:  # before clipping (train.grad_clip): who dominates it
                    record["grad_norm"] = round(float(engine.get_global_grad_norm()), 6)
                if probing:
                    record.update(z_use(mean_over_ranks(out["z_probe"], world), record["ntp"]))
                tokens, paddings, fitted = 0, [], Counter()
                log.write(json.dumps(record) + "\n")
                log.flush()
                if engine.monitor.enabled:
                    engine.monitor.write_events([(f"Train/{k}", v, done) for k, v in record.items() if k != "step"])
                if probing:  # the last probe's gains stay on the line until the next; shuffled first (in distribution)
                    z_status = f" | Z gain: shuffled {record['z_gain_shuffled']:+.3f} zeroed {record['z_gain']:+.3f}" + (
                        f" prior {record['z_gain_prior']:+.3f}" if "z_gain_prior" in record else ""
                    )
                progress.status = f"loss {record['loss']:.3f} ntp {record['ntp']:.3f}{z_status}"
            if done % train.checkpoint_every == 0 or done == train.steps:
                tag = save_checkpoint(engine, checkpoint_dir, done, train.keep_checkpoints, rank)
            progress.update(done)

    summary = {
        "steps": train.steps,
        "tag": latest_tag(checkpoint_dir),
        "zero_stage": engine.zero_optimization_stage(),
        "device": torch.device(engine.device).type,  # where DeepSpeed placed the model
        "objective": cfg.objective.name,
        "world_size": world,
    }
    if rank == 0:
        records = [json.loads(line) for line in log_path.read_text().splitlines()]
        summary["final"] = records[-1] if records else {}
        summary["data"] = data_summary(records, len(rows), train)
        summary["z_use"] = z_use_summary(records)
        if summary["z_use"]:
            print(f"train: Z use over the last {summary['z_use']['probes']} probes: {z_use_sentence(summary['z_use'])}")
        write_json(run_dir / "train_summary.json", summary)
    return summary
