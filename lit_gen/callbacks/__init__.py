"""Callbacks: sample grids, density plots and FID to TensorBoard."""

from lit_gen.callbacks.density import DensityPlot
from lit_gen.callbacks.fid import FIDMonitor
from lit_gen.callbacks.samples import SampleGrid

__all__ = ["DensityPlot", "FIDMonitor", "SampleGrid"]
