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
    """Factor out the last ``num_channels // 2`` channels of a (B, C, H, W) tensor (Dinh et al. 2017, Sec.
    3.6).

    With ``learn_prior`` the factored half z has the prior N(mean(h), exp(log_std(h))^2) given the kept
    half h (a ``ConditionalGaussian``, Kingma & Dhariwal 2018); otherwise N(0, I).
    """

    def __init__(self, num_channels: int, learn_prior: bool = False):
        """Build the split.

        Args:
            num_channels: Channels C of the input; C - C // 2 are kept, C // 2 factored out.
            learn_prior: Give the factored half a learned conditional Gaussian prior (Glow) instead of N(0,
                I).
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

    def from_noise(self, h: torch.Tensor, eps: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
        """cat(h, z) with z = mean(h) + temperature * std(h) * eps, eps (B, C // 2, H, W) standard normal
        noise."""
        mean, log_std = self.prior_params(h)
        return self.inverse(h, mean + temperature * log_std.exp() * eps)

    def to_noise(self, h: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """The noise eps that ``from_noise`` maps to z given h (temperature 1)."""
        mean, log_std = self.prior_params(h)
        return (z - mean) * torch.exp(-log_std)


class Flow(nn.Module):
    """A normalizing-flow density model: ``levels[i]`` followed by ``splits[i]`` for every level but the last,
    then ``prior`` on the last level's output.

    Subclasses (NICE, MLPFlow, RealNVP, Glow) build the parts from typed arguments. Inputs are already
    preprocessed (see ``lit_gen.flows.preprocess``); densities are in nats on that scale.
    """

    # entry points besides forward: FSDP gathers weights for them
    fsdp_methods = ("log_prob", "sample", "to_noise")

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

    def to_noise(self, x: torch.Tensor) -> torch.Tensor:
        """The standard normal noise (B, D) that ``sample(noise=...)`` at temperature 1 maps to x: every
        latent z_i standardised by its own prior (learned conditional priors included), flattened and
        concatenated in the order z_1, ..., z_L. A bijection of x whose distribution under the model is N(0,
        I)."""
        noise = []
        h = x
        for i, level in enumerate(self.levels):
            h, _ = level(h)
            if i < len(self.splits):
                h, z, _ = self.splits[i](h)
                noise.append(self.splits[i].to_noise(h, z).flatten(1))
        noise.append(self.prior.to_noise(h).flatten(1))
        return torch.cat(noise, dim=1)

    def sample(
        self,
        n: int,
        generator: Generator = None,
        temperature: float = 1.0,
        noise: torch.Tensor | None = None,
        max_redraws: int = 10,
    ) -> torch.Tensor:
        """Draw n samples (n, *data_shape); ``temperature`` multiplies the std of the prior and of every
        factored-out latent (Kingma & Dhariwal 2018, Sec. 5).

        A draw far in the prior's tail can hit a near-zero coupling scale, which the inverse divides by
        (about 1 in 500 for a small Glow on digits at T = 1): such samples overflow to inf/NaN and are drawn
        again, up to ``max_redraws`` times, from their own generator, so results stay reproducible.

        Args:
            n: Number of samples.
            generator: Generator of the noise (one, or a list with one per sample).
            temperature: Scale of the prior's spread (1: the model's density).
            noise: Standard normal noise (n, D) or (n, *data_shape) to decode instead of drawing it, e.g. from
                ``to_noise`` or an interpolation (never redrawn).
            max_redraws: Redraws of overflowed samples.
        """
        if noise is not None:
            return self.decode_noise(noise, temperature)
        anchor = next(t for t in (*self.parameters(), *self.buffers()) if t.is_floating_point())
        x = self.decode_noise(randn((n, self.num_dims), generator, anchor.device, anchor.dtype), temperature)
        for _ in range(max_redraws):
            bad = (~torch.isfinite(x.flatten(1)).all(1)).nonzero()[:, 0]
            if len(bad) == 0:
                break
            gens = [generator[i] for i in bad.tolist()] if isinstance(generator, (list, tuple)) else generator
            noise = randn((len(bad), self.num_dims), gens, anchor.device, anchor.dtype)
            x[bad] = self.decode_noise(noise, temperature)
        return x

    def decode_noise(self, noise: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
        """The sample (n, *data_shape) that standard normal ``noise`` (n, D) or (n, *data_shape) decodes to:
        every latent is its prior's ``from_noise`` of its slice of the noise; the inverse of ``to_noise``."""
        n = noise.shape[0]
        noise = noise.reshape(n, -1)
        if noise.shape[1] != self.num_dims:
            raise ValueError(f"noise has {noise.shape[1]} dimensions per sample, the flow has "
                             f"{self.num_dims}")
        end = noise.shape[1]  # the noise is consumed from the end: the top latent z_L comes last

        def take(shape: tuple[int, ...]) -> torch.Tensor:
            nonlocal end
            size = int(torch.Size(shape).numel())
            end -= size
            return noise[:, end : end + size].reshape(n, *shape)

        h = self.prior.from_noise(take(self.prior.shape), temperature)
        for i in reversed(range(len(self.levels))):
            if i < len(self.splits):
                split = self.splits[i]
                h = split.from_noise(h, take((split.num_factored, *h.shape[2:])), temperature)
            h, _ = self.levels[i].inverse(h)
        return h

    def sample_with_log_prob(
        self, n: int, generator: Generator = None, temperature: float = 1.0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw n samples x (n, *data_shape) together with log p(x) (n,) in nats, both from one pass in the
        latent -> data direction: log p(x) = log p(z) - log|det dx/dz| (Rezende & Mohamed 2015, Sec. 3.1).

        Differentiable in the parameters, so a flow can serve as a variational posterior or be fitted by the
        reverse KL E_q[log q(x) + U(x)] to an unnormalised target exp(-U) without ever running data ->
        latent. ``temperature`` scales the prior's std as in ``sample``; log p is the model's density at the
        returned samples (the sampler's own density only at temperature 1). Single-level flows (no splits)
        only.
        """
        if self.splits:
            raise ValueError(
                f"{type(self).__name__} has {len(self.levels)} levels with factored-out latents; "
                "sample_with_log_prob needs a single-level flow"
            )
        z = self.prior.sample(n, generator, temperature)
        x, log_det = self.levels[0].inverse(z)  # log|det dx/dz|
        return x, self.prior.log_prob(z) - log_det
