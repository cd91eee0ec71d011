"""The variational bound: Gaussian KL, the discretised decoder, learned variances, respacing, importance
sampling of t, and the bound of an exact denoiser on a discrete toy reaching the data's entropy."""

import math

import pytest
import torch
from diffusers import DDPMScheduler
from scipy.stats import norm

from lit_gen.diffusion import DDIMSampler, DDPMSampler, GaussianDiffusion
from lit_gen.diffusion.timesteps import LossAwareTimesteps, UniformTimesteps
from lit_gen.likelihood import discretized_gaussian_log_likelihood, normal_kl
from tests.unit.test_score import gaussian_log_density


def test_normal_kl_matches_torch_distributions():
    g = torch.Generator().manual_seed(0)
    m1, m2, lv1, lv2 = (torch.randn(50, generator=g, dtype=torch.float64) for _ in range(4))
    oracle = torch.distributions.kl_divergence(
        torch.distributions.Normal(m1, (0.5 * lv1).exp()), torch.distributions.Normal(m2, (0.5 * lv2).exp())
    )
    torch.testing.assert_close(normal_kl(m1, lv1, m2, lv2), oracle)


def test_discretized_gaussian_matches_scipy_and_normalises():
    grid = torch.arange(256, dtype=torch.float64) * 2 / 255 - 1  # every 8-bit value in [-1, 1]
    mean, log_scale = torch.tensor(0.3, dtype=torch.float64), torch.tensor(math.log(0.2), dtype=torch.float64)
    log_p = discretized_gaussian_log_likelihood(grid, mean, log_scale)
    assert log_p.exp().sum().item() == pytest.approx(1.0, abs=1e-9)  # the 256 bins cover the line
    w, s = 1 / 255, 0.2
    for k in [0, 17, 166, 255]:
        x = grid[k].item()
        lo = -math.inf if k == 0 else x - w
        hi = math.inf if k == 255 else x + w
        expected = norm.cdf(hi, 0.3, s) - norm.cdf(lo, 0.3, s)
        assert log_p[k].exp().item() == pytest.approx(expected, rel=1e-7)


def test_learned_variance_interpolates_between_beta_and_beta_tilde():
    d = GaussianDiffusion("cosine", 100)
    x = torch.zeros(3, 1, dtype=torch.float64)
    t = torch.tensor([0, 10, 99])
    hi = d.model_log_variance(t, x, torch.ones(3, 1, dtype=torch.float64), "learned")
    lo = d.model_log_variance(t, x, -torch.ones(3, 1, dtype=torch.float64), "learned")
    torch.testing.assert_close(hi[:, 0], d.betas[t].log())
    torch.testing.assert_close(lo[:, 0], d.posterior_log_variance_clipped[t])
    # t = 0 uses beta_tilde_1 (the log is clipped). Was ==: the buffer's log ran through the vectorised kernel
    # and this one through the scalar one, which may differ by an ulp (SLEEF vs libm); log(beta_tilde_0 = 0)
    # or log(beta_1) would be far off
    eps64 = torch.finfo(torch.float64).eps
    torch.testing.assert_close(lo[0, 0], d.posterior_variance[1].log(), rtol=16 * eps64, atol=0)


def test_respaced_alpha_bar_equals_original_at_kept_steps():
    d = GaussianDiffusion("cosine", 1000)
    kept = torch.tensor([0, 3, 10, 250, 500, 999])
    r = d.respaced(kept)
    torch.testing.assert_close(r.alpha_bar, d.alpha_bar[kept])
    assert r.num_timesteps == len(kept)


def test_learned_range_respaced_step_matches_diffusers():
    d = GaussianDiffusion("linear", 1000)
    ours = DDPMSampler(d, clip_denoised=False, variance="learned")
    ours.set_timesteps(25)
    oracle = DDPMScheduler(num_train_timesteps=1000, clip_sample=False, variance_type="learned_range")
    oracle.betas = oracle.betas.double()
    oracle.alphas = 1 - oracle.betas
    oracle.alphas_cumprod = torch.cumprod(oracle.alphas, 0)
    oracle.set_timesteps(timesteps=ours.timesteps.tolist())
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 1, 4, 4, generator=g, dtype=torch.float64)
    for i, t in enumerate(ours.timesteps.tolist()[:-1]):  # diffusers has no learned variance at t = 0
        out = torch.cat([torch.tanh(x), torch.rand(x.shape, generator=g, dtype=torch.float64) * 2 - 1], 1)
        mine = ours.step(out, i, x, torch.Generator().manual_seed(i))
        theirs = oracle.step(out, t, x, generator=torch.Generator().manual_seed(i))
        torch.testing.assert_close(mine.x_next, theirs.prev_sample, rtol=1e-6, atol=1e-6)
        x = mine.x_next


