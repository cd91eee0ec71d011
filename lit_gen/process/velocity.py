"""The velocity parameterisation of flow matching (Lipman et al. 2023; Liu et al. 2023): the network
predicts dx_t / dt = d_alpha x0 + d_sigma eps, which is eps - x0 on the linear path. With x_t = alpha x0 +
sigma eps the pair (x_t, v) determines (x0, eps) wherever det = alpha d_sigma - d_alpha sigma is not 0 (1 on
the linear path, pi / 2 on the cosine path, at every t including both ends)."""

from __future__ import annotations

import torch

from lit_gen.process.prediction import PREDICTIONS, Prediction


class VelocityPrediction(Prediction):
    """v = d_alpha x0 + d_sigma eps."""

    name = "velocity"
    uses_derivatives = True

    def to_eps_x0(self, out, x_t, alpha, sigma, d_alpha=None, d_sigma=None):
        det = alpha * d_sigma - d_alpha * sigma
        return (alpha * out - d_alpha * x_t) / det, (d_sigma * x_t - sigma * out) / det

    def from_eps(self, eps, x_t, alpha, sigma, d_alpha=None, d_sigma=None):
        # x0 = (x_t - sigma eps) / alpha: eps alone does not determine v where alpha = 0 (t = 1)
        return d_alpha * (x_t - sigma * eps) / alpha + d_sigma * eps

    def target(self, x0, eps, alpha, sigma, d_alpha=None, d_sigma=None):
        return d_alpha * x0 + d_sigma * eps

    def eps_coefficient(self, alpha, sigma, d_alpha=None, d_sigma=None):
        return (alpha * d_sigma - d_alpha * sigma) / alpha


PREDICTIONS[VelocityPrediction.name] = VelocityPrediction  # the registry


def straightness(drift, x1: torch.Tensor, times: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(S, x_end): the straightness of the flow ``drift(x, t)`` from x1 (B, ...) along Euler steps on
    ``times`` (from 1 down to 0), and where the steps end. S (B,) is Liu et al. 2023's
    int_0^1 ||(x_1 - x_0) - dx_t/dt||^2 dt per dimension: 0 for straight paths, which one Euler step follows.
    On Euler's piecewise-constant velocities v_k over steps dt_k summing to 1, x_1 - x_0 = sum_k dt_k v_k, so
    S = sum_k dt_k ||v_k||^2 - ||sum_k dt_k v_k||^2 and nothing but two sums is kept."""
    x, energy = x1, torch.zeros(x1.shape[0], dtype=torch.float64, device=x1.device)
    for t, s in zip(times[:-1], times[1:], strict=True):
        v = drift(x, t.expand(x.shape[0]))
        dt = float(t - s)
        energy += dt * v.double().pow(2).flatten(1).mean(1)
        x = x - dt * v
    displacement = (x1 - x).double().flatten(1)
    span = float(times[0] - times[-1])  # 1 on the full path
    s_z = energy / span - displacement.pow(2).mean(1) / span**2  # >= 0 (Jensen), but for rounding
    return s_z.clamp(min=0), x
