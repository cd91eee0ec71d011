"""The flow method: latents as N(0, I) noise, NLL in nats and bits/dim by hand, ActNorm initialised on
training data before the sanity check, temperature sampling, exact inversion, the NaN guard."""

from __future__ import annotations

import math
from functools import partial

import lightning.pytorch as L
import pytest
import torch
from scipy import stats

from lit_gen.data import Toy2DDataModule
from lit_gen.flows import (
    ActNorm,
    Flow,
    FlowSequence,
    Glow,
    MLPFlow,
    RealNVP,
    StandardLogistic,
    StandardNormal,
)
from lit_gen.methods import NormalizingFlow
from tests.unit.flow_helpers import ARCH_CASES, F64, gen, ready, whitened_latents


def _identity_flow(data_shape):
    return Flow(data_shape, [FlowSequence([])], [],
                StandardNormal((math.prod(data_shape),) if len(data_shape) == 1
                                                                    else tuple(data_shape)))


def _trainer(**kwargs) -> L.Trainer:
    defaults = dict(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                    enable_model_summary=False)
    return L.Trainer(**{**defaults, **kwargs})


@pytest.mark.parametrize("name", sorted(ARCH_CASES))
def test_noise_is_a_bijection_of_the_data(name):
    make, shape = ARCH_CASES[name]
    x = torch.randn(4, *shape, generator=gen(1), dtype=F64)
    model = ready(make(), x, scale=0.02)
    with torch.no_grad():
        noise = model.to_noise(x)
        assert noise.shape == (4, model.num_dims)
        if not isinstance(model.prior, StandardLogistic):
            torch.testing.assert_close(noise, whitened_latents(model, x))  # every latent standardised
        torch.testing.assert_close(model.sample(4, noise=noise), x, atol=1e-6, rtol=0)
        # sample() draws exactly this noise from its generators: decoding it again gives the same samples
        drawn = model.sample(3, [gen(5), gen(6), gen(7)])
        torch.testing.assert_close(model.sample(3, noise=model.to_noise(drawn)), drawn, atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="dimensions"):
        model.sample(2, noise=torch.zeros(2, model.num_dims + 1, dtype=F64))


def test_logistic_prior_maps_gaussian_noise_to_a_logistic():
    prior = StandardLogistic((1,)).to(F64)
    eps = torch.randn(20000, 1, generator=gen(2), dtype=F64)
    z = prior.from_noise(eps)
    assert stats.kstest(z.flatten().numpy(), stats.logistic.cdf).pvalue > 0.01
    torch.testing.assert_close(prior.to_noise(z), eps)
    tails = torch.tensor([[-30.0], [-8.0], [8.0], [30.0]], dtype=torch.float32)
    z = prior.from_noise(tails)  # finite in float32 far in the tails
    assert torch.isfinite(z).all()
    torch.testing.assert_close(prior.to_noise(z), tails, rtol=1e-4, atol=1e-4)


def test_nll_of_the_identity_flow_is_the_closed_form():
    # continuous 2-D data: -log N(x; 0, I) in nats
    model = NormalizingFlow((2,), flow=_identity_flow).double()
    x = torch.randn(6, 2, generator=gen(3), dtype=F64)
    expected = -torch.distributions.Normal(0.0, 1.0).log_prob(x).sum(1)
    torch.testing.assert_close(model.nll(model.net, x), expected)
    assert model.metric == "nll" and not model.dequantize
    # 8-bit images: dequantised y = 2 (k + u) / 256 - 1, bits/dim = -(log N(y) + D log(2/256)) / (D ln 2)
    model = NormalizingFlow((1, 2, 2), flow=_identity_flow).double()
    k = torch.randint(0, 256, (5, 1, 2, 2), generator=gen(4))
    x = 2 * k.double() / 255 - 1
    u = torch.rand(5, 1, 2, 2, generator=gen(5), dtype=F64)
    y = 2 * (k + u) / 256 - 1
    log_p = torch.distributions.Normal(0.0, 1.0).log_prob(y).flatten(1).sum(1)
    expected = -(log_p + 4 * math.log(2 / 256)) / (4 * math.log(2))
    torch.testing.assert_close(model.nll(model.net, x, gen(5)), expected)
    assert model.metric == "bpd"


