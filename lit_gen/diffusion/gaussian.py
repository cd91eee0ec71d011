"""The Gaussian noise process of DDPM (Ho et al. 2020), shared by every diffusion method and sampler.

All coefficients are computed in float64 and kept as float64 buffers; they are cast to the
dtype of ``x`` when gathered, so mixed precision never degrades the schedule.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from lit_gen.diffusion.schedules import make_betas
from lit_gen.utils import append_dims

PredictionType = Literal["eps", "x0", "v"]


def eps_x0_from_output(
    model_output: torch.Tensor, x_t: torch.Tensor, alpha_bar_t: torch.Tensor, prediction_type: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Turn a model output into (eps, x0) given alpha_bar_t (B,).

    x_t = sqrt(abar) x0 + sqrt(1 - abar) eps (Ho et al. 2020, Eq. 4); v = sqrt(abar) eps - sqrt(1 - abar) x0
    (Salimans & Ho 2022, Sec. 4).
    """
    a = append_dims(alpha_bar_t.to(x_t.dtype), x_t.ndim).sqrt()  # sqrt(abar)
    s = (1 - append_dims(alpha_bar_t.to(x_t.dtype), x_t.ndim)).sqrt()  # sqrt(1 - abar)
    if prediction_type == "eps":
        eps = model_output
        x0 = (x_t - s * eps) / a
    elif prediction_type == "x0":
        x0 = model_output
        eps = (x_t - a * x0) / s
    elif prediction_type == "v":
        x0 = a * x_t - s * model_output
        eps = s * x_t + a * model_output
    else:
        raise ValueError(f"prediction_type={prediction_type!r} is not supported; choose one of ['eps', 'v', 'x0']")
    return eps, x0


def training_target(x0: torch.Tensor, eps: torch.Tensor, alpha_bar_t: torch.Tensor, prediction_type: str) -> torch.Tensor:
    """What the network regresses for a given parameterisation."""
    if prediction_type == "eps":
        return eps
    if prediction_type == "x0":
        return x0
    if prediction_type == "v":
        a = append_dims(alpha_bar_t.to(x0.dtype), x0.ndim)
        return a.sqrt() * eps - (1 - a).sqrt() * x0
    raise ValueError(f"prediction_type={prediction_type!r} is not supported; choose one of ['eps', 'v', 'x0']")


class GaussianDiffusion(nn.Module):
    """q(x_t | x_0), the posterior q(x_{t-1} | x_t, x_0) and conversions between eps and x0.

    Args:
        schedule: beta schedule name, ``linear`` (Ho et al. 2020) or ``cosine`` (Nichol & Dhariwal 2021).
        num_timesteps: number of diffusion steps T.
    """

    def __init__(self, schedule: str = "linear", num_timesteps: int = 1000) -> None:
        super().__init__()
        betas = make_betas(schedule, num_timesteps)  # (T,) float64
        alphas = 1 - betas
        alpha_bar = torch.cumprod(alphas, 0)
        alpha_bar_prev = torch.cat([torch.ones(1, dtype=torch.float64), alpha_bar[:-1]])
        # Ho et al. 2020, Eq. 7: beta_tilde_t = (1 - abar_{t-1}) / (1 - abar_t) * beta_t
        posterior_variance = betas * (1 - alpha_bar_prev) / (1 - alpha_bar)
        self.num_timesteps = num_timesteps
        self.schedule = schedule
        self.register_buffer("betas", betas, persistent=False)
        self.register_buffer("alphas", alphas, persistent=False)
        self.register_buffer("alpha_bar", alpha_bar, persistent=False)
        self.register_buffer("alpha_bar_prev", alpha_bar_prev, persistent=False)
        self.register_buffer("posterior_variance", posterior_variance, persistent=False)
        # beta_tilde_0 = 0: clip the log at t = 0 to beta_tilde_1 (Nichol & Dhariwal 2021, Sec. 3.1)
        self.register_buffer(
            "posterior_log_variance_clipped",
            torch.log(torch.cat([posterior_variance[1:2], posterior_variance[1:]])),
            persistent=False,
        )
        # Ho et al. 2020, Eq. 7: mu_tilde = c1 x0 + c2 x_t
        self.register_buffer("posterior_mean_coef1", betas * alpha_bar_prev.sqrt() / (1 - alpha_bar), persistent=False)
        self.register_buffer(
            "posterior_mean_coef2", (1 - alpha_bar_prev) * alphas.sqrt() / (1 - alpha_bar), persistent=False
        )

    @staticmethod
    def _at(buffer: torch.Tensor, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """buffer[t] cast to x's dtype and broadcastable against x."""
        return append_dims(buffer[t].to(x.dtype), x.ndim)

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps (Ho et al. 2020, Eq. 4)."""
        abar = self._at(self.alpha_bar, t, x0)
        return abar.sqrt() * x0 + (1 - abar).sqrt() * eps

    def q_posterior(
        self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mean, variance and clipped log-variance of q(x_{t-1} | x_t, x0) (Ho et al. 2020, Eqs. 6-7)."""
        mean = self._at(self.posterior_mean_coef1, t, x_t) * x0 + self._at(self.posterior_mean_coef2, t, x_t) * x_t
        return mean, self._at(self.posterior_variance, t, x_t), self._at(self.posterior_log_variance_clipped, t, x_t)

    def split_output(
        self, model_output: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, prediction_type: str
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(eps, x0) from a network output at integer steps t (B,)."""
        return eps_x0_from_output(model_output, x_t, self.alpha_bar[t], prediction_type)

    def sample_timesteps(self, batch_size: int, device: torch.device, generator: torch.Generator | None = None):
        """t ~ U{0, ..., T-1} (Ho et al. 2020, Algorithm 1)."""
        return torch.randint(0, self.num_timesteps, (batch_size,), device=device, generator=generator)
