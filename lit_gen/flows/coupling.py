"""Coupling layers (Dinh et al. 2014; Dinh et al. 2017) and the binary masks that split their input.

A mask b (1 = kept, 0 = transformed) broadcasts against the input. The conditioner only sees the kept
part, so the Jacobian is triangular and its determinant is the product of the scales of the transformed
part (RealNVP Sec. 3.3-3.4): for a mask over channels it gets the kept channels alone (Glow's NN(x_a);
see ``coupling_channels``), for a spatial mask (checkerboard) the masked input b * x. Masks cover every
split of the papers: the checkerboard and channel masks of RealNVP
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


def _masks_channels(mask: torch.Tensor) -> bool:
    """True for a mask over channels, (1, C) or (1, C, 1, 1); False for a spatial one, e.g. (1, 1, H, W)."""
    return mask.shape[1] > 1 and all(size == 1 for size in mask.shape[2:])


def coupling_channels(mask: torch.Tensor, num_channels: int) -> tuple[int, int]:
    """(channels in, channels out per parameter) of a coupling's conditioner under ``mask``.

    A mask over channels splits x into x_a (kept) and x_b (transformed): the conditioner maps x_a to
    parameters for x_b alone (Glow's NN(x_a)), so (C_a, C_b). A spatial mask (e.g. the (1, 1, H, W)
    checkerboard) keeps part of every channel: (C, C), and the conditioner sees b * x.
    """
    if _masks_channels(mask):
        kept = int(mask.sum())
        return kept, num_channels - kept
    return num_channels, num_channels


class MaskedCoupling(FlowLayer):
    """What every coupling shares: the mask, a conditioner that sees only the kept part, and the split of x
    into its kept part and the part the layer transforms (``transformed`` / ``merge``)."""

    def __init__(self, mask: torch.Tensor, conditioner: nn.Module):
        """Build the layer.

        Args:
            mask: Binary mask broadcastable to the input, 1 where the input passes unchanged.
            conditioner: Network from the kept part to the transformed part's parameters; see
                ``coupling_channels`` for its channel counts.
        """
        super().__init__()
        self.register_buffer("mask", mask)
        self.conditioner = conditioner
        by_channel = _masks_channels(mask)
        flat = mask.flatten()
        # derived from the mask: not saved in checkpoints
        self.register_buffer("kept", flat.nonzero()[:, 0] if by_channel else None, persistent=False)
        self.register_buffer("moved", (flat == 0).nonzero()[:, 0] if by_channel else None, persistent=False)

    def condition(self, x: torch.Tensor) -> torch.Tensor:
        """The conditioner's output for x, cast to x's dtype: the conditioner may run under autocast (bf16),
        the flow's own arithmetic stays in x's dtype."""
        kept = x.index_select(1, self.kept) if self.kept is not None else x * self.mask
        return self.conditioner(kept).to(x.dtype)

    def transformed(self, x: torch.Tensor) -> torch.Tensor:
        """The channels the layer transforms (B, C_b, ...), or all of x for a spatial mask."""
        return x.index_select(1, self.moved) if self.moved is not None else x

    def merge(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """x with its transformed part replaced by y (shaped like ``transformed(x)``)."""
        if self.moved is not None:
            return x.index_copy(1, self.moved, y)
        return self.mask * x + (1 - self.mask) * y

    def only_transformed(self, p: torch.Tensor) -> torch.Tensor:
        """Zero a per-entry quantity (log-scale, shift) on the kept entries of a spatial mask."""
        return p if self.moved is not None else p * (1 - self.mask)


class AdditiveCoupling(MaskedCoupling):
    """Additive coupling (Dinh et al. 2014, Sec. 3.2, with m = conditioner): x_b -> x_b + m(x_a).

    Volume preserving: log|det| = 0. The conditioner's output is shaped like the transformed part.
    """

    def __init__(self, mask: torch.Tensor, conditioner: nn.Module):
        """Build the layer.

        Args:
            mask: Binary mask broadcastable to the input, 1 where the input passes unchanged.
            conditioner: Network m from the kept part to a shift of the transformed part.
        """
        super().__init__(mask, conditioner)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shift = self.only_transformed(self.condition(x))
        return self.merge(x, self.transformed(x) + shift), x.new_zeros(x.shape[0])

    def inverse(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shift = self.only_transformed(self.condition(z))  # the kept part of z is that of x
        return self.merge(z, self.transformed(z) - shift), z.new_zeros(z.shape[0])


class AffineCoupling(MaskedCoupling):
    """Affine coupling (Dinh et al. 2017, Sec. 3.3-3.4): x_b -> x_b * s + t with (log s, t) computed
    from the kept part x_a.

    The conditioner's output, 2 C_b channels, splits along dim 1 into h (-> log s) and t. Three scales:

    - ``sigmoid``: s = sigmoid(h + 2), Glow's released code (Kingma & Dhariwal 2018); s in (0, 1) and
      s = sigmoid(2) = 0.88 at a zero-initialised conditioner, i.e. a fixed contraction of the transformed
      half, not the exact identity.
    - ``tanh``: log s = scale * tanh(h) with a learned per-channel ``scale`` (RealNVP's released code, Dinh et
      al. 2017); s = 1 at a zero-initialised conditioner, so the layer starts as the exact identity.
    - ``exp``: log s = h, unbounded (the paper's exp(s) as written); also the identity at init. Fine on
      low-dimensional data, where sharp modes need large scales; can diverge on images.

    log|det dz/dx| = sum over the transformed entries of log s.
    """

    def __init__(self, mask: torch.Tensor, conditioner: nn.Module, scale_fn: ScaleFn = "sigmoid"):
        """Build the layer.

        Args:
            mask: Binary mask broadcastable to the input, 1 where the input passes unchanged.
            conditioner: Network from the kept part to (log s, t) of the transformed part, 2 C_b channels
                (see ``coupling_channels``).
            scale_fn: ``sigmoid`` (Glow, s = sigmoid(h + 2)), ``tanh`` (RealNVP's code, log s = scale *
                tanh(h)) or ``exp`` (log s = h).
        """
        check_choice("scale_fn", scale_fn, {"sigmoid", "tanh", "exp"})
        super().__init__(mask, conditioner)
        self.scale_fn = scale_fn
        if scale_fn == "tanh":
            # one scale per transformed channel; one shared scale under a spatial mask
            num_scales = mask.shape[1] - int(mask.sum()) if _masks_channels(mask) else mask.shape[1]
            self.scale = nn.Parameter(torch.ones(num_scales))

    def _log_s_and_t(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h, t = self.condition(x).chunk(2, dim=1)  # each shaped like the transformed part
        if self.scale_fn == "sigmoid":
            log_s = F.logsigmoid(h + 2.0)
        elif self.scale_fn == "tanh":
            log_s = per_channel(self.scale, h.ndim) * torch.tanh(h)
        else:
            log_s = h
        return self.only_transformed(log_s), self.only_transformed(t)  # s = 1, t = 0 on kept entries

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        log_s, t = self._log_s_and_t(x)
        z = self.merge(x, self.transformed(x) * log_s.exp() + t)
        return z, sum_except_batch(log_s)

    def inverse(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        log_s, t = self._log_s_and_t(z)  # the kept part of z is that of x
        x = self.merge(z, (self.transformed(z) - t) * (-log_s).exp())
        return x, -sum_except_batch(log_s)
