"""Planar and radial flows (Rezende & Mohamed 2015, Sec. 4.1), for vectors (B, D).

Neither map has a closed-form inverse, so each runs in one direction only: the generative direction
z -> x of the paper, as ``inverse(z) -> (x, log|det dx/dz|)`` under the ``FlowLayer`` contract (inverse =
latent -> data); ``forward`` raises NotImplementedError. A stack of them gives samples x together with
their exact density log q(x) = log q_0(z_0) - sum_k log|det df_k/dz_{k-1}| (Sec. 3.1); it cannot evaluate
the density of a given data point, so it is fitted by the reverse KL to an (unnormalised) target
density, as in the paper's Fig. 3, or used as a variational posterior.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from lit_gen.flows.core import FlowLayer


class PlanarTransform(FlowLayer):
    """f(z) = z + u_hat * tanh(w^T z + b) (Rezende & Mohamed 2015, Sec. 4.1).

    Invertibility (paper, appendix A.1): w^T u_hat >= -1, enforced by
    u_hat = u + (m(w^T u) - w^T u) w / ||w||^2 with m(a) = -1 + softplus(a) > -1.
    """

    def __init__(self, dim: int):
        """Build the layer.

        Args:
            dim: Dimension D of the vectors.
        """
        super().__init__()
        self.w = nn.Parameter(torch.randn(dim) / math.sqrt(dim))
        self.u = nn.Parameter(0.1 * torch.randn(dim))
        self.b = nn.Parameter(torch.zeros(()))

    def u_hat(self) -> torch.Tensor:
        wu = self.w @ self.u
        m = -1 + F.softplus(wu)
        return self.u + (m - wu) * self.w / (self.w @ self.w)  # (D,), w^T u_hat = m(w^T u)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError("PlanarTransform has no closed-form inverse; it runs only latent -> data")

    def inverse(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        u_hat = self.u_hat()
        a = z @ self.w + self.b  # (B,)
        x = z + u_hat * torch.tanh(a)[:, None]  # (B, D)
        # Sec. 4.1: psi = h'(w^T z + b) w, |det| = |1 + u_hat^T psi|.
        det = 1 + (1 - torch.tanh(a) ** 2) * (self.w @ u_hat)
        return x, torch.log(det.abs())


class RadialTransform(FlowLayer):
    """f(z) = z + beta h(alpha, r) (z - z_0), h = 1 / (alpha + r), r = ||z - z_0|| (Rezende & Mohamed 2015,
    Sec. 4.1).

    Invertibility (appendix A.2): beta >= -alpha, enforced by alpha = softplus(a) > 0 and
    beta = -alpha + softplus(b') > -alpha.
    """

    def __init__(self, dim: int):
        """Build the layer.

        Args:
            dim: Dimension D of the vectors.
        """
        super().__init__()
        self.z_0 = nn.Parameter(torch.randn(dim))
        self.alpha_raw = nn.Parameter(torch.zeros(()))
        self.beta_raw = nn.Parameter(torch.zeros(()))

    def alpha_beta(self) -> tuple[torch.Tensor, torch.Tensor]:
        alpha = F.softplus(self.alpha_raw)
        return alpha, -alpha + F.softplus(self.beta_raw)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError("RadialTransform has no closed-form inverse; it runs only latent -> data")

    def inverse(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        alpha, beta = self.alpha_beta()
        diff = z - self.z_0  # (B, D)
        r = diff.norm(dim=1)  # (B,)
        h = 1 / (alpha + r)
        x = z + (beta * h)[:, None] * diff
        # Sec. 4.1: |det| = (1 + beta h)^(D-1) (1 + beta h + beta h'(r) r), h' = -1 / (alpha + r)^2,
        # and 1 + beta h + beta h' r = 1 + beta alpha h^2.
        log_det = (z.shape[1] - 1) * torch.log1p(beta * h) + torch.log1p(beta * alpha * h**2)
        return x, log_det