def test_actnorm_is_initialised_on_training_data_before_the_sanity_check():
    data = Toy2DDataModule(name="checkerboard", batch_size=256, num_train=2048, num_val=512)
    model = NormalizingFlow((2,), flow=partial(MLPFlow, num_layers=2, hidden_features=8),
                            init_batch_size=512,
                            ema_decay=0.5)
    _trainer(max_steps=0, num_sanity_val_steps=1).fit(model, data)
    first = next(m for m in model.net.modules() if isinstance(m, ActNorm))
    assert bool(first.initialized)
    # the 512 init examples
    x = torch.cat([b["x"] for _, b in zip(range(2), data.train_dataloader(), strict=False)])
    z, _ = first(x)
    torch.testing.assert_close(z.mean(0), torch.zeros(2), atol=1e-5, rtol=0)
    torch.testing.assert_close(z.std(0, unbiased=False), torch.ones(2), atol=1e-4, rtol=0)
    ema_first = next(m for m in model.ema.module.modules() if isinstance(m, ActNorm))  # the EMA copy too
    torch.testing.assert_close(ema_first.log_s, first.log_s)


def test_temperature_sampling_and_options():
    model = NormalizingFlow((1, 4, 4), flow=partial(Glow, num_levels=2, num_steps=1, hidden_channels=4),
                            temperature=0.7)
    model.net(torch.rand(8, 1, 4, 4) * 2 - 1)  # ActNorm init
    cold = model.sample(3, [gen(1), gen(2), gen(3)], temperature=0.0).x
    # T = 0: every sample is the mode's decode
    torch.testing.assert_close(cold, cold[:1].expand(3, -1, -1, -1))
    hot = model.sample(3, [gen(1), gen(2), gen(3)]).x  # the config's 0.7
    assert hot.shape == (3, 1, 4, 4) and hot.min() >= -1 and hot.max() <= 1
    assert (hot - model.sample(3, [gen(1), gen(2), gen(3)], temperature=0.7).x).abs().max() == 0
    with pytest.raises(ValueError, match=r"does not take sampling option\(s\) \['steps'\]"):
        model.sample(2, steps=5)
    with pytest.raises(ValueError, match="temperature=-1"):
        model.sample(2, temperature=-1)
    with pytest.raises(ValueError, match="logit_alpha=0.05 .* dequantize=True"):
        NormalizingFlow((2,), flow=_identity_flow, logit_alpha=0.05)


@pytest.mark.parametrize("logit_alpha", [None, 0.05])
def test_invert_then_decode_gives_back_the_8bit_image(logit_alpha):
    make = (lambda s: RealNVP(s, num_scales=2, num_steps_per_scale=1, hidden_channels=4, num_blocks=1)) \
        if logit_alpha else (lambda s: Glow(s, num_levels=2, num_steps=2, hidden_channels=4))
    model = NormalizingFlow((1, 4, 4), flow=make, logit_alpha=logit_alpha)
    k = torch.randint(0, 256, (6, 1, 4, 4), generator=gen(8))
    x = 2 * k.float() / 255 - 1
    model.net(x)  # initialise
    noise = model.invert(x)
    assert noise.shape == x.shape
    recon = model.sample(6, latents=noise).x
    torch.testing.assert_close(torch.round((recon + 1) * 255 / 2).long(), k, rtol=0, atol=0)


class _NaNAtSecondStep(NormalizingFlow):
    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        return loss * float("nan") if self.global_step == 1 else loss


def test_nan_loss_stops_training_naming_the_step():
    data = Toy2DDataModule(batch_size=64, num_train=512, num_val=64)
    model = _NaNAtSecondStep((2,), flow=partial(MLPFlow, num_layers=2, hidden_features=8))
    with pytest.raises(FloatingPointError, match=r"non-finite training loss \(nan on rank 0\) at global step "
                                                 r"1 \(epoch 0, batch 1\)"):
        _trainer(max_steps=5, num_sanity_val_steps=0).fit(model, data)
    assert model.global_step == 1  # the NaN step was not applied


@pytest.mark.parametrize("name",
                         ["glow_learned_prior", "realnvp_batchnorm", "mlpflow_linear_batchnorm", "nice"])
