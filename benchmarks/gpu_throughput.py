"""Training throughput, model FLOPs utilisation and peak memory of ntp and amvl steps on one GPU.

    python benchmarks/gpu_throughput.py                 # Qwen2.5-VL-7B shape, bf16, one GPU
    python benchmarks/gpu_throughput.py --layers 14     # the 7B width with fewer layers
    python benchmarks/gpu_throughput.py --tiny          # a tiny shape on CPU: checks the script runs

The model is randomly initialised in the Qwen2.5-VL-7B shape (no weights needed), the vision
tower frozen as in the paper. Batches are BLINK-realistic (`blink_batch`): questions of 4, 1,
3, 2 images (in turn) of about 1,000 visual tokens each (896 x 896 pixels), with answers of
300, 10, 200, 110 tokens: any even batch averages 2.5 images and 155 answer tokens a question,
and batch 1 is the largest question. A step is forward, backward and an AdamW update; the optimizer state
lives on the GPU in the weights' dtype (bf16: 4 bytes per trained parameter; ZeRO-2's fp32
master weights and moments, split over the GPUs, are in docs/PERFORMANCE.md). Each method runs
its own optimizer, warm-up steps, then timed steps after a reset of the peak-memory counter, so
its peak includes weights, gradients, optimizer state and activations, and nothing of the
method before it. Methods: ntp and amvl, without and with gradient checkpointing.

Tokens/s counts each question's |x| + |y| once, for both objectives. MFU counts the FLOPs an
ntp step needs for those tokens (6 x language-model parameters x tokens, plus the frozen
vision tower's forward, 2 x vision parameters x patches), so AMVL's extra passes and the
recomputation of checkpointing show as lower MFU, not as extra useful work.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import random
import statistics
import time

import torch
from PIL import Image
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

from amvl.config import Section, validate
from amvl.data.collate import collate, encode
from amvl.model.backbone import (
    IM_END,
    IMAGE_PAD,
    QWEN_SPECIALS,
    build_image_processor,
    build_tokenizer,
    mrope_sections,
)
from amvl.model.latent import LatentReasoner, wrap_backbone
from amvl.objectives import build_objective

PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "H800": 989.0, "A100": 312.0, "A800": 312.0, "L40S": 362.0}  # dense
QWEN25_VL_7B = {
    "text": {"hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
             "num_attention_heads": 28, "num_key_value_heads": 4, "vocab_size": 152064},
    "vision": {"depth": 32, "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16,
               "out_hidden_size": 3584, "fullatt_block_indexes": [7, 15, 23, 31], "window_size": 112},
}  # fmt: skip
TINY = {
    "text": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
             "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 1024},
    "vision": {"depth": 2, "hidden_size": 64, "intermediate_size": 128, "num_heads": 4,
               "out_hidden_size": 64, "fullatt_block_indexes": [1], "window_size": 112},
}  # fmt: skip
BLINK_IMAGE = 896  # pixels per side: 32 x 32 merged patches = 1,024 visual tokens
BLINK_IMAGES = (4, 1, 3, 2)  # images per question, in turn
BLINK_ANSWERS = (300, 10, 200, 110)  # answer tokens per question, in turn


def with_layers(shape: dict, layers: int | None) -> dict:
    return shape if not layers else {**shape, "text": {**shape["text"], "num_hidden_layers": layers}}


def qwen_config(shape: dict, tokenizer, attn: str = "sdpa") -> Qwen2_5_VLConfig:
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in QWEN_SPECIALS}
    head_dim = shape["text"]["hidden_size"] // shape["text"]["num_attention_heads"]
    return Qwen2_5_VLConfig(
        text_config={
            **shape["text"],
            "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": mrope_sections(head_dim)},
            "bos_token_id": None,
            "eos_token_id": ids[IM_END],
            "pad_token_id": ids["<|endoftext|>"],
        },
        vision_config={**shape["vision"], "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2},
        image_token_id=ids[IMAGE_PAD],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        attn_implementation=attn,
    )  # fmt: skip


def build_model(shape: dict, tokenizer, dtype, device, slot_kind: str = "latent", attn="sdpa") -> LatentReasoner:
    """A randomly initialised Qwen2.5-VL of `shape` (k = 8, d = 512 as in the paper), on `device`."""
    with torch.device(device):
        backbone = Qwen2_5_VLForConditionalGeneration._from_config(qwen_config(shape, tokenizer, attn), dtype=dtype)
    model_cfg = Section(validate({"model": {"latent_slots": 8, "latent_dim": 512, "attn_implementation": attn}})).model
    return wrap_backbone(backbone, tokenizer, model_cfg, slot_kind).to(device)


def blink_rows(n: int, image_size: int) -> list[dict]:
    """BLINK-like questions with BLINK_IMAGES images each, two options."""
    question = "Which of the two marked points is closer to the camera?\nSelect from the following choices."
    return [
        {
            "idx": str(i),
            "sub_task": "Relative_Depth",
            "images": [
                Image.new("RGB", (image_size, image_size), (40 * j, 90, 160))
                for j in range(BLINK_IMAGES[i % len(BLINK_IMAGES)])
            ],
            "prompt": f"{question}\n(A) the left point\n(B) the right point",
            "choices": ["the left point", "the right point"],
            "answer": "(A)",
        }
        for i in range(n)
    ]


def blink_batch(n: int, image_size: int = BLINK_IMAGE, answers=BLINK_ANSWERS):
    """(tokenizer, examples): n questions of `blink_rows`, answers of random text tokens with
    the lengths `answers` in turn (a reasoning trace and its letter, as Monet-SFT trains on)."""
    rows = blink_rows(n, image_size)
    tokenizer = build_tokenizer([r["prompt"] + r["answer"] for r in rows], 320, 8)
    image_processor = build_image_processor(image_size)
    text_ids = sorted(set(range(len(tokenizer))) - set(tokenizer.all_special_ids) - set(tokenizer.added_tokens_decoder))
    rng, eos = random.Random(0), tokenizer.convert_tokens_to_ids(IM_END)
    examples = []
    for i, row in enumerate(rows):
        length = answers[i % len(answers)]
        example = encode(row, tokenizer, image_processor)
        examples.append(dataclasses.replace(example, answer_ids=rng.choices(text_ids, k=length - 1) + [eos]))
    return tokenizer, examples


def batch_sizes(batch: dict) -> dict:
    x = sum(len(p) for p in batch["prompt_ids"])
    y = sum(len(a) for a in batch["answer_ids"])
    return {"x_tokens": x, "y_tokens": y, "patches": int(batch["image_grid_thw"].prod(-1).sum())}


def n_params(module) -> int:
    return sum(p.numel() for p in module.parameters())


def useful_flops(model: LatentReasoner, sizes: dict) -> float:
    """FLOPs of an ntp training step on these tokens: what MFU counts as useful work."""
    vision = n_params(model.backbone.model.visual)
    language = n_params(model.backbone) - vision
    return 6 * language * (sizes["x_tokens"] + sizes["y_tokens"]) + 2 * vision * sizes["patches"]


def peak_tflops(device: torch.device, given: float | None = None) -> float | None:
    if given or device.type != "cuda":
        return given
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def timed(function, device, steps: int, warmup: int) -> list[float]:
    """Seconds of each of `steps` calls after `warmup` untimed ones; peak memory counts from the first timed call."""
    times = []
    for step in range(warmup + steps):
        if step == warmup and device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        sync(device)
        start = time.perf_counter()
        function()
        sync(device)
        times.append(time.perf_counter() - start)
    return times[warmup:]


def measure(model, objective, optimizer, batch, device, steps: int, warmup: int = 2) -> dict:
    """Median seconds of a full step (forward, backward, AdamW) and the peak memory of the timed steps."""

    def step():
        out = model(batch, latents=objective.latents)
        objective(out["ntp_loss"], out["prior"], out["posterior"], step=100)["loss"].backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    times = timed(step, device, steps, warmup)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return {"step_s": statistics.median(times), "peak_memory_gib": peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="tiny shape on CPU (checks the script)")
    parser.add_argument("--batch", type=int, default=2, help="questions per step")
    parser.add_argument("--layers", type=int, help="decoder layers (default: the 7B's 28)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per method (after 2 warm-up)")
    parser.add_argument("--attn", default="sdpa", help="attention implementation (sdpa, eager, flash_attention_2)")
    parser.add_argument("--peak-tflops", type=float, help="peak bf16 TFLOP/s of the GPU (default: from its name)")
    args = parser.parse_args()

    device = torch.device("cpu" if args.tiny or not torch.cuda.is_available() else "cuda")
    dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
    tokenizer, examples = blink_batch(args.batch, *((56, (6, 2)) if args.tiny else (BLINK_IMAGE, BLINK_ANSWERS)))
    batch = collate(examples)
    sizes = batch_sizes(batch)
    model = build_model(
        with_layers(TINY if args.tiny else QWEN25_VL_7B, args.layers), tokenizer, dtype, device, attn=args.attn
    )
    ntp = LatentReasoner(model.backbone, dataclasses.replace(model.cfg, slot_kind="none"))
    flops, peak = useful_flops(model, sizes), peak_tflops(device, args.peak_tflops)
    vision = n_params(model.backbone.model.visual)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(
        f"device: {name}; language model {(n_params(model.backbone) - vision) / 1e9:.2f} B, vision {vision / 1e9:.2f} B"
    )
    print(
        f"batch: {args.batch} questions, {sizes['x_tokens'] + sizes['y_tokens']} tokens "
        f"(x {sizes['x_tokens']}, y {sizes['y_tokens']}), {sizes['patches']} patches"
    )

    results = {}
    for checkpointing in (False, True):
        if checkpointing:
            model.enable_gradient_checkpointing()  # the backbone ntp shares
        for label, wrapper, objective in (
            ("ntp", ntp, build_objective("ntp")),
            ("amvl", model, build_objective("amvl", {"max": 0.05}, {"max": 0.05})),
        ):
            label += " + checkpointing" if checkpointing else ""
            trained = [p for p in wrapper.parameters() if p.requires_grad]
            optimizer = torch.optim.AdamW(trained, lr=1e-6, fused=True if device.type == "cuda" else None)
            try:
                results[label] = measure(wrapper.train(), objective, optimizer, batch, device, args.steps)
            except torch.cuda.OutOfMemoryError:
                results[label] = None
            del optimizer
            wrapper.zero_grad(set_to_none=True)
            free(device)
            r = results[label]
            if r is None:
                print(f"{label}: out of memory")
                continue
            mfu = f", MFU {100 * flops / r['step_s'] / (peak * 1e12):.1f}%" if peak else ""
            memory = f", peak memory {r['peak_memory_gib']:.1f} GiB" if r["peak_memory_gib"] is not None else ""
            tokens = (sizes["x_tokens"] + sizes["y_tokens"]) / r["step_s"]
            print(f"{label}: {r['step_s'] * 1000:.0f} ms/step, {tokens:,.0f} tokens/s{mfu}{memory}")
    if results.get("ntp + checkpointing") and results.get("amvl + checkpointing"):
        ratio = results["amvl + checkpointing"]["step_s"] / results["ntp + checkpointing"]["step_s"]
        print(f"with checkpointing: amvl/ntp step-time ratio {ratio:.2f}")
    if results.get("ntp") and results.get("amvl"):
        print(f"amvl/ntp step-time ratio: {results['amvl']['step_s'] / results['ntp']['step_s']:.2f}")


if __name__ == "__main__":
    main()
