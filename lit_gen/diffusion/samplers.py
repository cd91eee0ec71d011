"""Samplers for the Gaussian diffusion: one loop, many update rules.

A sampler picks K of the T training steps (``set_timesteps``) and updates x_t -> x_{t'} (``step``) from a
model output, as diffusers' schedulers do; the loop in :func:`sample_loop` is shared, and guidance
changes the model output, never the sampler.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from tqdm.auto import tqdm

from lit_gen.diffusion.gaussian import GaussianDiffusion, eps_x0_from_output
from lit_gen.process.grid import timestep_subsequence
from lit_gen.process.prediction import OutputLayout
from lit_gen.utils import Generator, append_dims, randn

Spacing = Literal["linear", "quadratic"]


@dataclass
class StepOutput:
    x_next: torch.Tensor  # the next sample in sampling order, x_{t'} with t' < t (B, ...)
    pred_x0: torch.Tensor  # x0 predicted at this step (B, ...)
    variance: torch.Tensor | None = None  # Sigma of a Gaussian step (broadcastable), None for others


class DiffusionSampler(nn.Module):
    """Common state: the kept steps and alpha_bar at each of them and at the step that follows.

    Args:
        diffusion: the Gaussian process the model was trained on.
        prediction_type: what the network predicts: ``eps``, ``x0`` or ``v``.
        clip_denoised: clamp the predicted x0 to [-1, 1] (images).
    """

    def __init__(
        self,
        diffusion: GaussianDiffusion,
        prediction_type: str = "eps",
        clip_denoised: bool = True,
        learned_variance: bool = False,
    ) -> None:
        super().__init__()
        self.diffusion = diffusion
        self.num_timesteps = diffusion.num_timesteps
        self.prediction_type = prediction_type
        self.clip_denoised = clip_denoised
        self.learned_variance = learned_variance
        self.layout = OutputLayout(prediction_type, learned_variance)
        self.set_timesteps(diffusion.num_timesteps)

    def set_timesteps(
        self, num_steps: int | None = None, spacing: str = "linear", timesteps: Sequence[int] | None = None
    ) -> None:
        """Keep ``num_steps`` of the T steps (all when None), or exactly ``timesteps`` (strictly descending);
        alpha_bar after the last kept step is 1, so the last update lands on x0."""
        device = self.diffusion.alpha_bar.device
        if timesteps is None:
            timesteps = timestep_subsequence(self.num_timesteps, num_steps or self.num_timesteps, spacing)
        timesteps = torch.as_tensor(timesteps, dtype=torch.long, device=device)
        if (timesteps.diff() >= 0).any() or timesteps.min() < 0 or timesteps.max() >= self.num_timesteps:
            raise ValueError(f"timesteps must be strictly descending within [0, {self.num_timesteps - 1}]")
        alpha_bar_t = self.diffusion.alpha_bar[timesteps]  # (K,) float64
        self.register_buffer("timesteps", timesteps, persistent=False)  # (K,) descending
        self.register_buffer("alpha_bar_t", alpha_bar_t, persistent=False)
        # alpha_bar at the step each update lands on (the next in sampling order; 1 after the last)
        self.register_buffer("alpha_bar_next", torch.cat([alpha_bar_t[1:], alpha_bar_t.new_ones(1)]),
                             persistent=False)
        # the process on the kept steps, ascending (respaced index k = K - 1 - i for loop index i)
        self.process = self.diffusion.respaced(timesteps.flip(0))

    def predict_from_level(self, model_output: torch.Tensor, alpha_bar: torch.Tensor,
                           x: torch.Tensor) -> torch.Tensor:
        """eps from a model output for a point x at noise level alpha_bar (no clipping)."""
        return eps_x0_from_output(self.layout.split(model_output)[0], x, alpha_bar.expand(x.shape[0]),
                                  self.prediction_type)[0]

    def predict(self, model_output: torch.Tensor, index: int,
                x_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(eps, x0) at step ``index``; with clipping, eps is recomputed from the clipped x0."""
        abar = self.alpha_bar_t[index].expand(x_t.shape[0])
        eps, x0 = eps_x0_from_output(self.layout.split(model_output)[0], x_t, abar, self.prediction_type)
        if self.clip_denoised:
            x0 = x0.clamp(-1, 1)
            a = append_dims(abar.to(x_t.dtype), x_t.ndim)
            eps = (x_t - a.sqrt() * x0) / (1 - a).sqrt()
        return eps, x0

    #: the update draws from a Gaussian whose mean classifier guidance may shift (Dhariwal & Nichol 2021,
    #: Algorithm 1): its step returns the variance
    has_mean = False

    def step(
        self, model_output: torch.Tensor, index: int, x_t: torch.Tensor, generator: Generator = None
    ) -> StepOutput:
        """x_t -> x_{t'} from the model output at step ``index``."""
        raise NotImplementedError


