"""Base distributions of flows: fixed (standard normal, standard logistic), learned (diagonal Gaussian) and
conditional (Glow's learned prior of a factored-out half).

Every distribution returns ``log_prob`` per sample, shape (B,), in nats, and samples with a
``temperature`` T that multiplies the standard deviation (Kingma & Dhariwal 2018, Sec. 5: sampling from
a reduced-temperature prior trades diversity for quality). ``generator`` may be a ``torch.Generator``
or a list with one generator per sample (see ``lit_gen.utils.randn``).

Every sample is a fixed map of standard normal noise, ``from_noise(eps, temperature)``, inverted by
``to_noise(z)``; so a flow's "latents" are always N(0, I) noise, whatever its priors (interpolation and
inversion work on that noise).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from lit_gen.flows.conditioners import ZeroConv2d
from lit_gen.flows.core import sum_except_batch
from lit_gen.utils import Generator, randn

LOG_2PI = math.log(2 * math.pi)


def gaussian_log_prob(z: torch.Tensor, mean: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
    """log N(z; mean, exp(log_std)^2) summed over every dim but the first: (B, ...) -> (B,)."""
    return sum_except_batch(-0.5 * (LOG_2PI + 2 * log_std + (z - mean) ** 2 * torch.exp(-2 * log_std)))


class StandardNormal(nn.Module):
    """N(0, I) over samples of a fixed shape."""

    def __init__(self, shape: tuple[int, ...]):
        """Build the distribution.

        Args:
            shape: Shape of one sample, e.g. (2,) or (C, H, W).
        """
        super().__init__()
        self.shape = tuple(shape)
        # follows the module's device/dtype
        self.register_buffer("_anchor", torch.zeros(()), persistent=False)

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        return sum_except_batch(-0.5 * (LOG_2PI + z**2))  # (B,)

    def from_noise(self, eps: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
        return temperature * eps

    def to_noise(self, z: torch.Tensor) -> torch.Tensor:
        return z

    def sample(self, n: int, generator: Generator = None, temperature: float = 1.0) -> torch.Tensor:
        eps = randn((n, *self.shape), generator, self._anchor.device, self._anchor.dtype)
        return self.from_noise(eps, temperature)  # (n, *shape)


class StandardLogistic(nn.Module):
    """Independent standard logistic variables, log p(z) = -sum(softplus(z) + softplus(-z)); the prior NICE
    used on images (Dinh et al. 2014, Sec. 3.4)."""

    def __init__(self, shape: tuple[int, ...]):
        """Build the distribution.

        Args:
            shape: Shape of one sample.
        """
        super().__init__()
        self.shape = tuple(shape)
        self.register_buffer("_anchor", torch.zeros(()), persistent=False)

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        return -sum_except_batch(F.softplus(z) + F.softplus(-z))  # (B,)

    def from_noise(self, eps: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
        # z = T * logit(Phi(eps)), the logistic inverse CDF of a normal CDF, in log space so the tails stay
        # finite
        return temperature * (torch.special.log_ndtr(eps) - torch.special.log_ndtr(-eps))

    def to_noise(self, z: torch.Tensor) -> torch.Tensor:
        # eps = Phi^-1(sigmoid(z)), through the smaller tail (Phi^-1(p) = -Phi^-1(1 - p)) and in float64,
        # where sigmoid(-|z|) stays positive up to |z| ~ 700 (eps ~ 37)
        tail = torch.special.ndtri(torch.sigmoid(-z.abs().double()))
        return (-torch.sign(z) * tail).to(z.dtype)

    def sample(self, n: int, generator: Generator = None, temperature: float = 1.0) -> torch.Tensor:
        eps = randn((n, *self.shape), generator, self._anchor.device, self._anchor.dtype)
        return self.from_noise(eps, temperature)  # (n, *shape)


class DiagonalGaussian(nn.Module):
    """N(mean, diag(exp(log_std)^2)) with learned mean and log_std, zero at init (a standard normal); Glow's
    learned top prior ("learntop")."""

    def __init__(self, shape: tuple[int, ...]):
        """Build the distribution.

        Args:
            shape: Shape of one sample.
        """
        super().__init__()
        self.shape = tuple(shape)
        self.mean = nn.Parameter(torch.zeros(self.shape))
        self.log_std = nn.Parameter(torch.zeros(self.shape))

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        return gaussian_log_prob(z, self.mean, self.log_std)  # (B,)

    def from_noise(self, eps: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
        return self.mean + temperature * self.log_std.exp() * eps

    def to_noise(self, z: torch.Tensor) -> torch.Tensor:
        return (z - self.mean) * torch.exp(-self.log_std)

    def sample(self, n: int, generator: Generator = None, temperature: float = 1.0) -> torch.Tensor:
        eps = randn((n, *self.shape), generator, self.mean.device, self.mean.dtype)
        return self.from_noise(eps, temperature)  # (n, *shape)


class ConditionalGaussian(nn.Module):
    """N(z; mean(c), exp(log_std(c))^2) with (mean, log_std) = ZeroConv2d(c): the learned prior of a
    factored-out half given the kept half c (Kingma & Dhariwal 2018, released code "split2d"). A standard
    normal at init."""

    def __init__(self, context_channels: int, out_channels: int):
        """Build the prior.

        Args:
            context_channels: Channels of the conditioning tensor c (the kept half).
            out_channels: Channels of z (the factored-out half).
        """
        super().__init__()
        self.net = ZeroConv2d(context_channels, 2 * out_channels)

    def mean_and_log_std(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, log_std = self.net(context).to(context.dtype).chunk(2, dim=1)  # each (B, C_out, H, W)
        return mean, log_std

    def log_prob(self, z: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        mean, log_std = self.mean_and_log_std(context)
        return gaussian_log_prob(z, mean, log_std)  # (B,)

