"""Normalizing flows: every layer's inverse and log-det (against the autograd Jacobian, float64), ActNorm's
data-dependent init, the LU 1x1 convolution, zero-initialised couplings, planar/radial constraints, whole
architectures (round trip and total log p incl. factored-out latents), dequantisation and bits/dim."""

import math

import pytest
import torch
from scipy.stats import multivariate_normal
from torch.autograd.functional import jacobian

from lit_gen.flows import (
    NICE,
    POTENTIALS,
    ActNorm,
    AdditiveCoupling,
    AffineCoupling,
    BatchNormFlow,
    DiagonalGaussian,
    DiagonalScaling,
    Flow,
    FlowSequence,
    Glow,
    GlowConditioner,
    InvertibleConv1x1,
    MLPConditioner,
    MLPFlow,
    Permutation,
    PlanarTransform,
    RadialTransform,
    RealNVP,
    ResNetConditioner,
    Squeeze,
    StandardLogistic,
    StandardNormal,
    alternating_mask,
    bits_per_dim,
    channel_mask,
    checkerboard_mask,
    dequantize,
    logit_inverse,
    logit_transform,
    postprocess,
    preprocess,
)

F64 = torch.float64


@pytest.fixture(autouse=True)
def _seed_parameter_init():
    """Layers draw their initial parameters from the global RNG; fix it so every test sees the same model."""
    torch.manual_seed(0)


