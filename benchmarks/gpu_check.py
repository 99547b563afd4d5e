"""The GPU check: one script, one JSON, in under 8 minutes on one GPU.

    python benchmarks/gpu_check.py --out gpu_check.json        # one GPU (CUDA torch, `pip install -e .`)
    python benchmarks/gpu_check.py --tiny --out check.json     # a tiny shape on CPU (the test suite runs this)

1. pipeline: prepare -> train (bf16, ZeRO-2, checkpointing) -> convert -> evaluate through the real
   stages on a tiny model, and where each put the model (evaluate: `device`, `dtype` of metrics.json).
2. train: a randomly initialised Qwen2.5-VL of the 7B shape, bf16, wrapped by DeepSpeed as
   `amvl train` wraps it (ZeRO-2 from config/deepspeed/zero2.json, AdamW, gradient checkpointing),
   times ntp and amvl steps on BLINK-realistic batches (benchmarks/gpu_throughput.py). One GPU
   cannot hold ZeRO-2's optimizer state for all 28 layers (about 22 bytes per trained parameter
   when it is alone), so it keeps the most layers that fit beside `--reserve-gib` of activations
   and says how many ("layers" in the JSON); `--layers` chooses.
3. evaluate: the same model answers a few batches as `amvl evaluate` does (greedy generation
   after thinking with the prior).

The JSON: tokens/s, MFU, step time and peak memory per objective, the amvl/ntp step-time ratio,
questions/s in evaluation, and the environment.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from gpu_throughput import (
    BLINK_ANSWERS,
    BLINK_IMAGE,
    QWEN25_VL_7B,
    TINY,
    batch_sizes,
    blink_batch,
    build_model,
    free,
    n_params,
    peak_tflops,
    qwen_config,
    sync,
    timed,
    useful_flops,
    with_layers,
)
from transformers import Qwen2_5_VLForConditionalGeneration

from amvl.config import Section, validate
from amvl.data.collate import collate
from amvl.distributed import device as default_device
from amvl.distributed import import_deepspeed
from amvl.objectives import build_objective
from amvl.stages.train import deepspeed_config, optimizer_groups

REPO = Path(__file__).resolve().parent.parent
ZERO2 = str(REPO / "config" / "deepspeed" / "zero2.json")
BYTES_TRAINED, BYTES_FROZEN = 22, 2  # ZeRO-2 alone: bf16 weight, grad, flat grad; fp32 master, grad; Adam


def gib(n: float) -> float:
    return round(n / 2**30, 2)


def memory(device) -> dict:
    if device.type != "cuda":
        return {}
    return {
        "allocated_gib": gib(torch.cuda.memory_allocated(device)),
        "peak_gib": gib(torch.cuda.max_memory_allocated(device)),
    }


def fitting_layers(shape: dict, tokenizer, device, reserve_gib: float) -> int:
    """The most decoder layers whose ZeRO-2 state fits on this GPU beside `reserve_gib` (counted on the meta device)."""
    counts = []
    for layers in (1, 2):
        with torch.device("meta"):
            model = Qwen2_5_VLForConditionalGeneration._from_config(qwen_config(with_layers(shape, layers), tokenizer))
        counts.append((n_params(model) - n_params(model.model.visual), n_params(model.model.visual)))
    (one, vision), (two, _) = counts
    per_layer, rest = two - one, one - (two - one)
    room = torch.cuda.get_device_properties(device).total_memory - reserve_gib * 2**30 - BYTES_FROZEN * vision
    return max(1, min(shape["text"]["num_hidden_layers"], int((room / BYTES_TRAINED - rest) // per_layer)))


def pipeline(root: Path, tiny_cfg: dict) -> dict:
    """The real stages on a tiny model: where they ran, and that they ran."""
    from amvl.stages import convert, evaluate, prepare, train

    cfg = validate(json.loads(json.dumps(tiny_cfg)))
    start = time.perf_counter()
    prepare.run(cfg, root / "data")
    summary = train.run(cfg, root / "data", root / "run")
    convert.run(cfg, root / "run", root / "model")
    metrics = evaluate.run(cfg, root / "model", root / "data", root / "results")
    return {
        "train_device": summary.get("device"),
        "evaluate_device": metrics["device"],
        "evaluate_dtype": metrics["dtype"],
        "questions": metrics["questions"],
        "diagnostics": "diagnostics" in metrics,
        "seconds": round(time.perf_counter() - start, 1),
    }


def train_and_evaluate(shape, tokenizer, examples, eval_examples, device, args) -> dict:
    deepspeed = import_deepspeed()
    train_cfg = Section(
        validate({"train": {"precision": "bf16", "batch_size": args.batch, "deepspeed_config": ZERO2}})
    ).train
    model = build_model(shape, tokenizer, torch.bfloat16, device, attn=args.attn)
    if not args.no_checkpointing:
        model.enable_gradient_checkpointing()
    fused = True if device.type == "cuda" else None  # as amvl train: one kernel over ZeRO's flat partition
    optimizer = torch.optim.AdamW(optimizer_groups(model, train_cfg), lr=1e-6, fused=fused)
    with tempfile.TemporaryDirectory() as run_dir:
        engine, *_ = deepspeed.initialize(
            model=model, optimizer=optimizer, config=deepspeed_config(train_cfg, Path(run_dir))
        )
    batch = collate(examples)
    sizes = batch_sizes(batch)
    flops, peak = useful_flops(model, sizes), peak_tflops(device, args.peak_tflops)
    result = {
        "parameters": n_params(model),
        "trained_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "zero_stage": engine.zero_optimization_stage(),
        "precision": "bf16",
        "gradient_checkpointing": not args.no_checkpointing,
        "attn_implementation": args.attn,
        "batch_questions": len(examples),
        **sizes,
    }
    for label, objective in (
        ("ntp", build_objective("ntp")),
        ("amvl", build_objective("amvl", {"max": 0.05}, {"max": 0.05})),
    ):

        def step(objective=objective):
            out = engine(batch, latents=objective.latents)
            engine.backward(objective(out["ntp_loss"], out["prior"], out["posterior"], step=100)["loss"])
            engine.step()

        seconds = statistics.median(timed(step, device, args.steps, warmup=2))
        tokens = sizes["x_tokens"] + sizes["y_tokens"]
        result[label] = {
            "step_s": round(seconds, 4),
            "tokens_per_s": round(tokens / seconds, 1),
            "mfu": round(flops / seconds / (peak * 1e12), 4) if peak else None,
            **memory(device),  # allocated: weights and optimizer state between steps; peak: of the timed steps
        }
    result["amvl_ntp_step_ratio"] = round(result["amvl"]["step_s"] / result["ntp"]["step_s"], 3)

    model.eval()
    eval_batches = [eval_examples[i : i + args.eval_batch] for i in range(0, len(eval_examples), args.eval_batch)]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    sync(device)
    start = time.perf_counter()
    for chunk in eval_batches:
        model.generate(collate(chunk), max_new_tokens=16)
    sync(device)
    seconds = time.perf_counter() - start
    result["evaluate"] = {
        "questions": len(eval_examples),
        "batch": args.eval_batch,
        "max_new_tokens": 16,
        "questions_per_s": round(len(eval_examples) / seconds, 2),
        **memory(device),
    }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    parser.add_argument("--tiny", action="store_true", help="tiny shape on CPU (checks the script)")
    parser.add_argument("--layers", type=int, help="decoder layers (default: the most that fit, at most 28)")
    parser.add_argument("--reserve-gib", type=float, default=24.0, help="GPU memory left for activations")
    parser.add_argument("--batch", type=int, default=2, help="questions per training step")
    parser.add_argument("--steps", type=int, default=4, help="timed steps per objective (after 2 warm-up)")
    parser.add_argument("--eval-questions", type=int, default=16)
    parser.add_argument("--eval-batch", type=int, default=4)
    parser.add_argument("--no-checkpointing", action="store_true")
    parser.add_argument("--attn", default="sdpa", help="attention implementation (sdpa, eager, flash_attention_2)")
    parser.add_argument("--peak-tflops", type=float, help="peak bf16 TFLOP/s of the GPU (default: from its name)")
    args = parser.parse_args()

    began = time.perf_counter()
    import_deepspeed()  # rank 0 of 1 before anything asks DeepSpeed for its accelerator
    device = torch.device("cpu") if args.tiny else default_device()
    report = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU",
        "versions": {"python": sys.version.split()[0], "torch": torch.__version__, "cuda": torch.version.cuda},
    }
    for package in ("transformers", "deepspeed"):
        report["versions"][package] = __import__(package).__version__
    if not args.tiny and device.type == "cpu":
        print("no GPU here: run with --tiny to check the script on CPU", file=sys.stderr)
        sys.exit(2)

    try:
        check(args, device, report)
    except BaseException as error:  # the JSON says how far it got, and why it stopped
        report["error"] = f"{type(error).__name__}: {error}"
        raise
    finally:
        report["wall_s"] = round(time.perf_counter() - began, 1)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
        print(json.dumps(report, indent=2))


def check(args, device, report: dict) -> None:
    tiny_run = {  # one- and multi-image subtasks, a few questions: the stages, not their numbers
        "data": {"train_size": 4, "val_size": 2, "subtasks": ["Counting", "Jigsaw"]},
        "model": {"vocab_size": 320, "attn_implementation": args.attn},
        "train": {"steps": 2, "batch_size": 2, "warmup_steps": 1, "checkpoint_every": 2, "log_every": 1},
        "evaluate": {"batch_size": 4, "taus": [0.0, 1.0]},
    }
    tiny_run["train"].update(precision="bf16", gradient_checkpointing=True, deepspeed_config=ZERO2)
    with tempfile.TemporaryDirectory() as root:
        report["pipeline"] = pipeline(Path(root), tiny_run)
    print("pipeline:", json.dumps(report["pipeline"]), flush=True)

    shape = TINY if args.tiny else QWEN25_VL_7B
    image, answers = (56, (6, 2)) if args.tiny else (BLINK_IMAGE, BLINK_ANSWERS)
    tokenizer, examples = blink_batch(args.batch, image, answers)
    _, eval_examples = blink_batch(args.eval_questions, image, (1,))  # evaluation: prompts only
    layers = shape["text"]["num_hidden_layers"]
    if args.layers or not args.tiny:
        layers = args.layers or fitting_layers(shape, tokenizer, device, args.reserve_gib)
    report["model"] = {
        "shape": "tiny" if args.tiny else "Qwen2.5-VL-7B",
        "of_layers": shape["text"]["num_hidden_layers"],
    }
    report["out_of_memory_at_layers"] = []
    while True:
        report["model"]["layers"] = layers
        try:
            train = train_and_evaluate(with_layers(shape, layers), tokenizer, examples, eval_examples, device, args)
            break
        except torch.cuda.OutOfMemoryError:
            report["out_of_memory_at_layers"].append(layers)
            if layers <= 4 or args.layers:
                raise
            layers -= 4
            free(device)
    report["evaluate"] = train.pop("evaluate")
    report["train"] = train


if __name__ == "__main__":
    main()
