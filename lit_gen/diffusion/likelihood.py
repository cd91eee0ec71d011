"""Likelihood pieces of the diffusion bound (Ho et al. 2020, Eq. 5; Nichol & Dhariwal 2021, Sec. 2-3).

Convention (shared by every lit_gen method that reports bits/dim): data are 8-bit values mapped to
[-1, 1] by x = 2 k / 255 - 1; a model's NLL is -log2 P(the 8-bit image) / D, D = C*H*W, where the
decoder integrates its density over each pixel's bin of width 2/255 and the edge bins extend to +-inf.
"""

from __future__ import annotations

import math

import torch

LOG2 = math.log(2.0)


def mean_over_dims(x: torch.Tensor) -> torch.Tensor:
    """(B, ...) -> (B,) mean over every dim but the first."""
    return x.flatten(1).mean(1)


def normal_kl(mean1, logvar1, mean2, logvar2) -> torch.Tensor:
    """KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2))) elementwise, in nats."""
    return 0.5 * (logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2) - 1)


def standard_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    return torch.special.ndtr(x)


def discretized_gaussian_log_likelihood(
    x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor, bin_width: float = 2.0 / 255
) -> torch.Tensor:
    """log P(x) elementwise (nats) for x on the 8-bit grid in [-1, 1] under N(mean, exp(log_scale)^2)
    integrated over the bin [x - w/2, x + w/2]; the lowest and highest bins reach to -inf and +inf
    (Ho et al. 2020, Eq. 13)."""
    centred = x - mean
    inv_std = torch.exp(-log_scale)
    cdf_plus = standard_normal_cdf(inv_std * (centred + bin_width / 2))
    cdf_min = standard_normal_cdf(inv_std * (centred - bin_width / 2))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1 - cdf_min).clamp(min=1e-12))
    log_delta = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    return torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_min, log_delta))
