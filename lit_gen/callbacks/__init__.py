"""Callbacks: sample grids and plots to TensorBoard."""

from lit_gen.callbacks.samples import SampleGrid

__all__ = ["SampleGrid"]
