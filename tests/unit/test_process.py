"""The noise-process layer (lit_gen.process) against independent oracles, in float64: the paths' time
derivatives against autograd; the probability-flow drift against d_alpha x0 + d_sigma eps; every
parameterisation's conversions as exact inverses, and its eps coefficient against autograd. And the layer's
promise (docs/architecture.md): a new path and a new parameterisation, written outside lit_gen and only
registered, sample correctly through the one sampler assembly (rectified flow's linear path with a velocity
network, the exact velocity of Gaussian data carried to that data by Euler and Heun)."""

from __future__ import annotations

import math

import pytest
import torch

from lit_gen.process import PREDICTIONS, OutputLayout, Prediction, make_prediction
from lit_gen.process.model import coefficients
from lit_gen.process.sde import SDE, VESDE, VPSDE, DiscreteVPSDE, SubVPSDE
from lit_gen.sampling import NoiseModel, assembly

F64 = torch.float64
SDES = {"vp": VPSDE(), "subvp": SubVPSDE(), "ve": VESDE(sigma_max=20.0),
        "discrete": DiscreteVPSDE(torch.cumprod(1 - torch.linspace(1e-4, 0.02, 100, dtype=F64), 0))}


@pytest.mark.parametrize("name", sorted(SDES))
def test_path_derivatives_match_autograd(name):
    sde = SDES[name]
    t = torch.tensor([0.013, 0.2, 0.47, 0.81, 0.99], dtype=F64, requires_grad=True)
    for value, derivative in ((sde.alpha, sde.d_alpha), (sde.sigma, sde.d_sigma)):
        (grad,) = torch.autograd.grad((value(t) + 0 * t).sum(), t)  # + 0 t: VE's constant alpha
        torch.testing.assert_close(derivative(t.detach()), grad, rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("name", sorted(SDES))
def test_probability_flow_drift_is_d_alpha_x0_plus_d_sigma_eps(name):
    sde = SDES[name]
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(5, 3, generator=g, dtype=F64), torch.randn(5, 3, generator=g, dtype=F64)
    t = torch.tensor([0.05, 0.3, 0.5, 0.7, 0.95], dtype=F64)
    c = coefficients(sde, t, x0)
    x = c.alpha * x0 + c.sigma * eps
    torch.testing.assert_close(sde.ode_drift(x, t, eps, x0), c.d_alpha * x0 + c.d_sigma * eps, rtol=1e-8,
                               atol=1e-8)


@pytest.mark.parametrize("name", sorted(PREDICTIONS))
def test_each_parameterisation_converts_exactly_and_its_eps_coefficient_is_the_derivative(name):
    prediction = make_prediction(name)
    g = torch.Generator().manual_seed(1)
    x0, eps = torch.randn(4, 6, generator=g, dtype=F64), torch.randn(4, 6, generator=g, dtype=F64)
    t = torch.tensor([0.1, 0.4, 0.6, 0.9], dtype=F64)
    c = coefficients(SDES["ve" if name == "score" else "subvp"], t, x0)  # alpha^2 + sigma^2 != 1 on both
    x_t = c.alpha * x0 + c.sigma * eps
    out = prediction.target(x0, eps, *c)
    eps_hat, x0_hat = prediction.to_eps_x0(out, x_t, *c)
    torch.testing.assert_close(eps_hat, eps, rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(x0_hat, x0, rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(prediction.from_eps(eps, x_t, *c), out, rtol=1e-8, atol=1e-8)
    shift = torch.randn(4, 6, generator=g, dtype=F64)
    (grad,) = torch.autograd.grad((prediction.from_eps(eps.requires_grad_(), x_t, *c) * shift).sum(), eps)
    torch.testing.assert_close(grad, prediction.eps_coefficient(*c) * shift, rtol=1e-8, atol=1e-8)


# --- a new family in a test file: rectified flow's linear path and a velocity network ----------------------
class LinearPath(SDE):
    """x_t = (1 - t) x0 + t eps (Liu et al. 2023), on [0, 1]."""

    def __init__(self, num_scales: int = 1000, t_min: float = 1e-3) -> None:
        super().__init__(num_scales, t_min)

    def alpha(self, t):
        return 1 - torch.as_tensor(t, dtype=F64)

    def sigma(self, t):
        return torch.as_tensor(t, dtype=F64)

    def d_alpha(self, t):
        return -torch.ones_like(torch.as_tensor(t, dtype=F64))

    def d_sigma(self, t):
        return torch.ones_like(torch.as_tensor(t, dtype=F64))

    def ode_drift(self, x, t, eps, x0):  # f and g^2 are singular at t = 1; the drift is not
        c = coefficients(self, t, x)
        return c.d_alpha * x0 + c.d_sigma * eps


class VelocityPrediction(Prediction):
    """v = d_alpha x0 + d_sigma eps, the path's velocity (eps - x0 on the linear path)."""

    name = "velocity"
    uses_derivatives = True

    def to_eps_x0(self, out, x_t, alpha, sigma, d_alpha=None, d_sigma=None):
        det = alpha * d_sigma - d_alpha * sigma
        return (alpha * out - d_alpha * x_t) / det, (d_sigma * x_t - sigma * out) / det

    def target(self, x0, eps, alpha, sigma, d_alpha=None, d_sigma=None):
        return d_alpha * x0 + d_sigma * eps


MU, S = torch.tensor([1.5, -0.5], dtype=F64), 0.4  # the data: N(MU, S^2 I)


def exact_velocity(x: torch.Tensor, model_time: torch.Tensor, y=None) -> torch.Tensor:
    """E[eps - x0 | x_t] for x0 ~ N(MU, S^2 I) on the linear path, at the network's time (N - 1) t."""
    t = (model_time / 999)[:, None]
    var = (1 - t) ** 2 * S**2 + t**2
    centred = x - (1 - t) * MU
    return t / var * centred - (MU + (1 - t) * S**2 / var * centred)


@pytest.mark.parametrize("sampler, steps", [("euler", 400), ("heun", 40)])
def test_a_new_path_and_parameterisation_sample_through_the_assembly(sampler, steps, monkeypatch):
    monkeypatch.setitem(PREDICTIONS, "velocity", VelocityPrediction)  # the one registration
    model = NoiseModel("RectifiedFlow", exact_velocity, LinearPath(), OutputLayout("velocity"), False,
                       {"sampler": sampler, "steps": steps, "denoise": False})
    n = 4000
    x_T = torch.randn(n, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    x, _, nfe = assembly.sample(model, {}, x_T)
    assert nfe == (steps - 1) * (2 if sampler == "heun" else 1)
    se = S / math.sqrt(n)  # the mean's standard error
    assert (x.mean(0) - MU).abs().max() < 5 * se
    assert (x.std(0) - S).abs().max() < 5 * S / math.sqrt(2 * n) + 5e-3  # + Euler's O(1/steps) bias
