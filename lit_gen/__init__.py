"""lit_gen: generative-model methods as PyTorch Lightning modules behind one CLI, and a Python API:
``model = lit_gen.load("X.ckpt"); images = model.sample(16, sampler="dpmpp2m", steps=20, seed=0)``
(:mod:`lit_gen.api`)."""

from lit_gen.version import __version__

__all__ = ["__version__", "load"]


def __getattr__(name: str):
    if name == "load":  # on first use: ``import lit_gen`` stays light (no torch, no Lightning)
        from lit_gen.api import load

        return load
    raise AttributeError(f"module 'lit_gen' has no attribute {name!r}")
