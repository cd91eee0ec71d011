"""Guidance (lit_gen.process.guidance) against its definitions: classifier-free guidance at s = 0 and 1 is
exactly the unconditional and conditional model, linear in s, in eps space for x0 / v prediction, with the
conditional variance kept; interval and rescale; condition dropout; classifier guidance's gradient against
finite differences, a zero-gradient classifier changing nothing, the original t under respacing; and, on a
2-D Gaussian mixture with exact scores, both guidance forms against the true conditional score."""

from __future__ import annotations

import math
from functools import partial

import pytest
import torch

from lit_gen.diffusion import GaussianDiffusion, eps_x0_from_output, make_sampler, sample_loop
from lit_gen.methods import DDPM, NoisyClassifier
from lit_gen.nets import EncoderUNet, UNet
from lit_gen.process import (
    CFG,
    ClassifierFree,
    ClassifierGuidance,
    ClassifierShift,
    OutputLayout,
    at_steps,
    drop_labels,
    mean_shift,
)
from lit_gen.sampling import NoiseModel
from lit_gen.sampling.assembly import cfg_of
from lit_gen.utils import sample_generators

F64 = torch.float64
K = 3  # classes of the tiny nets
T = 20  # diffusion steps of the tiny models


def _randomise(module: torch.nn.Module, seed: int = 0, scale: float = 0.2) -> torch.nn.Module:
    """Every parameter drawn at random: zero-initialised output layers would hide the labels' effect."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return module


def _unet(out_channels: int = 1, adaptive_norm: bool = False) -> UNet:
    net = UNet((1, 8, 8), K, out_channels, base_channels=8, channel_mults=(1, 2), num_res_blocks=1,
               attention_resolutions=(4,), adaptive_norm=adaptive_norm)
    return _randomise(net).double().eval()


def _inputs(batch: int = 4, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 1, 8, 8, generator=g, dtype=F64)
    t = torch.full((batch,), 12, dtype=torch.long)
    y = torch.arange(batch) % K
    return x, t, y


def _mt(t: torch.Tensor, diffusion: GaussianDiffusion | None = None) -> torch.Tensor:
    """The network's time input at DDPM's step t, as the guidance wrappers hand it over (the step n, through
    the continuous time (n + 1) / T and back)."""
    sde = (diffusion or GaussianDiffusion("linear", T)).sde
    return sde.model_time(sde.time_of_step(t))


def _guided(net, s: float = 1.0, prediction_type: str = "eps", learned: bool = False, labels="default",
            classifier: ClassifierGuidance | None = None, guidance_interval=None,
            guidance_rescale: float = 0.0, guidance_batching: str = "split",
            diffusion: GaussianDiffusion | None = None):
    """The guided output function at DDPM's integer steps, composed as the sampler assembly composes it
    (classifier guidance in its eps form)."""
    y = _inputs()[2] if isinstance(labels, str) else labels
    sde, layout = (diffusion or GaussianDiffusion("linear", T)).sde, OutputLayout(prediction_type, learned)
    cfg = CFG(s, guidance_interval, guidance_rescale, guidance_batching)
    fn = ClassifierFree(net, sde, layout, y, K, cfg)
    if classifier is not None:
        fn = ClassifierShift(fn, sde, layout, classifier)
    return at_steps(fn, sde)


# --- classifier-free guidance -------------------------------------------------------------------------
@pytest.mark.parametrize("adaptive_norm", [False, True])
def test_scale_0_and_1_are_the_unconditional_and_conditional_models_exactly(adaptive_norm):
    net = _unet(adaptive_norm=adaptive_norm)
    x, t, y = _inputs()
    null = torch.full_like(y, K)
    assert not torch.allclose(net(x, _mt(t), y), net(x, _mt(t), null))  # the labels matter
    assert torch.equal(_guided(net, 0.0)(x, t), net(x, _mt(t), null))
    assert torch.equal(_guided(net, 1.0)(x, t), net(x, _mt(t), y))
    # and along a whole sampling run (DDIM, strided): same images bit for bit
    sampler = make_sampler("ddim", GaussianDiffusion("linear", T), eta=0.5)
    sampler.set_timesteps(5)
    for s, labels in ((0.0, null), (1.0, y)):
        plain, _ = sample_loop(lambda x_t, t_, labels=labels: net(x_t, _mt(t_), labels), sampler, x,
                               sample_generators(0, 0, 4))
        guided, _ = sample_loop(_guided(net, s), sampler, x, sample_generators(0, 0, 4))
        assert torch.equal(plain, guided)


# The guided output comes from one batched 2B forward pass, the references from separate B passes: in float64
# they differ only by the kernels' rounding (~1e-15 here); 1e-8 leaves room for another CPU's kernels and
# still fails a wrong combination (s - 1 for s, or eps_c and eps_u swapped), which is off by O(1).
TOL = 1e-8


@pytest.mark.parametrize("batching, passes", [("joint", [8]), ("split", [4, 4])])
def test_guided_output_is_linear_in_the_scale_in_one_batched_pass_or_two(batching, passes):
    net = _unet()
    x, t, y = _inputs()
    out_c, out_u = net(x, _mt(t), y), net(x, _mt(t), torch.full_like(y, K))
    calls = []
    counting = lambda x_t, t_, y_: calls.append(len(x_t)) or net(x_t, t_, y_)  # noqa: E731
    for s in (-0.5, 0.3, 2.0, 3.0, 7.5):
        guided = _guided(counting, s, guidance_batching=batching)(x, t)
        torch.testing.assert_close(guided, out_u + s * (out_c - out_u), rtol=0, atol=TOL)
    assert calls == passes * 5  # one forward of 2B, or two of B, per call


def test_the_assembly_chooses_the_batching_by_the_device_unless_told():
    model = NoiseModel("DDPM", None, GaussianDiffusion("linear", T).sde, OutputLayout(), True, num_classes=K)
    for device, batching in (("cpu", "split"), ("cuda", "joint"), ("cuda:1", "joint")):
        assert cfg_of(model, {"guidance_scale": 2.0}, torch.device(device)).batching == batching
        assert cfg_of(model, {"guidance_batching": "split"}, torch.device(device)).batching == "split"


@pytest.mark.parametrize("prediction_type", ["x0", "v"])
def test_x0_and_v_prediction_are_guided_in_eps_space(prediction_type):
    net = _unet()
    x, t, y = _inputs()
    abar = GaussianDiffusion("linear", T).alpha_bar[t]
    eps = lambda out: eps_x0_from_output(out, x, abar, prediction_type)[0]  # noqa: E731
    eps_c, eps_u = eps(net(x, _mt(t), y)), eps(net(x, _mt(t), torch.full_like(y, K)))
    guided = eps(_guided(net, 3.0, prediction_type)(x, t))
    torch.testing.assert_close(guided, eps_u + 3.0 * (eps_c - eps_u), rtol=0, atol=TOL)


def test_a_learned_variance_keeps_the_conditional_variance_and_guides_the_eps_channels():
    net = _unet(out_channels=2)
    x, t, y = _inputs()
    out_c, out_u = net(x, _mt(t), y), net(x, _mt(t), torch.full_like(y, K))
    guided = _guided(net, 2.5, learned=True)(x, t)
    assert torch.equal(guided[:, 1:], out_c[:, 1:])
    torch.testing.assert_close(guided[:, :1], out_u[:, :1] + 2.5 * (out_c[:, :1] - out_u[:, :1]), rtol=0,
                               atol=TOL)


def test_guidance_interval_guides_inside_and_is_conditional_outside():
    net = _unet()
    x, t, y = _inputs()
    plain = _guided(net, 3.0)
    # covers all: plain CFG
    assert torch.equal(_guided(net, 3.0, guidance_interval=(0, T - 1))(x, t), plain(x, t))
    assert torch.equal(_guided(net, 3.0, guidance_interval=(10, 15))(x, t), plain(x, t))  # t = 12 inside
    # outside: conditional
    assert torch.equal(_guided(net, 3.0, guidance_interval=(13, 19))(x, t), net(x, _mt(t), y))
    mixed_t = torch.tensor([12, 3, 12, 3])
    mixed = _guided(net, 3.0, guidance_interval=(10, 15))(x, mixed_t)
    torch.testing.assert_close(mixed[0::2], plain(x, mixed_t)[0::2], rtol=0, atol=TOL)
    torch.testing.assert_close(mixed[1::2], net(x, _mt(mixed_t), y)[1::2], rtol=0, atol=TOL)


def test_guidance_rescale_matches_the_conditional_spread_and_is_off_at_zero():
    net = _unet()
    x, t, y = _inputs()
    assert torch.equal(_guided(net, 3.0, guidance_rescale=0.0)(x, t), _guided(net, 3.0)(x, t))
    guided, cond = _guided(net, 3.0)(x, t), net(x, _mt(t), y)
    full = _guided(net, 3.0, guidance_rescale=1.0)(x, t)
    torch.testing.assert_close(full.std((1, 2, 3)), cond.std((1, 2, 3)), rtol=1e-8, atol=0)
    assert not torch.allclose(guided.std((1, 2, 3)), cond.std((1, 2, 3)))
    half = _guided(net, 3.0, guidance_rescale=0.5)(x, t)
    torch.testing.assert_close(half, 0.5 * full + 0.5 * guided, rtol=0, atol=TOL)  # phi mixes the two


def test_condition_dropout_rate_and_extremes():
    y = torch.randint(0, 10, (100_000,), generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(1)
    dropped = drop_labels(y, 0.1, 10, g)
    rate = (dropped == 10).float().mean().item()
    assert abs(rate - 0.1) < 4 * math.sqrt(0.1 * 0.9 / len(y))  # within 4 binomial standard deviations
    kept = dropped != 10
    assert torch.equal(dropped[kept], y[kept])
    assert (drop_labels(y, 1.0, 10, g) == 10).all() and torch.equal(drop_labels(y, 0.0, 10, g), y)
    with pytest.raises(ValueError, match="p_uncond=1.5"):
        drop_labels(y, 1.5, 10)


def _tiny_ddpm(**kw) -> DDPM:
    net = partial(UNet, base_channels=8, channel_mults=(1, 2), num_res_blocks=1, attention_resolutions=(4,))
    model = DDPM((1, 8, 8), K, net=net, num_timesteps=T, class_conditional=True, ema_decay=0, **kw)
    _randomise(model.net)
    model.log = lambda *args, **kwargs: None  # training_step outside a Trainer
    return model


def test_p_uncond_1_ignores_the_labels_and_0_uses_them():
    x = torch.randn(6, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    losses = {}
    for p in (0.0, 1.0):
        model = _tiny_ddpm(p_uncond=p)
        for name, y in (("a", torch.arange(6) % K), ("b", (torch.arange(6) + 1) % K)):
            torch.manual_seed(3)
            losses[p, name] = model.training_step({"x": x, "y": y}, 0).item()
    assert losses[1.0, "a"] == losses[1.0, "b"]
    assert losses[0.0, "a"] != losses[0.0, "b"]


# --- classifier guidance ------------------------------------------------------------------------------
def _classifier() -> EncoderUNet:
    net = EncoderUNet((1, 8, 8), K, base_channels=8, channel_mults=(1, 2), num_res_blocks=1,
                      attention_resolutions=(4,))
    return _randomise(net, seed=5, scale=0.3).double().eval()


def test_classifier_gradient_matches_finite_differences():
    classifier = _classifier()
    x, t, y = _inputs(batch=2)
    grad = ClassifierGuidance(classifier, y, scale=2.0).gradient(x, t)
    log_p = lambda z: torch.log_softmax(classifier(z, t), -1)[torch.arange(2), y].sum()  # noqa: E731
    h = 1e-6
    for idx in [(0, 0, 1, 2), (0, 0, 7, 7), (1, 0, 4, 3), (1, 0, 0, 6)]:
        e = torch.zeros_like(x)
        e[idx] = h
        numeric = (log_p(x + e) - log_p(x - e)) / (2 * h)
        # central differences in float64: truncation O(h^2), rounding ~1e-16 / h
        assert grad[idx].item() == pytest.approx(2.0 * numeric.item(), rel=1e-6, abs=1e-8)
    assert grad.abs().max() > 1e-3  # a real gradient, not zeros


class _Flat(torch.nn.Module):
    """A classifier whose log p(y | x) does not depend on x: its gradient is exactly zero."""

    def forward(self, x, t):
        return torch.zeros(x.shape[0], K, dtype=x.dtype) + 0.0 * x.flatten(1).sum(1, keepdim=True)


@pytest.mark.parametrize("sampler_name, form", [("ddpm", "mean"), ("ddim", "eps"), ("ddpm", "eps")])
@pytest.mark.parametrize("prediction_type", ["eps", "v"])
def test_a_zero_gradient_classifier_changes_nothing(sampler_name, form, prediction_type):
    net = _unet()
    x, _, y = _inputs()
    sampler = make_sampler(sampler_name, GaussianDiffusion("linear", T), prediction_type=prediction_type)
    sampler.set_timesteps(7)
    plain, _ = sample_loop(lambda x_t, t_: net(x_t, _mt(t_), y), sampler, x, sample_generators(0, 0, 4))
    flat = ClassifierGuidance(_Flat(), y, 5.0)
    if form == "mean":  # the ancestral step's mean moves by Sigma times the gradient
        shift = mean_shift(flat, GaussianDiffusion("linear", T).sde)
        guided, _ = sample_loop(_guided(net, 1.0, prediction_type), sampler, x, sample_generators(0, 0, 4),
                                mean_shift=shift)
    else:
        guided, _ = sample_loop(_guided(net, 1.0, prediction_type, classifier=flat), sampler, x,
                                sample_generators(0, 0, 4))
    assert torch.equal(plain, guided)


def test_respaced_sampling_hands_the_classifier_the_original_steps():
    seen = []

    def recording(x, t):
        seen.append(t.tolist())
        return _Flat()(x, t)

    x, _, y = _inputs()
    for name in ("ddpm", "ddim"):
        seen.clear()
        sampler = make_sampler(name, GaussianDiffusion("linear", T))
        sampler.set_timesteps(5)
        zero = lambda x_t, t_, y_: torch.zeros_like(x_t)  # noqa: E731
        guidance = ClassifierGuidance(recording, y)
        if name == "ddpm":  # the mean form
            sample_loop(_guided(zero, labels=None), sampler, x,
                        mean_shift=mean_shift(guidance, sampler.diffusion.sde))
        else:
            sample_loop(_guided(zero, labels=None, classifier=guidance), sampler, x)
        steps = [ts[0] for ts in seen]
        torch.testing.assert_close(torch.tensor(steps, dtype=F64), sampler.timesteps.double(), rtol=0,
                                   atol=1e-8)
        assert sampler.timesteps.tolist() == [19, 14, 10, 5, 0]
        assert all(len(set(ts)) == 1 for ts in seen)


def test_ancestral_mean_shift_is_sigma_times_the_gradient():
    diffusion = GaussianDiffusion("linear", T)
    sampler = make_sampler("ddpm", diffusion)
    x, _, _ = _inputs()
    grad = torch.randn(x.shape, generator=torch.Generator().manual_seed(9), dtype=F64)
    # the variance the step reports is the reverse Gaussian's
    sampler.set_timesteps(5)
    index = 1
    k = torch.full((4,), len(sampler.timesteps) - 1 - index)
    _, log_var, _ = sampler.process.p_mean_logvar(0.1 * x, x, k, "eps", "small", True)
    out = sampler.step(0.1 * x, index, x, sample_generators(0, 0, 4))
    torch.testing.assert_close(out.variance, log_var.exp(), rtol=0, atol=0)
    # and the loop moves the step's mean by it times the gradient
    sampler.set_timesteps(1)
    plain, _ = sample_loop(lambda x_t, t_: 0.1 * x_t, sampler, x)
    shifted, _ = sample_loop(lambda x_t, t_: 0.1 * x_t, sampler, x, mean_shift=lambda x_t, t_: grad)
    variance = sampler.step(0.1 * x, 0, x).variance
    torch.testing.assert_close(shifted - plain, variance * grad, rtol=1e-8, atol=1e-8)


# --- the exact 2-D Gaussian mixture -------------------------------------------------------------------
MEANS = torch.tensor([[2.0, 0.0], [-1.0, 1.5], [-1.0, -1.5]], dtype=F64)  # p(x0 | y) = N(mu_y, SIGMA^2 I)
SIGMA = 0.3


def _log_p_t(x: torch.Tensor, t: torch.Tensor, diffusion: GaussianDiffusion) -> torch.Tensor:
    """log p_t(x | y) for every y, (B, K): q(x_t | y) = N(sqrt(abar) mu_y, (abar SIGMA^2 + 1 - abar) I)."""
    abar = diffusion.alpha_bar[t.round().long()][:, None, None]  # (B, 1, 1): at the model's step
    var = abar * SIGMA**2 + 1 - abar
    diff = x[:, None, :] - abar.sqrt() * MEANS[None]  # (B, K, 2)
    return (-0.5 * (diff**2).sum(-1) / var[..., 0] - torch.log(2 * math.pi * var[..., 0]))


def _exact_eps(diffusion: GaussianDiffusion):
    """The exact eps(x_t, t, y) = -sqrt(1 - abar) grad log p_t(x_t | y), the null label giving the
    mixture's."""

    def eps(x, t, y):
        y = torch.full((x.shape[0],), K) if y is None else y  # an unconditional call: the null label
        with torch.enable_grad():
            z = x.detach().requires_grad_(True)
            log_p = _log_p_t(z, t, diffusion)  # (B, K)
            mixture = torch.logsumexp(log_p, -1) - math.log(K)  # equal class weights
            picked = torch.where(y == K, mixture, log_p.gather(1, y.clamp(max=K - 1)[:, None])[:, 0])
            (score,) = torch.autograd.grad(picked.sum(), z)
        return -(1 - diffusion.alpha_bar[t.round().long()][:, None]).sqrt() * score

    return eps


