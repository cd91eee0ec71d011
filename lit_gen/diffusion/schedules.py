"""Beta schedules, computed in float64.

* linear: Ho et al. 2020, Sec. 4 (beta_1 = 1e-4 ... beta_T = 0.02 for T = 1000).
* cosine: Nichol & Dhariwal 2021, Eq. 17 (alpha_bar(t) = f(t) / f(0), betas clipped at 0.999).
"""

from __future__ import annotations

import math
from typing import Literal

import torch

ScheduleName = Literal["linear", "cosine"]


def linear_betas(num_timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """Ho et al. 2020: betas spaced linearly from ``beta_start`` to ``beta_end``. Returns (T,) float64."""
    return torch.linspace(beta_start, beta_end, num_timesteps, dtype=torch.float64)


def cosine_alpha_bar(t: torch.Tensor, s: float = 0.008) -> torch.Tensor:
    """Nichol & Dhariwal 2021, Eq. 17: alpha_bar(t) = f(t)/f(0), f(t) = cos^2((t + s)/(1 + s) * pi/2), t in
    [0, 1]."""
    f = torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2
    return f / math.cos(s / (1 + s) * math.pi / 2) ** 2


def cosine_betas(num_timesteps: int, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """Betas of the cosine schedule: beta_t = 1 - alpha_bar_t / alpha_bar_{t-1}, clipped at ``max_beta``."""
    grid = torch.arange(num_timesteps + 1, dtype=torch.float64) / num_timesteps
    alpha_bar = cosine_alpha_bar(grid, s)
    return (1 - alpha_bar[1:] / alpha_bar[:-1]).clamp(max=max_beta)


def make_betas(schedule: str, num_timesteps: int) -> torch.Tensor:
    """Betas (T,) float64 for a schedule name ('linear' or 'cosine')."""
    builders = {"linear": linear_betas, "cosine": cosine_betas}
    if schedule not in builders:
        raise ValueError(f"beta schedule {schedule!r} is not supported; choose one of {sorted(builders)}")
    if num_timesteps < 1:
        raise ValueError(f"num_timesteps={num_timesteps} must be a positive integer")
    return builders[schedule](num_timesteps)
