"""Training throughput and model FLOPs utilisation of ntp and amvl steps on one GPU.

    python benchmarks/gpu_throughput.py                 # Qwen2.5-VL-7B shape, bf16, one GPU
    python benchmarks/gpu_throughput.py --tiny          # a tiny shape on CPU: checks the script runs

The model is randomly initialised in the exact Qwen2.5-VL-7B shape (no weights needed), the
vision tower frozen as in the paper. Inputs are BLINK-like: `--images` images of `--image-size`
pixels per question (two 448-pixel images: 512 image tokens), a short prompt, a "(A)" answer.
A step is forward and backward (the optimizer update is left out: its cost does not depend on
the objective, and AdamW states for 8B parameters would not fit beside the activations).

Tokens/s counts each question's |x| + |y| once, for both objectives. MFU counts the FLOPs an
ntp step needs for those tokens (6 x language-model parameters x tokens, plus the frozen
vision tower's forward, 2 x vision parameters x patches), so AMVL's extra passes show as lower
MFU, not as extra useful work.
"""

from __future__ import annotations

import argparse
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

PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}  # dense, per GPU
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


def build_model(shape: dict, tokenizer, dtype, device, slot_kind: str) -> LatentReasoner:
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in QWEN_SPECIALS}
    head_dim = shape["text"]["hidden_size"] // shape["text"]["num_attention_heads"]
    config = Qwen2_5_VLConfig(
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
    )  # fmt: skip
    with torch.device(device):
        backbone = Qwen2_5_VLForConditionalGeneration._from_config(config, dtype=dtype)
    model_cfg = Section(validate({"model": {"latent_slots": 8, "latent_dim": 512}})).model
    return wrap_backbone(backbone, tokenizer, model_cfg, slot_kind).to(device)


def blink_like_rows(n: int, images: int, size: int) -> list[dict]:
    question = "Which of the two marked points is closer to the camera?\nSelect from the following choices."
    return [
        {
            "idx": str(i),
            "sub_task": "Relative_Depth",
            "images": [Image.new("RGB", (size, size), (40 * j, 90, 160)) for j in range(images)],
            "prompt": f"{question}\n(A) A\n(B) B",
            "choices": ["A", "B"],
            "answer": "(A)",
        }
        for i in range(n)
    ]


def n_params(module) -> int:
    return sum(p.numel() for p in module.parameters())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="tiny shape on CPU (checks the script)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--image-size", type=int, default=448)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per objective (after 2 warm-up)")
    parser.add_argument("--peak-tflops", type=float, help="peak bf16 TFLOP/s of the GPU (default: from its name)")
    args = parser.parse_args()

    device = "cpu" if args.tiny or not torch.cuda.is_available() else "cuda"
    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    rows = blink_like_rows(args.batch, args.images, 56 if args.tiny else args.image_size)
    tokenizer = build_tokenizer([r["prompt"] + r["answer"] for r in rows], 320, 8)
    image_processor = build_image_processor(args.image_size)
    batch = collate([encode(r, tokenizer, image_processor) for r in rows])
    x_tokens = sum(len(p) for p in batch["prompt_ids"])
    y_tokens = sum(len(a) for a in batch["answer_ids"])
    patches = int(batch["image_grid_thw"].prod(-1).sum())

    shape = TINY if args.tiny else QWEN25_VL_7B
    amvl = build_model(shape, tokenizer, dtype, device, "latent")
    ntp = LatentReasoner(amvl.backbone, type(amvl.cfg)(**{**vars(amvl.cfg), "slot_kind": "none"}))
    vision = n_params(amvl.backbone.model.visual)
    language = n_params(amvl.backbone) - vision
    flops_per_step = 6 * language * (x_tokens + y_tokens) + 2 * vision * patches
    name = torch.cuda.get_device_name() if device == "cuda" else "CPU"
    peak = args.peak_tflops or next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)
    print(f"device: {name}; language model {language / 1e9:.2f} B, vision {vision / 1e9:.2f} B parameters")
    print(
        f"batch: {args.batch} questions, {x_tokens + y_tokens} tokens (x {x_tokens}, y {y_tokens}), {patches} patches"
    )

    objectives = {
        "ntp": (ntp, build_objective("ntp")),
        "amvl": (amvl, build_objective("amvl", {"max": 0.05}, {"max": 0.05})),
    }
    times = {name: [] for name in objectives}
    for step in range(args.steps + 2):
        for label, (model, objective) in objectives.items():
            if device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            out = model.train()(batch, latents=objective.latents)
            objective(out["ntp_loss"], out["prior"], out["posterior"], step=100)["loss"].backward()
            model.zero_grad(set_to_none=True)
            if device == "cuda":
                torch.cuda.synchronize()
            if step >= 2:
                times[label].append(time.perf_counter() - start)
    for label, measured in times.items():
        seconds = statistics.median(measured)
        mfu = f", MFU {100 * flops_per_step / seconds / (peak * 1e12):.1f}%" if peak and device == "cuda" else ""
        memory = f", peak memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB" if device == "cuda" else ""
        print(f"{label}: {seconds * 1000:.0f} ms/step, {(x_tokens + y_tokens) / seconds:,.0f} tokens/s{mfu}{memory}")
    ratio = statistics.median(times["amvl"]) / statistics.median(times["ntp"])
    print(f"amvl/ntp step-time ratio: {ratio:.2f}")


if __name__ == "__main__":
    main()
