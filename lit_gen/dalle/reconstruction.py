"""Decoder distributions p(x | z) of the discrete VAE, on lit_gen's [-1, 1] image scale. Each gives a density,
so the reconstruction loss is a negative log-likelihood and the ELBO reports in bits/dim through
:mod:`lit_gen.likelihood` (the density's scale fixes the bin width of one 8-bit value)."""

from __future__ import annotations

import math

import torch

from lit_gen.likelihood import BIN_WIDTH


def _wide(t: torch.Tensor) -> torch.Tensor:
    """fp16 / bf16 up to fp32 (the NLL is summed over every pixel); fp32 and fp64 as they are."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


LOGIT_LAPLACE_EPS = 0.1  # DALL-E maps pixels into (eps, 1 - eps) so logit() stays finite (App. A.3)


class Reconstruction:
    """A decoder distribution: the network predicts ``channels_per_channel`` maps per image channel."""

    channels_per_channel = 1
    bin_width = BIN_WIDTH  # width of one 8-bit value on the scale the density is evaluated on

    def nll(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """-log p(x | out) in nats per image, (B,); ``x`` (B, C, H, W) in [-1, 1]."""
        raise NotImplementedError

    def mean(self, out: torch.Tensor) -> torch.Tensor:
        """The reconstruction shown and decoded for sampling, (B, C, H, W) in [-1, 1]."""
        return out.clamp(-1, 1)


class Gaussian(Reconstruction):
    """N(x; out, scale^2): the NLL is the squared error / (2 scale^2) plus a constant ("mse")."""

    def __init__(self, scale: float) -> None:
        self.scale = scale

    def nll(self, out, x):
        se = ((_wide(x) - _wide(out)) / self.scale) ** 2
        return 0.5 * (se + math.log(2 * math.pi) + 2 * math.log(self.scale)).flatten(1).sum(1)


class Laplace(Reconstruction):
    """Laplace(x; out, scale): the NLL is the absolute error / scale plus a constant ("l1")."""

    def __init__(self, scale: float) -> None:
        self.scale = scale

    def nll(self, out, x):
        return ((_wide(x) - _wide(out)).abs() / self.scale + math.log(2 * self.scale)).flatten(1).sum(1)


class LogitLaplace(Reconstruction):
    """The logit-Laplace distribution of DALL-E (Ramesh et al. 2021, App. A.3, Eq. 2) on y = (1 - 2 eps) x01 +
    eps, x01 = (x + 1) / 2: f(y | mu, b) = exp(-|logit(y) - mu| / b) / (2 b y (1 - y)); the network predicts
    mu and ln b for each channel, and the reconstruction is x01 = (sigmoid(mu) - eps) / (1 - 2 eps)."""

    channels_per_channel = 2
    bin_width = (1 - 2 * LOGIT_LAPLACE_EPS) / 255

    def _y(self, x: torch.Tensor) -> torch.Tensor:
        return (1 - 2 * LOGIT_LAPLACE_EPS) * (_wide(x) + 1) / 2 + LOGIT_LAPLACE_EPS

    def nll(self, out, x):
        mu, log_b = _wide(out).chunk(2, dim=1)
        y = self._y(x)
        log_f = (-(torch.logit(y) - mu).abs() * torch.exp(-log_b) - math.log(2) - log_b
                 - torch.log(y) - torch.log1p(-y))
        return -log_f.flatten(1).sum(1)

    def mean(self, out):
        mu = out.float().chunk(2, dim=1)[0]
        x01 = (torch.sigmoid(mu) - LOGIT_LAPLACE_EPS) / (1 - 2 * LOGIT_LAPLACE_EPS)
        return (x01 * 2 - 1).clamp(-1, 1)


def reconstruction(kind: str, scale: float) -> Reconstruction:
    """``logit_laplace`` (the paper's), ``mse`` (a Gaussian of std ``scale``) or ``l1`` (a Laplace of scale
    ``scale``)."""
    if kind == "logit_laplace":
        return LogitLaplace()
    if kind in ("mse", "l1"):
        if scale <= 0:
            raise ValueError(f"recon_scale={scale} must be > 0")
        return (Gaussian if kind == "mse" else Laplace)(scale)
    raise ValueError(f"recon_loss={kind!r} is not one of ['logit_laplace', 'mse', 'l1']")


__all__ = ["LOGIT_LAPLACE_EPS", "Reconstruction", "reconstruction"]