class DDPMSampler(DiffusionSampler):
    """Ancestral sampling (Ho et al. 2020, Algorithm 2) over any subsequence of steps.

    On a subsequence the betas are recomputed from alpha_bar (Nichol & Dhariwal 2021, Sec. 4), so K = T
    is exactly DDPM; a learned variance is interpolated between the respaced beta and beta_tilde.

    Args:
        variance: ``small`` is the posterior variance beta_tilde, ``large`` is beta (Ho et al. 2020,
            Sec. 3.2), ``learned`` reads v from the second half of the model's channels.
    """

    def __init__(
        self,
        diffusion: GaussianDiffusion,
        prediction_type: str = "eps",
        clip_denoised: bool = True,
        variance: Literal["small", "large", "learned"] = "small",
    ) -> None:
        if variance not in ("small", "large", "learned"):
            raise ValueError(f"variance={variance!r} is not supported; choose one of "
                             f"['large', 'learned', 'small']")
        self.variance = variance
        super().__init__(diffusion, prediction_type, clip_denoised, learned_variance=variance == "learned")

    has_mean = True

    def step(
        self, model_output: torch.Tensor, index: int, x_t: torch.Tensor, generator: Generator = None
    ) -> StepOutput:
        # 1. the respaced step k and the model's reverse Gaussian p(x_{k-1} | x_k) (Ho et al. 2020, Eqs. 6-7)
        k = torch.full((x_t.shape[0],), len(self.timesteps) - 1 - index, device=x_t.device, dtype=torch.long)
        mean, log_var, x0 = self.process.p_mean_logvar(
            model_output, x_t, k, self.prediction_type, self.variance, self.clip_denoised
        )
        # 2. no noise on the last step (it lands on x0)
        if index == len(self.timesteps) - 1:
            return StepOutput(mean, x0, log_var.exp())
        noise = randn(x_t.shape, generator, x_t.device, x_t.dtype)
        return StepOutput(mean + (0.5 * log_var).exp() * noise, x0, log_var.exp())


class DDIMSampler(DiffusionSampler):
    """DDIM (Song et al. 2021, Eq. 12) with sigma from Eq. 16 scaled by ``eta``: eta = 0 is deterministic,
    eta = 1 over all T steps has the DDPM posterior variance.

    Args:
        eta: scale of the noise, sigma_t = eta * sqrt((1 - abar_prev)/(1 - abar_t)) * sqrt(1 -
            abar_t/abar_prev).
    """

    def __init__(
        self,
        diffusion: GaussianDiffusion,
        prediction_type: str = "eps",
        clip_denoised: bool = True,
        eta: float = 0.0,
        variance: str = "small",
    ) -> None:
        if eta < 0:
            raise ValueError(f"eta={eta} must be >= 0")
        self.eta = eta
        super().__init__(diffusion, prediction_type, clip_denoised, learned_variance=variance == "learned")

    def step(
        self, model_output: torch.Tensor, index: int, x_t: torch.Tensor, generator: Generator = None
    ) -> StepOutput:
        # Song et al. 2021, Eq. 12, from alpha_bar_t to alpha_bar_next (the paper's alpha_{t-1})
        eps, x0 = self.predict(model_output, index, x_t)
        abar_t, abar_next = self.alpha_bar_t[index], self.alpha_bar_next[index]
        sigma = self.eta * ((1 - abar_next) / (1 - abar_t) * (1 - abar_t / abar_next)).sqrt()
        direction = (1 - abar_next - sigma**2).clamp(min=0).sqrt()  # "direction pointing to x_t"
        x_next = abar_next.sqrt().to(x_t.dtype) * x0 + direction.to(x_t.dtype) * eps
        if self.eta > 0 and index < len(self.timesteps) - 1:
            x_next = x_next + sigma.to(x_t.dtype) * randn(x_t.shape, generator, x_t.device, x_t.dtype)
        return StepOutput(x_next, x0)


SAMPLERS: dict[str, type[DiffusionSampler]] = {"ddpm": DDPMSampler, "ddim": DDIMSampler}


def make_sampler(name: str, diffusion: GaussianDiffusion, **options) -> DiffusionSampler:
    """Build a sampler by name ('ddpm' or 'ddim') on the diffusion's device."""
    if name not in SAMPLERS:
        raise ValueError(f"sampler {name!r} is not supported; choose one of {sorted(SAMPLERS)}")
    return SAMPLERS[name](diffusion, **options)


DenoiseFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x_t, integer steps (B,)) -> output


