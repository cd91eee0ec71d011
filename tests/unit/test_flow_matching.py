"""Flow matching against closed forms (float64): the conditional expectation of the training target is the
marginal velocity of the linear path for Gaussian data (by regression on draws); Euler, Heun, RK45 and
DPM-Solver++ with the exact velocity carry noise to a Gaussian, and Heun to a Gaussian mixture with its
weights (within 5 standard errors); the ODE likelihood equals the Gaussian density; minibatch OT is optimal
(brute force), sorts in 1-D and lowers the transport cost; time distributions and SD3's shift; and the method
itself: CFG at s = 0 ignores the labels, one-line errors."""

from __future__ import annotations

import itertools
import math
from functools import partial

import pytest
import torch

from lit_gen.methods import FlowMatching
from lit_gen.nets import MLPDenoiser
from lit_gen.process import LinearPath, OutputLayout, VelocityPrediction, shift_times
from lit_gen.process.couplings import couple, ot_pairing, sample_times
from lit_gen.process.model import ModelFunction, coefficients, on_model_time
from lit_gen.sampling import NoiseModel, assembly
from lit_gen.score.likelihood import ode_log_likelihood
from lit_gen.utils import sample_generators

F64 = torch.float64
MU, S = torch.tensor([1.5, -0.5], dtype=F64), 0.4  # Gaussian data N(MU, S^2 I)
MEANS, WEIGHTS, S_MIX = torch.tensor([[2.0, 0.0], [-1.0, 1.5]], dtype=F64), torch.tensor([0.3, 0.7]), 0.3


def gaussian_velocity(x: torch.Tensor, t: torch.Tensor, mu=MU, s=S) -> torch.Tensor:
    """E[eps - x0 | x_t] on the linear path for x0 ~ N(mu, s^2 I): x_t ~ N((1 - t) mu, v I), v = (1 - t)^2 s^2
    + t^2, E[x0 | x_t] = mu + (1 - t) s^2 / v (x_t - (1 - t) mu), E[eps | x_t] = t / v (x_t - (1 - t) mu)."""
    t = t[:, None]
    var = (1 - t) ** 2 * s**2 + t**2
    centred = x - (1 - t) * mu
    return t / var * centred - (mu + (1 - t) * s**2 / var * centred)


def mixture_velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The marginal velocity of a Gaussian mixture: the components' velocities weighted by their posterior."""
    tt = t[:, None]
    var = (1 - tt) ** 2 * S_MIX**2 + tt**2  # (B, 1)
    log_w = torch.stack([math.log(w) - ((x - (1 - tt) * m) ** 2).sum(1, keepdim=True)[:, 0] / (2 * var[:, 0])
                         for m, w in zip(MEANS, WEIGHTS.tolist(), strict=True)], 1)  # equal variances
    post = torch.softmax(log_w, 1)  # (B, K)
    fields = torch.stack([gaussian_velocity(x, t, m, S_MIX) for m in MEANS], 1)  # (B, K, 2)
    return (post[..., None] * fields).sum(1)


def exact_model(velocity, sampler: str, steps: int) -> NoiseModel:
    net = lambda x, model_time, y=None: velocity(x, model_time / 999)  # noqa: E731  (the network sees 999 t)
    return NoiseModel("FlowMatching", net, LinearPath(), OutputLayout("velocity"), False,
                      {"sampler": sampler, "steps": steps, "denoise": False})


def test_the_training_target_regresses_to_the_marginal_velocity():
    g = torch.Generator().manual_seed(0)
    n, path = 400_000, LinearPath()
    for t_value in (0.2, 0.5, 0.8):
        x0 = MU + S * torch.randn(n, 2, generator=g, dtype=F64)
        eps = torch.randn(n, 2, generator=g, dtype=F64)
        t = torch.full((n,), t_value, dtype=F64)
        c = coefficients(path, t, x0)
        x_t, target = c.alpha * x0 + c.sigma * eps, VelocityPrediction().target(x0, eps, *c)
        # E[target | x_t] is affine in x_t: least squares recovers it, to Monte Carlo error
        design = torch.cat([x_t, torch.ones(n, 1, dtype=F64)], 1)
        coef = torch.linalg.lstsq(design, target).solution  # (3, 2)
        probe = torch.tensor([[0.0, 0.0], [1.0, -1.0], [2.0, 0.5]], dtype=F64)
        fitted = torch.cat([probe, torch.ones(3, 1, dtype=F64)], 1) @ coef
        torch.testing.assert_close(fitted, gaussian_velocity(probe, torch.full((3,), t_value, dtype=F64)),
                                   rtol=0, atol=0.02)


@pytest.mark.parametrize("sampler, steps", [("euler", 200), ("heun", 20), ("midpoint", 20), ("ode", 2),
                                            ("rk45", 2), ("dpmpp2m", 20)])
def test_the_exact_velocity_carries_noise_to_a_gaussian(sampler, steps):
    n = 4000
    x_T = torch.randn(n, 2, generator=torch.Generator().manual_seed(1), dtype=F64)
    x, _, _ = assembly.sample(exact_model(gaussian_velocity, sampler, steps), {"rtol": 1e-6, "atol": 1e-6}
                              if sampler == "ode" else {}, x_T)
    assert (x.mean(0) - MU).abs().max() < 5 * S / math.sqrt(n)
    assert (x.std(0) - S).abs().max() < 5 * S / math.sqrt(2 * n) + 0.01  # + Euler's O(1 / steps) bias


