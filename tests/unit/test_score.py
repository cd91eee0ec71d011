"""lit_gen.score against independent oracles: simulated SDEs, the variance ODE, exact Gaussian and mixture
scores, closed-form log-densities, DDPM's betas, and exact traces (float64 throughout)."""

from __future__ import annotations

import math

import pytest
import torch

from lit_gen.diffusion.schedules import make_betas
from lit_gen.likelihood import bits_per_dim
from lit_gen.score import (
    SOLVERS,
    VESDE,
    VPSDE,
    DiscreteVPSDE,
    ImportanceTime,
    ScoreModel,
    SubVPSDE,
    divergence,
    dsm_loss,
    make_sde,
    make_solver,
    ode_bits_per_dim,
    ode_log_likelihood,
    solve,
)
from lit_gen.score.sde import sigma_max_from_data

F64 = torch.float64
SDES = {"vp": lambda: VPSDE(), "subvp": lambda: SubVPSDE(), "ve": lambda: VESDE(0.01, 50.0)}


def gaussian_net(sde, mu: torch.Tensor, s: float):
    """The exact noise prediction eps = -sigma score for data N(mu, s^2 I): p_t = N(alpha mu, alpha^2 s^2 +
    sigma^2)."""

    def net(x, model_time):
        t = model_time.double() / (sde.N - 1)
        a, sg = sde.alpha(t)[:, None], sde.sigma(t)[:, None]
        return sg * (x - a * mu) / (a**2 * s**2 + sg**2)

    return net


def gaussian_log_density(x, mean, var):
    d = x.shape[1]
    return -0.5 * d * torch.log(2 * math.pi * var) - ((x - mean) ** 2).sum(1) / (2 * var)


# --- the SDEs ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(SDES))
def test_marginal_prob_matches_a_fine_euler_maruyama_simulation(name):
    sde = SDES[name]()
    g = torch.Generator().manual_seed(0)
    n, steps, t_end = 20000, 2000, 0.6
    x0 = torch.full((n, 1), 0.7, dtype=F64)
    x, dt = x0.clone(), t_end / steps
    for i in range(steps):
        drift, diffusion = sde.sde(x, torch.full((n,), i * dt, dtype=F64))
        x = x + drift * dt + diffusion[:, None] * math.sqrt(dt) * torch.randn(x.shape, generator=g, dtype=F64)
    mean, std = sde.marginal_prob(x0, torch.full((n,), t_end, dtype=F64))
    var = std[0] ** 2 - (sde.sigma_min**2 if name == "ve" else 0.0)  # VE's std counts sigma_min at t = 0
    se_mean, se_var = (var / n).sqrt(), var * math.sqrt(2 / n)
    assert abs(x.mean() - mean[0, 0]) < 5 * se_mean + 2 * dt * abs(mean[0, 0])  # + Euler's O(dt) bias
    assert abs(x.var() - var) < 5 * se_var + 2 * dt * var


