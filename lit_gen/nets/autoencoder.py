"""The KL-regularised autoencoder of latent diffusion (Rombach et al. 2022, Sec. 3 and App. G), scaled down:
a conv encoder to the mean and log-variance of a diagonal Gaussian over a latent grid downsampled by
2**num_downsamples, and a conv decoder back to the image."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lit_gen.nets.unet import _group_norm
from lit_gen.utils import Generator, randn


class _Res(nn.Module):
    """GN, SiLU, conv3x3, GN, SiLU, conv3x3 with a residual (a 1x1 projection when the width changes)."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.body = nn.Sequential(_group_norm(c_in, 32), nn.SiLU(), nn.Conv2d(c_in, c_out, 3, padding=1),
                                  _group_norm(c_out, 32), nn.SiLU(), nn.Conv2d(c_out, c_out, 3, padding=1))
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.skip(h) + self.body(h)


class _Up(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(h, scale_factor=2.0, mode="nearest"))


class AutoencoderNet(nn.Module):
    """``moments(x)`` (B, C, H, W) -> (mean, log-variance), each (B, latent_channels, H/f, W/f) with f =
    2**num_downsamples; ``decode(z)`` -> (B, C, H, W).

    Args:
        data_shape: (C, H, W) of the images.
        latent_channels: channels of the latent grid (LDM's f = 4 autoencoder has 3, SD's f = 8 has 4).
        channels: width of the first stage; stage i has ``channels * channel_mults[i]``.
        channel_mults: width multiplier per stage; one 2x downsampling between stages.
        res_blocks: residual blocks per stage.
    """

    def __init__(self, data_shape: tuple[int, ...], latent_channels: int = 4, channels: int = 64,
                 channel_mults: tuple[int, ...] = (1, 2, 2), res_blocks: int = 1) -> None:
        super().__init__()
        c, h, w = data_shape
        f = 2 ** (len(channel_mults) - 1)
        if h % f or w % f:
            raise ValueError(f"image size {h}x{w} is not divisible by the autoencoder's downsampling factor "
                             f"{f} (channel_mults={list(channel_mults)})")
        self.data_shape, self.latent_channels = tuple(data_shape), latent_channels
        self.latent_shape = (latent_channels, h // f, w // f)
        widths = [channels * m for m in channel_mults]
        enc: list[nn.Module] = [nn.Conv2d(c, widths[0], 3, padding=1)]
        width = widths[0]
        for i, out in enumerate(widths):
            for _ in range(res_blocks):
                enc.append(_Res(width, out))
                width = out
            if i < len(widths) - 1:
                enc.append(nn.Conv2d(width, width, 3, stride=2, padding=1))
        enc += [_Res(width, width), _group_norm(width, 32), nn.SiLU(),
                nn.Conv2d(width, 2 * latent_channels, 3, padding=1)]
        dec: list[nn.Module] = [nn.Conv2d(latent_channels, width, 3, padding=1), _Res(width, width)]
        for i, out in reversed(list(enumerate(widths))):
            for _ in range(res_blocks):
                dec.append(_Res(width, out))
                width = out
            if i > 0:
                dec.append(_Up(width))
        dec += [_group_norm(width, 32), nn.SiLU(), nn.Conv2d(width, c, 3, padding=1)]
        self.encoder, self.decoder = nn.Sequential(*enc), nn.Sequential(*dec)

    fsdp_methods = ("moments", "decode")  # the methods' entry points: FSDP gathers the weights for them

    def moments(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, log-variance) of q(z | x), the log-variance clamped to [-30, 20] as LDM does."""
        mean, logvar = self.encoder(x).chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # the moments, stacked (not through ``moments``: one FSDP entry point per call)
        return self.encoder(x)


def gaussian_kl(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, exp(logvar)) || N(0, I)) per sample (B,), in nats: 0.5 sum(mean^2 + var - 1 - logvar)."""
    return 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).flatten(1).sum(1)


def posterior_sample(mean: torch.Tensor, logvar: torch.Tensor, generator: Generator = None) -> torch.Tensor:
    """z = mean + std * eps, eps from ``generator`` (one, or one per sample; else the global RNG)."""
    return mean + (0.5 * logvar).exp() * randn(tuple(mean.shape), generator, mean.device, mean.dtype)