def test_ddim_eta_one_over_all_steps_has_the_ddpm_posterior_variance():
    d = GaussianDiffusion("linear", 1000)
    s = DDIMSampler(d, eta=1.0)
    a_t, a_prev = s.alpha_bar_t, s.alpha_bar_next
    sigma2 = (1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)  # Song et al. 2021, Eq. 16 with eta = 1
    torch.testing.assert_close(sigma2, d.posterior_variance.flip(0))
    # and the step really uses it: the spread of x_prev around its mean
    x = torch.zeros(20000, 1, dtype=torch.float64)
    eps = torch.zeros_like(x)
    draws = s.step(eps, 500, x, torch.Generator().manual_seed(1)).x_next
    # 5 standard errors of a sample variance, sqrt(2 / n) relative (was rel=3e-2: 3 of them)
    rel = 5 * math.sqrt(2 / len(x))
    assert draws.var().item() == pytest.approx(d.posterior_variance[499].item(), rel=rel)


def test_importance_sampling_is_unbiased_and_checkpointed():
    T = 6
    losses = torch.tensor([5.0, 1.0, 0.5, 0.2, 0.1, 0.05])
    sampler = LossAwareTimesteps(T, history=3, uniform_mix=0.001)
    t, w = sampler.sample(1000, "cpu", torch.Generator().manual_seed(0))
    assert torch.all(w == 1)  # uniform until every t has a full history
    for _ in range(3):
        sampler.update(torch.arange(T), losses)
    assert sampler.warmed_up()
    p = sampler.probabilities()
    # sqrt(E[L^2]) = L for a constant history; in float64 like the sampler's history (the float32 expected
    # value carried ~2 float32 ulps of rounding, 0.09 of the default float64 tolerance)
    losses64 = losses.double()
    expected = losses64 / losses64.sum() * 0.999 + 0.001 / T
    torch.testing.assert_close(p, expected, rtol=64 * torch.finfo(torch.float64).eps, atol=0)
    # exact expectation: sum_t p_t * L_t / (T p_t) = mean_t L_t
    assert (p * losses.double() / (T * p)).sum().item() == pytest.approx(losses.mean().item())
    t, w = sampler.sample(200_000, "cpu", torch.Generator().manual_seed(1))
    assert (w * losses[t]).mean().item() == pytest.approx(losses.mean().item(), rel=2e-2)
    restored = LossAwareTimesteps(T, history=3)
    restored.load_state_dict(sampler.state_dict())
    torch.testing.assert_close(restored.probabilities(), p)
    assert UniformTimesteps(T).probabilities().sum().item() == pytest.approx(1.0)


def test_bound_of_exact_denoiser_reaches_data_entropy():
    """Data: 4 equiprobable 8-bit values (entropy 2 bits). With the exact E[x0 | x_t] of this mixture as the
    x0-prediction, the prior and KL terms sum to the entropy, and the decoder adds exactly the quantisation
    cost of its fixed variance (a closed form); a poor model is far worse. Any model's bound is >= 2 bits."""
    values = torch.tensor([-1.0, -0.2, 0.4, 1.0], dtype=torch.float64)
    values = torch.round((values + 1) * 255 / 2) * 2 / 255 - 1  # on the 8-bit grid
    d = GaussianDiffusion("cosine", 1000)
    x0 = values.repeat(500)[:, None]  # (2000, 1)

    def exact_x0(x_t, t):
        abar = d.alpha_bar[t][:, None]
        logits = -((x_t - abar.sqrt() * values[None]) ** 2) / (2 * (1 - abar))  # (B, 4)
        return (logits.softmax(1) * values[None]).sum(1, keepdim=True)

    gen = torch.Generator().manual_seed(0)
    terms = d.nll_bpd(exact_x0, x0, "x0", "small", gen)
    exact = {k: v.mean().item() for k, v in terms.items()}
    assert exact["prior"] < 1e-4
    # the entropy up to the T = 1000 discretisation's excess (+0.016 +- 0.003 over 6 seeds) and Monte-Carlo
    # error (standard error 0.006): 0.02 plus 5 standard errors (was abs=0.03: other seeds land 0.023 off)
    kl_std_err = terms["kl"].std().item() / math.sqrt(len(x0))
    assert exact["kl"] == pytest.approx(2.0, abs=0.02 + 5 * kl_std_err)
    # decoder N(x0, beta_tilde_1): mass of the +-1/255 bin, one-sided at the two edge values
    z = (1 / 255) / d.posterior_variance[1].sqrt().item()
    interior, edge = norm.cdf(z) - norm.cdf(-z), norm.cdf(z)
    expected_decoder = -(2 * math.log2(interior) + 2 * math.log2(edge)) / 4
    assert exact["decoder"] == pytest.approx(expected_decoder, rel=1e-3)
    assert exact["bpd"] >= 2.0
    poor = d.nll_bpd(lambda x_t, t: torch.zeros_like(x_t), x0, "x0", "small", gen)["bpd"].mean().item()
    assert poor > exact["bpd"] + 1


