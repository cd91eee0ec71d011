"""Images to the loggers, through each logger's own API: TensorBoard's ``add_image``, ``log_image`` where a
logger has one (W&B, Neptune). A logger with neither (CSV) is named once, so a run does not silently log no
images."""

from __future__ import annotations

import lightning.pytorch as L
import numpy as np
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_warn

_told: set[str] = set()  # logger classes already named as unable to store images


def _hwc_uint8(image: torch.Tensor | np.ndarray) -> np.ndarray:
    """(C, H, W) floats in [0, 1] or (H, W, 3) uint8 -> (H, W, C) uint8."""
    if isinstance(image, torch.Tensor):
        return (image.detach().float().clamp(0, 1).permute(1, 2, 0) * 255).round().byte().cpu().numpy()
    return image


def log_image(trainer: L.Trainer, tag: str, image: torch.Tensor | np.ndarray, step: int) -> None:
    """Log ``image`` ((C, H, W) floats in [0, 1] or (H, W, 3) uint8) under ``tag`` with every logger of
    ``trainer`` that can store images; call on rank 0."""
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            hwc = isinstance(image, np.ndarray)
            logger.experiment.add_image(tag, image, step, dataformats="HWC" if hwc else "CHW")
        elif callable(getattr(logger, "log_image", None)):
            logger.log_image(key=tag, images=[_hwc_uint8(image)], step=step)
        elif type(logger).__name__ not in _told:
            _told.add(type(logger).__name__)
            rank_zero_warn(f"lit-gen: {type(logger).__name__} cannot store images, so sample grids and plots "
                           "are not logged to it (they are still saved as PNG under the run's folder); use "
                           "TensorBoardLogger or WandbLogger to see them beside the losses")