@pytest.mark.parametrize("name", sorted(SDES) + ["discrete"])
def test_alpha_and_sigma_solve_the_moment_odes_of_f_and_g(name):
    """d alpha / dt = f alpha and d sigma^2 / dt = 2 f sigma^2 + g^2 (the linear SDE's moment equations)."""
    sde = DiscreteVPSDE(torch.cumprod(1 - make_betas("cosine", 50),
                                      0)) if name == "discrete" else SDES[name]()
    t = torch.linspace(0.05, 0.95, 37, dtype=F64) + 1e-3  # off the discrete model's knots
    h = 1e-6
    d_alpha = (sde.alpha(t + h) - sde.alpha(t - h)) / (2 * h)
    d_var = (sde.sigma(t + h) ** 2 - sde.sigma(t - h) ** 2) / (2 * h)
    torch.testing.assert_close(d_alpha, sde.f(t) * sde.alpha(t), rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(d_var, 2 * sde.f(t) * sde.sigma(t) ** 2 + sde.g2(t), rtol=1e-6, atol=1e-8)


def test_vp_discretisation_has_ddpms_betas_and_its_discrete_steps_ddpms_alpha_bar():
    torch.testing.assert_close(VPSDE(0.1, 20.0, 1000).discrete_betas, make_betas("linear", 1000), rtol=1e-8,
                               atol=0)
    alpha_bar = torch.cumprod(1 - make_betas("linear", 1000), 0)
    sde = DiscreteVPSDE(alpha_bar)
    t = (torch.arange(1000, dtype=F64) + 1) / 1000
    torch.testing.assert_close(sde.alpha(t) ** 2, alpha_bar, rtol=1e-8, atol=0)
    torch.testing.assert_close(sde.model_time(t), torch.arange(1000, dtype=F64), rtol=0, atol=1e-8)
    # the exact step of the discrete VP is DDPM's beta_n
    f, G = sde.discretize(torch.ones(999, 1, dtype=F64), t[1:], t[:-1])
    torch.testing.assert_close(G**2, make_betas("linear", 1000)[1:], rtol=1e-8, atol=0)
    # the continuous VP of the same betas is close to DDPM's alpha_bar (the discretisation differs at
    # O(beta^2))
    torch.testing.assert_close(VPSDE().alpha(torch.arange(1000, dtype=F64) / 999) ** 2, alpha_bar, rtol=2e-2,
                               atol=1e-4)


def test_sigma_max_from_data_is_the_largest_pairwise_distance():
    x = torch.randn(50, 3, 4, 4, generator=torch.Generator().manual_seed(1), dtype=F64)
    brute = max(float((a - b).norm()) for a in x for b in x)
    assert sigma_max_from_data(x) == pytest.approx(brute, rel=1e-8)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: VPSDE(beta_min=2.0, beta_max=1.0), "0 < beta_min < beta_max"),
        (lambda: VESDE(sigma_min=5.0, sigma_max=1.0), "0 < sigma_min < sigma_max"),
        (lambda: VPSDE(t_min=0.0), "t_min=0.0 must be > 0"),
        (lambda: VESDE(num_scales=1), "num_scales=1"),
        (lambda: make_sde("vpp"), "sde='vpp' is not supported"),
        (lambda: make_solver("rk4"), "sampler 'rk4' is not supported"),
        (lambda: make_solver("ode", order=2), "order=2 is an option of the ['dpmpp2m']"),
        (lambda: make_solver("pc", predictor="leapfrog"), "predictor='leapfrog'"),
        (lambda: make_solver("dpmpp2m", order=3), "order=3"),
        (lambda: make_solver("pc", snr=-1.0), "snr=-1.0"),
        (lambda: VPSDE().time_grid(1), "steps=1"),
        (lambda: VPSDE().time_grid(5, "cubic"), "spacing='cubic'"),
    ],
)
def test_bad_sde_and_sampler_parameters_fail_in_one_line(make, match):
    with pytest.raises(ValueError, match=None) as info:
        make()
    assert match in str(info.value) and "\n" not in str(info.value)


def test_annealed_langevin_refuses_a_vp_process():
    sde = VPSDE()
    model = ScoreModel(gaussian_net(sde, torch.zeros(2, dtype=F64), 1.0), sde)
    with pytest.raises(ValueError, match="variance-exploding"):
        solve(model, make_solver("langevin"), torch.zeros(3, 2, dtype=F64), sde.time_grid(3))


# --- samplers on exact scores --------------------------------------------------------------------------
# grid points, spacing and options per sampler. The ODE on VE is stiff near t = 1 (it contracts x at rate
# log(sigma_max / sigma_min) = 8.5): Euler loses sum (8.5 dt)^2 / 2 of log-amplitude (16% at 200 steps, 2% at
# 2000) and Heun about (8.5 dt)^3 / 6 per step (4% at 50 steps). PC with the paper's snr 0.16 inflates the
# variance by its finite Langevin step (~4% at D = 256), so it runs at snr 0.05 here.
STEPS = {"em": (500, "linear", {}), "reverse_diffusion": (500, "linear", {}),
         "ancestral": (1000, "linear", {}),
         "pc": (500, "linear", {"snr": 0.05}), "euler": (2000, "linear", {}), "heun": (150, "linear", {}),
         "midpoint": (150, "linear", {}), "ode": (2, "linear", {}), "rk45": (2, "linear", {}),
         "dpmpp2m": (25, "logsnr", {})}


