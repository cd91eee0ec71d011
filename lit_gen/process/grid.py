"""DDPM's integer steps kept by a sampler (respacing, Nichol & Dhariwal 2021, Sec. 4)."""

from __future__ import annotations

import torch


def timestep_subsequence(num_timesteps: int, num_steps: int, spacing: str = "linear") -> torch.Tensor:
    """K of the T steps in descending order.

    linear: evenly spaced over [0, T-1]; quadratic: t_i ~ (c i)^2 as used for CIFAR-10 in Song et al. 2021,
    Sec. D.2; both end on step 0. ``leading`` and ``trailing`` are diffusers' ``timestep_spacing`` (Lin et al.
    2024, Table 2): multiples of T // K from 0, or T - 1 down in strides of T / K (which starts at the last
    step and may end above 0).
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
    elif spacing == "leading":
        ts = torch.arange(num_steps, dtype=torch.long) * (num_timesteps // num_steps)
    elif spacing == "trailing":
        ts = (torch.arange(num_timesteps, 0, -num_timesteps / num_steps, dtype=torch.float64).round() - 1)
        ts = ts.long().flip(0)
    else:
        raise ValueError(f"spacing={spacing!r} is not supported; choose one of ['leading', 'linear', "
                         f"'quadratic', 'trailing']")
    return ts.flip(0)