def test_both_guidance_forms_give_the_true_conditional_score_on_a_gaussian_mixture():
    diffusion = GaussianDiffusion("linear", 100)
    eps = _exact_eps(diffusion)

    def classifier(x, t):  # Bayes with equal priors: exact p_t(y | x)
        return _log_p_t(x, t, diffusion)

    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(0), dtype=F64) * 2
    y = torch.arange(64) % K
    for step in (5, 40, 90):
        t = torch.full((64,), step)
        true_conditional = eps(x, _mt(t, diffusion), y)
        # classifier guidance at s = 1 on the unconditional model: eps_u - sqrt(1 - abar) grad log p_t(y | x)
        cg = _guided(eps, labels=None, classifier=ClassifierGuidance(classifier, y),
                     diffusion=diffusion)(x, t)
        torch.testing.assert_close(cg, true_conditional, rtol=0, atol=TOL)
        # classifier-free guidance at s = 1 on the conditional model
        cfg = _guided(eps, 1.0, labels=y, diffusion=diffusion)(x, t)
        torch.testing.assert_close(cfg, true_conditional, rtol=0, atol=0)
        # and at any s the two forms agree: CFG's implicit classifier p_t(y | x)^s (Ho & Salimans 2022, Sec.
        # 3.2)
        for s in (0.5, 3.0):
            cfg = _guided(eps, s, labels=y, diffusion=diffusion)(x, t)
            cg = _guided(eps, labels=None, classifier=ClassifierGuidance(classifier, y, s),
                         diffusion=diffusion)(x, t)
            torch.testing.assert_close(cfg, cg, rtol=0, atol=TOL)