def test_the_exact_velocity_carries_noise_to_a_gaussian_mixture_with_its_weights():
    n = 4000
    x_T = torch.randn(n, 2, generator=torch.Generator().manual_seed(2), dtype=F64)
    x, _, _ = assembly.sample(exact_model(mixture_velocity, "heun", 40), {}, x_T)
    nearest = torch.cdist(x, MEANS).argmin(1)
    frac = torch.bincount(nearest, minlength=2).double() / n
    assert (frac - WEIGHTS.double()).abs().max() < 5 * math.sqrt(0.3 * 0.7 / n)


def test_the_ode_likelihood_of_the_exact_flow_is_the_gaussian_density():
    x = MU + S * torch.randn(6, 2, generator=torch.Generator().manual_seed(3), dtype=F64)
    net = lambda y, model_time: gaussian_velocity(y, model_time / 999)  # noqa: E731
    path = LinearPath()
    model = ModelFunction(on_model_time(net, path), path, OutputLayout("velocity"))
    out = ode_log_likelihood(model, x, trace="exact", rtol=1e-9, atol=1e-9)
    expected = torch.distributions.Normal(MU, S).log_prob(x).sum(1)
    torch.testing.assert_close(out["log_p"], expected, rtol=0, atol=1e-5)


def test_minibatch_ot_is_the_optimal_assignment_sorts_in_1d_and_lowers_the_cost():
    g = torch.Generator().manual_seed(4)
    x0, eps = torch.randn(6, 3, generator=g, dtype=F64), torch.randn(6, 3, generator=g, dtype=F64)
    cost = lambda perm: ((x0 - eps[list(perm)]) ** 2).sum().item()  # noqa: E731
    best = min(itertools.permutations(range(6)), key=cost)
    assert cost(ot_pairing(x0, eps).tolist()) == pytest.approx(cost(best), rel=1e-12)
    a, b = torch.randn(50, 1, generator=g, dtype=F64), torch.randn(50, 1, generator=g, dtype=F64)
    paired = couple(a, b, "ot")
    assert torch.equal(a[:, 0].argsort(), paired[:, 0].argsort())  # 1-D: the i-th smallest with the i-th
    x0, eps = torch.randn(256, 16, generator=g, dtype=F64), torch.randn(256, 16, generator=g, dtype=F64)
    assert ((x0 - couple(x0, eps, "ot")) ** 2).sum() < 0.9 * ((x0 - eps) ** 2).sum()


def test_time_distributions_and_the_sd3_shift():
    g = torch.Generator().manual_seed(5)
    t = sample_times(200_000, "logit_normal", g, loc=0.5, scale=0.8)
    logit = torch.log(t / (1 - t))
    assert abs(logit.mean() - 0.5) < 0.01 and abs(logit.std() - 0.8) < 0.01
    u = sample_times(200_000, "uniform", g)
    assert 0 <= u.min() and u.max() <= 1 and abs(u.mean() - 0.5) < 0.005
    assert shift_times(torch.tensor([0.0, 0.5, 1.0]), 3.0).tolist() == [0.0, 0.75, 1.0]
    grid = LinearPath(shift=3.0).time_grid(5)
    torch.testing.assert_close(grid, shift_times(torch.linspace(1, 0, 5, dtype=F64), 3.0))


NET = partial(MLPDenoiser, hidden_dim=16, num_layers=2)


def test_classifier_free_guidance_at_zero_ignores_the_labels():
    model = FlowMatching((2,), 3, net=NET, class_conditional=True, ema_decay=0)
    g = torch.Generator().manual_seed(6)
    with torch.no_grad():
        for p in model.net.parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=g))
    draw = partial(model.sample, 4, steps=5)
    a, b = torch.tensor([0, 1, 2, 0]), torch.tensor([2, 2, 1, 1])
    assert torch.equal(draw(sample_generators(0, 0, 4), labels=a, guidance_scale=0.0).x,
                       draw(sample_generators(0, 0, 4), labels=b, guidance_scale=0.0).x)
    assert not torch.allclose(draw(sample_generators(0, 0, 4), labels=a, guidance_scale=2.0).x,
                              draw(sample_generators(0, 0, 4), labels=b, guidance_scale=2.0).x)


def test_classifier_free_guidance_in_velocity_space_is_v_u_plus_s_times_v_c_minus_v_u():
    """velocity() with guidance_scale s: at 0 the unconditional output (null label K), at 1 the conditional
    one, at 3 v_u + 3 (v_c - v_u), from the network called directly at time 999 t."""
    model = FlowMatching((2,), 3, net=NET, class_conditional=True, ema_decay=0)
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in model.net.parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=g))
    x, t, labels = torch.randn(4, 2, generator=g), torch.tensor([0.1, 0.4, 0.7, 1.0], dtype=F64), \
        torch.tensor([0, 1, 2, 1])
    with torch.no_grad():
        v_c = model.net(x, (999 * t).float(), labels)
        v_u = model.net(x, (999 * t).float(), torch.full((4,), 3))
    for scale, expected in [(0.0, v_u), (1.0, v_c), (3.0, v_u + 3 * (v_c - v_u))]:
        torch.testing.assert_close(model.velocity(x, t, labels, guidance_scale=scale), expected, rtol=1e-5,
                                   atol=1e-6)


@pytest.mark.parametrize("kwargs, message", [
    ({"path": "spiral"}, "path='spiral' is not supported"),
    ({"time_distribution": "beta"}, "time_distribution='beta' is not supported"),
    ({"coupling": "sinkhorn"}, "coupling='sinkhorn' is not supported"),
    ({"sampler": "ddim"}, "sampler 'ddim' is not supported"),
    ({"shift": 0.0}, "shift=0.0 must be > 0"),
])
def test_bad_settings_fail_in_one_line(kwargs, message):
    with pytest.raises(ValueError, match=message):
        FlowMatching((2,), 0, net=NET, **kwargs)
