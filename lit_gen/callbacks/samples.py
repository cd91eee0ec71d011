"""Sample grids (images) or scatter plots (2-D data) and denoising trajectories in TensorBoard while
fitting."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as L
import torch
from lightning.pytorch.utilities import rank_zero_only

from lit_gen.callbacks.periodic import EveryNSteps
from lit_gen.image_logging import log_image
from lit_gen.methods.generative import GenerativeModule
from lit_gen.utils import sample_generators
from lit_gen.visual import (
    captioned_grid,
    figure_to_array,
    image_grid,
    labelled_grid,
    save_png,
    scatter_figure,
)


class SampleGrid(EveryNSteps):
    """Every ``every_n_steps`` optimizer steps (and when fitting ends) draw a fixed-seed set of samples with
    ``pl_module.sample`` and log it as ``samples/grid`` (images) or ``samples/scatter`` (2-D points).

    A class-conditional model (``pl_module.num_classes`` > 0) gets one grid row per class, with
    ``num_samples // num_classes`` samples per row (at least one).

    Every rank samples (a sharded model needs all ranks in the forward pass); only rank 0 writes.

    Args:
        every_n_steps: interval in optimizer steps (0: none by steps; with every_n_epochs also 0, the callback
            is off).
        num_samples: images in the grid (points in the scatter plot for 2-D data).
        seed: seed of the per-sample generators, fixed so grids compare across steps.
        trajectory_samples: how many samples to show along the denoising trajectory (0: none).
        trajectory_points: snapshots per trajectory.
        save_png: also write ``<log_dir>/samples/step_XXXXXXX.png``.
        sample_options: extra options for ``pl_module.sample`` (e.g. ``{"sampler": "ddim", "steps": 50}``).
        temperatures: flows: also draw one grid per temperature, logged as ``samples/grid_T<t>`` (or
            ``samples/scatter_T<t>``), e.g. ``[0.5, 0.7, 1.0]``.
        every_n_epochs: also at the end of every n-th epoch (0: off).
    """

    def __init__(
        self,
        every_n_steps: int = 1000,
        num_samples: int = 16,
        seed: int = 0,
        trajectory_samples: int = 4,
        trajectory_points: int = 10,
        save_png: bool = True,
        sample_options: dict | None = None,
        temperatures: list[float] | None = None,
        every_n_epochs: int = 0,
    ) -> None:
        super().__init__(every_n_steps, every_n_epochs)
        if num_samples < 1 or trajectory_samples < 0 or trajectory_points < 0:
            raise ValueError(f"samples: num_samples={num_samples} must be >= 1, trajectory_samples="
                             f"{trajectory_samples} and trajectory_points={trajectory_points} >= 0 "
                             "(every_n_steps: 0 turns the grids off)")
        self.num_samples = num_samples
        self.seed = seed
        self.trajectory_samples = trajectory_samples
        self.trajectory_points = trajectory_points
        self.save_png = save_png
        self.sample_options = sample_options or {}
        self.temperatures = list(temperatures or [])

    def variants(self) -> list[tuple[str, dict]]:
        """(tag suffix, options) of each grid: the plain one, then one per temperature."""
        return [("", self.sample_options)] + [(f"_T{t:g}", {**self.sample_options, "temperature": t})
                                              for t in self.temperatures]

    def on_fit_start(self, trainer: L.Trainer, pl_module) -> None:
        """The options are checked now, not at the first grid (steps into the run)."""
        if (self.every_n_steps or self.every_n_epochs) and isinstance(pl_module, GenerativeModule):
            for _, options in self.variants():
                pl_module.check_sample_options(options)

    def run(self, trainer: L.Trainer, pl_module) -> None:
        log_dir = trainer.log_dir  # a collective under DDP: every rank must ask
        num_classes = getattr(pl_module, "num_classes", 0)
        per_row = max(1, self.num_samples // num_classes) if num_classes else None
        n = per_row * num_classes if num_classes else self.num_samples
        # row c: class c
        labels = torch.arange(num_classes).repeat_interleave(per_row) if num_classes else None
        for suffix, options in self.variants():
            gens = sample_generators(self.seed, 0, n)
            points = self.trajectory_points if self.trajectory_samples and not suffix else 0
            progress = trainer.is_global_zero and trainer.progress_bar_callback is not None
            out = pl_module.sample(n, gens, labels=labels, trajectory_points=points, progress=progress,
                                   **options)
            # every rank: the method's plots may run the network
            plots = {} if suffix else pl_module.sample_plots(out.x, _reference_points(trainer),
                                                             trainer.global_step)
            self._write(trainer, out, log_dir, suffix, per_row, plots)

    @rank_zero_only
    def _write(self, trainer: L.Trainer, out, log_dir: str | None, suffix: str = "", nrow: int | None = None,
               plots: dict | None = None) -> None:
        step = trainer.global_step
        if out.x.ndim == 2:  # 2-D points: scatter over the validation data
            reference = _reference_points(trainer)
            title = f"step {step}" + (f", T = {suffix[2:]}" if suffix else "")
            image = figure_to_array(scatter_figure(out.x, reference, title=title))
            log_image(trainer, f"samples/scatter{suffix}", image, step)
        else:
            if out.captions is not None:  # a text-to-image model: each image under its prompt
                image = captioned_grid(out.x, out.captions, out.scores)
            elif nrow is not None:  # one row per class, named left of it
                names = getattr(trainer.datamodule, "class_names", None)
                rows = range(len(out.x) // nrow)
                image = labelled_grid(out.x, [str(c) + (f" {names[c]}" if names else "") for c in rows])
            else:
                image = (image_grid(out.x).permute(1, 2, 0) * 255).round().byte().numpy()
            log_image(trainer, f"samples/grid{suffix}", image, step)
            if out.trajectory:
                k = min(self.trajectory_samples, out.x.shape[0])
                frames = torch.stack([snap[:k] for snap in out.trajectory], 1)  # (k, P, C, H, W)
                log_image(trainer, "samples/trajectory",
                          image_grid(frames.flatten(0, 1), nrow=len(out.trajectory)), step)
        for tag, plot in (plots or {}).items():
            log_image(trainer, tag, plot, step)
        if self.save_png and log_dir:
            save_png(image, Path(log_dir) / "samples" / f"step_{step:07d}{suffix}.png")


def _reference_points(trainer: L.Trainer, limit: int = 2000) -> torch.Tensor | None:
    data = trainer.datamodule
    if data is not None and hasattr(data, "sample"):
        return data.sample(limit, torch.Generator().manual_seed(0))
    return None
