"""Backbones (Qwen2.5-VL built or loaded) and the latent-slot wrapper."""
