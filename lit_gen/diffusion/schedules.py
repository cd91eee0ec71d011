"""Beta schedules, computed in float64.

* linear: Ho et al. 2020, Sec. 4 (beta_1 = 1e-4 ... beta_T = 0.02 for T = 1000).
* cosine: Nichol & Dhariwal 2021, Eq. 17 (alpha_bar(t) = f(t) / f(0), betas clipped at 0.999); diffusers'
  ``squaredcos_cap_v2``.
* scaled_linear: sqrt(beta) spaced linearly (Stable Diffusion's, diffusers' ``scaled_linear``).
"""

from __future__ import annotations

import math
from typing import Literal

import torch

ScheduleName = Literal["linear", "cosine", "scaled_linear"]


def linear_betas(num_timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """Ho et al. 2020: betas spaced linearly from ``beta_start`` to ``beta_end``. Returns (T,) float64."""
    return torch.linspace(beta_start, beta_end, num_timesteps, dtype=torch.float64)


def scaled_linear_betas(num_timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """sqrt(beta) spaced linearly from sqrt(``beta_start``) to sqrt(``beta_end``). Returns (T,) float64."""
    return torch.linspace(beta_start**0.5, beta_end**0.5, num_timesteps, dtype=torch.float64) ** 2


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


def make_betas(schedule: str, num_timesteps: int, beta_start: float = 1e-4,
               beta_end: float = 0.02) -> torch.Tensor:
    """Betas (T,) float64 for a schedule name; ``beta_start`` and ``beta_end`` are the ends of the linear
    schedules (the cosine schedule has none)."""
    if schedule not in ("linear", "cosine", "scaled_linear"):
        raise ValueError(f"beta schedule {schedule!r} is not supported; choose one of ['cosine', 'linear', "
                         f"'scaled_linear']")
    if num_timesteps < 1:
        raise ValueError(f"num_timesteps={num_timesteps} must be a positive integer")
    if schedule == "cosine":
        return cosine_betas(num_timesteps)
    if not 0 < beta_start <= beta_end < 1:
        raise ValueError(f"beta_start={beta_start}, beta_end={beta_end}: need 0 < beta_start <= beta_end < 1")
    builder = linear_betas if schedule == "linear" else scaled_linear_betas
    return builder(num_timesteps, beta_start, beta_end)
