"""Guidance as a wrapper of the model function, so it composes with every sampler.

:class:`GuidedDenoiser` is a ``denoise_fn(x_t, t)`` for :func:`~lit_gen.diffusion.samplers.sample_loop` (and
any sampler that calls the model itself) that returns the network's output, in its own parameterisation,
with classifier-free guidance and/or the eps form of classifier guidance applied. Conventions:

- guidance scale s: 0 is the unconditional model, 1 the conditional one, > 1 stronger guidance (Ho &
  Salimans 2022 write w = s - 1);
- t is always the model's original integer step, also under respaced sampling.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch

from lit_gen.diffusion.gaussian import GaussianDiffusion, eps_x0_from_output, output_from_eps
from lit_gen.utils import append_dims

NetFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]  # (x_t, t, y) -> output
ClassifierFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x_t, t) -> logits (B, K)


def drop_labels(y: torch.Tensor, p_uncond: float, null_label: int, generator: torch.Generator | None = None):
    """Replace each label by ``null_label`` with probability ``p_uncond`` (condition dropout for
    classifier-free guidance, Ho & Salimans 2022, Algorithm 1). Draws from ``generator``, else from the
    (per-step seeded) global RNG."""
    if not 0 <= p_uncond <= 1:
        raise ValueError(f"p_uncond={p_uncond} must be in [0, 1]")
    drop = torch.rand(y.shape, generator=generator,
                      device=y.device if generator is None else generator.device)
    return torch.where(drop.to(y.device) < p_uncond, torch.full_like(y, null_label), y)


def eps_coefficient(alpha_bar_t: torch.Tensor, prediction_type: str, ndim: int) -> torch.Tensor:
    """d(output)/d(eps) at fixed x_t: the output shift that shifts eps by one. The output is affine in eps,
    so a shift of eps maps to a shift of the output by this factor."""
    a = append_dims(alpha_bar_t, ndim)
    if prediction_type == "eps":
        return torch.ones_like(a)
    if prediction_type == "x0":  # x0 = (x_t - sqrt(1 - abar) eps) / sqrt(abar)
        return -(1 - a).sqrt() / a.sqrt()
    if prediction_type == "v":  # eps = sqrt(1 - abar) x_t + sqrt(abar) v
        return 1 / a.sqrt()
    raise ValueError(f"prediction_type={prediction_type!r} is not supported; choose one of "
                     f"['eps', 'v', 'x0']")


class ClassifierGuidance:
    """s * grad_x log p(y | x_t, t) of a noisy classifier (Dhariwal & Nichol 2021, Sec. 4), taken with
    autograd inside the no-grad sampling loop.

    Args:
        classifier: logits of p(y | x_t, t) at the model's integer steps.
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


