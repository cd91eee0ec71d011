"""The discrete VAE's encoder and decoder (DALL-E's dVAE, Ramesh et al. 2021, Sec. 2.1, scaled down): residual
conv stacks that downsample an image by 2**num_downsamples to a grid of logits over ``num_codes`` codes, and
upsample a (relaxed) one-hot grid back to an image."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class _ResBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        hidden = channels // 2
        self.body = nn.Sequential(nn.ReLU(), nn.Conv2d(channels, hidden, 3, padding=1), nn.ReLU(),
                                  nn.Conv2d(hidden, channels, 1))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.body(h)


class DiscreteVAENet(nn.Module):
    """Encoder ``logits(x)`` (B, C, H, W) -> (B, K, H/f, W/f) and decoder ``decode(z)`` (B, K, h, w) soft or
    hard one-hot codes -> (B, C * out_per_channel, H, W); f = 2**num_downsamples.

    Args:
        data_shape: (C, H, W) of the images.
        num_codes: K, the codebook size.
        channels: Width of the conv stacks.
        num_downsamples: Stride-2 stages; the grid side is H / 2**num_downsamples.
        res_blocks: Residual blocks per stage.
        code_dim: Size of each code's embedding at the decoder's input.
        out_per_channel: Decoder maps per image channel (2 for the logit-Laplace's mu and ln b).
    """

    def __init__(self, data_shape: tuple[int, ...], num_codes: int = 512, channels: int = 64,
                 num_downsamples: int = 2,
                 res_blocks: int = 1, code_dim: int = 64, out_per_channel: int = 1) -> None:
        super().__init__()
        c, h, w = data_shape
        if h % 2**num_downsamples or w % 2**num_downsamples:
            raise ValueError(f"image size {h}x{w} is not divisible by "
                             f"2**num_downsamples={2**num_downsamples}")
        self.num_codes, self.data_shape = num_codes, tuple(data_shape)
        self.grid = (h // 2**num_downsamples, w // 2**num_downsamples)
        enc: list[nn.Module] = [nn.Conv2d(c, channels, 3, padding=1)]
        dec: list[nn.Module] = [nn.Conv2d(code_dim, channels, 1)]
        for _ in range(num_downsamples):
            enc += [*(_ResBlock(channels) for _ in range(res_blocks)), nn.Conv2d(channels, channels, 4, 2, 1)]
            dec += [*(_ResBlock(channels) for _ in range(res_blocks)),
                    nn.ConvTranspose2d(channels, channels, 4, 2, 1)]
        enc += [*(_ResBlock(channels) for _ in range(res_blocks)), nn.ReLU(),
                nn.Conv2d(channels, num_codes, 1)]
        dec += [*(_ResBlock(channels) for _ in range(res_blocks)), nn.ReLU(),
                nn.Conv2d(channels, c * out_per_channel, 1)]
        self.encoder, self.decoder = nn.Sequential(*enc), nn.Sequential(*dec)
        self.codebook = nn.Parameter(torch.randn(num_codes, code_dim) / code_dim**0.5)  # (K, D)

    fsdp_methods = ("logits", "decode")  # the methods' entry points: FSDP gathers the weights for them

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)  # (B, K, h, w)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """``z`` (B, K, h, w): a relaxed or hard one-hot grid; its code embeddings mixed by z feed the
        decoder."""
        return self.decoder(torch.einsum("bkhw,kd->bdhw", z.to(self.codebook.dtype), self.codebook))

    def decode_indices(self, codes: torch.Tensor) -> torch.Tensor:
        """``codes`` (B, h, w) of ints -> decoder output."""
        return self.decode(F.one_hot(codes, self.num_codes).permute(0, 3, 1, 2).float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)  # the logits (not through ``logits``: one FSDP entry point per call)
