"""What the small random models of the families share."""


def vision_sizes(model_cfg, patch: int) -> dict:
    """A vision tower as wide as the decoder (`model.hidden_size`), `model.vision_depth` deep, whose
    merger (2 x 2 patches a token) outputs the decoder's width."""
    hidden = model_cfg.hidden_size
    return dict(
        depth=model_cfg.vision_depth,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_heads=model_cfg.heads,
        out_hidden_size=hidden,
        patch_size=patch,
        spatial_merge_size=2,
        temporal_patch_size=2,
    )