@torch.no_grad()
def sample_loop(
    denoise_fn: DenoiseFn,
    sampler: DiffusionSampler,
    x_T: torch.Tensor,
    generator: Generator = None,
    progress: bool = False,
    trajectory_points: int = 0,
    mean_shift: DenoiseFn | None = None,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Run ``sampler`` from x_T; ``denoise_fn(x_t, t)`` returns the network output at the model's integer
    steps t (B,) (guided: :func:`lit_gen.process.at_steps` of a guided output function). ``mean_shift(x_t,
    t)``, on a sampler with ``has_mean``, moves each Gaussian step's mean by Sigma times it (classifier
    guidance's mean form, Dhariwal & Nichol 2021, Algorithm 1).

    Returns the final sample and, if ``trajectory_points`` > 0, that many predicted-x0 snapshots
    taken at evenly spaced steps (the denoising trajectory).
    """
    if mean_shift is not None and not sampler.has_mean:
        raise ValueError(f"classifier_form='mean' needs the ancestral sampler 'ddpm', not "
                         f"{type(sampler).__name__}")
    x = x_T
    num = len(sampler.timesteps)
    keep = set(torch.linspace(0, num - 1,
                              trajectory_points).round().long().tolist()) if trajectory_points else set()
    trajectory = []
    for i, t in enumerate(tqdm(sampler.timesteps.tolist(), desc="sampling", disable=not progress,
                               leave=False)):
        t_batch = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
        out = sampler.step(denoise_fn(x, t_batch), i, x, generator)
        x_next = out.x_next
        if mean_shift is not None:
            x_next = x_next + out.variance * mean_shift(x, t_batch)
        x = x_next
        if i in keep:
            trajectory.append(out.pred_x0)
    return x, trajectory


@torch.no_grad()
def invert_loop(
    denoise_fn: DenoiseFn, sampler: DDIMSampler, x0: torch.Tensor, progress: bool = False
) -> torch.Tensor:
    """Deterministic DDIM inversion x0 -> x_T (Song et al. 2021, Sec. 4.3): run the eta = 0 update
    backwards, from alpha_bar = 1 up through the kept steps, with eps evaluated at the current point."""
    if sampler.eta != 0:
        raise ValueError(f"DDIM inversion is deterministic only with eta=0, got eta={sampler.eta}")
    x = x0
    for i in tqdm(reversed(range(len(sampler.timesteps))), desc="inverting", disable=not progress,
                  leave=False):
        t_batch = torch.full((x.shape[0],), int(sampler.timesteps[i]), device=x.device, dtype=torch.long)
        abar_from, abar_to = sampler.alpha_bar_next[i], sampler.alpha_bar_t[i]
        eps = sampler.predict_from_level(denoise_fn(x, t_batch), abar_from, x)
        x0_pred = (x - (1 - abar_from).sqrt().to(x.dtype) * eps) / abar_from.sqrt().to(x.dtype)
        x = abar_to.sqrt().to(x.dtype) * x0_pred + (1 - abar_to).sqrt().to(x.dtype) * eps
    return x


def slerp(z0: torch.Tensor, z1: torch.Tensor, alpha: float | torch.Tensor) -> torch.Tensor:
    """Spherical interpolation between latents, with the angle computed per sample (B, ...)."""
    flat0, flat1 = z0.flatten(1), z1.flatten(1)
    cos = (flat0 * flat1).sum(1) / (flat0.norm(dim=1) * flat1.norm(dim=1))
    theta = append_dims(torch.arccos(cos.clamp(-1, 1)), z0.ndim)  # (B, 1, ...)
    alpha = torch.as_tensor(alpha, dtype=z0.dtype, device=z0.device)
    alpha = append_dims(alpha.expand(z0.shape[0]) if alpha.ndim == 0 else alpha, z0.ndim)
    sin = torch.sin(theta)
    linear = (1 - alpha) * z0 + alpha * z1  # parallel latents: the sphere degenerates to the line
    return torch.where(sin.abs() < 1e-6, linear,
                       (torch.sin((1 - alpha) * theta) * z0 + torch.sin(alpha * theta) * z1) / sin)


def slerp_grid(corners: torch.Tensor, n: int) -> torch.Tensor:
    """An n x n grid (n*n, ...) of latents: slerp down the left (corners 0 -> 2) and right (1 -> 3) edges,
    then across each row."""
    a = torch.linspace(0, 1, n, dtype=corners.dtype, device=corners.device)
    left = slerp(corners[0:1].expand(n, *corners.shape[1:]), corners[2:3].expand(n, *corners.shape[1:]), a)
    right = slerp(corners[1:2].expand(n, *corners.shape[1:]), corners[3:4].expand(n, *corners.shape[1:]), a)
    rows = [slerp(left[i : i + 1].expand(n, *corners.shape[1:]),
                  right[i : i + 1].expand(n, *corners.shape[1:]), a)
            for i in range(n)]
    return torch.cat(rows)
