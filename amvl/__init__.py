"""amvl: Asymmetric Mutual Variational Learning for multimodal latent reasoning."""

__version__ = "0.1.0"
