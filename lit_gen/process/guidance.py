"""Guidance as wrappers of the output function in continuous time t, so it composes with every sampler of
either protocol and every parameterisation and schedule. Conventions:

- guidance scale s: 0 is the unconditional model, 1 the conditional one, > 1 stronger guidance (Ho &
  Salimans 2022 write w = s - 1);
- the network and the classifier see the model time of t (DDPM's step n on a DDPM checkpoint, also under
  respaced sampling); a guidance interval is given in the same units.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch

from lit_gen.process.model import NetFn, OutputFn, coefficients_for, model_time
from lit_gen.process.prediction import OutputLayout
from lit_gen.process.sde import SDE
from lit_gen.utils import append_dims

ClassifierFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x_t, model time) -> logits (B, K)
Batching = Literal["joint", "split"]


Null = int | torch.Tensor  # the null condition: a label, or the (L,) token ids of the empty caption


def null_like(y: torch.Tensor, null: Null) -> torch.Tensor:
    """The null condition for every sample of ``y``: labels (B,) of ``null``, or rows (B, L) of its ids."""
    if isinstance(null, torch.Tensor):
        return null.to(y.device, y.dtype).expand_as(y)
    return torch.full_like(y, null)


def drop_labels(y: torch.Tensor, p_uncond: float, null_label: Null,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """Replace each sample's condition (a label, or a caption's ids: a row of y) by the null one with
    probability ``p_uncond`` (condition dropout for classifier-free guidance, Ho & Salimans 2022, Algorithm
    1). Draws from ``generator``, else from the (per-step seeded) global RNG."""
    if not 0 <= p_uncond <= 1:
        raise ValueError(f"p_uncond={p_uncond} must be in [0, 1]")
    drop = torch.rand(y.shape[:1], generator=generator,
                      device=y.device if generator is None else generator.device)
    return torch.where(append_dims(drop.to(y.device) < p_uncond, y.ndim), null_like(y, null_label), y)


class ClassifierGuidance:
    """s * grad_x log p(y | x_t, t) of a noisy classifier (Dhariwal & Nichol 2021, Sec. 4), taken with
    autograd inside the no-grad sampling loop.

    Args:
        classifier: logits of p(y | x_t, t) at the model time.
        labels: the requested classes (B,).
        scale: s.
    """

    def __init__(self, classifier: ClassifierFn, labels: torch.Tensor, scale: float = 1.0) -> None:
        self.classifier, self.labels, self.scale = classifier, labels, scale

    def gradient(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            x = x_t.detach().requires_grad_(True)
            logits = self.classifier(x, t)  # (B, K)
            # softmax in at least fp32 (a bf16 classifier under autocast), in float64 when given float64
            log_p = torch.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=-1)
            selected = log_p[torch.arange(x.shape[0], device=x.device), self.labels.to(x.device)]
            (grad,) = torch.autograd.grad(selected.sum(), x)  # samples are independent: per-sample gradients
        return self.scale * grad.to(x_t.dtype)


@dataclass
class CFG:
    """Classifier-free guidance (Ho & Salimans 2022, Eq. 6): eps = eps_u + s (eps_c - eps_u). The output is
    affine in eps at fixed (x_t, t), so the same combination of outputs is this one in eps space, for x0, v
    and score prediction too; s = 0 and s = 1 call the network once.

    Args:
        scale: s.
        interval: guide only where t_lo <= model time <= t_hi, the conditional model elsewhere
            (Kynkäänniemi et al. 2024); None guides everywhere.
        rescale: phi of Lin et al. 2024, Sec. 3.4: the guided eps is rescaled to the conditional eps's
            standard deviation per sample, mixed as phi * rescaled + (1 - phi) * guided (0: off).
        batching: ``joint``: one 2B forward pass (best on GPUs); ``split``: two passes of B (on CPUs, where a
            pass costs more than twice as much at twice the batch). The caller chooses (the sampler assembly:
            joint on CUDA, split elsewhere, unless told).
    """

    scale: float = 1.0
    interval: tuple[float, float] | None = None
    rescale: float = 0.0
    batching: Batching = "split"

    def __post_init__(self) -> None:
        if self.batching not in ("joint", "split"):  # the caller resolves lit-gen's "auto"
            raise ValueError(f"batching={self.batching!r} is not supported; choose one of ['joint', 'split']")
        if self.interval is not None and not 0 <= self.interval[0] <= self.interval[1]:
            raise ValueError(f"guidance_interval={tuple(self.interval)} must be (t_lo, t_hi) with 0 <= t_lo "
                             f"<= t_hi")
        if not 0 <= self.rescale <= 1:
            raise ValueError(f"guidance_rescale={self.rescale} must be in [0, 1]")


class ClassifierFree:
    """The output function of a conditional ``net(x, model_time, y)`` with :class:`CFG` applied; ``labels``
    (B,) classes or (B, L) captions' ids; None calls the network without them. With a learned variance,
    the conditional model's variance channels are kept."""

    def __init__(self, net: NetFn, sde: SDE, layout: OutputLayout, labels: torch.Tensor | None,
                 null_label: Null | None, cfg: CFG | None = None) -> None:
        self.net, self.sde, self.layout = net, sde, layout
        self.labels, self.null_label, self.cfg = labels, null_label, cfg or CFG()

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        s, y, mt = self.cfg.scale, self.labels, model_time(self.sde, t, x_t)
        if y is None or s == 1:
            return self.net(x_t, mt, y)
        null = null_like(y, self.null_label)
        if s == 0:
            return self.net(x_t, mt, null)
        inside = self._guided_here(mt)
        if not inside.any():
            return self.net(x_t, mt, y)
        if self.cfg.batching == "joint":  # one 2B pass
            out_c, out_u = self.net(torch.cat([x_t, x_t]), torch.cat([mt, mt]), torch.cat([y, null])).chunk(2)
        else:
            out_c, out_u = self.net(x_t, mt, y), self.net(x_t, mt, null)
        (pred_c, var_c), (pred_u, _) = self.layout.split(out_c), self.layout.split(out_u)
        pred = torch.lerp(pred_u, pred_c, s)  # pred_u + s (pred_c - pred_u), exact at s = 0 and 1
        if self.cfg.rescale > 0:
            pred = self._rescale(pred, pred_c, x_t, t)
        pred = torch.where(append_dims(inside, x_t.ndim), pred, pred_c)
        return self.layout.join(pred, var_c)

    def _guided_here(self, mt: torch.Tensor) -> torch.Tensor:
        """(B,) bool: where classifier-free guidance applies."""
        if self.cfg.interval is None:
            return torch.ones_like(mt, dtype=torch.bool)
        lo, hi = self.cfg.interval
        return (mt >= lo) & (mt <= hi)

    def _rescale(self, pred: torch.Tensor, pred_c: torch.Tensor, x_t: torch.Tensor,
                 t: torch.Tensor) -> torch.Tensor:
        # Lin et al. 2024, Sec. 3.4, in eps space: match the guided eps's std to the conditional one's
        prediction, c = self.layout.prediction, coefficients_for(self.layout, self.sde, t, x_t)
        eps = prediction.to_eps_x0(pred, x_t, *c)[0]
        eps_c = prediction.to_eps_x0(pred_c, x_t, *c)[0]
        dims = tuple(range(1, x_t.ndim))
        ratio = eps_c.std(dim=dims, keepdim=True) / eps.std(dim=dims, keepdim=True)
        eps = self.cfg.rescale * eps * ratio + (1 - self.cfg.rescale) * eps
        return prediction.from_eps(eps, x_t, *c)


class ClassifierShift:
    """Classifier guidance in eps space on any output function: eps <- eps - sigma_t s grad log p(y | x_t)
    (Dhariwal & Nichol 2021, Algorithm 2; the score + s grad log p of Song et al. 2021, Eq. 14)."""

    def __init__(self, fn: OutputFn, sde: SDE, layout: OutputLayout, guidance: ClassifierGuidance) -> None:
        self.fn, self.sde, self.layout, self.guidance = fn, sde, layout, guidance

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        out = self.fn(x_t, t)
        c = coefficients_for(self.layout, self.sde, t, x_t)
        eps_shift = -c.sigma * self.guidance.gradient(x_t, model_time(self.sde, t, x_t))
        pred, var = self.layout.split(out)
        pred = pred + self.layout.prediction.eps_coefficient(*c) * eps_shift
        return self.layout.join(pred, var)


def mean_shift(guidance: ClassifierGuidance,
               sde: SDE) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """s grad log p(y | x_t) at DDPM's integer steps n, the shift of an ancestral step's mean in units of its
    variance (Dhariwal & Nichol 2021, Algorithm 1)."""
    return lambda x, n: guidance.gradient(x, model_time(sde, sde.time_of_step(n).to(x.device), x))
