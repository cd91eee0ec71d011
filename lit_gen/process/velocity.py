"""The velocity parameterisation of flow matching (Lipman et al. 2023; Liu et al. 2023): the network
predicts dx_t / dt = d_alpha x0 + d_sigma eps, which is eps - x0 on the linear path. With x_t = alpha x0 +
sigma eps the pair (x_t, v) determines (x0, eps) wherever det = alpha d_sigma - d_alpha sigma is not 0 (1 on
the linear path, pi / 2 on the cosine path, at every t including both ends)."""

from __future__ import annotations

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
