"""The flow-layer contract and its composition.

A normalizing flow writes the density of data x through an invertible map z = f(x) and a simple base
density p_Z (Dinh et al. 2014, Sec. 2; Rezende & Mohamed 2015, Sec. 3.1):

    log p_X(x) = log p_Z(f(x)) + log|det df/dx|.

Every layer here runs in both directions and reports its own log-determinant per sample:
``forward(x) -> (z, log|det dz/dx|)`` (data -> latent) and ``inverse(z) -> (x, log|det dx/dz|)``
(latent -> data), so the two log-dets of a round trip add up to zero.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn


def sum_except_batch(x: torch.Tensor) -> torch.Tensor:
    """(B, ...) -> (B,) sum over every dim but the first."""
    return x.flatten(1).sum(1)


def per_channel(p: torch.Tensor, ndim: int) -> torch.Tensor:
    """View a per-channel vector (C,) as (1, C, 1, ...) to broadcast against a (B, C, ...) tensor."""
    return p.view(1, -1, *([1] * (ndim - 2)))


def spatial_size(x: torch.Tensor) -> int:
    """Positions per channel of a (B, C, ...) tensor: H*W for images, 1 for vectors (B, C)."""
    return x[0, 0].numel()


class FlowLayer(nn.Module):
    """An invertible layer with a tractable log-determinant.

    Subclasses implement ``forward(x) -> (z, log_det)`` in the data -> latent direction, with ``log_det`` =
    log|det dz/dx| of shape (B,), and ``inverse(z) -> (x, log_det)`` with ``log_det`` = log|det dx/dz|.
    Layers without a closed-form inverse raise NotImplementedError for the direction they lack.
    """

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError(f"{type(self).__name__} has no forward (data -> latent) direction")

    def inverse(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError(f"{type(self).__name__} has no inverse (latent -> data) direction")


class FlowSequence(FlowLayer):
    """Layers applied in order; the log-dets add up (chain rule) and ``inverse`` runs the layers reversed."""

    def __init__(self, layers: Iterable[FlowLayer] = ()):
        """Compose layers.

        Args:
            layers: Flow layers in the data -> latent order. An empty sequence is the identity.
        """
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def __len__(self) -> int:
        return len(self.layers)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        log_det = x.new_zeros(x.shape[0])  # (B,)
        for layer in self.layers:
            x, ld = layer(x)
            log_det = log_det + ld
        return x, log_det

    def inverse(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        log_det = z.new_zeros(z.shape[0])  # (B,)
        for layer in reversed(self.layers):
            z, ld = layer.inverse(z)
            log_det = log_det + ld
        return z, log_det
