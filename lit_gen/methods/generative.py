"""The sampling contract between a generative method and everything that samples it (``lit-gen sample``, the
sample grid and FID callbacks): the method declares what it takes and can do (:class:`Abilities`, the options
dataclass ``SampleOptions``), and ``sample`` returns a :class:`SampleOutput` that writes itself."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import torch

from lit_gen.methods.base import LitGenModule
from lit_gen.visual import (
    captioned_grid,
    figure_to_array,
    image_grid,
    save_npz,
    save_png,
    scatter_figure,
    to_uint8_nhwc,
)


@dataclass(frozen=True)
class Abilities:
    """What a method's :meth:`GenerativeModule.sample` takes besides its options.

    Args:
        prompts: draws from text: ``sample`` takes ``captions`` (one per sample) and ``prompt_indices`` (the
            index of each sample, to cycle per-prompt inputs), and needs them.
        inpainting: ``sample`` takes ``inpaint`` = (x_known, mask), filling in where mask is 0.
        latents: ``sample`` decodes given ``latents`` deterministically under
            :meth:`~GenerativeModule.deterministic_options` (latent interpolation), and ``invert`` encodes.
    """

    prompts: bool = False
    inpainting: bool = False
    latents: bool = False


@dataclass
class SampleOutput:
    x: torch.Tensor  # (B, *data_shape) in data space ([-1, 1] for images)
    labels: torch.Tensor | None = None  # (B,) class labels for conditional models
    trajectory: list[torch.Tensor] = field(default_factory=list)  # snapshots (B, *data_shape) along sampling
    nfe: int | None = None  # network evaluations per batch, for samplers that own the model calls
    captions: list[str] | None = None  # the prompt of each sample (text-to-image models)
    scores: torch.Tensor | None = None  # (B,) a reranker's score of each sample (CLIP)

    @staticmethod
    def concat(outputs: list[SampleOutput]) -> SampleOutput:
        """The outputs of several batches as one, on the CPU (trajectories are dropped)."""
        def cat(name: str):
            parts = [getattr(o, name) for o in outputs]
            return None if parts[0] is None else torch.cat([p.cpu() for p in parts])

        captions = [c for o in outputs for c in (o.captions or [])]
        nfe = [o.nfe for o in outputs if o.nfe is not None]
        return SampleOutput(cat("x"), cat("labels"), nfe=max(nfe) if nfe else None,
                            captions=captions or None, scores=cat("scores"))

    def write(self, output: Path, png: bool = False, nrow: int | None = None) -> None:
        """``output/samples.npz`` (``arr_0``: uint8 N x H x W x C images, or float32 points of vector data;
        ``arr_1``: labels; ``captions`` and ``clip_scores`` of a text-to-image model) and ``output/grid.png``
        (a scatter plot for 2-D data, one row per prompt under its caption); with ``png``, one file per
        image under ``output/png``."""
        labels = None if self.labels is None else self.labels.cpu().numpy().astype(np.int64)
        x = self.x.cpu()
        if x.ndim == 2:  # vectors (2-D toy data): float samples and a scatter plot
            save_npz(output / "samples.npz", x.numpy().astype(np.float32), labels)
            save_png(figure_to_array(scatter_figure(x, title=f"{len(x)} samples")), output / "grid.png")
            return
        images, named = to_uint8_nhwc(x), {}
        if self.captions is not None:
            named["captions"] = np.array(self.captions)
        if self.scores is not None:
            named["clip_scores"] = self.scores.cpu().numpy().astype(np.float32)
        save_npz(output / "samples.npz", images, labels, **named)
        if png:
            digits = max(6, len(str(len(images) - 1)))
            for i, image in enumerate(images):  # grey images as L
                image = image[..., 0] if image.shape[-1] == 1 else image
                save_png(image, output / "png" / f"{i:0{digits}d}.png")
        shown = min(len(x), 256)
        if self.captions is not None:
            scores = None if self.scores is None else self.scores[:shown].cpu()
            save_png(captioned_grid(x[:shown], self.captions[:shown], scores), output / "grid.png")
            return
        grid = image_grid(x[:shown], nrow=nrow or math.ceil(math.sqrt(shown)))
        save_png((grid.permute(1, 2, 0) * 255).round().byte().numpy(), output / "grid.png")


@dataclass
class NoSampleOptions:
    """This method takes no sampling options."""


class GenerativeModule(LitGenModule):
    """Base class of the methods that generate. Subclasses implement :meth:`sample` besides the training
    steps, declare its options as a dataclass ``SampleOptions`` (fields with defaults of None, meaning "the
    model's default", and an ``Args:`` docstring; ``lit-gen sample`` builds its flags and ``--help`` from it,
    and ``sample_options`` is the set of its field names), and what else it takes in ``abilities``."""

    SampleOptions: type = NoSampleOptions
    sample_options: frozenset[str] = frozenset()
    abilities = Abilities()

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        cls.sample_options = frozenset(f.name for f in fields(cls.SampleOptions))

    @classmethod
    def abilities_of(cls, hparams: dict) -> Abilities:
        """What a model of these hyperparameters can do (a method whose abilities depend on them, a text-
        conditional diffusion model, says so here); ``lit-gen sample`` checks its flags against it before
        loading."""
        return cls.abilities

    def sample(
        self,
        num_samples: int,
        generators: list[torch.Generator] | None = None,
        labels: torch.Tensor | None = None,
        progress: bool = False,
        trajectory_points: int = 0,
        latents: torch.Tensor | None = None,
        **options,
    ) -> SampleOutput:
        """Draw ``num_samples`` samples with the EMA weights; sample i uses ``generators[i]``. ``latents``
        replaces the drawn starting noise (x_T for diffusion, z for flows).

        ``options`` are method-specific (a diffusion model takes ``sampler``, ``steps``, ...); an option the
        method does not know raises a ValueError naming it.
        """
        raise NotImplementedError

    def invert(self, x0: torch.Tensor, labels: torch.Tensor | None = None, progress: bool = False,
               **options) -> torch.Tensor:
        """The latents that :meth:`sample` decodes back to ``x0`` (methods with ``abilities.latents``)."""
        raise NotImplementedError

    def check_sample_options(self, options: dict, labels: torch.Tensor | None = None) -> None:
        """Raise a one-line ValueError for options (or labels) that :meth:`sample` would refuse, before any
        sampling starts (``lit-gen sample`` and the sampling callbacks call it first)."""
        self.check_options(options, self.sample_options, type(self).__name__)

    def label_classes(self, options: dict) -> int:
        """How many classes a sample may be requested from with ``options`` (0: samples take no labels)."""
        return getattr(self, "num_classes", 0)

    def sample_plots(self, x: torch.Tensor, reference: torch.Tensor | None,
                     step: int) -> dict[str, np.ndarray]:
        """Images a sample grid logs beside the samples ``x``, by TensorBoard tag (HWC uint8): the method's
        own plots. Every rank calls it (it may run the network); ``reference`` holds points of 2-D data."""
        return {}

    def deterministic_options(self, options: dict) -> dict:
        """``options`` made deterministic for latent interpolation and inversion (a flow already is)."""
        return options

    @staticmethod
    def check_options(options: dict, allowed: set[str], method: str) -> None:
        unknown = sorted(set(options) - allowed)
        if unknown:
            raise ValueError(f"{method} does not take sampling option(s) {unknown}; it takes "
                             f"{sorted(allowed)}")
        # a count of steps is >= 1: 0 must not fall back to a default as "not given" does
        for name, value in options.items():
            if name.endswith("steps") and isinstance(value, int) and value < 1:
                raise ValueError(f"{name}={value} must be >= 1 (leave it out for the model's default)")
