"""Small helpers shared by every package (no Lightning imports here)."""

from __future__ import annotations

from contextlib import contextmanager

import torch


def append_dims(a: torch.Tensor, ndim: int) -> torch.Tensor:
    """Append trailing singleton dims to ``a`` (shape (B,)) so it broadcasts against a tensor of ``ndim``
    dims."""
    if a.ndim > ndim:
        raise ValueError(f"append_dims: tensor has {a.ndim} dims, more than the target {ndim}")
    return a.reshape(*a.shape, *([1] * (ndim - a.ndim)))


def check_choice(name: str, value, allowed) -> None:
    """Raise a one-line ValueError naming the bad ``value`` of option ``name`` and the allowed ones."""
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not supported; choose one of {sorted(allowed)}")


Generator = torch.Generator | list[torch.Generator] | None


def randn(shape: tuple[int, ...], generator: Generator, device: torch.device | str,
          dtype=torch.float32) -> torch.Tensor:
    """Standard normal noise of ``shape`` on ``device``.

    ``generator`` may be one generator or a list with one generator per sample (shape[0]); with a list, sample
    i depends only on generator i, so an image does not depend on the batch it was drawn in (as in EDM).
    """
    if isinstance(generator, (list, tuple)):
        if len(generator) != shape[0]:
            raise ValueError(f"got {len(generator)} generators for a batch of {shape[0]} samples")
        return torch.stack([torch.randn(shape[1:], generator=g, device=g.device,
                                        dtype=dtype) for g in generator]).to(
            device
        )
    gen_device = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=gen_device, dtype=dtype).to(device)


def rand(
    shape: tuple[int, ...], generator: Generator, device: torch.device | str, dtype=torch.float32
) -> torch.Tensor:
    """U[0, 1) noise of ``shape``; like :func:`randn`, a list of generators gives one per sample."""
    if isinstance(generator, (list, tuple)):
        if len(generator) != shape[0]:
            raise ValueError(f"got {len(generator)} generators for a batch of {shape[0]} samples")
        noise = [torch.rand(shape[1:], generator=g, device=g.device, dtype=dtype) for g in generator]
        return torch.stack(noise).to(device)
    gen_device = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, device=gen_device, dtype=dtype).to(device)


def sample_generators(seed: int, start: int, count: int,
                      device: torch.device | str = "cpu") -> list[torch.Generator]:
    """One generator per sample index ``start .. start+count-1``, seeded from (seed, index) without
    collisions."""
    import numpy as np

    gens = []
    for i in range(start, start + count):
        state = int(np.random.SeedSequence([seed, i]).generate_state(1, dtype=np.uint64)[0] >> 1)
        gens.append(torch.Generator(device=device).manual_seed(state))
    return gens


@contextmanager
def eval_mode(net: torch.nn.Module):
    """Put ``net`` in eval mode (no dropout) for the block, then restore its mode."""
    was_training = net.training
    net.eval()
    try:
        yield net
    finally:
        net.train(was_training)
