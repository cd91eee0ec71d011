"""Helpers of the flow tests: float64, perturbed parameters, the autograd Jacobian's log-determinant."""

import pytest
import torch
from torch.autograd.functional import jacobian

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
