"""Rational-quadratic neural spline coupling (Durkan et al. 2019, "Neural Spline Flows", Sec. 3.1, App. A).

An elementwise monotone map built from K rational-quadratic pieces (Gregory & Delbourgo 1982). On [-B, B]
the K bins have knots (x_k, y_k), k = 0..K, with x_0 = y_0 = -B and x_K = y_K = B, and positive derivatives
delta_k at the knots; outside [-B, B] the map is the identity ("linear tails", Sec. 3.1), so the boundary
derivatives are fixed to delta_0 = delta_K = 1 to join the tails smoothly. In bin k, with w = x_{k+1} - x_k,
h = y_{k+1} - y_k, s = h / w and xi = (x - x_k) / w in [0, 1] (NSF Sec. 3.1):

    y = y_k + h [s xi^2 + delta_k xi (1 - xi)] / [s + sigma xi (1 - xi)],  sigma = delta_{k+1} + delta_k - 2s,
    dy/dx = s^2 [delta_{k+1} xi^2 + 2 s xi (1 - xi) + delta_k (1 - xi)^2] / [s + sigma xi (1 - xi)]^2.

The inverse solves a xi^2 + b xi + c = 0 for xi in [0, 1] (NSF App. A) with, for u = y - y_k,

    a = h (s - delta_k) + u sigma,   b = h delta_k - u sigma,   c = -s u,

through the cancellation-free root xi = 2c / (-b - sqrt(b^2 - 4ac)).

y and x are evaluated as the input plus algebraically equal correction terms that are exactly zero when
every bin has w = h and every derivative is 1, so a spline with zero parameters maps every input to itself
bit for bit (and its log-derivative is zero up to round-off), like a zero-initialised Glow coupling
(Kingma & Dhariwal 2018, Sec. 3.3).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lit_gen.flows.core import sum_except_batch
from lit_gen.flows.coupling import MaskedCoupling

DEFAULT_MIN_BIN_WIDTH = 1e-3
DEFAULT_MIN_BIN_HEIGHT = 1e-3
DEFAULT_MIN_DERIVATIVE = 1e-3


def _knots(
    unnormalized: torch.Tensor, tail_bound: float, min_size: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Unnormalised bin sizes (..., K) -> knot positions (..., K + 1) from -B to B and bin sizes (..., K).

    Softmax, then each bin gets at least ``min_size`` of the unit interval (NSF Sec. 3.1: widths and heights
    pass through a softmax, scaled to 2B); the first and last knots are pinned to -B and B exactly.
    """
    num_bins = unnormalized.shape[-1]
    fractions = min_size + (1 - min_size * num_bins) * torch.softmax(unnormalized, dim=-1)
    cum = F.pad(torch.cumsum(fractions, dim=-1), (1, 0))  # (..., K + 1), from 0 to ~1
    knots = 2 * tail_bound * cum - tail_bound
    edge = torch.full_like(knots[..., :1], tail_bound)
    knots = torch.cat([-edge, knots[..., 1:-1], edge], dim=-1)
    return knots, knots[..., 1:] - knots[..., :-1]


def _knot_derivatives(unnormalized: torch.Tensor, min_derivative: float) -> torch.Tensor:
    """Unnormalised interior derivatives (..., K - 1) -> all knot derivatives (..., K + 1), boundaries = 1.

    delta = 1 + (1 - m) (softplus(d) / softplus(0) - 1) = m + (1 - m) softplus(d) / log 2: positive, at least
    m, and exactly 1 at d = 0 (the ratio of two identical floats is 1), so zero parameters give delta = 1.
    """
    ratio = F.softplus(unnormalized) / F.softplus(unnormalized.new_zeros(()))
    interior = 1 + (1 - min_derivative) * (ratio - 1)
    one = torch.ones_like(interior[..., :1])
    return torch.cat([one, interior, one], dim=-1)


