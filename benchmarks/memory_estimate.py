"""Per-GPU training memory of the paper's setting, estimated on a CPU, for each released backbone.

    python benchmarks/memory_estimate.py            # Qwen2.5-VL-7B-Instruct and Qwen3-VL-8B-Instruct
    python benchmarks/memory_estimate.py --json out.json

Nothing is downloaded and no GPU is used. Parameters are counted on the meta device from each
release's exact sizes (its config.json, written out below). Activations per token are measured:
one decoder layer of the release's width in bf16 runs forward over a sequence on the CPU, and
torch's saved-tensor hooks add up what it keeps for backward (sdpa keeps q, k, v and its output;
no sequence x sequence matrix, as flash or memory-efficient attention on a GPU). With gradient
checkpointing a layer keeps only its input, plus x's keys and values (the training passes read
them from the cache), and one layer's activations while it is recomputed.

Totals follow docs/PERFORMANCE.md: 8 GPUs, bf16 weights, ZeRO-2's 1/8 share of fp32 master weights,
Adam moments and the fp32 gradient (18 bytes per trained parameter / 8, the vision tower frozen),
2 GB of buckets, and for one AMVL step |x| + 3k + 2|y| decoder tokens per question plus float32
log-probabilities over the vocabulary for each scored answer token. The questions are the
BLINK-realistic ones of benchmarks/gpu_throughput.py, in visual tokens (the same tokens cost the
same whatever the patch size; Qwen3-VL's 32-px tokens make an image of the same pixels 0.77 x as many).
"""

from __future__ import annotations

import argparse
import json

import torch
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen3VLConfig, Qwen3VLForConditionalGeneration

