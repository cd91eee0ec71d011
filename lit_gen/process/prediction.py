"""What a network predicts, for any Gaussian perturbation x_t = alpha x0 + sigma eps (VP, sub-VP, VE, or a
flow-matching path): one class per parameterisation, each turning an output into (eps, x0) and back, and
giving its training target; those that need the path's time derivatives (a velocity) take d_alpha and
d_sigma too. A new parameterisation is a subclass registered in ``PREDICTIONS``. :class:`OutputLayout` adds
the learned-variance channels (Nichol & Dhariwal 2021) and is the one place they are split off. The
coefficients broadcast against x_t."""

from __future__ import annotations

from typing import ClassVar, Literal

import torch

PredictionType = Literal["eps", "x0", "v", "score"]


class Prediction:
    """A parameterisation: the conversions between its output and (eps, x0) at fixed x_t."""

    name: ClassVar[str]
    uses_derivatives: ClassVar[bool] = False  # needs d_alpha and d_sigma (a velocity does)

    def to_eps_x0(self, out: torch.Tensor, x_t: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor,
                  d_alpha: torch.Tensor | None = None,
                  d_sigma: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(eps, x0) from an output; d_alpha and d_sigma (the time derivatives) for those that need them."""
        raise NotImplementedError

    def from_eps(self, eps: torch.Tensor, x_t: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor,
                 d_alpha: torch.Tensor | None = None, d_sigma: torch.Tensor | None = None) -> torch.Tensor:
        """The output that corresponds to ``eps`` at x_t (the inverse of :meth:`to_eps_x0` in eps)."""
        raise NotImplementedError

    def target(self, x0: torch.Tensor, eps: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor,
               d_alpha: torch.Tensor | None = None, d_sigma: torch.Tensor | None = None) -> torch.Tensor:
        """What the network regresses for the pair (x0, eps)."""
        raise NotImplementedError

    def eps_coefficient(self, alpha: torch.Tensor, sigma: torch.Tensor, d_alpha: torch.Tensor | None = None,
                        d_sigma: torch.Tensor | None = None) -> torch.Tensor:
        """d(output) / d(eps) at fixed x_t: the output is affine in eps, so a shift of eps by d is a shift of
        the output by this factor times d (guidance in eps space applied to any output)."""
        raise NotImplementedError


class EpsPrediction(Prediction):
    """The noise (Ho et al. 2020)."""

    name = "eps"

    def to_eps_x0(self, out, x_t, alpha, sigma, d_alpha=None, d_sigma=None):
        return out, (x_t - sigma * out) / alpha

    def from_eps(self, eps, x_t, alpha, sigma, d_alpha=None, d_sigma=None):
        return eps

    def target(self, x0, eps, alpha, sigma, d_alpha=None, d_sigma=None):
        return eps

    def eps_coefficient(self, alpha, sigma, d_alpha=None, d_sigma=None):
        return torch.ones_like(alpha)


class X0Prediction(Prediction):
    """The clean data."""

    name = "x0"

    def to_eps_x0(self, out, x_t, alpha, sigma, d_alpha=None, d_sigma=None):
        return (x_t - alpha * out) / sigma, out

    def from_eps(self, eps, x_t, alpha, sigma, d_alpha=None, d_sigma=None):
        return (x_t - sigma * eps) / alpha

    def target(self, x0, eps, alpha, sigma, d_alpha=None, d_sigma=None):
        return x0

    def eps_coefficient(self, alpha, sigma, d_alpha=None, d_sigma=None):
        return -sigma / alpha


class VPrediction(Prediction):
    """v = alpha eps - sigma x0 (Salimans & Ho 2022, Sec. 4): alpha x_t - sigma v = (alpha^2 + sigma^2) x0 and
    sigma x_t + alpha v = (alpha^2 + sigma^2) eps, which is 1 on a VP process."""

    name = "v"

    def to_eps_x0(self, out, x_t, alpha, sigma, d_alpha=None, d_sigma=None):
        norm = alpha**2 + sigma**2
        return (sigma * x_t + alpha * out) / norm, (alpha * x_t - sigma * out) / norm

    def from_eps(self, eps, x_t, alpha, sigma, d_alpha=None, d_sigma=None):
        return ((alpha**2 + sigma**2) * eps - sigma * x_t) / alpha

    def target(self, x0, eps, alpha, sigma, d_alpha=None, d_sigma=None):
        return alpha * eps - sigma * x0

    def eps_coefficient(self, alpha, sigma, d_alpha=None, d_sigma=None):
        return (alpha**2 + sigma**2) / alpha


class ScorePrediction(Prediction):
    """The score grad log p_t(x) = -eps / sigma itself (Song & Ermon 2019)."""

    name = "score"

    def to_eps_x0(self, out, x_t, alpha, sigma, d_alpha=None, d_sigma=None):
        eps = -sigma * out
        return eps, (x_t - sigma * eps) / alpha

    def from_eps(self, eps, x_t, alpha, sigma, d_alpha=None, d_sigma=None):
        return -eps / sigma

    def target(self, x0, eps, alpha, sigma, d_alpha=None, d_sigma=None):
        return -eps / sigma

    def eps_coefficient(self, alpha, sigma, d_alpha=None, d_sigma=None):
        return -1 / sigma


PREDICTIONS: dict[str, type[Prediction]] = {
    cls.name: cls for cls in (EpsPrediction, X0Prediction, VPrediction, ScorePrediction)
}


def make_prediction(name: str) -> Prediction:
    """The parameterisation ``name``; a one-line error names the others."""
    if name not in PREDICTIONS:
        raise ValueError(f"prediction_type={name!r} is not supported; choose one of {sorted(PREDICTIONS)}")
    return PREDICTIONS[name]()


class OutputLayout:
    """A network's output channels: the prediction, then (with ``learned_variance``) as many channels of v in
    [-1, 1] that interpolate the log-variance (Nichol & Dhariwal 2021, Eq. 15)."""

    def __init__(self, prediction: str | Prediction = "eps", learned_variance: bool = False) -> None:
        self.prediction = make_prediction(prediction) if isinstance(prediction, str) else prediction
        self.learned_variance = learned_variance

    def split(self, out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(prediction, variance channels or None), along dim 1."""
        return tuple(out.chunk(2, dim=1)) if self.learned_variance else (out, None)

    @staticmethod
    def join(pred: torch.Tensor, var: torch.Tensor | None) -> torch.Tensor:
        return pred if var is None else torch.cat([pred, var], dim=1)

    def to_eps_x0(self, out, x_t, *coefficients) -> tuple[torch.Tensor, torch.Tensor]:
        """(eps, x0) from a full output (variance channels ignored); ``coefficients`` as
        :meth:`Prediction.to_eps_x0` takes them."""
        return self.prediction.to_eps_x0(self.split(out)[0], x_t, *coefficients)