def _gather(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """values (..., N), index (...) -> values[..., index] of shape (...)."""
    return torch.take_along_dim(values, index[..., None], dim=-1)[..., 0]


def rational_quadratic_spline(
    x: torch.Tensor,
    widths: torch.Tensor,
    heights: torch.Tensor,
    derivatives: torch.Tensor,
    inverse: bool = False,
    tail_bound: float = 3.0,
    min_bin_width: float = DEFAULT_MIN_BIN_WIDTH,
    min_bin_height: float = DEFAULT_MIN_BIN_HEIGHT,
    min_derivative: float = DEFAULT_MIN_DERIVATIVE,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Monotone rational-quadratic spline on [-B, B] with identity tails, applied elementwise.

    Args:
        x: Inputs (...); the spline's input, or its output when ``inverse``.
        widths: Unnormalised bin widths (..., K) (softmax over the last dim).
        heights: Unnormalised bin heights (..., K).
        derivatives: Unnormalised derivatives at the K - 1 interior knots (..., K - 1); the two boundary
            derivatives are fixed to 1.
        inverse: Evaluate the inverse map instead.
        tail_bound: B; the map is the identity outside [-B, B].
        min_bin_width: Smallest bin width as a fraction of 2B.
        min_bin_height: Smallest bin height as a fraction of 2B.
        min_derivative: Smallest knot derivative.

    Returns:
        (y, log|dy/dx|) elementwise, both shaped like x. With ``inverse``, y is the preimage of x and the
        log-derivative is that of the inverse map (the negative of the forward one at y).
    """
    _check_spline(widths, heights, derivatives, min_bin_width, min_bin_height)
    x_knots, w_all = _knots(widths, tail_bound, min_bin_width)  # (..., K + 1), (..., K)
    y_knots, h_all = _knots(heights, tail_bound, min_bin_height)
    d_all = _knot_derivatives(derivatives, min_derivative)  # (..., K + 1)

    inside = (x >= -tail_bound) & (x <= tail_bound)
    # out-of-range entries are evaluated at 0 and overwritten by the identity below (no clamp: its gradient
    # vanishes at the bounds)
    v = torch.where(inside, x, torch.zeros_like(x))
    search = y_knots if inverse else x_knots
    # bin k holds v in [knot_k, knot_{k+1}); v = B falls in the last bin
    k = torch.searchsorted(search[..., 1:-1].contiguous(), v[..., None].contiguous(), right=True)[..., 0]
    bin_k = (_gather(x_knots, k), _gather(y_knots, k), _gather(w_all, k), _gather(h_all, k),
             _gather(d_all, k), _gather(d_all[..., 1:], k))
    out, log_deriv = _in_bin(v, *bin_k, inverse)
    out = torch.where(inside, out, x)
    log_deriv = torch.where(inside, log_deriv, torch.zeros_like(log_deriv))
    return out, log_deriv


def _check_spline(widths, heights, derivatives, min_bin_width: float, min_bin_height: float) -> None:
    num_bins = widths.shape[-1]
    if heights.shape[-1] != num_bins or derivatives.shape[-1] != num_bins - 1:
        raise ValueError(
            f"need K widths, K heights and K - 1 derivatives, got {widths.shape[-1]}, {heights.shape[-1]} "
            f"and {derivatives.shape[-1]}"
        )
    if min_bin_width * num_bins >= 1 or min_bin_height * num_bins >= 1:
        raise ValueError(f"min_bin_width/min_bin_height times num_bins={num_bins} must be below 1")


def _in_bin(v, x_k, y_k, w, h, d_k, d_k1, inverse: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The spline (or its inverse) on its bin [x_k, x_k + w] -> [y_k, y_k + h] with knot derivatives d_k,
    d_k1, at v; and log|dy/dx| (of the inverse map with ``inverse``)."""
    s = h / w
    sigma = d_k1 + d_k - 2 * s
    if inverse:
        u = v - y_k
        a = h * (s - d_k) + u * sigma
        b = h * d_k - u * sigma
        c = -s * u
        root_sum = b + torch.sqrt((b * b - 4 * a * c).clamp_min(0))  # b + sqrt(disc) >= 0 (NSF App. A)
        # xi = 2c / (-b - sqrt(disc)) = 2 s u / root_sum, so x = x_k + w xi = x_k + 2 h u / root_sum, i.e.
        # x = v + (x_k - y_k) + u (2h - root_sum) / root_sum; at the identity a = 0 and b = h, so
        # root_sum = h + sqrt(h^2) = 2h exactly (sqrt(fl(h * h)) == h in binary floating point).
        out = v + (x_k - y_k) + u * (2 * h - root_sum) / root_sum
        xi = 2 * s * u / root_sum
    else:
        xi = (v - x_k) / w  # in [0, 1] up to round-off; a clamp would zero its gradient at the knots
    denom = s + sigma * xi * (1 - xi)
    if not inverse:
        # y - x = (y_k - x_k) + (x - x_k) (s alpha / xi - 1), alpha the bracket ratio of Sec. 3.1, and
        # s alpha / xi - 1 = [s (delta_k - 1) + (s (s - delta_k) - sigma) xi + sigma xi^2] / denom.
        excess = s * (d_k - 1) + (s * (s - d_k) - sigma) * xi + sigma * xi * xi
        out = v + (y_k - x_k) + (v - x_k) * excess / denom
    # dy/dx of Sec. 3.1; the numerator is a sum of positive terms (no cancellation), 1 up to round-off at
    # the identity
    numer = d_k1 * xi * xi + 2 * s * xi * (1 - xi) + d_k * (1 - xi) * (1 - xi)
    log_deriv = 2 * torch.log(s) + torch.log(numer) - 2 * torch.log(denom)
    return out, -log_deriv if inverse else log_deriv


class SplineCoupling(MaskedCoupling):
    """Rational-quadratic spline coupling (Durkan et al. 2019, Sec. 3.1 and 3.3): the entries with mask 0 go
    through a monotone RQ spline on [-B, B] (identity outside) whose parameters are computed from the kept
    entries.

    Same mask convention as ``AffineCoupling`` (1 = kept, 0 = transformed). The conditioner maps the kept
    part to (B, (3K - 1) C_b, ...) (``coupling_channels``): transformed channel c's K widths, K heights
    and K - 1 interior derivatives are the consecutive block [(3K - 1) c, (3K - 1)(c + 1)) of the output
    channels; under a spatial mask the parameters of kept entries are ignored. A zero-initialised conditioner
    output gives the identity map exactly (log-det 0 up to round-off).

    log|det dz/dx| = sum over the transformed entries of log spline'(x).
    """

    def __init__(
        self,
        mask: torch.Tensor,
        conditioner: nn.Module,
        num_bins: int = 8,
        tail_bound: float = 3.0,
        min_bin_width: float = DEFAULT_MIN_BIN_WIDTH,
        min_bin_height: float = DEFAULT_MIN_BIN_HEIGHT,
        min_derivative: float = DEFAULT_MIN_DERIVATIVE,
    ):
        """Build the layer.

        Args:
            mask: Binary mask broadcastable to the input, 1 where the input passes unchanged.
            conditioner: Network from the kept part (``conditioner_channels(mask)`` channels) to
                (B, (3K - 1) C, ...).
            num_bins: K, the number of spline bins (>= 2).
            tail_bound: B; the spline acts on [-B, B] and is the identity outside.
            min_bin_width: Smallest bin width as a fraction of 2B.
            min_bin_height: Smallest bin height as a fraction of 2B.
            min_derivative: Smallest knot derivative.
        """
        if num_bins < 2:
            raise ValueError(f"num_bins={num_bins} must be >= 2")
        if tail_bound <= 0:
            raise ValueError(f"tail_bound={tail_bound} must be > 0")
        if min_bin_width * num_bins >= 1 or min_bin_height * num_bins >= 1:
            raise ValueError(f"min_bin_width/min_bin_height times num_bins={num_bins} must be below 1")
        if not 0 < min_derivative < 1:
            raise ValueError(f"min_derivative={min_derivative} must be in (0, 1)")
        super().__init__(mask, conditioner)
        self.num_bins = num_bins
        self.tail_bound = tail_bound
        self.min_bin_width = min_bin_width
        self.min_bin_height = min_bin_height
        self.min_derivative = min_derivative

    @staticmethod
    def params_per_element(num_bins: int) -> int:
        """3K - 1: K widths, K heights, K - 1 interior derivatives."""
        return 3 * num_bins - 1

    def _transform(self, v: torch.Tensor, inverse: bool) -> tuple[torch.Tensor, torch.Tensor]:
        params = self.condition(v)  # (B, (3K - 1) C_b, ...)
        v_b = self.transformed(v)  # (B, C_b, ...)
        B, C = v_b.shape[:2]
        P = self.params_per_element(self.num_bins)
        if params.shape[1] != P * C:
            raise ValueError(f"conditioner gave {params.shape[1]} channels, expected (3K - 1) C_b = {P * C}")
        params = params.reshape(B, C, P, *v.shape[2:]).movedim(2, -1)  # (B, C_b, ..., 3K - 1)
        widths, heights, derivatives = params.split([self.num_bins, self.num_bins, self.num_bins - 1], dim=-1)
        out, log_deriv = rational_quadratic_spline(
            v_b,
            widths,
            heights,
            derivatives,
            inverse=inverse,
            tail_bound=self.tail_bound,
            min_bin_width=self.min_bin_width,
            min_bin_height=self.min_bin_height,
            min_derivative=self.min_derivative,
        )
        return self.merge(v, out), sum_except_batch(self.only_transformed(log_deriv))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._transform(x, inverse=False)

    def inverse(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._transform(z, inverse=True)  # z * mask == x * mask
