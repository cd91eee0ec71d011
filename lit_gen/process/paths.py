"""Probability paths of flow matching, x_t = alpha_t x0 + sigma_t eps on t in [0, 1] with x_1 ~ N(0, I):
rectified flow's linear path (Liu et al. 2023; Lipman et al. 2023's optimal-transport path with sigma_min = 0)
and the cosine path (Albergo & Vanden-Eijnden 2023's trigonometric interpolant). Their f and g^2 are
singular at t = 1 (alpha_1 = 0), their velocity is not: each defines alpha, sigma and their derivatives, and
the probability-flow drift is d_alpha x0 + d_sigma eps. VP paths are :class:`~lit_gen.process.sde.VPSDE`.

SD3's timestep shift (Esser et al. 2024, Sec. 5.3.2) moves a sampling grid towards the noise end:
t -> s t / (1 + (s - 1) t).
"""

from __future__ import annotations

import math

import torch

from lit_gen.process.sde import SDE, _time
from lit_gen.utils import append_dims


def shift_times(t: torch.Tensor, shift: float) -> torch.Tensor:
    """SD3's resolution-dependent shift of the times t in [0, 1] (1 leaves them)."""
    return shift * t / (1 + (shift - 1) * t)


class FlowPath(SDE):
    """A path on [0, 1] whose ODE drift is its velocity d_alpha x0 + d_sigma eps.

    Args:
        num_scales: N; the network sees (N - 1) t.
        t_min: where sampling stops (0: the data end).
        shift: SD3's shift of the sampling grid (1: none; 3 for SD3 at 1024^2).
    """

    solver_spacing = "linear"  # DPM-Solver's default grid: uniform in t (lambda is -inf at t = 1)

    def __init__(self, num_scales: int = 1000, t_min: float = 0.0, shift: float = 1.0) -> None:
        if not shift > 0:
            raise ValueError(f"shift={shift} must be > 0 (1: no shift)")
        super().__init__(num_scales, t_min)
        self.shift = float(shift)

    def f(self, t):
        return self.d_alpha(t) / self.alpha(t)  # d log alpha / dt

    def g2(self, t):
        sigma = self.sigma(t)
        return 2 * sigma * self.d_sigma(t) - 2 * self.f(t) * sigma**2

    def ode_drift(self, x, t, eps, x0):
        t = _time(t)
        return (append_dims(self.d_alpha(t).to(x.dtype), x.ndim) * x0
                + append_dims(self.d_sigma(t).to(x.dtype), x.ndim) * eps)

    def time_grid(self, steps: int, spacing: str = "linear") -> torch.Tensor:
        """The grid of :meth:`SDE.time_grid` (``logsnr`` is refused: lambda(1) is -inf), shifted."""
        if spacing == "logsnr":
            raise ValueError(f"spacing='logsnr' does not suit {type(self).__name__} (log-SNR is -inf at "
                             f"t = 1); use 'linear' or 'quadratic', with the path's shift")
        grid = super().time_grid(steps, spacing)
        return shift_times(grid, self.shift) if self.shift != 1 else grid

    def __repr__(self) -> str:
        return f"{type(self).__name__}(N={self.N}, t_min={self.t_min}, shift={self.shift})"


class LinearPath(FlowPath):
    """x_t = (1 - t) x0 + t eps: the velocity is eps - x0, straight in (x0, eps) (Liu et al. 2023, Eq. 1)."""

    def alpha(self, t):
        return 1 - _time(t)

    def sigma(self, t):
        return _time(t).clone()

    def d_alpha(self, t):
        return -torch.ones_like(_time(t))

    def d_sigma(self, t):
        return torch.ones_like(_time(t))


class CosinePath(FlowPath):
    """x_t = cos(pi t / 2) x0 + sin(pi t / 2) eps: variance preserving, with the velocity
    (pi / 2) (cos(pi t / 2) eps - sin(pi t / 2) x0)."""

    def alpha(self, t):
        return torch.cos(math.pi / 2 * _time(t))

    def sigma(self, t):
        return torch.sin(math.pi / 2 * _time(t))

    def d_alpha(self, t):
        return -math.pi / 2 * torch.sin(math.pi / 2 * _time(t))

    def d_sigma(self, t):
        return math.pi / 2 * torch.cos(math.pi / 2 * _time(t))


PATHS: dict[str, type[FlowPath]] = {"linear": LinearPath, "cosine": CosinePath}
