"""Callbacks: checkpoints that keep the final step, sample grids, density plots and FID to TensorBoard."""

from lit_gen.callbacks.checkpoint import Checkpoint
from lit_gen.callbacks.density import DensityPlot
from lit_gen.callbacks.fid import FIDMonitor
from lit_gen.callbacks.samples import SampleGrid

__all__ = ["Checkpoint", "DensityPlot", "FIDMonitor", "SampleGrid"]
