"""Diffusion math against closed forms and diffusers' schedulers (an independent implementation)."""

import math

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler

from lit_gen.diffusion import (
    DDIMSampler,
    DDPMSampler,
    GaussianDiffusion,
    cosine_betas,
    eps_x0_from_output,
    linear_betas,
    make_betas,
    make_sampler,
    sample_loop,
    timestep_subsequence,
    training_target,
)
from lit_gen.utils import sample_generators

T = 1000


def test_linear_schedule_matches_ho_et_al():
    betas = linear_betas(T)
    assert betas.dtype == torch.float64
    assert betas[0].item() == pytest.approx(1e-4) and betas[-1].item() == pytest.approx(0.02)
    alpha_bar_T = torch.prod(1 - betas).item()
    # product of (1 - beta) for the linear schedule: ~4.04e-5, so x_T is almost pure noise (Ho et al. 2020,
    # Sec. 4)
    assert alpha_bar_T == pytest.approx(4.0358e-5, rel=1e-3)


def test_cosine_schedule_matches_closed_form_and_diffusers():
    betas = cosine_betas(T)
    alpha_bar = torch.cumprod(1 - betas, 0)
    s = 0.008
    f = lambda t: math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    # unclipped region: alpha_bar_t = f(t) / f(0) exactly (Nichol & Dhariwal, Eq. 17)
    for t in [1, 10, 500, 900]:
        assert alpha_bar[t - 1].item() == pytest.approx(f(t) / f(0), rel=1e-9)
    assert betas.max().item() == pytest.approx(0.999)
    oracle = DDPMScheduler(num_train_timesteps=T, beta_schedule="squaredcos_cap_v2").betas.double()
    torch.testing.assert_close(betas, oracle, rtol=1e-5, atol=1e-7)


def test_make_betas_rejects_unknown_schedule():
    with pytest.raises(ValueError, match="'sigmoid'.*cosine.*linear"):
        make_betas("sigmoid", 10)


def test_q_sample_moments():
    d = GaussianDiffusion("linear", T)
    g = torch.Generator().manual_seed(0)
    x0 = torch.full((200_000, 1), 0.7)
    for t in [0, 250, 999]:
        tt = torch.full((x0.shape[0],), t)
        x_t = d.q_sample(x0, tt, torch.randn(x0.shape, generator=g))
        abar = d.alpha_bar[t].item()
        # 5 standard errors of the mean, sqrt((1 - abar) / n) (was abs=5e-3: 2.2 of them at t = 999, where
        # other seeds land up to 2.15 away, and 230 at t = 0)
        std_err = math.sqrt((1 - abar) / len(x0))
        assert x_t.mean().item() == pytest.approx(math.sqrt(abar) * 0.7, abs=5 * std_err)
        assert x_t.var().item() == pytest.approx(1 - abar, rel=2e-2, abs=1e-5)


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_posterior_matches_diffusers(schedule):
    d = GaussianDiffusion(schedule, T)
    oracle = DDPMScheduler(
        num_train_timesteps=T, beta_schedule={"linear": "linear", "cosine": "squaredcos_cap_v2"}[schedule]
    )
    t = torch.tensor([1, 10, 500, 999])
    # diffusers' betas are float32 (a float32 linspace or the closed form rounded): within 1 ulp of ours
    eps32, eps64 = torch.finfo(torch.float32).eps, torch.finfo(torch.float64).eps
    torch.testing.assert_close(d.betas.float(), oracle.betas, rtol=16 * eps32, atol=0)
    # diffusers' fixed_small variance is the posterior variance beta_tilde (clamped at 1e-20), here on our
    # float64 betas. Was rtol=1e-3 in float32, where diffusers' 1 - alpha_bar loses up to 8.6e-4 relative at
    # small t, and where a beta_tilde -> beta mix-up (>= 8e-7 relative) would pass; in float64 both sides
    # lose ~eps64 / min(beta_t, 1 - abar_{t-1}) to cancellation (measured <= 0.8x that, over all t)
    oracle.betas = d.betas.clone()
    oracle.alphas = 1.0 - oracle.betas
    oracle.alphas_cumprod = torch.cumprod(oracle.alphas, 0)
    theirs = torch.stack([oracle._get_variance(int(i)) for i in t])
    cancellation = torch.minimum(d.betas[t], 1 - d.alpha_bar_prev[t]).min().item()
    rtol = 64 * eps64 / cancellation
    torch.testing.assert_close(d.posterior_variance[t], theirs, rtol=rtol, atol=0)
    # posterior mean coefficients in float64 against the definitions in Ho et al. 2020, Eq. 7
    b, ab, abp = d.betas[t], d.alpha_bar[t], d.alpha_bar_prev[t]
    torch.testing.assert_close(d.posterior_mean_coef1[t], b * abp.sqrt() / (1 - ab))
    torch.testing.assert_close(d.posterior_mean_coef2[t], (1 - abp) * (1 - b).sqrt() / (1 - ab))


