"""One adapter from any network parameterisation to what a solver needs (as dpm-solver's ``model_wrapper``):
a solver asks for the score, eps, x0 or the probability-flow drift at continuous time t and never sees how
the network was trained. The adapter counts the network calls (NFE)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from lit_gen.diffusion.gaussian import split_prediction
from lit_gen.score.sde import SDE
from lit_gen.utils import append_dims

NetFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x, model_time (B,)) -> output
# (x, model_time (B,)) -> s grad log p(y | x)
GradientFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class ScoreModel:
    """The model function of a network trained on ``sde``.

    Args:
        net: ``net(x, model_time)`` with ``model_time = sde.model_time(t)`` (B,).
        sde: the forward process.
        prediction_type: what the network outputs: ``eps`` (the noise; score = -eps / sigma, NCSNv2's output
            scaling), ``x0``, ``v``, or ``score`` itself.
        learned_variance: the output has 2C channels (Improved DDPM); the first C are the prediction.
        clip_denoised: clamp predicted x0 to [-1, 1] where a solver uses x0 (DPM-Solver++, the final
            denoising step), as DDIM does for images.
        guidance: an extra score term, s grad log p(y | x_t) of a noisy classifier (Song et al. 2021, Eq. 14),
            called with the model time.
    """

    def __init__(
        self, net: NetFn, sde: SDE, prediction_type: str = "eps", learned_variance: bool = False,
        clip_denoised: bool = False, guidance: GradientFn | None = None,
    ) -> None:
        if prediction_type not in ("eps", "x0", "v", "score"):
            raise ValueError(f"prediction_type={prediction_type!r} is not supported; choose one of "
                             "['eps', 'score', 'v', 'x0']")
        self.net, self.sde, self.prediction_type = net, sde, prediction_type
        self.learned_variance, self.clip_denoised, self.guidance = learned_variance, clip_denoised, guidance
        self.nfe = 0  # network calls so far (one per batch)

    def _coefficients(self, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return (append_dims(self.sde.alpha(t).to(x.dtype), x.ndim),
                append_dims(self.sde.sigma(t).to(x.dtype), x.ndim))

    def eps_x0(self, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(eps, x0) at x (B, ...), time t (B,) float64, guidance included; one network call."""
        out = self.net(x, self.sde.model_time(t).to(device=x.device, dtype=x.dtype))
        self.nfe += 1
        if self.learned_variance:
            out = out.chunk(2, dim=1)[0]
        alpha, sigma = self._coefficients(x, t)
        if self.prediction_type == "score":  # x = alpha x0 + sigma eps and score = -eps / sigma
            eps = -sigma * out
            x0 = (x - sigma * eps) / alpha
        else:
            eps, x0 = split_prediction(out, x, alpha, sigma, self.prediction_type)
        if self.guidance is not None:  # score + s grad log p(y|x): eps - sigma s grad
            eps = eps - sigma * self.guidance(x, self.sde.model_time(t).to(device=x.device, dtype=x.dtype))
            x0 = (x - sigma * eps) / alpha
        return eps, x0

    def score(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """grad_x log p_t(x) = -eps / sigma."""
        eps, _ = self.eps_x0(x, t)
        return -eps / self._coefficients(x, t)[1]

    def x0(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """E[x0 | x_t] (Tweedie), clamped to [-1, 1] with ``clip_denoised``."""
        x0 = self.eps_x0(x, t)[1]
        return x0.clamp(-1, 1) if self.clip_denoised else x0

    def ode_drift(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """dx/dt of the probability-flow ODE (Song et al. 2021, Eq. 13)."""
        return self.sde.reverse_drift(x, t, self.score(x, t), probability_flow=True)
