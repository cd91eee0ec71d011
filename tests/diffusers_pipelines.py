"""Small random diffusers pipelines, written by the tests into temporary folders (offline)."""

from __future__ import annotations

from pathlib import Path

import torch

from lit_gen.nets import DiffusersUNet

# DiffusersUNet's tiny settings: a pipeline of them fits the tiny runs of the diffusers configs
UNET = {k: tuple(v) if isinstance(v, list) else v for k, v in DiffusersUNet.tiny_args.items()}


def tiny_unet(channels: int = 1, size: int = 8, out_channels: int | None = None, seed: int = 0, **overrides):
    """A random UNet2DModel (seeded) for images (channels, size, size)."""
    from diffusers import UNet2DModel

    torch.manual_seed(seed)
    unet = UNet2DModel(sample_size=size, in_channels=channels, out_channels=out_channels or channels,
                       **{**UNET, **overrides})
    return unet.eval()


def save_pipeline(folder: Path, scheduler_class: str = "DDPMScheduler", pipeline: str | None = None,
                  unet=None, **scheduler_config) -> Path:
    """``folder`` holding a pipeline of ``unet`` (default: a tiny one) and the scheduler."""
    import diffusers

    unet = unet if unet is not None else tiny_unet()
    scheduler = getattr(diffusers, scheduler_class)(**scheduler_config)
    if pipeline is None:
        pipeline = {"DDIMScheduler": "DDIMPipeline", "ScoreSdeVeScheduler": "ScoreSdeVePipeline"}.get(
            scheduler_class, "DDPMPipeline")
    getattr(diffusers, pipeline)(unet=unet, scheduler=scheduler).save_pretrained(str(folder))
    return folder
