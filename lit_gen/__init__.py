"""lit_gen: generative-model methods as PyTorch Lightning modules behind one CLI."""

__version__ = "0.1.0"
