"""Small helpers shared by every package (no Lightning imports here)."""

from __future__ import annotations

import torch


def append_dims(a: torch.Tensor, ndim: int) -> torch.Tensor:
    """Append trailing singleton dims to ``a`` (shape (B,)) so it broadcasts against a tensor of ``ndim`` dims."""
    if a.ndim > ndim:
        raise ValueError(f"append_dims: tensor has {a.ndim} dims, more than the target {ndim}")
    return a.reshape(*a.shape, *([1] * (ndim - a.ndim)))


def check_choice(name: str, value, allowed) -> None:
    """Raise a one-line ValueError naming the bad ``value`` of option ``name`` and the allowed ones."""
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not supported; choose one of {sorted(allowed)}")