@pytest.mark.parametrize("name", sorted(SDES))
@pytest.mark.parametrize("sampler", sorted(STEPS))
def test_every_sampler_recovers_a_gaussian_from_its_exact_score(name, sampler):
    sde, D, n, s = SDES[name](), 128, 1000, 0.4
    mu = torch.linspace(-0.5, 0.5, D, dtype=F64)
    model = ScoreModel(gaussian_net(sde, mu, s), sde)
    g = torch.Generator().manual_seed(3)
    steps, spacing, options = STEPS[sampler]
    x_T = sde.prior_sampling((n, D), g, dtype=F64)
    x, _ = solve(model, make_solver(sampler, **options), x_T, sde.time_grid(steps, spacing), g)
    se = s / math.sqrt(n)
    assert (x.mean(0) - mu).abs().max() < 5 * se, (x.mean(0) - mu).abs().max()
    # the variance, pooled over the D dimensions (standard error s^2 sqrt(2 / (n D)))
    assert abs(x.var(0).mean() / s**2 - 1) < 5 * math.sqrt(2 / (n * D)) + 0.025, x.var(0).mean() / s**2


def mixture_score_net(sde, means: torch.Tensor, weights: torch.Tensor, s: float):
    """eps = -sigma grad log p_t for the mixture sum_k w_k N(means_k, s^2 I) (autograd of the log-sum-exp)."""

    def net(x, model_time):
        t = model_time.double() / (sde.N - 1)
        a, sg = sde.alpha(t)[:, None], sde.sigma(t)[:, None]
        var = a**2 * s**2 + sg**2  # (B, 1)
        with torch.enable_grad():
            y = x.detach().requires_grad_(True)
            logp = torch.logsumexp(
                torch.stack([torch.log(w) + gaussian_log_density(y, a * m, var[:, 0])
                             for m, w in zip(means, weights, strict=True)]), 0
            )
            (score,) = torch.autograd.grad(logp.sum(), y)
        return -sg * score

    return net


@pytest.mark.parametrize("sampler", sorted(STEPS))
def test_every_sampler_recovers_a_two_mode_mixture_from_its_exact_score(sampler):
    """2-D mixture 0.3 N((-2, -2), 0.5^2 I) + 0.7 N((2, 2), 0.5^2 I) on VP: the mode weights within 5 standard
    errors and each mode's spread within 8%."""
    sde, n = VPSDE(), 4000
    means, weights = torch.tensor([[-2.0, -2.0], [2.0, 2.0]], dtype=F64), torch.tensor([0.3, 0.7], dtype=F64)
    model = ScoreModel(mixture_score_net(sde, means, weights, 0.5), sde)
    g = torch.Generator().manual_seed(5)
    steps, spacing, options = STEPS[sampler]
    x, _ = solve(model, make_solver(sampler, **options), sde.prior_sampling((n, 2), g, dtype=F64),
                 sde.time_grid(min(steps, 500), spacing), g)
    upper = x.sum(1) > 0
    assert abs(upper.double().mean() - 0.7) < 5 * math.sqrt(0.21 / n), upper.double().mean()
    for mode, mean in ((upper, means[1]), (~upper, means[0])):
        assert (x[mode].mean(0) - mean).abs().max() < 0.05
        assert abs(x[mode].std(0).mean() / 0.5 - 1) < 0.08, (sampler, x[mode].std(0))


def test_annealed_langevin_recovers_the_weights_of_a_separated_mixture():
    """Song & Ermon 2019, Fig. 3: Langevin at one small noise level keeps the initial mode proportions,
    annealed Langevin over sigma_1 > ... > sigma_L recovers the mixture's weights 0.2 / 0.8."""
    means = torch.tensor([[-5.0, -5.0], [5.0, 5.0]], dtype=F64)
    weights = torch.tensor([0.2, 0.8], dtype=F64)
    sde = VESDE(sigma_min=0.1, sigma_max=20.0, num_scales=10, t_min=0.0)
    model = ScoreModel(mixture_score_net(sde, means, weights, 1.0), sde)
    g = torch.Generator().manual_seed(0)
    # uniform start, half in each mode's half-plane
    x0 = (torch.rand(2000, 2, generator=g, dtype=F64) - 0.5) * 16
    annealed, _ = solve(model, make_solver("langevin", step_lr=2e-3, n_steps_each=100), x0, sde.time_grid(10),
                        g)
    frac = (annealed.sum(1) > 0).double().mean()
    assert abs(frac - 0.8) < 0.04, frac
    plain, _ = solve(model, make_solver("langevin", step_lr=2e-3, n_steps_each=1000), x0,
                     sde.time_grid(2)[1:], g)
    assert abs((plain.sum(1) > 0).double().mean() - 0.5) < 0.05  # stuck with the start's proportions