class GuidedDenoiser:
    """The model function with guidance, in the network's own parameterisation (eps, x0 or v; with a learned
    variance the prediction channels come first and the conditional model's variance channels are kept).

    Classifier-free guidance: eps = eps_u + s (eps_c - eps_u), with eps_c and eps_u from one batched 2B
    forward pass (Ho & Salimans 2022, Eq. 6), or two passes of B (``guidance_batching``). As the output is
    affine in eps at fixed (x_t, t), the same combination of the outputs is exactly this combination in eps
    space, for x0 and v prediction too. s = 0 and s = 1 call the network once, unconditionally and
    conditionally.

    Args:
        net: ``net(x_t, t, y)``; ``y`` = ``null_label`` is the unconditional model.
        diffusion: the process the model was trained on (alpha_bar at the original steps).
        prediction_type: ``eps``, ``x0`` or ``v``.
        learned_variance: the output has 2C channels, the prediction then the variance.
        labels: requested classes (B,), or None for an unconditional model.
        null_label: the label meaning "unconditional".
        guidance_scale: s of classifier-free guidance.
        guidance_interval: guide only at steps t_lo <= t <= t_hi, the conditional model elsewhere
            (Kynkäänniemi et al. 2024); None guides at every step.
        guidance_rescale: phi of Lin et al. 2024, Sec. 3.4: the guided eps is rescaled to the conditional
            eps's standard deviation per sample, mixed as phi * rescaled + (1 - phi) * guided (0: off).
        classifier: classifier guidance, or None.
        guidance_batching: ``joint``: one 2B forward pass (best on GPUs); ``split``: two passes of B (on CPUs,
            where a pass costs more than twice as much at twice the batch); ``auto``: joint on CUDA, split
            elsewhere. The outputs agree to float rounding.
        classifier_form: ``eps``: eps - sqrt(1 - abar_t) s grad log p(y|x_t) (Algorithm 2, any sampler);
            ``mean``: the ancestral sampler shifts its mean by Sigma s grad (Algorithm 1) through
            :meth:`mean_gradient`, and the output is left alone.
    """

    def __init__(
        self,
        net: NetFn,
        diffusion: GaussianDiffusion,
        prediction_type: str = "eps",
        learned_variance: bool = False,
        labels: torch.Tensor | None = None,
        null_label: int | None = None,
        guidance_scale: float = 1.0,
        guidance_interval: tuple[int, int] | None = None,
        guidance_rescale: float = 0.0,
        classifier: ClassifierGuidance | None = None,
        classifier_form: Literal["eps", "mean"] = "eps",
        guidance_batching: Literal["auto", "joint", "split"] = "auto",
    ) -> None:
        if guidance_batching not in ("auto", "joint", "split"):
            raise ValueError(f"guidance_batching={guidance_batching!r} is not supported; choose one of "
                             "['auto', 'joint', 'split']")
        if classifier_form not in ("eps", "mean"):
            raise ValueError(f"classifier_form={classifier_form!r} is not supported; choose one of "
                             f"['eps', 'mean']")
        if guidance_interval is not None and not 0 <= guidance_interval[0] <= guidance_interval[1]:
            raise ValueError(f"guidance_interval={tuple(guidance_interval)} must be (t_lo, t_hi) with 0 <= "
                             f"t_lo <= t_hi")
        if not 0 <= guidance_rescale <= 1:
            raise ValueError(f"guidance_rescale={guidance_rescale} must be in [0, 1]")
        self.net, self.diffusion, self.prediction_type = net, diffusion, prediction_type
        self.learned_variance = learned_variance
        self.labels, self.null_label = labels, null_label
        self.guidance_scale, self.guidance_interval = guidance_scale, guidance_interval
        self.guidance_rescale = guidance_rescale
        self.classifier, self.classifier_form = classifier, classifier_form
        self.guidance_batching = guidance_batching

    # --- classifier-free guidance --------------------------------------------------------------------
    def _guided_here(self, t: torch.Tensor) -> torch.Tensor:
        """(B,) bool: the steps at which classifier-free guidance applies."""
        if self.guidance_interval is None:
            return torch.ones_like(t, dtype=torch.bool)
        lo, hi = self.guidance_interval
        return (t >= lo) & (t <= hi)

    def _split(self, out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        return out.chunk(2, dim=1) if self.learned_variance else (out, None)

    def classifier_free(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        s, y = self.guidance_scale, self.labels
        if y is None or s == 1:
            return self.net(x_t, t, y)
        null = torch.full_like(y, self.null_label)
        if s == 0:
            return self.net(x_t, t, null)
        inside = self._guided_here(t)
        if not inside.any():
            return self.net(x_t, t, y)
        batching = self.guidance_batching
        joint = batching == "joint" or (batching == "auto" and x_t.device.type == "cuda")
        if joint:  # one 2B pass
            out_c, out_u = self.net(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([y, null])).chunk(2)
        else:
            out_c, out_u = self.net(x_t, t, y), self.net(x_t, t, null)
        (pred_c, var_c), (pred_u, _) = self._split(out_c), self._split(out_u)
        pred = torch.lerp(pred_u, pred_c, s)  # pred_u + s (pred_c - pred_u), exact at s = 0 and 1
        if self.guidance_rescale > 0:
            pred = self._rescale(pred, pred_c, x_t, t)
        pred = torch.where(append_dims(inside, x_t.ndim), pred, pred_c)
        return pred if var_c is None else torch.cat([pred, var_c], dim=1)

    def _rescale(self, pred: torch.Tensor, pred_c: torch.Tensor, x_t: torch.Tensor,
                 t: torch.Tensor) -> torch.Tensor:
        # Lin et al. 2024, Sec. 3.4, in eps space: match the guided eps's std to the conditional one's
        abar = self.diffusion.alpha_bar[t]
        eps = eps_x0_from_output(pred, x_t, abar, self.prediction_type)[0]
        eps_c = eps_x0_from_output(pred_c, x_t, abar, self.prediction_type)[0]
        dims = tuple(range(1, x_t.ndim))
        ratio = eps_c.std(dim=dims, keepdim=True) / eps.std(dim=dims, keepdim=True)
        eps = self.guidance_rescale * eps * ratio + (1 - self.guidance_rescale) * eps
        return output_from_eps(eps, x_t, abar, self.prediction_type)

    # --- the model function --------------------------------------------------------------------------
    def __call__(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        out = self.classifier_free(x_t, t)
        if self.classifier is None or self.classifier_form != "eps":
            return out
        # Dhariwal & Nichol 2021, Algorithm 2: eps <- eps - sqrt(1 - abar_t) s grad log p(y | x_t)
        abar = self.diffusion.alpha_bar[t].to(x_t.dtype)
        eps_shift = -append_dims((1 - abar).sqrt(), x_t.ndim) * self.classifier.gradient(x_t, t)
        pred, var = self._split(out)
        pred = pred + eps_coefficient(abar, self.prediction_type, x_t.ndim) * eps_shift
        return pred if var is None else torch.cat([pred, var], dim=1)

    def mean_gradient(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor | None:
        """s grad log p(y | x_t) for an ancestral sampler's mean shift (Algorithm 1), or None."""
        if self.classifier is None or self.classifier_form != "mean":
            return None
        return self.classifier.gradient(x_t, t)
