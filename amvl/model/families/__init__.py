"""Backbone families: one small module per Hugging Face model type amvl wraps.

Each module names its `MODEL_TYPE` (config.json's `model_type`), its `MODEL_CLASS`, its vision
`PATCH` size in pixels, whether its released chat template opens with a default system turn
(`SYSTEM_TURN`), and `small_config(model_cfg, text, rope, **common)`: the config of a small random
model (`model.backbone: small`, `model.family`) from the decoder sizes, rotary settings and token
ids every family shares. Everything else latent.py calls (the vision tower, `get_image_features`,
`get_rope_index`, the decoder over `inputs_embeds` with a cache) has one interface across them;
tests/test_latent_paths.py runs its cache, checkpointing and inference checks on every family.
"""

from __future__ import annotations

from amvl.errors import UserError
from amvl.model.families import qwen2_5_vl, qwen2_vl, qwen3_vl

FAMILIES = {module.MODEL_TYPE: module for module in (qwen2_5_vl, qwen2_vl, qwen3_vl)}

# Model types known and refused, with why (the README says the same).
QWEN3_5 = ("its Gated DeltaNet layers keep a recurrent state, not keys and values, and amvl's training "
           "passes continue from x's key/value cache and re-run the slots over it")
REFUSED = {"qwen3_5": QWEN3_5, "qwen3_5_moe": QWEN3_5}


def family(model_type: str | None, where: str):
    """The module of `model_type`; a UserError naming `where` (a config key or a file) otherwise."""
    if model_type in FAMILIES:
        return FAMILIES[model_type]
    why = f" is not supported: {REFUSED[model_type]}" if model_type in REFUSED else " is not a family amvl knows"
    raise UserError(f"{where}: model_type {model_type!r}{why}; supported: {', '.join(FAMILIES)}")