RELEASES = {
    "Qwen2.5-VL-7B-Instruct": (Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, {
        "text_config": {"hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
                        "num_attention_heads": 28, "num_key_value_heads": 4, "vocab_size": 152064,
                        "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]}},
        "vision_config": {"depth": 32, "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16,
                          "out_hidden_size": 3584, "fullatt_block_indexes": [7, 15, 23, 31], "window_size": 112},
        "tie_word_embeddings": False}),
    "Qwen3-VL-8B-Instruct": (Qwen3VLConfig, Qwen3VLForConditionalGeneration, {
        "text_config": {"hidden_size": 4096, "intermediate_size": 12288, "num_hidden_layers": 36,
                        "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128, "vocab_size": 151936,
                        "rope_parameters": {"rope_type": "default", "rope_theta": 5e6, "mrope_section": [24, 20, 20],
                                            "mrope_interleaved": True}},
        "vision_config": {"depth": 27, "hidden_size": 1152, "intermediate_size": 4304, "num_heads": 16,
                          "out_hidden_size": 4096, "patch_size": 16, "num_position_embeddings": 2304,
                          "deepstack_visual_indexes": [8, 16, 24]},
        "tie_word_embeddings": False}),
}  # fmt: skip
K, GPUS, BUCKETS_GB, GB = 8, 8, 2.0, 1e9
QUESTIONS = {"average": (2637, 155), "largest": (4176, 300)}  # (tokens of x, answer tokens): gpu_throughput's batches


def parameters(config_class, model_class, sizes) -> dict[str, int]:
    with torch.device("meta"):
        model = model_class(config_class(**sizes))
    vision = sum(p.numel() for p in model.model.visual.parameters())
    total = sum(p.numel() for p in model.parameters())
    return {"total": total, "vision (frozen)": vision, "trained": total - vision}


def layer_bytes_per_token(config_class, model_class, sizes, tokens: int = 256) -> dict[str, float]:
    """What one decoder layer keeps for backward per token (bf16), and its input alone."""
    config = config_class(**sizes).text_config
    config._attn_implementation = "sdpa"
    classes = _text_model_class(model_class)
    layer = classes.layer_class(config, 0).to(torch.bfloat16)
    rotary = classes.rotary_class(config)
    hidden = torch.randn(1, tokens, config.hidden_size, dtype=torch.bfloat16, requires_grad=True)
    positions = torch.arange(tokens)[None, None].expand(3, 1, -1)
    cos_sin = tuple(t.to(torch.bfloat16) for t in rotary(hidden, positions))
    kept = {}

    def pack(tensor):
        kept[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        layer(hidden, attention_mask=None, position_embeddings=cos_sin)
    kept.pop(hidden.untyped_storage().data_ptr(), None)  # the input: counted apart, as checkpointing keeps it
    weights = {p.untyped_storage().data_ptr() for p in layer.parameters()}
    activations = sum(size for pointer, size in kept.items() if pointer not in weights)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    kv = 2 * config.num_key_value_heads * head_dim * 2  # bf16 keys and values per token
    return {"layer": activations / tokens, "input": config.hidden_size * 2, "kv": kv}


def _text_model_class(model_class):
    """The decoder layer and rotary embedding classes of the release's module."""
    import importlib

    module = importlib.import_module(model_class.__module__)
    prefix = model_class.__name__.removesuffix("ForConditionalGeneration")
    layer = getattr(module, f"{prefix}DecoderLayer", None) or getattr(module, f"{prefix}TextDecoderLayer")
    rotary = getattr(module, f"{prefix}RotaryEmbedding", None) or getattr(module, f"{prefix}TextRotaryEmbedding")
    return argparse.Namespace(layer_class=layer, rotary_class=rotary)


def estimate(name: str) -> dict:
    config_class, model_class, sizes = RELEASES[name]
    counts = parameters(config_class, model_class, sizes)
    per_token = layer_bytes_per_token(config_class, model_class, sizes)
    layers, vocab = sizes["text_config"]["num_hidden_layers"], sizes["text_config"]["vocab_size"]
    states = 2 * counts["total"] / GB + 18 * counts["trained"] / GPUS / GB + BUCKETS_GB  # ZeRO-2, 8 GPUs
    questions = {}
    for kind, (x, y) in QUESTIONS.items():
        tokens = x + 3 * K + 2 * y
        logits = 4 * vocab * y / GB
        full = tokens * layers * per_token["layer"] / GB + logits
        checkpointed = (tokens * layers * per_token["input"] + x * layers * per_token["kv"]
                        + tokens * per_token["layer"]) / GB + logits  # fmt: skip
        questions[kind] = {"amvl tokens": tokens, "activations": full, "activations, checkpointing": checkpointed}
    largest = questions["largest"]["activations, checkpointing"]
    fits = {gpu: int((0.9 * memory - states) // largest) for gpu, memory in (("80 GB", 80), ("141 GB", 141))}
    return {"parameters": counts, "bytes per token": per_token, "zero2 states per GPU (GB)": states,
            "questions": questions, "ZeRO-2 + checkpointing, b = 8 largest (GB)": states + 8 * largest,
            "largest b of the largest question, ZeRO-2 + checkpointing": fits}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", help="also write the numbers here")
    args = parser.parse_args()
    results = {name: estimate(name) for name in RELEASES}
    for name, r in results.items():
        p, t = r["parameters"], r["bytes per token"]
        print(f"{name}: {p['total'] / 1e9:.2f} B parameters ({p['trained'] / 1e9:.2f} B trained, "
              f"{p['vision (frozen)'] / 1e9:.2f} B vision, frozen)")  # fmt: skip
        print(f"  one decoder layer keeps {t['layer'] / 1e3:.0f} KB a token (its input {t['input'] / 1e3:.1f} KB, x's keys and values {t['kv'] / 1e3:.1f} KB)")
        print(f"  ZeRO-2 states per GPU (8 GPUs): {r['zero2 states per GPU (GB)']:.1f} GB")
        for kind, q in r["questions"].items():
            print(f"  {kind} question, {q['amvl tokens']} amvl tokens: activations {q['activations']:.1f} GB, "
                  f"{q['activations, checkpointing']:.2f} GB with checkpointing")  # fmt: skip
        fits = r["largest b of the largest question, ZeRO-2 + checkpointing"]
        print(f"  ZeRO-2 + checkpointing, 8 of the largest questions: {r['ZeRO-2 + checkpointing, b = 8 largest (GB)']:.0f} GB;"
              f" largest b: {fits['80 GB']} on 80 GB, {fits['141 GB']} on 141 GB")  # fmt: skip
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
