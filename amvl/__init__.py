"""amvl: Asymmetric Mutual Variational Learning for multimodal latent reasoning."""

__version__ = "0.1.0"


def load(folder, device: str = "cpu", dtype=None):
    """A model folder ready to `.ask(images, question)` (amvl/ask.py). Imported here on first use:
    `import amvl` stays light, and the CLI pins CPU kernels before torch loads."""
    from amvl.ask import load as load_model

    return load_model(folder, device, dtype)
