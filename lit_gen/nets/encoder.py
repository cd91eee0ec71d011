"""The classifier trunk of Dhariwal & Nichol 2021 (their "encoder" UNet): the UNet's down path and middle,
then attention pooling to logits, for noisy classifiers that guide a diffusion model."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lit_gen.nets.unet import _group_norm, _Trunk


class AttentionPool2d(nn.Module):
    """Attention pooling of a feature map into one vector (CLIP's / ADM's classifier head): the mean token,
    plus learned positions, attends over itself and every position; its output is projected to ``out_dim``."""

    def __init__(self, channels: int, resolution: int, num_heads: int, out_dim: int):
        super().__init__()
        if channels % num_heads != 0:
            raise ValueError(f"num_heads={num_heads} must divide the pooled width {channels}")
        self.num_heads = num_heads
        self.positions = nn.Parameter(torch.randn(resolution * resolution + 1, channels) / channels**0.5)
        self.q = nn.Linear(channels, channels)
        self.kv = nn.Linear(channels, 2 * channels)
        self.proj = nn.Linear(channels, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C = x.shape[:2]
        tokens = x.flatten(2).transpose(1, 2)  # (B, HW, C)
        # (B, HW+1, C)
        tokens = torch.cat([tokens.mean(1, keepdim=True), tokens], 1) + self.positions.to(x.dtype)

        def heads(z):  # (B, h, N, d)
            return z.reshape(B, z.shape[1], self.num_heads, -1).transpose(1, 2)

        k, v = self.kv(tokens).chunk(2, dim=-1)
        # only the mean token's output is used, so it alone queries
        out = F.scaled_dot_product_attention(heads(self.q(tokens[:, :1])), heads(k), heads(v))  # (B, h, 1, d)
        return self.proj(out.transpose(1, 2).reshape(B, C))  # (B, out_dim)


class EncoderUNet(_Trunk):
    """The UNet's down half and middle block with attention pooling: ADM's noisy classifier p(y | x_t, t)
    (Dhariwal & Nichol 2021, Sec. 4.1). ``forward(x, t)`` maps x_t (B, C, H, W) and t (B,) to logits (B, K).

    Args:
        data_shape: (C, H, W) of the images. Injected by the method from the data.
        num_classes: number of labels K of the output logits.
        base_channels, channel_mults, num_res_blocks, attention_resolutions, dropout, num_heads, num_groups,
            time_scale, gradient_checkpointing, adaptive_norm: as in :class:`UNet` (ADM's classifier uses
            AdaGN).
    """

    # a seconds-long CPU version, for tests and smoke runs
    tiny_args = {"base_channels": 8, "channel_mults": [1, 2], "num_res_blocks": 1,
                 "attention_resolutions": [4]}

    def __init__(
        self,
        data_shape: tuple[int, ...],
        num_classes: int,
        base_channels: int = 64,
        channel_mults: tuple[int, ...] = (1, 2, 2, 2),
        num_res_blocks: int = 2,
        attention_resolutions: tuple[int, ...] = (16,),
        dropout: float = 0.0,
        num_heads: int = 1,
        num_groups: int = 32,
        time_scale: float = 1.0,
        gradient_checkpointing: bool = False,
        adaptive_norm: bool = True,
    ):
        if num_classes < 1:
            raise ValueError(f"a classifier needs labelled data, but num_classes={num_classes}")
        super().__init__(
            data_shape, 0, base_channels, channel_mults, num_res_blocks, attention_resolutions, dropout,
            num_heads,
            num_groups, time_scale, gradient_checkpointing, adaptive_norm,
        )
        self.num_labels = num_classes
        self.norm_out = _group_norm(self.trunk_channels, num_groups)
        self.pool = AttentionPool2d(self.trunk_channels, self.trunk_resolution, num_heads, num_classes)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        h, _, _, _ = self.encode(x, t, None)
        return self.pool(F.silu(self.norm_out(h)))  # (B, K)
