"""Callbacks: sample grids and plots to TensorBoard."""

from lit_gen.callbacks.fid import FIDMonitor
from lit_gen.callbacks.samples import SampleGrid

__all__ = ["FIDMonitor", "SampleGrid"]