def test_bound_estimate_from_random_steps_is_unbiased_with_its_variance():
    """L_T + L_0 + (T - 1) mean_k L_{t_k}, t_k ~ U{1..T-1}, has the full bound's expectation (5 standard
    errors of the paired difference), and its reported variance is the variance of the (T - 1) mean_k L_{t_k}
    part."""
    values = torch.tensor([-1.0, -0.2, 0.4, 1.0], dtype=torch.float64)
    d = GaussianDiffusion("cosine", 100)

    def exact_x0(x_t, t):
        abar = d.alpha_bar[t][:, None]
        logits = -((x_t - abar.sqrt() * values[None]) ** 2) / (2 * (1 - abar))
        return (logits.softmax(1) * values[None]).sum(1, keepdim=True) * 0.9  # a slightly wrong model

    gen = torch.Generator().manual_seed(1)
    x0 = values.repeat(500)[:, None]  # (2000, 1)
    full = d.nll_bpd(exact_x0, x0, "x0", "small", gen)
    est = d.nll_bpd(exact_x0, x0, "x0", "small", gen, num_timesteps=4)
    diff = est["bpd"] - full["bpd"]
    assert abs(diff.mean().item()) < 5 * diff.std().item() / math.sqrt(len(x0))
    assert diff.std().item() > 0  # a real estimate, not the full bound again
    same = torch.full((2000, 1), 0.4, dtype=torch.float64)  # one image: the rows differ only by the draw
    est = d.nll_bpd(exact_x0, same, "x0", "small", gen, num_timesteps=4)
    assert est["var"].mean().item() == pytest.approx(est["kl"].var().item(), rel=0.15)
    with pytest.raises(ValueError, match="num_timesteps=1"):
        d.nll_bpd(exact_x0, x0, "x0", "small", gen, num_timesteps=1)


class ExactStepEps(torch.nn.Module):
    """The exact eps of Gaussian data N(mu, s^2 I) at DDPM's (fractional) step n of ``sde`` (a
    DiscreteVPSDE)."""

    def __init__(self, sde, mu: torch.Tensor, s: float) -> None:
        super().__init__()
        self.sde, self.mu, self.s = sde, mu, s

    def forward(self, x, n, y=None):
        t = self.sde.time_of_step(n.double())
        a, sg = self.sde.alpha(t)[:, None], self.sde.sigma(t)[:, None]
        return sg * (x - a * self.mu) / (a**2 * self.s**2 + sg**2)


def test_ddpm_ode_log_likelihood_equals_the_closed_form():
    """A DDPM checkpoint's ODE likelihood (DDPM.log_likelihood, what lit-gen test reports as test/ode_bpd)
    on its discrete process, with the exact eps: the change-of-variables closed form, as for the SDEs."""
    from lit_gen.methods import DDPM

    mu, s = torch.tensor([0.3, -0.2, 0.1], dtype=torch.float64), 0.5
    sde = GaussianDiffusion("linear", 1000).sde
    model = DDPM(data_shape=(3,), net=lambda *args: ExactStepEps(sde, mu, s), num_timesteps=1000,
                 beta_schedule="linear", clip_denoised=False, ema_decay=0.0)
    model.configure_model()
    x = mu + s * torch.randn(16, 3, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    out = model.log_likelihood(x, trace="exact", rtol=1e-7, atol=1e-7)

    def log_p(t, y):
        tb = torch.tensor([t], dtype=torch.float64)
        mean, var = sde.alpha(tb) * mu, sde.alpha(tb) ** 2 * s**2 + sde.sigma(tb) ** 2
        return gaussian_log_density(y, mean, var)

    expected = log_p(sde.t_min, x) - log_p(sde.T, out["z"]) + sde.prior_logp(out["z"])
    # log alpha is piecewise linear between the steps: RK45 steps over the kinks of its drift, and its error
    # shrinks slowly with the tolerance (1.7e-3 nats at 1e-7, 4.8e-4 at 1e-8, 9.5e-5 at 1e-9 in 60 s); the
    # SDEs' smooth alpha agree to 1e-6 (tests/unit/test_score.py). A wrong process or parameterisation is
    # off by nats.
    torch.testing.assert_close(out["log_p"], expected, rtol=0, atol=3e-3)
