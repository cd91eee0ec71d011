"""Coupling layers (Dinh et al. 2014; Dinh et al. 2017) and the binary masks that split their input.

A mask b (1 = kept, 0 = transformed) broadcasts against the input. The conditioner only sees b * x, so
the Jacobian is triangular and its determinant is the product of the scales of the transformed part
(RealNVP Sec. 3.3-3.4). Masks cover every split of the papers: the checkerboard and channel masks of RealNVP
(Sec. 3.4, Fig. 3), Glow's channel halves (Sec. 3.3) and NICE's odd/even split of vectors (Sec. 5.1).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from lit_gen.flows.core import FlowLayer, per_channel, sum_except_batch
from lit_gen.utils import check_choice

ScaleFn = Literal["sigmoid", "tanh", "exp"]


def checkerboard_mask(height: int, width: int, parity: int = 0) -> torch.Tensor:
    """(1, 1, H, W) mask with ones where (i + j + parity) is even (RealNVP Fig. 3, left)."""
    i = torch.arange(height)[:, None]
    j = torch.arange(width)[None, :]
    return ((i + j + parity) % 2 == 0).float()[None, None]


def channel_mask(num_channels: int, parity: int = 0, ndim: int = 4) -> torch.Tensor:
    """(1, C, 1, 1) mask (or (1, C) for ``ndim=2``) keeping the first half of the channels for parity 0 and
    the second half for parity 1 (RealNVP Fig. 3, right; Glow's split into x_a, x_b)."""
    half = num_channels // 2
    mask = torch.zeros(num_channels)
    if parity % 2 == 0:
        mask[:half] = 1
    else:
        mask[half:] = 1
    return mask.view(1, num_channels, *([1] * (ndim - 2)))


def alternating_mask(num_features: int, parity: int = 0) -> torch.Tensor:
    """(1, D) mask keeping the even features for parity 0 and the odd ones for parity 1 (NICE Sec. 5.1)."""
    return (torch.arange(num_features) % 2 == parity % 2).float()[None]


class AdditiveCoupling(FlowLayer):
    """Additive coupling (Dinh et al. 2014, Sec. 3.2, with m = conditioner): z = x + (1 - b) * m(b * x).

    Volume preserving: log|det| = 0. The conditioner maps (B, C, ...) to (B, C, ...).
    """

    def __init__(self, mask: torch.Tensor, conditioner: nn.Module):
        """Build the layer.

        Args:
            mask: Binary mask broadcastable to the input, 1 where the input passes unchanged.
            conditioner: Network m from the masked input to an input-shaped shift.
        """
        super().__init__()
        self.register_buffer("mask", mask)
        self.conditioner = conditioner

    def _shift(self, x: torch.Tensor) -> torch.Tensor:
        # the conditioner may run under autocast (bf16); the flow's own arithmetic stays in x's dtype
        return self.conditioner(x * self.mask).to(x.dtype) * (1 - self.mask)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x + self._shift(x), x.new_zeros(x.shape[0])

    def inverse(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return z - self._shift(z), z.new_zeros(z.shape[0])


class AffineCoupling(FlowLayer):
    """Affine coupling (Dinh et al. 2017, Sec. 3.4, masked form): z = b * x + (1 - b) * (x * s + t) with
    (log s, t) computed from b * x.

    The conditioner maps (B, C, ...) to (B, 2C, ...), split along dim 1 into h (-> log s) and t. Two
    bounded scales:

    - ``sigmoid``: s = sigmoid(h + 2), Glow's released code (Kingma & Dhariwal 2018); s in (0, 1) and
      s = sigmoid(2) = 0.88 at a zero-initialised conditioner, i.e. a fixed contraction of the transformed
      half, not the exact identity.
    - ``tanh``: log s = scale * tanh(h) with a learned per-channel ``scale`` (RealNVP's released code, Dinh et
      al. 2017); s = 1 at a zero-initialised conditioner, so the layer starts as the exact identity.
    - ``exp``: log s = h, unbounded (RealNVP, Eq. 7 as written); also the identity at init. Fine on
      low-dimensional data, where sharp modes need large scales; can diverge on images.

    log|det dz/dx| = sum over the transformed entries of log s.
    """

    def __init__(self, mask: torch.Tensor, conditioner: nn.Module, scale_fn: ScaleFn = "sigmoid"):
        """Build the layer.

        Args:
            mask: Binary mask broadcastable to the input, 1 where the input passes unchanged.
            conditioner: Network from the masked input (B, C, ...) to (B, 2C, ...).
            scale_fn: ``sigmoid`` (Glow, s = sigmoid(h + 2)), ``tanh`` (RealNVP's code, log s = scale * tanh(h))
                or ``exp`` (log s = h).
        """
        super().__init__()
        check_choice("scale_fn", scale_fn, {"sigmoid", "tanh", "exp"})
        self.register_buffer("mask", mask)
        self.conditioner = conditioner
        self.scale_fn = scale_fn
        if scale_fn == "tanh":
            self.scale = nn.Parameter(torch.ones(mask.shape[1]))

    def _log_s_and_t(self, x_kept: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # the conditioner may run under autocast (bf16); the scale, shift and log-det stay in x's dtype
        h, t = self.conditioner(x_kept).to(x_kept.dtype).chunk(2, dim=1)  # each (B, C, ...)
        if self.scale_fn == "sigmoid":
            log_s = F.logsigmoid(h + 2.0)
        elif self.scale_fn == "tanh":
            log_s = per_channel(self.scale, h.ndim) * torch.tanh(h)
        else:
            log_s = h
        transformed = 1 - self.mask
        return log_s * transformed, t * transformed  # s = 1, t = 0 on the kept entries

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        log_s, t = self._log_s_and_t(x * self.mask)
        z = x * log_s.exp() + t  # equals x where mask = 1
        return z, sum_except_batch(log_s)

    def inverse(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        log_s, t = self._log_s_and_t(z * self.mask)  # z * mask == x * mask
        x = (z - t) * (-log_s).exp()
        return x, -sum_except_batch(log_s)
