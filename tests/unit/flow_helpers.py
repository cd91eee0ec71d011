"""Helpers of the flow tests: float64, perturbed parameters, the autograd Jacobian's log-determinant, small
versions of every architecture and their total log p by the Jacobian."""

import pytest
import torch
from torch.autograd.functional import jacobian

from lit_gen.flows import NICE, DiagonalGaussian, Flow, Glow, MLPFlow, RealNVP

F64 = torch.float64


@pytest.fixture(autouse=True)
def seed_parameter_init():
    """Layers draw their initial parameters from the global RNG; fix it so every test sees the same model."""
    torch.manual_seed(0)


def perturb(module: torch.nn.Module, scale: float = 0.1, seed: int = 0) -> None:
    """Move every parameter off its (often trivial) initial value so the checks see a generic map."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))


def ready(module: torch.nn.Module, x: torch.Tensor, scale: float = 0.1) -> torch.nn.Module:
    """float64, perturbed, then one training-mode forward (ActNorm data-dependent init, BatchNorm running
    statistics), then eval mode."""
    module = module.to(F64)
    perturb(module, scale)
    module(x)
    return module.eval()


def jacobian_log_det(fn, x1: torch.Tensor) -> torch.Tensor:
    """log|det d fn(x) / dx| of one sample x1 (1, ...) with the full autograd Jacobian."""
    shape = x1.shape
    jac = jacobian(lambda v: fn(v.view(shape)).flatten(), x1.flatten())
    return torch.linalg.slogdet(jac)[1]


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


IMG = (2, 4, 4)  # small (C, H, W): Jacobians are 32 x 32
VEC = 4


def arch_cases():
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


ARCH_CASES = arch_cases()


def whitened_latents(model: Flow, x: torch.Tensor) -> torch.Tensor:
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
        eps = whitened_latents(model, x1)
        expected = torch.distributions.Normal(0.0, 1.0).log_prob(eps).sum()
        expected = expected + jacobian_log_det(lambda v: whitened_latents(model, v), x1)
        assert log_prob[i].item() == pytest.approx(expected.item(), abs=1e-8)