def test_midpoint_and_heun_are_second_order_and_euler_first():
    """Halving the steps divides the error against RK45 at 1e-10 by about 4 (Euler: 2)."""
    sde, D, s = VPSDE(), 8, 0.3
    mu = torch.linspace(-0.5, 0.5, D, dtype=F64)
    x_T = sde.prior_sampling((64, D), torch.Generator().manual_seed(1), dtype=F64)
    ref, _ = solve(ScoreModel(gaussian_net(sde, mu, s), sde), make_solver("ode", rtol=1e-10, atol=1e-10), x_T,
                   sde.time_grid(2, "quadratic"), denoise=False)  # the same end point t_min
    for name, expected in [("euler", 2.0), ("heun", 4.0), ("midpoint", 4.0)]:
        errors = []
        for steps in (41, 81, 161):
            x, _ = solve(ScoreModel(gaussian_net(sde, mu, s), sde), make_solver(name), x_T,
                         sde.time_grid(steps, "quadratic"), denoise=False)
            errors.append(float((x - ref).abs().max()))
        ratios = [errors[0] / errors[1], errors[1] / errors[2]]
        assert all(0.75 * expected < r < 1.35 * expected for r in ratios), (name, errors, ratios)


def test_dpm_solver_pp_is_second_order_and_order_one_is_first():
    sde, D, s = VPSDE(), 8, 0.3
    mu = torch.linspace(-0.5, 0.5, D, dtype=F64)
    x_T = sde.prior_sampling((64, D), torch.Generator().manual_seed(1), dtype=F64)
    ref, _ = solve(ScoreModel(gaussian_net(sde, mu, s), sde), make_solver("ode", rtol=1e-10, atol=1e-10), x_T,
                   sde.time_grid(2), denoise=False)
    for order, expected in [(1, 2.0), (2, 4.0)]:
        errors = []
        for steps in (41, 81, 161):
            x, _ = solve(ScoreModel(gaussian_net(sde, mu, s), sde), make_solver("dpmpp2m", order=order), x_T,
                         sde.time_grid(steps, "quadratic"), denoise=False)
            errors.append(float((x - ref).abs().max()))
        ratios = [errors[0] / errors[1], errors[1] / errors[2]]
        assert all(0.75 * expected < r < 1.35 * expected for r in ratios), (order, errors, ratios)


def test_nfe_is_counted_for_every_sampler():
    sde = VESDE(0.01, 50.0)
    expected = {"em": 10, "reverse_diffusion": 10, "ancestral": 10, "euler": 10, "dpmpp2m": 10, "heun": 19,
                "midpoint": 19,
                "pc": 9 * 2 + 1 + 1, "langevin": 10 * 3 + 1}
    for name in sorted(SOLVERS):
        model = ScoreModel(gaussian_net(sde, torch.zeros(2, dtype=F64), 1.0), sde)
        options = {"n_steps_each": 3} if name == "langevin" else {}
        solve(model, make_solver(name, **options), sde.prior_sampling((4, 2), dtype=F64), sde.time_grid(10))
        if name in ("ode", "rk45"):
            assert model.nfe > 6  # adaptive: at least one accepted dopri5 step plus the denoising call
        else:
            assert model.nfe == expected[name], name