def test_posterior_mean_equals_eps_form():
    """mu = (x_t - beta_t / sqrt(1 - abar_t) eps) / sqrt(alpha_t) (Ho et al. 2020, Eq. 11) for unclipped
    x0."""
    d = GaussianDiffusion("linear", T).double()
    g = torch.Generator().manual_seed(1)
    x_t, eps = torch.randn(5, 3, generator=g, dtype=torch.float64), torch.randn(5, 3, generator=g,
                                                                                dtype=torch.float64)
    t = torch.tensor([1, 5, 100, 600, 999])
    _, x0 = d.split_output(eps, x_t, t, "eps")
    mean, _, _ = d.q_posterior(x0, x_t, t)
    b, ab = d.betas[t][:, None], d.alpha_bar[t][:, None]
    torch.testing.assert_close(mean, (x_t - b / (1 - ab).sqrt() * eps) / (1 - b).sqrt())


@pytest.mark.parametrize("prediction_type", ["eps", "x0", "v"])
def test_parameterisations_round_trip(prediction_type):
    g = torch.Generator().manual_seed(2)
    x0, eps = torch.randn(4, 6, generator=g, dtype=torch.float64), torch.randn(4, 6, generator=g,
                                                                               dtype=torch.float64)
    abar = torch.tensor([0.999, 0.5, 0.1, 1e-4], dtype=torch.float64)
    x_t = abar.sqrt()[:, None] * x0 + (1 - abar).sqrt()[:, None] * eps
    target = training_target(x0, eps, abar, prediction_type)
    eps_hat, x0_hat = eps_x0_from_output(target, x_t, abar, prediction_type)
    torch.testing.assert_close(eps_hat, eps)
    torch.testing.assert_close(x0_hat, x0)


def _float64(scheduler):
    """Run diffusers' scheduler in float64 too: in float32 its (1 - alpha_bar) loses ~3e-4 relative at small
    t."""
    scheduler.betas = scheduler.betas.double()
    scheduler.alphas = 1.0 - scheduler.betas
    scheduler.alphas_cumprod = torch.cumprod(scheduler.alphas, 0)
    if hasattr(scheduler, "final_alpha_cumprod"):
        scheduler.final_alpha_cumprod = scheduler.final_alpha_cumprod.double()
    return scheduler


def _fake_eps(x, t):
    """A fixed, smooth 'network' for sampler tests."""
    return torch.tanh(x) * (t.float()[:, None, None, None] / T) + 0.1 * torch.sin(3 * x)


