"""DDPM's integer steps kept by a sampler (respacing, Nichol & Dhariwal 2021, Sec. 4)."""

from __future__ import annotations

import torch


def timestep_subsequence(num_timesteps: int, num_steps: int, spacing: str = "linear") -> torch.Tensor:
    """K of the T steps in descending order, always ending on t = 0 (so the last update lands on x0).

    linear: evenly spaced over [0, T-1]; quadratic: t_i ~ (c i)^2 as used for CIFAR-10 in Song et al. 2021,
    Sec. D.2.
    """
    if not 1 <= num_steps <= num_timesteps:
        raise ValueError(f"steps={num_steps} must be between 1 and the model's {num_timesteps} diffusion "
                         f"steps")
    if spacing == "linear":
        ts = torch.linspace(0, num_timesteps - 1, num_steps, dtype=torch.float64).round().long()
    elif spacing == "quadratic":
        ts = (torch.linspace(0, (0.8 * num_timesteps) ** 0.5, num_steps,
                             dtype=torch.float64) ** 2).round().long()
        # the first gaps are below one step: push repeats up so the steps stay distinct
        idx = torch.arange(num_steps)
        ts = torch.cummax(ts - idx, 0).values + idx
        ts = torch.minimum(ts, num_timesteps - num_steps + idx)
    else:
        raise ValueError(f"spacing={spacing!r} is not supported; choose one of ['linear', 'quadratic']")
    return ts.flip(0)
