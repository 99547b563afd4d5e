"""Qwen2.5-VL (the paper's backbone): 14-px patches, windowed vision attention, mRoPE."""

from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

from amvl.model.families.common import vision_sizes

MODEL_TYPE = "qwen2_5_vl"
MODEL_CLASS = Qwen2_5_VLForConditionalGeneration
PATCH = 14
SYSTEM_TURN = True


def small_config(model_cfg, text: dict, rope: dict, **common) -> Qwen2_5_VLConfig:
    # the last vision layer attends to the whole image, the others within windows, as the release's
    vision = dict(vision_sizes(model_cfg, PATCH), fullatt_block_indexes=[model_cfg.vision_depth - 1])
    return Qwen2_5_VLConfig(text_config=dict(text, rope_parameters=rope), vision_config=vision, **common)
