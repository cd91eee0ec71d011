"""Sinusoidal embeddings of scalar (diffusion time) inputs."""

from __future__ import annotations

import math

import torch


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of a batch of scalars (Vaswani et al. 2017, sec. 3.5; used for t in DDPM).

    Frequencies are ``max_period ** (-i / half)`` for ``i = 0 .. half - 1`` with ``half = dim // 2``; the
    output is ``[sin(t * f), cos(t * f)]``, zero-padded by one column when ``dim`` is odd. Works for integer
    diffusion steps and for continuous t alike (scale continuous t up first, e.g. by 1000).

    Args:
        t: Timesteps, shape (B,) (or a scalar, treated as (1,)); any real or integer dtype.
        dim: Embedding width (>= 1).
        max_period: Longest period of the sinusoids; controls the lowest frequency.

    Returns:
        Embedding of shape (B, dim): float64 if ``t`` is float64, else float32.
    """
    if dim < 1:
        raise ValueError(f"timestep_embedding: dim={dim} must be >= 1")
    dtype = torch.float64 if t.dtype == torch.float64 else torch.float32
    t = t.reshape(-1).to(dtype)  # (B,)
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=dtype) / max(half, 1))
    args = t[:, None] * freqs[None, :]  # (B, half)
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=-1)  # (B, 2 * half)
    if dim % 2 == 1:
        emb = torch.nn.functional.pad(emb, (0, 1))  # (B, dim)
    return emb
