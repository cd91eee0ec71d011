"""Normalizing flows: every layer's inverse and log-det (against the autograd Jacobian, float64), ActNorm's
data-dependent init, the LU 1x1 convolution, zero-initialised couplings, planar/radial constraints, whole
architectures (round trip and total log p incl. factored-out latents), dequantisation and bits/dim."""

import math

import pytest
import torch
from scipy.stats import multivariate_normal

from lit_gen.flows import (
    ActNorm,
    AdditiveCoupling,
    AffineCoupling,
    BatchNormFlow,
    DiagonalGaussian,
    DiagonalScaling,
    Flow,
    FlowSequence,
    GlowConditioner,
    InvertibleConv1x1,
    MLPConditioner,
    Permutation,
    PlanarTransform,
    RadialTransform,
    ResNetConditioner,
    Squeeze,
    StandardLogistic,
    StandardNormal,
    alternating_mask,
    channel_mask,
    checkerboard_mask,
)
from tests.unit.flow_helpers import (
    F64,
    IMG,
    VEC,
    gen,
    jacobian_log_det,
    perturb,
    ready,
    seed_parameter_init,  # noqa: F401  (an autouse fixture)
)


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
    x = torch.randn(6, *shape, generator=gen(1), dtype=F64) * 1.5 + 0.3
    layer = ready(make(), x)
    z, ld_fwd = layer(x)
    x_back, ld_inv = layer.inverse(z)
    assert z.numel() == x.numel() and ld_fwd.shape == (6,) and ld_inv.shape == (6,)
    # was atol=1e-5, which an inverse off by 1e-6 would pass: these layers are well conditioned, <= 1.8e-15
    # over 15 draws of every case; 1e-8 leaves 1e6x room for another CPU's rounding and still fails at 1e-6
    torch.testing.assert_close(x_back, x, atol=1e-8, rtol=0)
    torch.testing.assert_close(ld_fwd + ld_inv, torch.zeros(6, dtype=F64), atol=1e-8, rtol=0)
    for i in (0, 3):
        x1 = x[i : i + 1]
        assert jacobian_log_det(lambda v: layer(v)[0], x1).item() == pytest.approx(ld_fwd[i].item(),
                                                                                    abs=1e-8)
        z1 = z[i : i + 1]
        ld_autograd = jacobian_log_det(lambda v: layer.inverse(v)[0], z1)
        assert ld_autograd.item() == pytest.approx(ld_inv[i].item(), abs=1e-8)


@pytest.mark.parametrize("kind", ["planar", "radial"])
def test_planar_radial_log_det_in_generative_direction(kind):
    dim = 3
    layer = (PlanarTransform(dim) if kind == "planar" else RadialTransform(dim)).to(F64)
    perturb(layer, 0.5)
    z = torch.randn(5, dim, generator=gen(2), dtype=F64)
    x, log_det = layer.inverse(z)
    assert x.shape == z.shape and log_det.shape == (5,)
    for i in range(3):
        expected = jacobian_log_det(lambda v: layer.inverse(v)[0], z[i : i + 1])
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
    z = torch.randn(500, 2, generator=gen(3), dtype=F64) * 3
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
    x = torch.randn(32, 3, 4, 4, generator=gen(4), dtype=F64) * scale
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
    zv, _ = vec(torch.randn(64, 2, generator=gen(5), dtype=F64) * 3 - 2)
    torch.testing.assert_close(zv.mean(0), torch.zeros(2, dtype=F64), atol=1e-8, rtol=0)


def _actnorm_init_on_rank(rank: int, world_size: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        x = torch.randn(16, 3, 2, 2, generator=gen(100 + rank), dtype=F64) * (1 + 3 * rank) + 5 * rank
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
        [torch.randn(16, 3, 2, 2, generator=gen(100 + r), dtype=F64) * (1 + 3 * r) + 5 * r for r in (0, 1)]
    )
    z = pooled * ranks[0]["log_s"].exp()[:, None, None] + ranks[0]["b"][:, None, None]
    torch.testing.assert_close(z.mean(dim=(0, 2, 3)), torch.zeros(3, dtype=F64), atol=1e-8, rtol=0)
    torch.testing.assert_close(z.var((0, 2, 3), unbiased=False), torch.ones(3, dtype=F64), atol=1e-5, rtol=0)


def test_lu_conv1x1_weight_is_p_l_u_plus_diag_s_and_invertible():
    layer = InvertibleConv1x1(5).to(F64)
    perturb(layer, 0.3)
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
    x = torch.randn(3, C, H, W, generator=gen(6))
    for conditioner in (GlowConditioner(C // 2, C, 8), ResNetConditioner(C // 2, C, 8, 1)):
        z, ld = AffineCoupling(channel_mask(C, 0), conditioner, "tanh")(x)
        torch.testing.assert_close(z, x)
        torch.testing.assert_close(ld, torch.zeros(3))
    z, _ = AdditiveCoupling(checkerboard_mask(H, W), GlowConditioner(C, C, 8))(x)
    torch.testing.assert_close(z, x)
    v = torch.randn(3, 2, generator=gen(7))
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
    x = torch.randn(7, 3, generator=gen(8), dtype=F64) * 2
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
