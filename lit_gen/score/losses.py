"""Continuous-time denoising score matching (Song et al. 2021, Eq. 7) for a network that predicts the noise.

With x_t = alpha x0 + sigma z and score = -eps / sigma, ||s - grad log p_t(x_t | x0)||^2 = ||eps - z||^2 /
sigma^2, so the weightings read:

- ``paper``: lambda(t) = sigma^2 ~ 1 / E||grad log p_t(x_t | x0)||^2, the loss ||eps - z||^2 (as DDPM's
  L_simple and NCSN's lambda = sigma^2);
- ``likelihood``: lambda(t) = g(t)^2, the loss g^2 / sigma^2 ||eps - z||^2, which bounds the negative
  log-likelihood (Song et al. 2021b, "Maximum Likelihood Training of Score-Based Diffusion Models", Thm. 1);
  optionally with t drawn from p(t) ~ g^2 / sigma^2 (importance sampling, their Sec. 5), which leaves the
  loss the constant Z / (T - t_eps) times ||eps - z||^2 and removes most of its variance.

Each loss is averaged over dimensions; t is uniform on [t_eps, T] unless importance-sampled.
"""

from __future__ import annotations

from typing import Literal

import torch

from lit_gen.likelihood import mean_over_dims
from lit_gen.process.sde import SDE

Weighting = Literal["paper", "likelihood"]


class ImportanceTime:
    """Draws t on [t_eps, T] with density ~ g(t)^2 / sigma(t)^2 by the inverse CDF on a log-spaced grid."""

    def __init__(self, sde: SDE, t_eps: float, grid: int = 4096) -> None:
        t = torch.logspace(torch.log10(torch.tensor(t_eps)), torch.log10(torch.tensor(sde.T)), grid,
                           dtype=torch.float64)
        w = sde.g2(t) / sde.sigma(t) ** 2
        cdf = torch.cat([torch.zeros(1, dtype=torch.float64),
                         torch.cumsum((w[1:] + w[:-1]) / 2 * t.diff(), 0)])
        self.t, self.cdf, self.Z = t, cdf / cdf[-1], float(cdf[-1])
        self.weight = self.Z / (sde.T - t_eps)  # lambda(t) / (p(t) (T - t_eps)) in units of ||eps - z||^2

    def sample(self, n: int, device, generator: torch.Generator | None = None) -> torch.Tensor:
        u = torch.rand(n, dtype=torch.float64, generator=generator,
                       device=None if generator is None else generator.device)
        u = u.to(self.cdf.device)  # the tables stay on the CPU
        i = torch.searchsorted(self.cdf, u).clamp(1, len(self.t) - 1)
        lo, hi = self.cdf[i - 1], self.cdf[i]
        frac = (u - lo) / (hi - lo).clamp(min=1e-300)
        return (self.t[i - 1] + frac * (self.t[i] - self.t[i - 1])).to(device)


def dsm_loss(
    eps_pred: torch.Tensor, z: torch.Tensor, sde: SDE, t: torch.Tensor, weighting: str = "paper",
    importance_weight: float | None = None,
) -> torch.Tensor:
    """The weighted DSM loss per sample (B,) from the predicted noise at x_t = alpha x0 + sigma z."""
    mse = mean_over_dims((eps_pred - z) ** 2)
    if weighting == "paper":
        return mse
    if weighting == "likelihood":
        if importance_weight is not None:
            return importance_weight * mse
        return (sde.g2(t) / sde.sigma(t) ** 2).to(mse) * mse
    raise ValueError(f"weighting={weighting!r} is not supported; choose one of ['likelihood', 'paper']")