# --- errors -------------------------------------------------------------------------------------------
def test_bad_guidance_input_fails_in_one_line_naming_the_value(tmp_path):
    model = _tiny_ddpm()
    with pytest.raises(ValueError, match="label 7 is out of range: the model has 3 classes"):
        model.sample(2, labels=torch.tensor([1, 7]), steps=2)
    unconditional = DDPM((1, 8, 8), 0,
                         net=partial(UNet, base_channels=8, channel_mults=(1, 2), num_res_blocks=1,
                                                   attention_resolutions=(4,)), num_timesteps=T)
    with pytest.raises(ValueError, match="guidance_scale.*needs a class- or text-conditional model"):
        unconditional.sample(2, steps=2, guidance_scale=3.0)
    with pytest.raises(ValueError, match="labels were given, but this DDPM is unconditional"):
        unconditional.sample(2, steps=2, labels=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="classifier_scale and classifier_form need a classifier"):
        unconditional.sample(2, steps=2, classifier_scale=2.0)
    with pytest.raises(ValueError, match="guidance_scale=2.0 needs class_conditional=True"):
        DDPM((1, 8, 8), 3, num_timesteps=T, guidance_scale=2.0)
    with pytest.raises(ValueError, match=r"guidance_interval=\(9, 3\)"):
        _guided(_unet(), 2.0, guidance_interval=(9, 3))
    # a classifier of another noise process
    classifier = NoisyClassifier((1, 8, 8), K, net=partial(EncoderUNet, base_channels=8, channel_mults=(1, 2),
                                                           num_res_blocks=1, attention_resolutions=(4,)),
                                 num_timesteps=T, beta_schedule="cosine")
    with pytest.raises(ValueError, match=r"trained for the noise process \(cosine, T=20\), but the model "
                                         r"uses another \(T=20: alpha_bar differs by up to 0.827\)"):
        classifier.check_process(model.diffusion, "c.ckpt")
    classifier.check_process(GaussianDiffusion("cosine", T))  # its own process passes
