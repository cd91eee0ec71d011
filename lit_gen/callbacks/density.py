"""Density heatmaps of 2-D models in TensorBoard: the model's p(x) beside a histogram of the data (and the
true density where the data set knows it)."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_only

from lit_gen.callbacks.periodic import EveryNSteps
from lit_gen.image_logging import log_image
from lit_gen.visual import density_figure, figure_to_array, save_png


class DensityPlot(EveryNSteps):
    """Every ``every_n_steps`` optimizer steps (and when fitting ends) evaluate ``pl_module.log_density`` on a
    ``grid_size`` x ``grid_size`` grid over [-limit, limit]^2 and log ``density/heatmap``: data histogram |
    model density | true density (when the DataModule has ``log_prob``). For models of 2-D data with an exact
    density, e.g. ``NormalizingFlow`` on ``Toy2DDataModule``.

    Args:
        every_n_steps: interval in optimizer steps; 0 disables the callback.
        grid_size: points per axis.
        limit: half-width of the plotted square.
        num_data_points: data points in the histogram.
        save_png: also write ``<log_dir>/density/step_XXXXXXX.png``.
    """

    def __init__(
        self,
        every_n_steps: int = 1000,
        grid_size: int = 200,
        limit: float = 4.5,
        num_data_points: int = 100_000,
        save_png: bool = True,
    ) -> None:
        super().__init__(every_n_steps)
        if grid_size < 2 or limit <= 0:
            raise ValueError(f"DensityPlot needs grid_size >= 2 and limit > 0, got {grid_size} and {limit}")
        self.grid_size = grid_size
        self.limit = limit
        self.num_data_points = num_data_points
        self.save_png = save_png

    def setup(self, trainer: L.Trainer, pl_module, stage: str) -> None:
        if not hasattr(pl_module, "log_density") or tuple(getattr(pl_module, "data_shape", ())) != (2,):
            raise ValueError(
                f"DensityPlot draws 2-D densities; {type(pl_module).__name__} with data_shape "
                f"{getattr(pl_module, 'data_shape', None)} has no log_density of 2-D points"
            )

    def grid(self) -> torch.Tensor:
        """The (grid_size**2, 2) evaluation points, row-major with y as rows."""
        axis = torch.linspace(-self.limit, self.limit, self.grid_size)
        y, x = torch.meshgrid(axis, axis, indexing="ij")
        return torch.stack([x.flatten(), y.flatten()], dim=1)

    def run(self, trainer: L.Trainer, pl_module) -> None:
        log_dir = trainer.log_dir  # a collective under DDP: every rank must ask
        points = self.grid()
        log_p = torch.cat([pl_module.log_density(chunk).float().cpu() for chunk in points.split(10_000)])
        self._write(trainer, log_p, log_dir)

    @rank_zero_only
    def _write(self, trainer: L.Trainer, log_p: torch.Tensor, log_dir: str | None) -> None:
        n = self.grid_size
        panels = []
        data = trainer.datamodule
        if data is not None and hasattr(data, "sample"):
            points = data.sample(self.num_data_points, torch.Generator().manual_seed(0)).numpy()
            hist, _, _ = np.histogram2d(points[:, 1], points[:, 0], bins=n,
                                        range=[[-self.limit, self.limit]] * 2)
            panels.append(("data", hist))
        model_p = log_p.nan_to_num(neginf=-1e30).exp().view(n, n).numpy()
        panels.append(("model", model_p))
        true_log_p = data.log_prob(self.grid()) if data is not None and hasattr(data, "log_prob") else None
        if true_log_p is not None:
            panels.append(("true", true_log_p.exp().view(n, n).numpy()))
        step = trainer.global_step
        image = figure_to_array(density_figure(panels, self.limit, title=f"step {step}"))
        log_image(trainer, "density/heatmap", image, step)
        if self.save_png and log_dir:
            save_png(image, Path(log_dir) / "density" / f"step_{step:07d}.png")
