"""The one likelihood module: bits/dim, dequantisation and the 8-bit bin arithmetic that flows, the
diffusion bound and the score models' ODE likelihood all report through.

Convention. lit_gen stores an 8-bit value k in {0, ..., 255} as x = 2k/255 - 1 in [-1, 1], D = C*H*W
dimensions per sample, and every method reports

    bits/dim = -log2 P(the 8-bit image) / D,

which is never negative. Two ways to get P from a model:

- a discrete decoder (the diffusion bound, Ho et al. 2020, Eq. 13) integrates its density over each
  pixel's bin of width 2/255 around x; the edge bins reach to -inf and +inf
  (:func:`discretized_gaussian_log_likelihood`);
- a continuous density (a flow, the probability-flow ODE) is evaluated on dequantised data y = value + u,
  u uniform in the bin (Theis et al. 2016, Sec. 3.1). P(k) is the integral of p over the bin, so Jensen's
  inequality gives -log P(k) <= E_u[-log p(y)] - D log(bin width), and :func:`bits_per_dim` turns the
  continuous NLL into that upper bound. Flows use :func:`dequantize` (256 equal bins of [-1, 1), width
  2/256, so a logit transform can follow); models trained on x itself use :func:`dequantize_centred`
  (bins of width 2/255 centred on the stored values).
"""

from __future__ import annotations

import math

import torch

from lit_gen.utils import Generator, rand

LOG2 = math.log(2.0)
NUM_BINS = 256
BIN_WIDTH = 2.0 / 255  # the bin of one 8-bit value on lit_gen's [-1, 1] scale


def mean_over_dims(x: torch.Tensor) -> torch.Tensor:
    """(B, ...) -> (B,) mean over every dim but the first."""
    return x.flatten(1).mean(1)


def normal_kl(mean1, logvar1, mean2, logvar2) -> torch.Tensor:
    """KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2))) elementwise, in nats."""
    return 0.5 * (logvar2 - logvar1 + torch.exp(logvar1 - logvar2)
                  + (mean1 - mean2) ** 2 * torch.exp(-logvar2) - 1)


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


def dequantize(
    x: torch.Tensor, generator: Generator = None, offset: float | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Uniform dequantisation of 8-bit data on lit_gen's scale x = 2k/255 - 1.

    Args:
        x: Data (B, ...) in [-1, 1] on (or near) the 8-bit grid.
        generator: Generator of the noise u (one, or a list with one per sample).
        offset: A fixed u in [0, 1) instead of noise (0.5: the centre of each bin, for inversion).

    Returns:
        y = 2 (k + u) / 256 - 1 in [-1, 1), u ~ U[0, 1), and log|det dy/dv| = D log(2/256) per sample (B,),
        v = k + u being the 256-bin scale.
    """
    k = torch.round((x + 1) * (NUM_BINS - 1) / 2).clamp(0, NUM_BINS - 1)  # (B, ...) integers 0..255
    u = rand(tuple(x.shape), generator, x.device, x.dtype) if offset is None else offset
    y = 2 * (k + u) / NUM_BINS - 1
    num_dims = x[0].numel()
    log_det = x.new_full((x.shape[0],), num_dims * math.log(2 / NUM_BINS))
    return y, log_det


def dequantize_centred(x: torch.Tensor, generator: Generator = None) -> tuple[torch.Tensor, float]:
    """Uniform dequantisation around the stored values: y = x + (u - 1/2) 2/255, u ~ U[0, 1)^D, for a model
    trained on x = 2k/255 - 1 itself (a diffusion or score model). Returns y and the bin width 2/255 to pass
    to :func:`bits_per_dim` with the NLL of y. Inputs between grid values are rounded to the grid first."""
    k = torch.round((x + 1) * (NUM_BINS - 1) / 2).clamp(0, NUM_BINS - 1)
    u = rand(tuple(x.shape), generator, x.device, x.dtype)
    return 2 * k / (NUM_BINS - 1) - 1 + (u - 0.5) * BIN_WIDTH, BIN_WIDTH


def bits_per_dim(nll_nats: torch.Tensor | float, num_dims: int,
                 bin_width: float = 1.0) -> torch.Tensor | float:
    """Bits per dimension, -log2 P(8-bit image) / D (an upper bound for a dequantised continuous model).

    Args:
        nll_nats: Negative log-density in nats per sample, of a continuous model on a scale where one 8-bit
            bin has width ``bin_width``.
        num_dims: D, the dimensions of one sample (C*H*W).
        bin_width: 1 for the 256-bin scale (the output of ``preprocess`` with its log-det added), 2/256 for
            the [-1, 1) scale of ``dequantize``, 1/256 for [0, 1).

    Returns:
        (nll_nats - D log(bin_width)) / (D ln 2), shaped like ``nll_nats``.
    """
    return (nll_nats - num_dims * math.log(bin_width)) / (num_dims * LOG2)
