"""The model function: a network's output at continuous time t turned into eps, x0, the score or the
probability-flow drift, for any parameterisation on any schedule (as dpm-solver's ``model_wrapper``). Samplers
of either protocol see only this; guidance wraps the output function below it."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch

from lit_gen.process.prediction import OutputLayout
from lit_gen.process.sde import SDE
from lit_gen.utils import append_dims

# (x, t (B,) float64 continuous time) -> the network's output, in its own parameterisation and layout
OutputFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
# (x, model time (B,)) -> output, or (x, model time, labels) -> output: a network as methods call it
NetFn = Callable[..., torch.Tensor]


def model_time(sde: SDE, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The network's time input at t (B,), on x's device, in x's dtype but at least float32 (a step like 999
    is not exact in bf16)."""
    return sde.model_time(t).to(device=x.device, dtype=torch.promote_types(x.dtype, torch.float32))


def on_model_time(net: NetFn, sde: SDE) -> OutputFn:
    """The output function of ``net(x, model_time)``."""
    return lambda x, t: net(x, model_time(sde, t, x))


def at_steps(fn: OutputFn, sde) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``fn`` called at DDPM's integer steps n (B,), for the samplers that step between them: t = (n + 1) / N,
    where the network sees n."""
    return lambda x, n: fn(x, sde.time_of_step(n).to(x.device))


class Coefficients(NamedTuple):
    """alpha(t), sigma(t) and (when asked for) their time derivatives, broadcastable against x and in its
    dtype."""

    alpha: torch.Tensor
    sigma: torch.Tensor
    d_alpha: torch.Tensor | None = None
    d_sigma: torch.Tensor | None = None


def coefficients(sde: SDE, t: torch.Tensor, x: torch.Tensor, derivatives: bool = True) -> Coefficients:
    """The path's coefficients at t (B,) for x; ``derivatives`` False leaves d_alpha and d_sigma None."""
    parts = (sde.alpha, sde.sigma) + ((sde.d_alpha, sde.d_sigma) if derivatives else ())
    return Coefficients(*(append_dims(f(t).to(x.dtype), x.ndim) for f in parts))


def coefficients_for(layout: OutputLayout, sde: SDE, t: torch.Tensor, x: torch.Tensor) -> Coefficients:
    """The coefficients the layout's parameterisation converts with."""
    return coefficients(sde, t, x, layout.prediction.uses_derivatives)


class ModelFunction:
    """What a solver asks of a model trained on ``sde``; counts the calls of ``fn`` (NFE, one per batch).

    Args:
        fn: the output at continuous time t (guidance included, see :mod:`lit_gen.process.guidance`).
        sde: the forward process (its alpha, sigma and drift).
        layout: the parameterisation and whether a learned variance follows it.
        clip_denoised: clamp predicted x0 to [-1, 1] where a solver uses x0 (DPM-Solver++, the final
            denoising step), as DDIM does for images.
    """

    def __init__(self, fn: OutputFn, sde: SDE, layout: OutputLayout, clip_denoised: bool = False) -> None:
        self.fn, self.sde, self.layout, self.clip_denoised = fn, sde, layout, clip_denoised
        self.nfe = 0  # network calls so far (one per batch)

    def eps_x0(self, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(eps, x0) at x (B, ...), time t (B,) float64; one network call."""
        out = self.fn(x, t)
        self.nfe += 1
        return self.layout.to_eps_x0(out, x, *coefficients_for(self.layout, self.sde, t, x))

    def score(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """grad_x log p_t(x) = -eps / sigma."""
        eps, _ = self.eps_x0(x, t)
        return -eps / coefficients(self.sde, t, x, derivatives=False).sigma

    def x0(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """E[x0 | x_t] (Tweedie), clamped to [-1, 1] with ``clip_denoised``."""
        x0 = self.eps_x0(x, t)[1]
        return x0.clamp(-1, 1) if self.clip_denoised else x0

    def ode_drift(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """dx/dt of the probability-flow ODE (Song et al. 2021, Eq. 13), as the process writes it."""
        eps, x0 = self.eps_x0(x, t)
        return self.sde.ode_drift(x, t, eps, x0)
