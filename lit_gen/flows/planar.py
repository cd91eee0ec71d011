"""Planar and radial flows (Rezende & Mohamed 2015, Sec. 4.1), for vectors (B, D).

The paper defines each map in the generative direction z -> x; here that is ``inverse(z) -> (x,
log|det dx/dz|)`` under the ``FlowLayer`` contract (inverse = latent -> data). Both maps are invertible
under the paper's constraints (appendix A), and both also run data -> latent as ``forward(x) -> (z,
log|det dz/dx|)``: the radial map in closed form (a quadratic in the radius), the planar map by a
scalar root find along w, differentiable through the implicit function theorem. A stack of them is thus
a full density model: it can be fitted by maximum likelihood to data, or, drawing samples with their
exact density (Sec. 3.1), by the reverse KL to an unnormalised target as in the paper's Fig. 3.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from lit_gen.flows.core import FlowLayer

_MAX_NEWTON_STEPS = 100


def _dot(a: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """sum(a * w, -1): a dot product that autocast leaves in full precision (a matmul would run in bf16)."""
    return (a * w).sum(-1)


def _solve_planar(c: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """The root a of g(a) = a + m tanh(a) - c for every entry of c (B,), m > -1 a scalar; no autograd.

    g is strictly increasing (g' = 1 + m (1 - tanh^2) >= min(1, 1 + m) > 0) and |a - c| = |m tanh a| <= |m|,
    so the root is unique and bracketed by [c - |m|, c + |m|]. Newton steps, with a bisection of the current
    bracket whenever a step would leave it, until every residual is at the rounding level of its terms.
    """
    lo, hi = c - m.abs(), c + m.abs()
    a = c.clone()
    eps = torch.finfo(c.dtype).eps
    for _ in range(_MAX_NEWTON_STEPS):
        t = torch.tanh(a)
        g = a + m * t - c
        done = g.abs() <= 4 * eps * (a.abs() + m.abs() + c.abs())
        if bool(done.all()):
            break
        lo = torch.where(g < 0, a, lo)  # the root lies above a
        hi = torch.where(g > 0, a, hi)  # the root lies below a
        a_new = a - g / (1 + m * (1 - t * t))
        outside = (a_new < lo) | (a_new > hi) | ~torch.isfinite(a_new)
        a_new = torch.where(outside, (lo + hi) / 2, a_new)
        a = torch.where(done, a, a_new)
    return a


class _ScalarsAsVectors(FlowLayer):
    """Scalar parameters are stored with shape (1,) (FSDP shards tensors of 1 dimension and more); checkpoints
    written when they had shape () still load."""

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for name, p in self.named_parameters(recurse=False):
            key = prefix + name
            if p.shape == (1,) and key in state_dict and state_dict[key].dim() == 0:
                state_dict[key] = state_dict[key].reshape(1)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class PlanarTransform(_ScalarsAsVectors):
    """f(z) = z + u_hat * tanh(w^T z + b) (Rezende & Mohamed 2015, Sec. 4.1), as ``inverse``; ``forward``
    inverts it numerically.

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
        self.b = nn.Parameter(torch.zeros(1))  # (1,), not a scalar: FSDP shards 1-D and up

    def u_hat(self) -> torch.Tensor:
        wu = _dot(self.w, self.u)
        m = -1 + F.softplus(wu)
        return self.u + (m - wu) * self.w / _dot(self.w, self.w)  # (D,), w^T u_hat = m(w^T u)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        u_hat = self.u_hat()
        m = _dot(self.w, u_hat)  # > -1
        c = _dot(x, self.w) + self.b  # (B,) = w^T x + b
        # x = z + u_hat tanh(a) with a = w^T z + b gives c = a + m tanh(a): a scalar equation per sample.
        with torch.no_grad():
            a_star = _solve_planar(c.detach(), m.detach())
        # One Newton step from the (detached) root: the value stays a_star, since g(a_star) = 0, and the
        # gradient is the implicit one, da/dtheta = -(dg/dtheta) / g'(a_star).
        t_star = torch.tanh(a_star)
        g = a_star + m * t_star - c
        a = a_star - g / (1 + m * (1 - t_star**2)).detach()
        t = torch.tanh(a)
        z = x - u_hat * t[:, None]  # (B, D)
        # Inverse function theorem: log|det dz/dx| = -log|1 + u_hat^T psi(z)| (Sec. 4.1).
        return z, -torch.log((1 + (1 - t**2) * m).abs())

    def inverse(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        u_hat = self.u_hat()
        a = _dot(z, self.w) + self.b  # (B,)
        x = z + u_hat * torch.tanh(a)[:, None]  # (B, D)
        # Sec. 4.1: psi = h'(w^T z + b) w, |det| = |1 + u_hat^T psi|.
        det = 1 + (1 - torch.tanh(a) ** 2) * _dot(self.w, u_hat)
        return x, torch.log(det.abs())


class RadialTransform(_ScalarsAsVectors):
    """f(z) = z + beta h(alpha, r) (z - z_0), h = 1 / (alpha + r), r = ||z - z_0|| (Rezende & Mohamed 2015,
    Sec. 4.1), as ``inverse``; ``forward`` is its closed-form inverse.

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
        self.alpha_raw = nn.Parameter(torch.zeros(1))
        self.beta_raw = nn.Parameter(torch.zeros(1))

    def alpha_beta(self) -> tuple[torch.Tensor, torch.Tensor]:
        alpha = F.softplus(self.alpha_raw)
        return alpha, -alpha + F.softplus(self.beta_raw)

    @staticmethod
    def _log_det(r: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor, dim: int) -> torch.Tensor:
        """log|det dx/dz| at radius r = ||z - z_0||."""
        # Sec. 4.1: |det| = (1 + beta h)^(D-1) (1 + beta h + beta h'(r) r), h' = -1 / (alpha + r)^2,
        # and 1 + beta h + beta h' r = 1 + beta alpha h^2.
        h = 1 / (alpha + r)
        return (dim - 1) * torch.log1p(beta * h) + torch.log1p(beta * alpha * h**2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        alpha, beta = self.alpha_beta()
        diff = x - self.z_0  # (B, D) = (1 + beta h(r)) (z - z_0)
        big_r = diff.norm(dim=1)  # (B,) R = ||x - z_0|| = r (alpha + beta + r) / (alpha + r)
        # Appendix A.2: r solves r^2 + p r - alpha R = 0 with p = alpha + beta - R; as alpha R >= 0 its roots
        # have opposite signs and r is the non-negative one. Each branch avoids cancellation.
        p = alpha + beta - big_r
        s = torch.sqrt((p**2 + 4 * alpha * big_r).clamp_min(torch.finfo(x.dtype).tiny))
        denom = torch.where(p > 0, p + s, torch.ones_like(p))
        r = torch.where(p > 0, 2 * alpha * big_r / denom, (s - p) / 2)
        # z - z_0 = (x - z_0) / (1 + beta h(r)) = (x - z_0) (alpha + r) / (alpha + beta + r), finite at R = 0.
        z = self.z_0 + diff * ((alpha + r) / (alpha + beta + r))[:, None]
        return z, -self._log_det(r, alpha, beta, x.shape[1])

    def inverse(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        alpha, beta = self.alpha_beta()
        diff = z - self.z_0  # (B, D)
        r = diff.norm(dim=1)  # (B,)
        x = z + (beta / (alpha + r))[:, None] * diff
        return x, self._log_det(r, alpha, beta, z.shape[1])
