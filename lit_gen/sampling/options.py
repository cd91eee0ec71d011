"""The sampling options of the noise-process methods (DDPM, Improved DDPM, guidance, score SDEs, NCSN),
declared once: ``lit-gen sample`` builds its flags from this dataclass, the CLI's callbacks check theirs
against it at fit start, and the sampler assembly reads it."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Literal

from lit_gen.diffusion.samplers import SAMPLERS
from lit_gen.score.solvers import SOLVERS, solver_options

Sampler = Literal["ddpm", "ddim", "pc", "em", "reverse_diffusion", "ancestral", "langevin", "euler", "heun",
                  "midpoint", "ode", "rk45", "dpmpp2m"]
Spacing = Literal["linear", "quadratic", "logsnr", "leading", "trailing"]


@dataclass
class NoiseSampleOptions:
    """Sampling options of the diffusion and score models; None means the model's default.

    Args:
        sampler: ``ddpm`` (ancestral, respaced with ``steps``) or ``ddim`` on a DDPM checkpoint's steps; or a
            solver of ``lit_gen.score`` on the model's process: ``pc`` (predictor-corrector), ``em``
            (Euler-Maruyama), ``reverse_diffusion``, ``ancestral``, ``langevin`` (annealed Langevin, NCSN), or
            a probability-flow ODE solver: ``euler``, ``heun``, ``midpoint``, ``ode`` (adaptive RK45; also
            ``rk45``), ``dpmpp2m`` (DPM-Solver++(2M)).
        steps: sampling steps: a subsequence of a DDPM checkpoint's T steps, or the points of the solver's
            time grid (``ode`` / ``rk45`` step adaptively between them).
        spacing: how the steps are spread: ``linear`` or ``quadratic`` (denser near t = 0) in t, or ``logsnr``
            (uniform in log(alpha / sigma); the default of ``dpmpp2m``); on a DDPM checkpoint also diffusers'
            ``leading`` and ``trailing``.
        eta: DDIM noise scale: 0 deterministic, 1 the DDPM posterior variance.
        denoise: solvers: end with the Tweedie denoising step x0 = E[x0 | x_{t_min}] (one more network call).
        predictor: the predictor of ``pc``: ``reverse_diffusion``, ``ancestral`` or ``euler_maruyama``.
        snr: signal-to-noise ratio of the Langevin corrector of ``pc``.
        n_corrector: Langevin corrector steps per grid point of ``pc``.
        step_lr: epsilon of annealed Langevin (step size epsilon sigma_i^2 / sigma_L^2).
        n_steps_each: Langevin steps per noise level of annealed Langevin.
        rtol: relative tolerance of ``ode`` / ``rk45``.
        atol: absolute tolerance of ``ode`` / ``rk45``.
        order: 1 or 2 for ``dpmpp2m`` (order 1 is deterministic DDIM).
        guidance_scale: classifier-free guidance scale s: 0 unconditional, 1 conditional (no guidance),
            > 1 stronger; Ho & Salimans' w is s - 1. Needs a class-conditional model.
        guidance_interval: [t_lo, t_hi] in the network's time (DDPM's steps): classifier-free guidance only
            there, the conditional model elsewhere (Kynkäänniemi et al. 2024). Default: everywhere.
        guidance_rescale: phi in [0, 1] of Lin et al. 2024: rescale the guided eps to the conditional
            eps's spread (default 0: off).
        guidance_batching: the two passes of classifier-free guidance as ``joint`` (one forward of 2B,
            best on GPUs), ``split`` (two of B, faster on CPUs) or ``auto`` (joint on CUDA, split
            elsewhere; default).
        classifier_ckpt: a NoisyClassifier checkpoint for classifier guidance (Dhariwal & Nichol 2021),
            trained for this model's noise process.
        classifier_scale: classifier guidance scale s (default 1 with a classifier).
        classifier_form: ``auto``: ancestral ``ddpm`` shifts its mean by s Sigma grad log p(y|x_t)
            (Algorithm 1), other samplers shift eps by -s sigma_t grad (Algorithm 2; the score shift of Song
            et al. 2021, Eq. 14); or ``mean`` / ``eps``.
        num_candidates: a text-conditional model: images drawn per prompt (candidate j of prompt i depends
            only on (seed, i, j)), as DALL-E draws them.
        keep: the best candidates kept per prompt by ``clip_ckpt``'s score (default 1 with a CLIP, else all).
        clip_ckpt: a CLIP checkpoint that scores the candidates against their prompt and reranks them.
    """

    sampler: Sampler | None = None
    steps: int | None = None
    spacing: Spacing | None = None
    eta: float | None = None
    denoise: bool | None = None
    predictor: Literal["reverse_diffusion", "ancestral", "euler_maruyama"] | None = None
    snr: float | None = None
    n_corrector: int | None = None
    step_lr: float | None = None
    n_steps_each: int | None = None
    rtol: float | None = None
    atol: float | None = None
    order: int | None = None
    guidance_scale: float | None = None
    guidance_interval: tuple[float, float] | None = None
    guidance_rescale: float | None = None
    guidance_batching: Literal["auto", "joint", "split"] | None = None
    classifier_ckpt: str | None = None
    classifier_scale: float | None = None
    classifier_form: Literal["auto", "mean", "eps"] | None = None
    num_candidates: int | None = None
    keep: int | None = None
    clip_ckpt: str | None = None


#: the options of the solvers' constructors (derived from them, so none can be added and then dropped)
SOLVER_KEYS = tuple(sorted(set().union(*(solver_options(name) for name in SOLVERS))))
OPTIONS = frozenset(f.name for f in fields(NoiseSampleOptions))
SAMPLER_NAMES = tuple(sorted(SAMPLERS)) + tuple(sorted(SOLVERS))  # those between steps, then the solvers