def test_inpainting_keeps_the_known_part_and_fills_the_rest_towards_the_conditional():
    """Correlated pairs N(0, [[1, rho], [rho, 1]]): the known half is kept exactly and the filled-in half
    follows it. The replacement method (Song et al. 2021, appendix I.2) only approximates p(x_unknown |
    x_known): on this Gaussian it recovers a regression slope of about 0.6 of the true 0.9 with 500
    reverse-diffusion steps."""
    sde, rho, n = VPSDE(), 0.9, 4000
    cov = torch.tensor([[1.0, rho], [rho, 1.0]], dtype=F64)

    def net(x, model_time):  # p_t = N(0, alpha^2 Sigma + sigma^2 I)
        t = model_time.double()[:1] / (sde.N - 1)
        a, sg = sde.alpha(t), sde.sigma(t)
        return sg * x @ torch.linalg.inv(a**2 * cov + sg**2 * torch.eye(2, dtype=F64))

    g = torch.Generator().manual_seed(2)
    known = torch.randn(n, 2, generator=g, dtype=F64)
    mask = torch.tensor([[1.0, 0.0]], dtype=F64).expand(n, 2)
    x, _ = solve(ScoreModel(net, sde), make_solver("reverse_diffusion"),
                 sde.prior_sampling((n, 2), g, dtype=F64),
                 sde.time_grid(500), g, inpaint=(known, mask))
    torch.testing.assert_close(x[:, 0], known[:, 0], rtol=0, atol=0)
    slope = (x[:, 1] * known[:, 0]).mean() / (known[:, 0] ** 2).mean()
    assert 0.5 < slope < 0.95, slope  # unconditional sampling would give 0
    free, _ = solve(ScoreModel(net, sde), make_solver("reverse_diffusion"),
                    sde.prior_sampling((n, 2), g, dtype=F64),
                    sde.time_grid(500), g)
    assert abs((free[:, 1] * known[:, 0]).mean()) < 5 / math.sqrt(n)


# --- likelihood ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(SDES))
def test_ode_log_likelihood_equals_the_change_of_variables_closed_form(name):
    """With the exact score the flow maps p_{t_min} onto p_T, so the ODE's log p = log p_{t_min}(x) - log
    p_T(z) + prior(z); the prior's mismatch with p_T is the only difference from the closed form, and it is
    accounted for."""
    sde, D, s = SDES[name](), 3, 0.5
    sde.t_min = 1e-5
    mu = torch.tensor([0.3, -0.2, 0.1], dtype=F64)
    x = mu + s * torch.randn(16, D, generator=torch.Generator().manual_seed(4), dtype=F64)
    out = ode_log_likelihood(ScoreModel(gaussian_net(sde, mu, s), sde), x, trace="exact", rtol=1e-9,
                             atol=1e-9)

    def log_p(t, y):
        tb = torch.tensor([t], dtype=F64)
        return gaussian_log_density(y, sde.alpha(tb) * mu, sde.alpha(tb) ** 2 * s**2 + sde.sigma(tb) ** 2)

    expected = log_p(sde.t_min, x) - log_p(sde.T, out["z"]) + sde.prior_logp(out["z"])
    torch.testing.assert_close(out["log_p"], expected, rtol=0, atol=1e-6)
    assert out["nfe"] > 0


def test_hutchinson_is_unbiased_with_variance_proportional_to_one_over_n_probes():
    D, B = 6, 20000
    A = torch.randn(D, D, generator=torch.Generator().manual_seed(5), dtype=F64)
    x = torch.randn(B, D, dtype=F64, requires_grad=True)
    drift = x @ A.T  # J = A at every x
    exact = divergence(drift, x, None)
    torch.testing.assert_close(exact, torch.full((B,), float(torch.trace(A)), dtype=F64))
    sym = (A + A.T) / 2
    off = sym - torch.diag(torch.diag(sym))
    theory = {"rademacher": 2 * (off**2).sum(), "gaussian": 2 * (sym**2).sum()}  # var of v^T A v
    from lit_gen.score.likelihood import probes

    g = torch.Generator().manual_seed(6)
    for kind, var1 in theory.items():
        for n in (1, 4):
            est = divergence(drift, x, probes((B, D), kind, n, g, "cpu", F64))
            assert abs(est.mean() - torch.trace(A)) < 5 * (var1 / n / B).sqrt(), (kind, n)
            assert abs(est.var() / (var1 / n) - 1) < 0.1, (kind, n, est.var(), var1 / n)