def _perturb(module: torch.nn.Module, scale: float = 0.1, seed: int = 0) -> None:
    """Move every parameter off its (often trivial) initial value so the checks see a generic map."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))


def _ready(module: torch.nn.Module, x: torch.Tensor, scale: float = 0.1) -> torch.nn.Module:
    """float64, perturbed, then one training-mode forward (ActNorm data-dependent init, BatchNorm running
    statistics), then eval mode."""
    module = module.to(F64)
    _perturb(module, scale)
    module(x)
    return module.eval()


def _jacobian_log_det(fn, x1: torch.Tensor) -> torch.Tensor:
    """log|det d fn(x) / dx| of one sample x1 (1, ...) with the full autograd Jacobian."""
    shape = x1.shape
    jac = jacobian(lambda v: fn(v.view(shape)).flatten(), x1.flatten())
    return torch.linalg.slogdet(jac)[1]


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


IMG = (2, 4, 4)  # small (C, H, W): Jacobians are 32 x 32
VEC = 4


def _layer_cases():
    C, H, W = IMG
    return {
        "actnorm_img": (lambda: ActNorm(C), IMG),
        "actnorm_vec": (lambda: ActNorm(VEC), (VEC,)),
        "batchnorm_img": (lambda: BatchNormFlow(C), IMG),
        "conv1x1_lu": (lambda: InvertibleConv1x1(C), IMG),
        "conv1x1_plain": (lambda: InvertibleConv1x1(C, lu_decomposed=False), IMG),
        "linear_lu_vec": (lambda: InvertibleConv1x1(VEC), (VEC,)),
        "reverse": (lambda: Permutation(C, "reverse"), IMG),
        "shuffle_vec": (lambda: Permutation(VEC, "shuffle", seed=3), (VEC,)),
        "squeeze": (lambda: Squeeze(), IMG),
        "diag_scaling": (lambda: DiagonalScaling((VEC,)), (VEC,)),
        "additive_vec": (
            lambda: AdditiveCoupling(alternating_mask(VEC, 1), MLPConditioner(VEC // 2, VEC // 2, 8, 2)),
            (VEC,),
        ),
        "additive_checkerboard": (
            lambda: AdditiveCoupling(checkerboard_mask(H, W, 0), ResNetConditioner(C, C, 4, 1, "none")),
            IMG,
        ),
        "affine_vec_tanh": (
            lambda: AffineCoupling(alternating_mask(VEC, 0), MLPConditioner(VEC // 2, VEC, 8, 1), "tanh"),
            (VEC,),
        ),
        "affine_vec_exp": (
            lambda: AffineCoupling(alternating_mask(VEC, 1), MLPConditioner(VEC // 2, VEC, 8, 1), "exp"),
            (VEC,),
        ),
        "affine_channel_odd_vec": (  # C = 3: x_a is one feature, x_b two
            lambda: AffineCoupling(channel_mask(3, 0, ndim=2), MLPConditioner(1, 4, 8, 1), "tanh"),
            (3,),
        ),
        "affine_checkerboard_tanh_bn": (
            lambda: AffineCoupling(checkerboard_mask(H, W, 1), ResNetConditioner(C, 2 * C, 4, 1), "tanh"),
            IMG,
        ),
        "affine_channel_sigmoid_glow": (
            lambda: AffineCoupling(channel_mask(C, 0), GlowConditioner(C // 2, C, 4), "sigmoid"),
            IMG,
        ),
        "glow_step": (
            lambda: FlowSequence(
                [
                    ActNorm(C),
                    InvertibleConv1x1(C),
                    AffineCoupling(channel_mask(C, 1), GlowConditioner(C // 2, C, 4), "sigmoid"),
                ]
            ),
            IMG,
        ),
        "squeeze_then_channel_coupling": (
            lambda: FlowSequence(
                [
                    Squeeze(),
                    AffineCoupling(channel_mask(4 * C, 0), ResNetConditioner(2 * C, 4 * C, 4, 1, "actnorm")),
                ]
            ),
            IMG,
        ),
    }


LAYER_CASES = _layer_cases()


@pytest.mark.parametrize("name", sorted(LAYER_CASES))
def test_layer_inverse_and_log_det_match_autograd(name):
    make, shape = LAYER_CASES[name]
    x = torch.randn(6, *shape, generator=_gen(1), dtype=F64) * 1.5 + 0.3
    layer = _ready(make(), x)
    z, ld_fwd = layer(x)
    x_back, ld_inv = layer.inverse(z)
    assert z.numel() == x.numel() and ld_fwd.shape == (6,) and ld_inv.shape == (6,)
    # was atol=1e-5, which an inverse off by 1e-6 would pass: these layers are well conditioned, <= 1.8e-15
    # over 15 draws of every case; 1e-8 leaves 1e6x room for another CPU's rounding and still fails at 1e-6
    torch.testing.assert_close(x_back, x, atol=1e-8, rtol=0)
    torch.testing.assert_close(ld_fwd + ld_inv, torch.zeros(6, dtype=F64), atol=1e-8, rtol=0)
    for i in (0, 3):
        x1 = x[i : i + 1]
        assert _jacobian_log_det(lambda v: layer(v)[0], x1).item() == pytest.approx(ld_fwd[i].item(),
                                                                                    abs=1e-8)
        z1 = z[i : i + 1]
        ld_autograd = _jacobian_log_det(lambda v: layer.inverse(v)[0], z1)
        assert ld_autograd.item() == pytest.approx(ld_inv[i].item(), abs=1e-8)


@pytest.mark.parametrize("kind", ["planar", "radial"])
def test_planar_radial_log_det_in_generative_direction(kind):
    dim = 3
    layer = (PlanarTransform(dim) if kind == "planar" else RadialTransform(dim)).to(F64)
    _perturb(layer, 0.5)
    z = torch.randn(5, dim, generator=_gen(2), dtype=F64)
    x, log_det = layer.inverse(z)
    assert x.shape == z.shape and log_det.shape == (5,)
    for i in range(3):
        expected = _jacobian_log_det(lambda v: layer.inverse(v)[0], z[i : i + 1])
        assert expected.item() == pytest.approx(log_det[i].item(), abs=1e-10)


def test_squeeze_moves_each_2x2_patch_into_channels():
    x = torch.arange(2 * 4 * 4.0).view(1, 2, 4, 4)
    z, _ = Squeeze()(x)
    assert z.shape == (1, 8, 2, 2)
    # output channel 4c + 2i + j holds input channel c at offset (i, j) of every 2x2 patch
    torch.testing.assert_close(z[0, 4 * 1 + 2 * 1 + 0], x[0, 1, 1::2, 0::2])
    torch.testing.assert_close(z[0, 3], x[0, 0, 1::2, 1::2])


def test_planar_and_radial_constraints_keep_the_map_invertible():
    planar = PlanarTransform(2).to(F64)
    with torch.no_grad():
        planar.w.copy_(torch.tensor([1.0, 0.5]))
        planar.u.copy_(-4.0 * planar.w)  # w^T u = -5 < -1 would fold the plane
    assert (planar.w @ planar.u_hat()).item() > -1
    z = torch.randn(500, 2, generator=_gen(3), dtype=F64) * 3
    a = z @ planar.w + planar.b
    det = 1 + (1 - torch.tanh(a) ** 2) * (planar.w @ planar.u_hat())
    assert (det > 0).all()

    radial = RadialTransform(2).to(F64)
    with torch.no_grad():
        radial.beta_raw.fill_(-30.0)  # beta as negative as allowed
    alpha, beta = radial.alpha_beta()
    assert beta.item() >= -alpha.item()
    _, log_det = radial.inverse(z)
    assert torch.isfinite(log_det).all()


def test_actnorm_data_dependent_init_happens_once_and_survives_state_dict():
    scale = torch.tensor([0.5, 2.0, 7.0], dtype=F64)[:, None, None]
    x = torch.randn(32, 3, 4, 4, generator=_gen(4), dtype=F64) * scale
    x = x + torch.tensor([1.0, -3.0, 10.0], dtype=F64)[:, None, None]
    layer = ActNorm(3).to(F64)
    assert not layer.initialized
    z, _ = layer(x)
    assert layer.initialized and "initialized" in layer.state_dict()
    # float64 rounding of the centred mean is ~1e-16; an init that does not centre is off by O(1)
    torch.testing.assert_close(z.mean(dim=(0, 2, 3)), torch.zeros(3, dtype=F64), atol=1e-8, rtol=0)
    # s = 1 / (std + eps) leaves the variance (std / (std + eps))^2 = 1 - 4e-6 at std 0.5 (was atol=1e-5
    # against 1: 0.41 of it); against that value only the float64 rounding of exp(log s) and the moments
    # remains (1e-15); rtol 1e-8 leaves room for any CPU's rounding and still fails on the eps offset (4e-6)
    std = x.var((0, 2, 3), unbiased=False).sqrt()
    expected_var = (std / (std + layer.eps)) ** 2
    torch.testing.assert_close(z.var((0, 2, 3), unbiased=False), expected_var, atol=0, rtol=1e-8)
    params = [p.clone() for p in layer.parameters()]
    layer(5 * x + 1)  # a second batch does not re-initialise
    for before, after in zip(params, layer.parameters(), strict=True):
        torch.testing.assert_close(before, after)

    restored = ActNorm(3).to(F64)
    restored.load_state_dict(layer.state_dict())
    z2, _ = restored(5 * x + 1)
    torch.testing.assert_close(z2, layer(5 * x + 1)[0])

    vec = ActNorm(2).to(F64)
    zv, _ = vec(torch.randn(64, 2, generator=_gen(5), dtype=F64) * 3 - 2)
    torch.testing.assert_close(zv.mean(0), torch.zeros(2, dtype=F64), atol=1e-8, rtol=0)


def _actnorm_init_on_rank(rank: int, world_size: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        x = torch.randn(16, 3, 2, 2, generator=_gen(100 + rank), dtype=F64) * (1 + 3 * rank) + 5 * rank
        layer = ActNorm(3).to(F64)
        layer(x)
        torch.save({"log_s": layer.log_s.detach(), "b": layer.b.detach()}, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_actnorm_init_pools_statistics_over_ranks(tmp_path):
    torch.multiprocessing.spawn(
        _actnorm_init_on_rank, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True
    )
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    torch.testing.assert_close(ranks[0], ranks[1])  # every rank starts from the same parameters
    pooled = torch.cat(
        [torch.randn(16, 3, 2, 2, generator=_gen(100 + r), dtype=F64) * (1 + 3 * r) + 5 * r for r in (0, 1)]
    )
    z = pooled * ranks[0]["log_s"].exp()[:, None, None] + ranks[0]["b"][:, None, None]
    torch.testing.assert_close(z.mean(dim=(0, 2, 3)), torch.zeros(3, dtype=F64), atol=1e-8, rtol=0)
    torch.testing.assert_close(z.var((0, 2, 3), unbiased=False), torch.ones(3, dtype=F64), atol=1e-5, rtol=0)


def test_lu_conv1x1_weight_is_p_l_u_plus_diag_s_and_invertible():
    layer = InvertibleConv1x1(5).to(F64)
    _perturb(layer, 0.3)
    C = 5
    L = torch.tril(layer.L, -1) + torch.eye(C, dtype=F64)  # unit lower triangular
    U = torch.triu(layer.U, 1)  # strictly upper
    s = layer.sign_s * layer.log_s.exp()
    torch.testing.assert_close(layer.weight_matrix(), layer.P @ L @ (U + torch.diag(s)))
    P = layer.P
    assert ((P == 0) | (P == 1)).all() and (P.sum(0) == 1).all() and (P.sum(1) == 1).all()  # a permutation
    W = layer.weight_matrix()
    torch.testing.assert_close(W @ layer.inverse_weight_matrix(), torch.eye(C, dtype=F64))
    assert torch.linalg.slogdet(W)[1].item() == pytest.approx(layer.log_s.sum().item(), abs=1e-10)
    fresh = InvertibleConv1x1(4)  # starts as a rotation: |det W| = 1
    assert fresh.log_s.sum().item() == pytest.approx(0.0, abs=1e-5)


def test_zero_initialised_couplings_start_as_the_identity():
    C, H, W = 4, 4, 4
    x = torch.randn(3, C, H, W, generator=_gen(6))
    for conditioner in (GlowConditioner(C // 2, C, 8), ResNetConditioner(C // 2, C, 8, 1)):
        z, ld = AffineCoupling(channel_mask(C, 0), conditioner, "tanh")(x)
        torch.testing.assert_close(z, x)
        torch.testing.assert_close(ld, torch.zeros(3))
    z, _ = AdditiveCoupling(checkerboard_mask(H, W), GlowConditioner(C, C, 8))(x)
    torch.testing.assert_close(z, x)
    v = torch.randn(3, 2, generator=_gen(7))
    z, ld = AffineCoupling(alternating_mask(2, 0), MLPConditioner(1, 2, 8, 1), "tanh")(v)
    torch.testing.assert_close(z, v)
    # Glow's sigmoid(h + 2) starts as a fixed contraction of the transformed half by sigmoid(2).
    z, ld = AffineCoupling(channel_mask(C, 0), GlowConditioner(C // 2, C, 8), "sigmoid")(x)
    torch.testing.assert_close(z[:, :2], x[:, :2])
    torch.testing.assert_close(z[:, 2:], torch.sigmoid(torch.tensor(2.0)) * x[:, 2:])
    log_s0 = math.log(torch.sigmoid(torch.tensor(2.0)).item())
    # a float32 sum of n = 2HW equal log-sigmoid terms, each within ~eps32 of the float64 reference, plus the
    # sum's rounding, (n - 1) eps32 / 2 |ld|: 4x that (was the default tolerance, which is that worst case:
    # 0.16 of it with scalar kernels)
    n, eps32 = 2 * H * W, torch.finfo(torch.float32).eps
    atol = 4 * (n * eps32 + (n - 1) * eps32 / 2 * n * abs(log_s0))
    torch.testing.assert_close(ld, torch.full((3,), n * log_s0), rtol=0, atol=atol)


def test_identity_flow_gives_closed_form_gaussian_nll():
    x = torch.randn(7, 3, generator=_gen(8), dtype=F64) * 2
    flow = Flow((3,), [FlowSequence([])], [], StandardNormal((3,))).to(F64)
    expected = multivariate_normal(mean=[0, 0, 0], cov=1).logpdf(x.numpy())
    torch.testing.assert_close(flow.log_prob(x), torch.as_tensor(expected, dtype=F64))

    prior = DiagonalGaussian((3,)).to(F64)
    with torch.no_grad():
        prior.mean.copy_(torch.tensor([1.0, -2.0, 0.5]))
        prior.log_std.copy_(torch.tensor([0.0, 0.7, -0.3]))
    flow = Flow((3,), [FlowSequence([])], [], prior)
    cov = torch.diag((2 * prior.log_std).exp()).detach().numpy()
    expected = multivariate_normal(mean=prior.mean.detach().numpy(), cov=cov).logpdf(x.numpy())
    torch.testing.assert_close(flow.log_prob(x), torch.as_tensor(expected, dtype=F64))

    logistic = StandardLogistic((3,)).to(F64)
    expected = torch.distributions.TransformedDistribution(
        torch.distributions.Uniform(torch.zeros(3, dtype=F64), torch.ones(3, dtype=F64)),
        [torch.distributions.SigmoidTransform().inv],
    ).log_prob(x).sum(1)
    torch.testing.assert_close(logistic.log_prob(x), expected)


def _arch_cases():
    return {
        "nice": (lambda: NICE((4,), num_coupling_layers=4, hidden_features=8, num_hidden_layers=2), (4,)),
        "nice_logistic": (lambda: NICE((4,), 3, 8, 1, prior="logistic"), (4,)),
        "nice_image": (lambda: NICE((1, 2, 2), 2, 8, 1), (1, 2, 2)),
        "mlpflow_alternate_actnorm": (lambda: MLPFlow((3,), num_layers=3, hidden_features=8), (3,)),
        "mlpflow_linear_batchnorm": (
            lambda: MLPFlow((3,), 3, 8, 1, scale_fn="sigmoid", norm="batchnorm", permutation="linear"),
            (3,),
        ),
        "realnvp_batchnorm": (
            lambda: RealNVP((1, 4, 4), num_scales=2, num_steps_per_scale=2, hidden_channels=4, num_blocks=1),
            (1, 4, 4),
        ),
        "realnvp_actnorm_sigmoid": (
            lambda: RealNVP((2, 4, 4), 2, 1, 4, 1, scale_fn="sigmoid", norm="actnorm"),
            (2, 4, 4),
        ),
        "glow_learned_prior": (
            lambda: Glow((1, 4, 4), num_levels=2, num_steps=2, hidden_channels=4, learn_prior=True),
            (1, 4, 4),
        ),
        "glow_fixed_prior_additive_shuffle": (
            lambda: Glow((2, 4, 4), 2, 1, 4, learn_prior=False, coupling="additive", permutation="shuffle"),
            (2, 4, 4),
        ),
        "glow_plain_conv_reverse_tanh": (
            lambda: Glow((1, 4, 4), 1, 2, 4, scale_fn="tanh", lu_decomposed=False),
            (1, 4, 4),
        ),
    }


ARCH_CASES = _arch_cases()


def _whitened_latents(model: Flow, x: torch.Tensor) -> torch.Tensor:
    """All latents of x, each standardised by its own prior (learned conditional priors included), flattened:
    a bijection of x whose density is N(0, I)."""
    eps, h = [], x
    for i, level in enumerate(model.levels):
        h, _ = level(h)
        if i < len(model.splits):
            split = model.splits[i]
            h, z = h.split([split.num_kept, split.num_factored], dim=1)
            mean, log_std = split.prior_params(h)
            eps.append(((z - mean) * torch.exp(-log_std)).flatten(1))
    if isinstance(model.prior, DiagonalGaussian):
        h = (h - model.prior.mean) * torch.exp(-model.prior.log_std)
    eps.append(h.flatten(1))
    return torch.cat(eps, dim=1)


def assert_log_prob_by_jacobian(model: Flow, x: torch.Tensor, log_prob: torch.Tensor, rows=(0,)) -> None:
    """log p(x) = log N(eps(x); 0, I) + log|det d eps / dx| over everything (factored-out latents and
    learned priors included), with the full autograd Jacobian, for the given rows of x."""
    for i in rows:
        x1 = x[i : i + 1]
        eps = _whitened_latents(model, x1)
        expected = torch.distributions.Normal(0.0, 1.0).log_prob(eps).sum()
        expected = expected + _jacobian_log_det(lambda v: _whitened_latents(model, v), x1)
        assert log_prob[i].item() == pytest.approx(expected.item(), abs=1e-8)


@pytest.mark.parametrize("name", sorted(ARCH_CASES))
def test_architecture_round_trip_and_total_log_prob(name):
    make, shape = ARCH_CASES[name]
    x = torch.randn(5, *shape, generator=_gen(9), dtype=F64)
    model = _ready(make(), x)
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
    model = _ready(make(), torch.randn(8, *shape, generator=_gen(10), dtype=F64), scale=0.02)
    with torch.no_grad():
        hot = model.sample(64, _gen(11), temperature=1.0)
        cold = model.sample(64, _gen(11), temperature=1e-3)
        assert hot.shape == cold.shape == (64, *shape)
        assert cold.std(0).max() < 0.01 * hot.std(0).mean()
        torch.testing.assert_close(model.sample(3, _gen(12)), model.sample(3, _gen(12)))
        # one generator per sample: a sample does not depend on the batch it was drawn in
        pair = model.sample(2, [_gen(13), _gen(14)])
        torch.testing.assert_close(model.sample(1, [_gen(14)])[0], pair[1])


def test_potentials_are_finite():
    z = torch.randn(100, 2, generator=_gen(17)) * 3
    for name, potential in POTENTIALS.items():
        assert potential(z).shape == (100,) and torch.isfinite(potential(z)).all(), name


def test_dequantize_stays_in_each_value_bin():
    k = torch.randint(0, 256, (4, 3, 5, 5), generator=_gen(18))
    x = 2 * k.double() / 255 - 1  # lit_gen's data scale
    y, log_det = dequantize(x, _gen(19))
    assert (y >= -1).all() and (y < 1).all()
    torch.testing.assert_close(torch.floor((y + 1) * 256 / 2).long(), k)  # y lies in k's bin of width 2/256
    torch.testing.assert_close(log_det, torch.full((4,), 75 * math.log(2 / 256), dtype=F64))
    torch.testing.assert_close(dequantize(x, _gen(19))[0], y)


def test_logit_transform_log_det_and_inverse():
    y = torch.rand(3, 6, generator=_gen(20), dtype=F64) * 2 - 1
    s, ld = logit_transform(y, alpha=0.05)
    y_back, ld_inv = logit_inverse(s, alpha=0.05)
    torch.testing.assert_close(y_back, y)
    torch.testing.assert_close(ld + ld_inv, torch.zeros(3, dtype=F64))
    assert _jacobian_log_det(lambda v: logit_transform(v, 0.05)[0],
                             y[:1]).item() == pytest.approx(ld[0].item())
    with pytest.raises(ValueError, match="alpha"):
        logit_transform(y, alpha=0.5)
    x = 2 * torch.randint(0, 256, (2, 6), generator=_gen(21)).double() / 255 - 1
    s, _ = preprocess(x, logit_alpha=0.05, generator=_gen(22))
    assert (postprocess(s, 0.05) - x).abs().max() < 2 / 255  # back within one 8-bit step


def test_bits_per_dim_of_a_uniform_model_is_eight():
    D = 12
    x = 2 * torch.randint(0, 256, (5, D), generator=_gen(23)).double() / 255 - 1
    s, log_det = preprocess(x, generator=_gen(24))
    log_p_uniform = torch.full((5,), -D * math.log(2.0), dtype=F64)  # U[-1, 1)^D on the flow's scale
    torch.testing.assert_close(bits_per_dim(-(log_p_uniform + log_det), D), torch.full((5,), 8.0, dtype=F64))
    assert bits_per_dim(D * math.log(2.0), D, bin_width=2 / 256) == pytest.approx(8.0)
    assert bits_per_dim(0.0, D, bin_width=1 / 256) == pytest.approx(8.0)  # U[0, 1)^D
    assert bits_per_dim(D * math.log(256.0), D) == pytest.approx(8.0)  # U[0, 256)^D
    # through the logit: the flow-scale density of the same uniform model, log p_S = log p_Y - log|ds/dy|
    s, log_det = preprocess(x, logit_alpha=0.05, generator=_gen(24))
    y, _ = dequantize(x, _gen(24))
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
    x = torch.randn(8, 1, 4, 4, generator=_gen(25))
    model = Glow((1, 4, 4), num_levels=2, num_steps=2, hidden_channels=4)
    log_p = model.log_prob(x)
    torch.manual_seed(123)
    restored = Glow((1, 4, 4), num_levels=2, num_steps=2, hidden_channels=4)
    restored.load_state_dict(model.state_dict())
    torch.testing.assert_close(restored.log_prob(3 * x + 1), model.log_prob(3 * x + 1))
    torch.testing.assert_close(restored.log_prob(x), log_p)
    (-log_p.mean()).backward()
    assert all(p.grad is not None for p in model.parameters())  # every parameter is trained
