"""Flow density models: levels of flow layers with factored-out latents (multi-scale) and a prior.

The multi-scale architecture (Dinh et al. 2017, Sec. 3.6): after every level but the last, half of the
channels leave the flow as a latent z_i and the rest go on to the next level. The map from x to all the
latents (z_1, ..., z_{L-1}, z_L) is a bijection, so

    log p(x) = sum_i log p(z_i | kept half) + log p(z_L) + sum over every layer of log|det|,

where p(z_i | kept half) is N(0, I) (RealNVP) or Glow's learned conditional Gaussian. A vector model is
the one-level case.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from lit_gen.flows.core import FlowLayer
from lit_gen.flows.distributions import ConditionalGaussian, gaussian_log_prob
from lit_gen.utils import Generator, randn


class Split(nn.Module):
    """Factor out the last ``num_channels // 2`` channels of a (B, C, H, W) tensor (Dinh et al. 2017, Sec. 3.6).

    With ``learn_prior`` the factored half z has the prior N(mean(h), exp(log_std(h))^2) given the kept
    half h (a ``ConditionalGaussian``, Kingma & Dhariwal 2018); otherwise N(0, I).
    """

    def __init__(self, num_channels: int, learn_prior: bool = False):
        """Build the split.

        Args:
            num_channels: Channels C of the input; C - C // 2 are kept, C // 2 factored out.
            learn_prior: Give the factored half a learned conditional Gaussian prior (Glow) instead of N(0, I).
        """
        super().__init__()
        if num_channels < 2:
            raise ValueError(f"Split needs at least 2 channels, got num_channels={num_channels}")
        self.num_kept = num_channels - num_channels // 2
        self.num_factored = num_channels // 2
        self.prior = ConditionalGaussian(self.num_kept, self.num_factored) if learn_prior else None

    def prior_params(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, log_std) of the factored half given the kept half h, each (B, C // 2, H, W)."""
        if self.prior is not None:
            return self.prior.mean_and_log_std(h)
        zeros = h.new_zeros(h.shape[0], self.num_factored, *h.shape[2:])
        return zeros, zeros

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return the kept half h, the factored half z and log p(z | h) of shape (B,)."""
        h, z = x.split([self.num_kept, self.num_factored], dim=1)  # (B, C - C//2, H, W), (B, C//2, H, W)
        mean, log_std = self.prior_params(h)
        return h, z, gaussian_log_prob(z, mean, log_std)

    def inverse(self, h: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return torch.cat([h, z], dim=1)  # (B, C, H, W)

    def sample(self, h: torch.Tensor, generator: Generator = None, temperature: float = 1.0) -> torch.Tensor:
        """Draw z ~ p(z | h) with its std multiplied by ``temperature`` and return cat(h, z)."""
        mean, log_std = self.prior_params(h)
        eps = randn(tuple(mean.shape), generator, h.device, h.dtype)
        return self.inverse(h, mean + temperature * log_std.exp() * eps)


class Flow(nn.Module):
    """A normalizing-flow density model: ``levels[i]`` followed by ``splits[i]`` for every level but the last,
    then ``prior`` on the last level's output.

    Subclasses (NICE, MLPFlow, RealNVP, Glow) build the parts from typed arguments. Inputs are already
    preprocessed (see ``lit_gen.flows.preprocess``); densities are in nats on that scale.
    """

    def __init__(
        self,
        data_shape: Sequence[int],
        levels: Sequence[FlowLayer],
        splits: Sequence[Split],
        prior: nn.Module,
    ):
        """Assemble the model.

        Args:
            data_shape: Shape of one sample, e.g. (2,) or (C, H, W).
            levels: Flow layers (usually ``FlowSequence``s), data -> latent order.
            splits: One ``Split`` after each level but the last (empty for a single level).
            prior: Distribution of the last level's output, with ``log_prob(z)`` and ``sample(n, generator,
                temperature)``.
        """
        super().__init__()
        if len(splits) != len(levels) - 1:
            raise ValueError(f"need one split between levels: got {len(levels)} levels, {len(splits)} splits")
        self.data_shape = tuple(data_shape)
        self.levels = nn.ModuleList(levels)
        self.splits = nn.ModuleList(splits)
        self.prior = prior

    @property
    def num_dims(self) -> int:
        """D, the number of dimensions of one sample (for bits/dim)."""
        return int(torch.Size(self.data_shape).numel())

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Map x (B, *data_shape) to its latents [z_1, ..., z_L] (factored-out parts first, the last level's
        output last) and log p(x) of shape (B,) in nats."""
        log_prob = x.new_zeros(x.shape[0])  # (B,)
        latents = []
        h = x
        for i, level in enumerate(self.levels):
            h, log_det = level(h)
            log_prob = log_prob + log_det
            if i < len(self.splits):
                h, z, log_p_z = self.splits[i](h)
                latents.append(z)
                log_prob = log_prob + log_p_z
        latents.append(h)
        return latents, log_prob + self.prior.log_prob(h)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log p(x) per sample (B,) in nats, base density and every log-det included."""
        return self(x)[1]

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self(x)[0]

    def decode(self, latents: Sequence[torch.Tensor]) -> torch.Tensor:
        """Invert ``encode``: latents [z_1, ..., z_L] -> x (B, *data_shape)."""
        h = latents[-1]
        for i in reversed(range(len(self.levels))):
            if i < len(self.splits):
                h = self.splits[i].inverse(h, latents[i])
            h, _ = self.levels[i].inverse(h)
        return h

    def sample(self, n: int, generator: Generator = None, temperature: float = 1.0) -> torch.Tensor:
        """Draw n samples (n, *data_shape); ``temperature`` multiplies the std of the prior and of every
        factored-out latent (Kingma & Dhariwal 2018, Sec. 5)."""
        h = self.prior.sample(n, generator, temperature)
        for i in reversed(range(len(self.levels))):
            if i < len(self.splits):
                h = self.splits[i].sample(h, generator, temperature)
            h, _ = self.levels[i].inverse(h)
        return h
