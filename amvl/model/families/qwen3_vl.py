"""Qwen3-VL: 16-px patches (32 px per merged token), learned position embeddings in the vision
tower, DeepStack (features of several vision layers added to the first decoder layers at the
image tokens), interleaved mRoPE, an explicit head_dim, and no default system turn.

DeepStack needs nothing of amvl: the image tokens are all in x, whose pass is the only one that
gets the image features (`LatentReasoner.run`), so x's cache carries the additions and every pass
after it continues from that cache.
"""

from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

from amvl.model.families.common import vision_sizes

MODEL_TYPE = "qwen3_vl"
MODEL_CLASS = Qwen3VLForConditionalGeneration
PATCH = 16
SYSTEM_TURN = False


def small_config(model_cfg, text: dict, rope: dict, **common) -> Qwen3VLConfig:
    depth = model_cfg.vision_depth
    vision = dict(
        vision_sizes(model_cfg, PATCH),
        num_position_embeddings=64,  # an 8 x 8 grid, interpolated to each image (the 8B's: 48 x 48)
        deepstack_visual_indexes=list(range(max(depth - 1, 1))),  # every layer but the last (8B: 8, 16, 24 of 27)
    )
    text = dict(text, head_dim=model_cfg.hidden_size // model_cfg.heads, rope_parameters=dict(rope, mrope_interleaved=True))
    return Qwen3VLConfig(text_config=text, vision_config=vision, **common)