def test_ode_round_trip_encodes_and_decodes():
    sde, D = VPSDE(), 4
    mu = torch.linspace(-0.3, 0.3, D, dtype=F64)
    model = ScoreModel(gaussian_net(sde, mu, 0.5), sde)
    x = mu + 0.5 * torch.randn(8, D, generator=torch.Generator().manual_seed(7), dtype=F64)
    solver = make_solver("ode", rtol=1e-9, atol=1e-9)
    z, _ = solve(model, solver, x, sde.time_grid(2).flip(0), denoise=False)
    back, _ = solve(model, solver, z, sde.time_grid(2), denoise=False)
    assert (z - x).abs().max() > 0.5  # it went somewhere
    torch.testing.assert_close(back, x, rtol=0, atol=1e-6)


def test_bits_per_dim_of_dequantised_8bit_data_is_not_negative_and_matches_its_closed_form():
    """A model that piles its mass on one 8-bit value has a huge density there: without dequantisation its
    'bits/dim' is negative; dequantised uniformly in the value's bin it is an upper bound of -log2 P(bin) / D
    >= 0. With the exact score of N(v, s^2) the expected value is E_u[-log N(v + u; v, var)] - log(2/255) per
    dim, var = alpha^2 s^2 + sigma^2 at t_min."""
    sde, D, n = VPSDE(t_min=1e-5), 4, 256
    value, s = 2 * 100 / 255 - 1, 1e-4  # far inside the bin of half-width 1/255
    model = ScoreModel(gaussian_net(sde, torch.full((D,), value, dtype=F64), s), sde)
    x = torch.full((n, D), value, dtype=F64)
    raw = ode_log_likelihood(model, x[:8], trace="exact", rtol=1e-8, atol=1e-8)
    assert (bits_per_dim(-raw["log_p"], D, 2 / 255) < 0).all()  # a density at the point, not a probability
    out = ode_bits_per_dim(model, x, torch.Generator().manual_seed(0), trace="exact", rtol=1e-8, atol=1e-8)
    tb = torch.tensor([sde.t_min], dtype=F64)
    var = float(sde.alpha(tb) ** 2 * s**2 + sde.sigma(tb) ** 2)
    w = 2 / 255
    # E_u over u ~ U(-w/2, w/2) of -log N(u; 0, var) = log(2 pi var) / 2 + (w^2 / 12) / (2 var), per dim
    expected = (0.5 * math.log(2 * math.pi * var) + w**2 / 24 / var - math.log(w)) / math.log(2)
    se = out["bpd"].std() / math.sqrt(n)
    assert out["bpd"].mean() >= 0 and abs(out["bpd"].mean() - expected) < 5 * se, (out["bpd"].mean(),
                                                                                   expected)


# --- the DSM loss --------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["vp", "subvp"])
def test_importance_sampled_likelihood_loss_has_the_uniform_loss_expectation(name):
    sde, t_eps, n = SDES[name](), 1e-3, 400000
    importance = ImportanceTime(sde, t_eps)
    g = torch.Generator().manual_seed(8)
    h = lambda t: 1 + torch.sin(3 * t)  # noqa: E731  a stand-in for E||eps - z||^2 at t
    t_u = t_eps + (1 - t_eps) * torch.rand(n, generator=g, dtype=F64)
    z = torch.zeros(n, 1, dtype=F64)
    uniform = dsm_loss(h(t_u)[:, None].sqrt(), z, sde, t_u, "likelihood")
    t_p = importance.sample(n, "cpu", g)
    weighted = dsm_loss(h(t_p)[:, None].sqrt(), z, sde, t_p, "likelihood", importance.weight)
    spread = uniform.std() / uniform.mean()
    assert abs(weighted.mean() / uniform.mean() - 1) < 5 * spread / math.sqrt(n) + 0.01
    assert weighted.std() / weighted.mean() < 0.2 * uniform.std() / uniform.mean()  # the point of it
    # E_p[1 / w(t)] Z = T - t_eps for p = w / Z, an identity independent of the sampler's grid
    w = sde.g2(t_p) / sde.sigma(t_p) ** 2
    assert (1 / w).mean() * importance.Z == pytest.approx(1 - t_eps, rel=0.01)
