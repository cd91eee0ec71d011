"""Normalizing flows, whole: every architecture's round trip and total log p (factored-out latents and learned
priors included) against the autograd Jacobian, sampling, dequantisation, the logit transform, bits/dim,
argument errors, and Glow's checkpoints."""

import math

import pytest
import torch

from lit_gen.flows import (
    POTENTIALS,
    Glow,
    MLPFlow,
    RealNVP,
    StandardLogistic,
    bits_per_dim,
    dequantize,
    logit_inverse,
    logit_transform,
    postprocess,
    preprocess,
)
from tests.unit.flow_helpers import (
    ARCH_CASES,
    F64,
    assert_log_prob_by_jacobian,
    gen,
    jacobian_log_det,
    ready,
    seed_parameter_init,  # noqa: F401  (an autouse fixture)
)


@pytest.mark.parametrize("name", sorted(ARCH_CASES))
def test_architecture_round_trip_and_total_log_prob(name):
    make, shape = ARCH_CASES[name]
    x = torch.randn(5, *shape, generator=gen(9), dtype=F64)
    model = ready(make(), x)
    latents, log_prob = model(x)
    assert log_prob.shape == (5,)
    assert sum(z[0].numel() for z in latents) == model.num_dims
    # was atol=1e-5, which a decode off by 1e-6 would pass: <= 5e-15 over 15 draws of every case (1e-8: room
    # for any CPU)
    torch.testing.assert_close(model.decode(latents), x, atol=1e-8, rtol=0)
    torch.testing.assert_close(model.log_prob(x), log_prob)
    if isinstance(model.prior, StandardLogistic):
        return
    assert_log_prob_by_jacobian(model, x, log_prob, rows=(0, 4))


@pytest.mark.parametrize(
    "name", ["glow_learned_prior", "realnvp_batchnorm", "mlpflow_alternate_actnorm", "nice"]
)
def test_sampling_shapes_temperature_and_generators(name):
    make, shape = ARCH_CASES[name]
    # milder weights than in the density checks: random latents through a random, untrained Glow can
    # overflow where sigmoid(h + 2) is tiny (its inverse divides by it)
    model = ready(make(), torch.randn(8, *shape, generator=gen(10), dtype=F64), scale=0.02)
    with torch.no_grad():
        hot = model.sample(64, gen(11), temperature=1.0)
        cold = model.sample(64, gen(11), temperature=1e-3)
        assert hot.shape == cold.shape == (64, *shape)
        assert cold.std(0).max() < 0.01 * hot.std(0).mean()
        torch.testing.assert_close(model.sample(3, gen(12)), model.sample(3, gen(12)))
        # one generator per sample: a sample does not depend on the batch it was drawn in
        pair = model.sample(2, [gen(13), gen(14)])
        torch.testing.assert_close(model.sample(1, [gen(14)])[0], pair[1])


def test_potentials_are_finite():
    z = torch.randn(100, 2, generator=gen(17)) * 3
    for name, potential in POTENTIALS.items():
        assert potential(z).shape == (100,) and torch.isfinite(potential(z)).all(), name


def test_dequantize_stays_in_each_value_bin():
    k = torch.randint(0, 256, (4, 3, 5, 5), generator=gen(18))
    x = 2 * k.double() / 255 - 1  # lit_gen's data scale
    y, log_det = dequantize(x, gen(19))
    assert (y >= -1).all() and (y < 1).all()
    torch.testing.assert_close(torch.floor((y + 1) * 256 / 2).long(), k)  # y lies in k's bin of width 2/256
    torch.testing.assert_close(log_det, torch.full((4,), 75 * math.log(2 / 256), dtype=F64))
    torch.testing.assert_close(dequantize(x, gen(19))[0], y)


def test_logit_transform_log_det_and_inverse():
    y = torch.rand(3, 6, generator=gen(20), dtype=F64) * 2 - 1
    s, ld = logit_transform(y, alpha=0.05)
    y_back, ld_inv = logit_inverse(s, alpha=0.05)
    torch.testing.assert_close(y_back, y)
    torch.testing.assert_close(ld + ld_inv, torch.zeros(3, dtype=F64))
    assert jacobian_log_det(lambda v: logit_transform(v, 0.05)[0],
                             y[:1]).item() == pytest.approx(ld[0].item())
    with pytest.raises(ValueError, match="alpha"):
        logit_transform(y, alpha=0.5)
    x = 2 * torch.randint(0, 256, (2, 6), generator=gen(21)).double() / 255 - 1
    s, _ = preprocess(x, logit_alpha=0.05, generator=gen(22))
    assert (postprocess(s, 0.05) - x).abs().max() < 2 / 255  # back within one 8-bit step


def test_bits_per_dim_of_a_uniform_model_is_eight():
    D = 12
    x = 2 * torch.randint(0, 256, (5, D), generator=gen(23)).double() / 255 - 1
    s, log_det = preprocess(x, generator=gen(24))
    log_p_uniform = torch.full((5,), -D * math.log(2.0), dtype=F64)  # U[-1, 1)^D on the flow's scale
    torch.testing.assert_close(bits_per_dim(-(log_p_uniform + log_det), D), torch.full((5,), 8.0, dtype=F64))
    assert bits_per_dim(D * math.log(2.0), D, bin_width=2 / 256) == pytest.approx(8.0)
    assert bits_per_dim(0.0, D, bin_width=1 / 256) == pytest.approx(8.0)  # U[0, 1)^D
    assert bits_per_dim(D * math.log(256.0), D) == pytest.approx(8.0)  # U[0, 256)^D
    # through the logit: the flow-scale density of the same uniform model, log p_S = log p_Y - log|ds/dy|
    s, log_det = preprocess(x, logit_alpha=0.05, generator=gen(24))
    y, _ = dequantize(x, gen(24))
    _, ld_logit = logit_transform(y, 0.05)
    bpd = bits_per_dim(-(log_p_uniform - ld_logit + log_det), D)
    torch.testing.assert_close(bpd, torch.full((5,), 8.0, dtype=F64))


def test_bad_arguments_name_the_value():
    with pytest.raises(ValueError, match="not divisible"):
        Glow((1, 4, 4), num_levels=3, num_steps=1, hidden_channels=4)
    with pytest.raises(ValueError, match="data_shape"):
        RealNVP((16,), num_scales=1)
    with pytest.raises(ValueError, match="permutation='swap'"):
        Glow((1, 4, 4), 1, 1, 4, permutation="swap")
    with pytest.raises(ValueError, match="norm='layernorm'"):
        MLPFlow((2,), norm="layernorm")


def test_glow_checkpoint_restores_actnorm_without_reinit():
    x = torch.randn(8, 1, 4, 4, generator=gen(25))
    model = Glow((1, 4, 4), num_levels=2, num_steps=2, hidden_channels=4)
    log_p = model.log_prob(x)
    torch.manual_seed(123)
    restored = Glow((1, 4, 4), num_levels=2, num_steps=2, hidden_channels=4)
    restored.load_state_dict(model.state_dict())
    torch.testing.assert_close(restored.log_prob(3 * x + 1), model.log_prob(3 * x + 1))
    torch.testing.assert_close(restored.log_prob(x), log_p)
    (-log_p.mean()).backward()
    assert all(p.grad is not None for p in model.parameters())  # every parameter is trained
