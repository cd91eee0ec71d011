"""Exact log-likelihood through the probability-flow ODE (Song et al. 2021, Sec. 4.3 and appendix D.2).

Along the ODE dx/dt = d(x, t), d log p_t(x(t)) / dt = -div d (the instantaneous change of variables, Chen et
al. 2018), so integrating from t_min up to T,

    log p_{t_min}(x) = log p_T(x(T)) + int_{t_min}^T div d(x(t), t) dt,

with p_T the SDE's prior. The divergence is exact (D vector-Jacobian products, for small D) or Hutchinson's
unbiased estimate E_v[v^T (dd/dx) v] with E[v v^T] = I (Rademacher or Gaussian probes, drawn once per solve
and averaged over ``n_probes``; Grathwohl et al. 2019). The ODE runs through torchdiffeq's RK45 on the device.
"""

from __future__ import annotations

from typing import Literal

import torch

from lit_gen.likelihood import bits_per_dim, dequantize_centred
from lit_gen.process.model import ModelFunction
from lit_gen.utils import Generator, rand, randn

Trace = Literal["rademacher", "gaussian", "exact"]


def probes(shape: tuple[int, ...], kind: str, n: int, generator: Generator, device,
           dtype) -> list[torch.Tensor]:
    """``n`` probe vectors with E[v v^T] = I: Rademacher (+-1) or standard Gaussian."""
    if kind == "rademacher":
        return [2 * (rand(shape, generator, device, dtype) < 0.5).to(dtype) - 1 for _ in range(n)]
    if kind == "gaussian":
        return [randn(shape, generator, device, dtype) for _ in range(n)]
    raise ValueError(f"trace={kind!r} is not supported; choose one of ['exact', 'gaussian', 'rademacher']")


def divergence(drift: torch.Tensor, x: torch.Tensor, vs: list[torch.Tensor] | None) -> torch.Tensor:
    """div_x drift per sample (B,): exact (``vs`` None) or the mean of v^T J v over the probes ``vs``;
    ``drift`` was computed from ``x`` with autograd on."""
    if vs is None:
        flat = drift.flatten(1)
        rows = [torch.autograd.grad(flat[:, i].sum(), x,
                                    retain_graph=True)[0].flatten(1)[:, i] for i in range(flat.shape[1])]
        return torch.stack(rows, 1).sum(1)
    total = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    for v in vs:
        (vjp,) = torch.autograd.grad(drift, x, v, retain_graph=True)  # v^T J
        total = total + (vjp * v).flatten(1).sum(1)
    return total / len(vs)


def ode_log_likelihood(
    model: ModelFunction,
    x: torch.Tensor,
    trace: Trace = "rademacher",
    n_probes: int = 1,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    generator: Generator = None,
) -> dict[str, torch.Tensor | int]:
    """log p_{t_min}(x) per sample (B,) in nats, with the latent x(T) and the NFE of the solve.

    Args:
        model: the score model (``model.sde.t_min`` is the lower end of the integral).
        x: data (B, ...).
        trace: ``rademacher`` (default), ``gaussian`` or ``exact``.
        n_probes: probes averaged per divergence (Hutchinson).
        rtol: RK45 relative tolerance.
        atol: RK45 absolute tolerance.
        generator: generator of the probes.
    """
    from torchdiffeq import odeint

    if n_probes < 1:
        raise ValueError(f"n_probes={n_probes} must be >= 1")
    with torch.inference_mode(False):
        vs = None if trace == "exact" else probes(tuple(x.shape), trace, n_probes, generator, x.device,
                                                  x.dtype)
    nfe_before = model.nfe

    def dynamics(t: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]):
        # autograd inside Lightning's test loop, which runs in inference mode: work on a normal copy
        with torch.inference_mode(False), torch.enable_grad():
            y = state[0].detach().clone().requires_grad_(True)
            tb = torch.full((y.shape[0],), float(t), dtype=torch.float64, device=y.device)
            d = model.ode_drift(y, tb)
            div = divergence(d, y, vs)
            return d.detach(), div.detach()

    sde = model.sde
    span = torch.tensor([sde.t_min, sde.T], dtype=torch.float64, device=x.device)
    start = (x, torch.zeros(x.shape[0], dtype=x.dtype, device=x.device))
    with torch.no_grad():
        # step_t: land on T instead of stepping past it and interpolating back
        solution = odeint(dynamics, start, span, rtol=rtol, atol=atol, method="dopri5",
                          options={"step_t": span})
        z, integral = solution[0][-1], solution[1][-1]
    prior = sde.prior_logp(z)
    return {"log_p": prior + integral, "prior_logp": prior, "z": z, "nfe": model.nfe - nfe_before}


def ode_bits_per_dim(model: ModelFunction, x: torch.Tensor, generator: Generator = None, **options) -> dict:
    """Bits/dim of 8-bit data x on lit_gen's [-1, 1] scale: uniform dequantisation in each value's bin of
    width 2/255, the ODE likelihood of the dequantised point, and :func:`~lit_gen.likelihood.bits_per_dim` (an
    upper bound of -log2 P(8-bit image) / D, never negative in expectation). ``options`` go to
    :func:`ode_log_likelihood`."""
    y, bin_width = dequantize_centred(x, generator)
    out = ode_log_likelihood(model, y, generator=generator, **options)
    out["bpd"] = bits_per_dim(-out["log_p"], x[0].numel(), bin_width)
    return out