def test_flow_arithmetic_stays_float32_under_bf16_autocast(name):
    make, shape = ARCH_CASES[name]
    torch.manual_seed(0)
    x = torch.randn(6, *shape, generator=gen(9))
    model = ready(make(), x.double(), scale=0.02).float()
    reference = model.log_prob(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        latents, log_prob = model(x)
        back = model.decode(latents)
    assert log_prob.dtype == torch.float32
    # the conditioners ran in bf16 (so log p moves a little) but forward and inverse agree to float32
    torch.testing.assert_close(back, x, atol=1e-4, rtol=0)
    assert (log_prob - reference).abs().max() < 0.05 * reference.abs().max()


def test_planar_flow_round_trip_under_bf16_autocast():
    from lit_gen.flows import PlanarFlow

    model = PlanarFlow((2,), num_layers=4)
    x = torch.randn(5, 2, generator=gen(10))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        latents, log_prob = model(x)
        back = model.decode(latents)
    torch.testing.assert_close(back, x, atol=1e-5, rtol=0)
    torch.testing.assert_close(log_prob, model.log_prob(x))


class _OverflowOnce(Flow):
    """The identity flow on N(0, I), except that its first decode overflows sample 1 to inf."""

    def __init__(self, data_shape):
        super().__init__(data_shape, [FlowSequence([])], [], StandardNormal(tuple(data_shape)))
        self.calls = 0

    def decode_noise(self, noise, temperature=1.0):
        x = super().decode_noise(noise, temperature)
        self.calls += 1
        if self.calls == 1:
            x[1] = float("inf")
        return x


def test_overflowed_samples_are_redrawn_from_their_own_generator():
    model = NormalizingFlow((2,), flow=_OverflowOnce)
    out = model.sample(3, [gen(1), gen(2), gen(3)]).x
    assert torch.isfinite(out).all() and model.net.calls == 2
    g = gen(2)
    torch.randn(2, generator=g)  # the overflowed first draw
    torch.testing.assert_close(out[1], torch.randn(2, generator=g))  # its redraw continues generator 2
    torch.testing.assert_close(out[0], torch.randn(2, generator=gen(1)))  # the others are untouched


def test_density_plot_needs_a_2d_density_model():
    from lit_gen.callbacks import DensityPlot

    image_model = NormalizingFlow((1, 4, 4),
                                  flow=lambda s: Glow(s, num_levels=1, num_steps=1, hidden_channels=4))
    with pytest.raises(ValueError, match=r"data_shape \(1, 4, 4\)"):
        DensityPlot().setup(None, image_model, "fit")
    with pytest.raises(ValueError, match="every_n_steps=-1"):
        DensityPlot(every_n_steps=-1)
    plot = DensityPlot(grid_size=3, limit=2.0)
    plot.setup(None, NormalizingFlow((2,), flow=_identity_flow), "fit")
    torch.testing.assert_close(plot.grid()[:3], torch.tensor([[-2.0, -2.0], [0.0, -2.0], [2.0, -2.0]]))


def test_worked_examples_affine_1d_and_linear_2d_densities():
    """Change of variables by hand: a 1-D affine map z = s x + b gives p(x) = N(s x + b) |s| = N(x; -b/s,
    1/s^2); a 2-D linear map z = W x gives p(x) = N(W x) |det W| = N(x; 0, (W^T W)^-1)."""
    from scipy.stats import multivariate_normal, norm

    from lit_gen.flows import InvertibleConv1x1

    affine = ActNorm(1).double()
    affine.initialized.fill_(True)
    with torch.no_grad():
        affine.log_s.fill_(math.log(2.5))
        affine.b.fill_(-1.0)
    flow = Flow((1,), [FlowSequence([affine])], [], StandardNormal((1,))).double()
    x = torch.linspace(-3, 3, 7, dtype=F64)[:, None]
    expected = norm(loc=1.0 / 2.5, scale=1 / 2.5).logpdf(x[:, 0].numpy())
    torch.testing.assert_close(flow.log_prob(x), torch.as_tensor(expected, dtype=F64))

    torch.manual_seed(3)
    linear = InvertibleConv1x1(2).double()
    with torch.no_grad():
        linear.log_s.add_(torch.tensor([0.7, -0.4], dtype=F64))
        linear.U.add_(0.8)
    flow = Flow((2,), [FlowSequence([linear])], [], StandardNormal((2,))).double()
    W = linear.weight_matrix().detach()
    x = torch.randn(6, 2, generator=gen(4), dtype=F64)
    expected = multivariate_normal(mean=[0, 0], cov=torch.linalg.inv(W.T @ W).numpy()).logpdf(x.numpy())
    torch.testing.assert_close(flow.log_prob(x), torch.as_tensor(expected, dtype=F64))