@pytest.mark.parametrize("num_steps", [T, 50])
def test_ddpm_steps_match_diffusers(num_steps):
    d = GaussianDiffusion("linear", T)
    ours = DDPMSampler(d, clip_denoised=True)
    ours.set_timesteps(num_steps)
    oracle = _float64(DDPMScheduler(num_train_timesteps=T, clip_sample=True, variance_type="fixed_small"))
    oracle.set_timesteps(timesteps=ours.timesteps.tolist())
    x = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    for i, t in enumerate(ours.timesteps.tolist()[:3] + ours.timesteps.tolist()[-3:]):
        i = ours.timesteps.tolist().index(t)
        eps = _fake_eps(x, torch.full((2,), t))
        mine = ours.step(eps, i, x, torch.Generator().manual_seed(i))
        theirs = oracle.step(eps, t, x, generator=torch.Generator().manual_seed(i))
        torch.testing.assert_close(mine.pred_x0, theirs.pred_original_sample, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(mine.x_next, theirs.prev_sample, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("eta", [0.0, 0.5])
def test_ddim_steps_match_diffusers(eta):
    d = GaussianDiffusion("linear", T)
    oracle = _float64(DDIMScheduler(num_train_timesteps=T, clip_sample=False, set_alpha_to_one=True))
    oracle.set_timesteps(20)  # "leading" spacing: t = 950, 900, ..., 0; prev = t - 50
    ours = DDIMSampler(d, clip_denoised=False, eta=eta)
    ours.set_timesteps(timesteps=oracle.timesteps.tolist())
    x = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    for i, t in enumerate(ours.timesteps.tolist()):
        eps = _fake_eps(x, torch.full((2,), t))
        mine = ours.step(eps, i, x, torch.Generator().manual_seed(i))
        theirs = oracle.step(eps, t, x, eta=eta, generator=torch.Generator().manual_seed(i))
        torch.testing.assert_close(mine.x_next, theirs.prev_sample, rtol=1e-6, atol=1e-6)
        x = mine.x_next


def test_timestep_subsequence_lands_on_zero():
    for k in [1, 10, 50, 999, 1000]:
        ts = timestep_subsequence(T, k, "linear")
        assert len(ts) == k and ts[-1] == 0 and (ts.diff() < 0).all()
    ts = timestep_subsequence(T, 50, "quadratic")
    assert ts[-1] == 0 and len(ts.unique()) == 50
    with pytest.raises(ValueError, match="steps=0"):
        timestep_subsequence(T, 0)
    with pytest.raises(ValueError, match="'cubic'"):
        timestep_subsequence(T, 10, "cubic")


def test_last_step_is_noise_free_and_sampler_is_deterministic():
    d = GaussianDiffusion("linear", 100)
    s = make_sampler("ddpm", d)
    x = torch.randn(3, 2)
    out = s.step(torch.zeros_like(x), len(s.timesteps) - 1, x, torch.Generator().manual_seed(0))
    out2 = s.step(torch.zeros_like(x), len(s.timesteps) - 1, x, torch.Generator().manual_seed(1))
    torch.testing.assert_close(out.x_next, out2.x_next)  # no noise at t = 0

    def run(seed, n):
        gens = sample_generators(seed, 0, n)
        x_T = torch.stack([torch.randn(2, generator=g) for g in gens])
        return sample_loop(lambda x, t: 0.5 * x, s, x_T, gens)[0]

    torch.testing.assert_close(run(0, 4), run(0, 4))
    assert not torch.allclose(run(0, 4), run(1, 4))


def test_per_sample_generators_make_samples_batch_independent():
    d = GaussianDiffusion("linear", 50)
    s = make_sampler("ddpm", d)

    def draw(start, n):
        gens = sample_generators(7, start, n)
        x_T = torch.stack([torch.randn(3, generator=g) for g in gens])
        return sample_loop(lambda x, t: torch.tanh(x), s, x_T, gens)[0]

    whole = draw(0, 6)
    parts = torch.cat([draw(0, 2), draw(2, 4)])
    torch.testing.assert_close(whole, parts)


def test_unknown_sampler_is_named():
    with pytest.raises(ValueError, match="'euler'.*ddim.*ddpm"):
        make_sampler("euler", GaussianDiffusion("linear", 10))


def test_ddim_inversion_then_reconstruction_recovers_x0():
    from lit_gen.diffusion import invert_loop

    d = GaussianDiffusion("linear", 1000)
    s = DDIMSampler(d, clip_denoised=False, eta=0.0)

    def eps_fn(x, t):  # the exact E[eps | x_t] for data x0 ~ N(0, 0.5^2 I), standing in for a network
        abar = d.alpha_bar[t][:, None]
        return (1 - abar).sqrt() * x / (abar * 0.25 + 1 - abar)

    x0 = 0.5 * torch.randn(200, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    errors = {}
    for steps in (100, 1000):
        s.set_timesteps(steps)
        x_T = invert_loop(eps_fn, s, x0)
        assert x_T.std().item() == pytest.approx(1.0, abs=0.1)  # data mapped to the N(0, I) prior
        errors[steps] = (sample_loop(eps_fn, s, x_T)[0] - x0).abs().max().item()
    # first-order convergence: 10x the steps, 10x smaller error (0.042 -> 0.0042 in max-abs)
    assert errors[1000] < 5e-3 and errors[100] / errors[1000] > 8
    with pytest.raises(ValueError, match="eta=0.5"):
        invert_loop(eps_fn, DDIMSampler(d, eta=0.5), x0)


def test_slerp_is_per_sample_and_grid_has_the_corners():
    from lit_gen.diffusion import slerp, slerp_grid

    g = torch.Generator().manual_seed(0)
    z0, z1 = torch.randn(3, 2, 4, 4, generator=g), torch.randn(3, 2, 4, 4, generator=g)
    torch.testing.assert_close(slerp(z0, z1, 0.0), z0)
    torch.testing.assert_close(slerp(z0, z1, 1.0), z1)
    mid = slerp(z0, z1, 0.5)
    for i in range(3):  # each sample uses its own angle: the same as interpolating it alone
        torch.testing.assert_close(mid[i : i + 1], slerp(z0[i : i + 1], z1[i : i + 1], 0.5))
    # orthogonal unit vectors: the midpoint stays on the unit circle
    e0, e1 = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    assert slerp(e0, e1, 0.5).norm().item() == pytest.approx(1.0)
    corners = torch.randn(4, 1, 3, 3, generator=g)
    grid = slerp_grid(corners, 5)
    assert grid.shape == (25, 1, 3, 3)
    for idx, corner in zip([0, 4, 20, 24], corners, strict=True):
        torch.testing.assert_close(grid[idx], corner)
