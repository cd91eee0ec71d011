"""Planar and radial flows (Rezende & Mohamed 2015, Sec. 4.1) in both directions: the numerical planar and
closed-form radial inverses (round trips, log-dets against autograd, implicit gradients against finite
differences), PlanarFlow / RadialFlow as normalised density models fitted by maximum likelihood, and their
variational use through ``sample_with_log_prob``."""

import math

import pytest
import torch
from torch.autograd.functional import jacobian
from torch.func import functional_call

from lit_gen.flows import (
    POTENTIALS,
    Flow,
    FlowSequence,
    PlanarFlow,
    PlanarTransform,
    RadialFlow,
    RadialTransform,
    Split,
    StandardNormal,
)

F64 = torch.float64
DIM = 3


@pytest.fixture(autouse=True)
def _seed_parameter_init():
    """Layers draw their initial parameters from the global RNG; fix it so every test sees the same model."""
    torch.manual_seed(0)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _perturb(module: torch.nn.Module, scale: float = 0.1, seed: int = 0) -> None:
    """Move every parameter off its (often trivial) initial value so the checks see a generic map."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))


def _jacobian_log_det(fn, x1: torch.Tensor) -> torch.Tensor:
    """log|det d fn(x) / dx| of one sample x1 (1, ...) with the full autograd Jacobian."""
    shape = x1.shape
    jac = jacobian(lambda v: fn(v.view(shape)).flatten(), x1.flatten())
    return torch.linalg.slogdet(jac)[1]


def _planar(case: str) -> PlanarTransform:
    """A planar layer in float64: generic, nearly folding (w^T u_hat close to -1) or strongly stretching."""
    layer = PlanarTransform(DIM).to(F64)
    _perturb(layer, 0.5)
    with torch.no_grad():
        if case == "folding":
            layer.u.copy_(-6.0 * layer.w / (layer.w @ layer.w))  # w^T u = -6: w^T u_hat = -1 + 2.5e-3
        elif case == "stretching":
            layer.u.copy_(4.0 * layer.w / (layer.w @ layer.w))  # w^T u_hat ~ 3
        layer.b.fill_(0.3)
    return layer


def _radial(case: str) -> RadialTransform:
    """A radial layer in float64: contracting (beta < 0, near -alpha) or expanding (beta > 0)."""
    layer = RadialTransform(DIM).to(F64)
    _perturb(layer, 0.5)
    with torch.no_grad():
        layer.alpha_raw.fill_(-0.5)
        layer.beta_raw.fill_(-4.0 if case == "contracting" else 1.5)
    return layer


LAYERS = {
    "planar_generic": lambda: _planar("generic"),
    "planar_folding": lambda: _planar("folding"),
    "planar_stretching": lambda: _planar("stretching"),
    "radial_contracting": lambda: _radial("contracting"),
    "radial_expanding": lambda: _radial("expanding"),
}


def _points(layer: torch.nn.Module) -> torch.Tensor:
    """Generic points, points at and next to the radial centre (or the planar hyperplane), and large ones."""
    pts = [torch.randn(8, DIM, generator=_gen(1), dtype=F64) * 2]
    if isinstance(layer, RadialTransform):
        centre = layer.z_0.detach()[None]
        pts += [centre, centre + 1e-9, centre + 1e-4 * torch.randn(2, DIM, generator=_gen(2), dtype=F64)]
    else:
        w, b = layer.w.detach(), layer.b.detach()
        on_plane = -b * w / (w @ w)  # w^T x + b = 0, where the planar map bends most
        pts += [on_plane[None], on_plane[None] + 1e-7]
    pts.append(torch.randn(3, DIM, generator=_gen(3), dtype=F64) * 1e3)
    return torch.cat(pts)


# float64 round trips (the planar inverse by Newton's method, and log-densities through it) are off by at most
# 2.3e-13 here, on points up to |x| ~ 1e3 (a few eps64 * |x|); 1e-8 leaves 4e4x room for another CPU's
# rounding and still fails a wrong inverse (off by O(1)) or a root search stopped early (1e-6). Was
# atol=1e-10.
ROUND_TRIP = 1e-8


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_forward_and_inverse_round_trip(name):
    layer = LAYERS[name]()
    pts = _points(layer)
    with torch.no_grad():
        z, ld_fwd = layer(pts)  # pts as data
        x_back, ld_inv = layer.inverse(z)
        torch.testing.assert_close(x_back, pts, atol=ROUND_TRIP, rtol=0)
        torch.testing.assert_close(ld_fwd + ld_inv, torch.zeros_like(ld_fwd), atol=ROUND_TRIP, rtol=0)
        x, ld_inv = layer.inverse(pts)  # pts as latents
        z_back, ld_fwd = layer(x)
        torch.testing.assert_close(z_back, pts, atol=ROUND_TRIP, rtol=0)
        torch.testing.assert_close(ld_fwd + ld_inv, torch.zeros_like(ld_fwd), atol=ROUND_TRIP, rtol=0)


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_forward_log_det_matches_autograd(name):
    layer = LAYERS[name]()
    x = _points(layer)
    _, log_det = layer(x)
    for i in range(len(x) - 3):  # every point but the large ones, whose Jacobian is the identity to rounding
        expected = _jacobian_log_det(lambda v: layer(v)[0], x[i : i + 1])
        assert expected.item() == pytest.approx(log_det[i].item(), abs=1e-8), i


@pytest.mark.parametrize("kind", ["planar", "radial"])
def test_log_prob_gradients_match_finite_differences(kind):
    """Gradients w.r.t. x and every parameter, through the numerical planar inverse (implicit function
    theorem) or the closed-form radial one."""
    cls = PlanarFlow if kind == "planar" else RadialFlow
    model = cls((2,), num_layers=3).to(F64)
    _perturb(model, 0.5)
    names = [n for n, _ in model.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_() for p in model.parameters())
    x = (torch.randn(5, 2, generator=_gen(4), dtype=F64) * 1.5).requires_grad_()

    def log_prob(x, *params):
        return functional_call(model, dict(zip(names, params, strict=True)), (x,))[1]

    assert torch.autograd.gradcheck(log_prob, (x, *params), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("cls", [PlanarFlow, RadialFlow])
def test_log_prob_integrates_to_one(cls):
    model = cls((2,), num_layers=4).to(F64)
    _perturb(model, 0.5)
    grid = torch.linspace(-8, 8, 401, dtype=F64)
    xx, yy = torch.meshgrid(grid, grid, indexing="ij")
    with torch.no_grad():
        density = model.log_prob(torch.stack([xx.flatten(), yy.flatten()], 1)).exp().view(401, 401)
    mass = torch.trapezoid(torch.trapezoid(density, grid, dim=1), grid)
    assert mass.item() == pytest.approx(1.0, abs=1e-3)


@pytest.mark.parametrize("cls", [PlanarFlow, RadialFlow])
def test_encode_decode_and_sample(cls):
    model = cls((2,), num_layers=4).to(F64)
    _perturb(model, 0.5)
    x = torch.randn(7, 2, generator=_gen(5), dtype=F64) * 2
    latents = model.encode(x)
    assert len(latents) == 1 and latents[0].shape == (7, 2)
    torch.testing.assert_close(model.decode(latents), x, atol=ROUND_TRIP, rtol=0)
    assert model.sample(5, _gen(6)).shape == (5, 2)
    assert model.num_dims == 2


@pytest.mark.parametrize("cls", [PlanarFlow, RadialFlow])
def test_sample_with_log_prob_matches_log_prob(cls):
    model = cls((2,), num_layers=4).to(F64)
    _perturb(model, 0.3)
    x, log_q = model.sample_with_log_prob(6, _gen(15))
    assert x.shape == (6, 2) and log_q.shape == (6,)
    torch.testing.assert_close(x, model.sample(6, _gen(15)))  # the same draw as ``sample``
    torch.testing.assert_close(log_q, model.log_prob(x), atol=ROUND_TRIP, rtol=0)
    # log q(x) = log N(z_0) - log|det dx/dz_0| with the whole stack's autograd Jacobian
    z_0 = model.prior.sample(6, _gen(15))
    for i in range(2):
        ld = _jacobian_log_det(lambda v: model.levels[0].inverse(v)[0], z_0[i : i + 1])
        assert log_q[i].item() == pytest.approx((model.prior.log_prob(z_0[i : i + 1]) - ld).item(),
                                                abs=ROUND_TRIP)
    cold, _ = model.sample_with_log_prob(50, _gen(16), temperature=1e-4)
    assert cold.std(0).max() < 1e-2
    # reverse KL to a target potential is differentiable
    loss = (log_q + POTENTIALS["U1"](x)).mean()
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())


def test_sample_with_log_prob_needs_a_single_level():
    two_levels = Flow((2, 1, 1), [FlowSequence(), FlowSequence()], [Split(2)], StandardNormal((1, 1, 1)))
    with pytest.raises(ValueError, match="single-level"):
        two_levels.sample_with_log_prob(3)


def test_planar_flow_fits_a_correlated_gaussian_by_maximum_likelihood():
    scale_tril = torch.tensor([[1.4, 0.0], [0.9, 0.5]], dtype=F64)  # covariance [[1.96, 1.26], [1.26, 1.06]]
    mean = torch.tensor([1.0, -0.5], dtype=F64)
    data = torch.randn(256, 2, generator=_gen(7), dtype=F64) @ scale_tril.T + mean
    entropy = 0.5 * torch.logdet(2 * torch.pi * torch.e * scale_tril @ scale_tril.T)  # ~2.48 nats
    model = PlanarFlow((2,), num_layers=8).to(F64)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-2)
    with torch.no_grad():
        nll_start = -model.log_prob(data).mean().item()
    for _ in range(200):
        optimizer.zero_grad()
        loss = -model.log_prob(data).mean()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        nll_end = -model.log_prob(data).mean().item()
    assert nll_end < nll_start - 3.0
    assert nll_end < entropy.item() + 0.3


@pytest.mark.parametrize("cls", [PlanarFlow, RadialFlow])
@pytest.mark.parametrize("shape", [(2, 2), (), (0,), (1, 4, 4)])
def test_flows_need_a_vector_data_shape(cls, shape):
    with pytest.raises(ValueError, match=r"data_shape"):
        cls(shape)


def test_planar_flow_fits_the_papers_u1_by_reverse_kl():
    """Variational use (Rezende & Mohamed 2015, Fig. 3): minimise E_q[log q(x) + U1(x)], which equals
    KL(q || p) - log Z for p = exp(-U1) / Z; Z comes from a fine grid, so the KL itself is checked."""
    axis = torch.linspace(-6, 6, 1201, dtype=F64)
    grid = torch.stack(torch.meshgrid(axis, axis, indexing="ij"), -1).reshape(-1, 2)
    log_z = torch.logsumexp(-POTENTIALS["U1"](grid), 0) + 2 * math.log(axis[1] - axis[0])
    torch.manual_seed(0)
    model = PlanarFlow((2,), num_layers=16).to(F64)
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-3)

    def kl(n: int, seed: int) -> torch.Tensor:
        x, log_q = model.sample_with_log_prob(n, _gen(seed))
        return (log_q + POTENTIALS["U1"](x)).mean() + log_z

    with torch.no_grad():
        before = kl(4096, 1).item()
    for step in range(600):
        optimizer.zero_grad()
        kl(256, 100 + step).backward()
        optimizer.step()
    with torch.no_grad():
        after = kl(4096, 1).item()
    assert after > -0.02  # a KL, up to Monte-Carlo error
    assert after < 0.25 < before, (before, after)


def test_scalar_parameters_of_old_checkpoints_still_load():
    # b, alpha_raw and beta_raw have shape (1,) so that FSDP can shard them; shape () ones load into them
    from lit_gen.flows.planar import PlanarTransform, RadialTransform

    for layer, name in ((PlanarTransform(3), "b"), (RadialTransform(3), "beta_raw")):
        state = layer.state_dict()
        state[name] = torch.tensor(0.25)
        layer.load_state_dict(state)
        assert getattr(layer, name).shape == (1,) and float(getattr(layer, name).detach()) == 0.25
