"""Preprocessing of 8-bit images for continuous flows (dequantisation and bits/dim live in
``lit_gen.likelihood``).

Scales. lit_gen stores an 8-bit value k in {0, ..., 255} as x = 2k/255 - 1 in [-1, 1]. A flow is a
continuous density, so it is fitted to dequantised data and its density is converted to the probability
of the 8-bit image (Theis et al. 2016, Sec. 3.1; Dinh et al. 2017, Sec. 4.1):

1. ``dequantize``: k = round((x + 1) * 255 / 2); v = k + u with u ~ U[0, 1)^D is the *256-bin scale*,
   where value k owns the bin [k, k + 1) of width 1; the flow sees y = 2 v / 256 - 1 in [-1, 1), where
   the bin of k is [2k/256 - 1, 2(k + 1)/256 - 1), of width 2/256. (These bins split [-1, 1) into 256
   equal parts; their centres differ from the stored x = 2k/255 - 1 by at most 1/256. Inputs between
   grid values, e.g. the resized 17-level digits, are rounded to the nearest k.) The log-det is
   log|det dy/dv| = D log(2/256).
2. ``logit_transform`` (optional, after RealNVP Sec. 4.1): with x01 = (y + 1)/2 in [0, 1),
   s = logit(alpha + (1 - 2 alpha) x01), so the flow models unbounded values (this symmetric form keeps
   both ends alpha away from 0 and 1); log-det
   sum_d [log(1 - 2 alpha) - log 2 - log p_d - log(1 - p_d)], p = alpha + (1 - 2 alpha) x01.
3. The flow gives log p_S(s), and the change of variables gives the density on the 256-bin scale:
   log p_V(v) = log p_S(s) + log-det(logit) + log-det(dequantize).

Since P(k) = integral over [0, 1)^D of p_V(k + u) du, Jensen's inequality gives
log P(k) >= E_u[log p_V(k + u)], so

    bits/dim = -log2 P(8-bit image) / D <= E_u[-log p_V(k + u)] / (D ln 2),

the same unit as the diffusion bound (``lit_gen.diffusion.likelihood``: -log2 P(8-bit image) / D, D =
C*H*W). ``bits_per_dim(nll, D, bin_width)`` accepts the NLL of the continuous density on any scale on
which one 8-bit bin has width ``bin_width``: -log p_V = nll - D log(bin_width), so bits/dim =
(nll - D log bin_width) / (D ln 2): bin_width = 1 for -log p_V (the output of ``preprocess`` already
folds in every log-det), 2/256 for a density on the [-1, 1) scale of step 1, 1/256 on [0, 1). A
uniform density on [-1, 1) has nll = D ln 2 there and scores exactly 8 bits/dim.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from lit_gen.flows.core import sum_except_batch
from lit_gen.likelihood import bits_per_dim, dequantize  # noqa: F401  (re-exported for flows)
from lit_gen.utils import Generator


def _check_alpha(alpha: float) -> None:
    if not 0.0 < alpha < 0.5:
        raise ValueError(f"logit alpha={alpha} must lie in (0, 0.5)")


def logit_transform(y: torch.Tensor, alpha: float = 0.05) -> tuple[torch.Tensor, torch.Tensor]:
    """s = logit(alpha + (1 - 2 alpha) (y + 1) / 2) (after Dinh et al. 2017, Sec. 4.1) and log|det ds/dy|
    (B,).

    Args:
        y: Dequantised data (B, ...) in [-1, 1).
        alpha: Margin that keeps the logit finite at the ends (0.05 for CIFAR-10 in RealNVP).
    """
    _check_alpha(alpha)
    p = alpha + (1 - 2 * alpha) * (y + 1) / 2
    s = torch.log(p) - torch.log1p(-p)
    # ds/dy = (1 - 2 alpha) / 2 / (p (1 - p))
    log_det = sum_except_batch(math.log((1 - 2 * alpha) / 2) - torch.log(p) - torch.log1p(-p))
    return s, log_det


def logit_inverse(s: torch.Tensor, alpha: float = 0.05) -> tuple[torch.Tensor, torch.Tensor]:
    """Invert ``logit_transform``: y = 2 (sigmoid(s) - alpha) / (1 - 2 alpha) - 1 and log|det dy/ds| (B,)."""
    _check_alpha(alpha)
    y = 2 * (torch.sigmoid(s) - alpha) / (1 - 2 * alpha) - 1
    # log sigmoid'(s) = -softplus(s) - softplus(-s)
    log_det = sum_except_batch(math.log(2 / (1 - 2 * alpha)) - F.softplus(s) - F.softplus(-s))
    return y, log_det


def preprocess(
    x: torch.Tensor, logit_alpha: float | None = None, generator: Generator = None,
    offset: float | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Dequantise (and optionally logit-transform) 8-bit data for a flow.

    Args:
        x: Data (B, ...) on lit_gen's scale x = 2k/255 - 1.
        logit_alpha: Apply ``logit_transform`` with this alpha; None keeps the [-1, 1) scale.
        generator: Generator of the dequantisation noise.
        offset: A fixed position in each bin instead of noise (see ``dequantize``).

    Returns:
        The flow input s and the summed log-det (B,) from the 256-bin scale to s, so that
        ``-(flow.log_prob(s) + log_det)`` is -log p_V on the 256-bin scale: pass it to ``bits_per_dim``
        with the default ``bin_width=1``.
    """
    s, log_det = dequantize(x, generator, offset)
    if logit_alpha is not None:
        s, ld = logit_transform(s, logit_alpha)
        log_det = log_det + ld
    return s, log_det


def postprocess(s: torch.Tensor, logit_alpha: float | None = None) -> torch.Tensor:
    """Map flow samples back to lit_gen's data scale, clamped to [-1, 1] (the inverse of ``preprocess`` up
    to the dequantisation noise)."""
    y = logit_inverse(s, logit_alpha)[0] if logit_alpha is not None else s
    return y.clamp(-1, 1)
