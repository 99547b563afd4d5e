"""Qwen2-VL: 14-px patches, a vision tower of full attention whose width (embed_dim) is its own."""

from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

MODEL_TYPE = "qwen2_vl"
MODEL_CLASS = Qwen2VLForConditionalGeneration
PATCH = 14
SYSTEM_TURN = True


def small_config(model_cfg, text: dict, rope: dict, **common) -> Qwen2VLConfig:
    vision = dict(
        depth=model_cfg.vision_depth,
        embed_dim=model_cfg.hidden_size,
        hidden_size=model_cfg.hidden_size,  # the merger's output: the decoder's width
        num_heads=model_cfg.heads,
        mlp_ratio=2,
        patch_size=PATCH,
        spatial_merge_size=2,
        temporal_patch_size=2,
    )
    return Qwen2VLConfig(text_config=dict(text, rope_parameters=rope), vision_config=vision, **common)
