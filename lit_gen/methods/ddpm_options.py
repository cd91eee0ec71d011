"""The sampling options of the diffusion models (DDPM, DDIM, Improved DDPM, guidance): ``lit-gen sample``'s
flags for their checkpoints, beside the score solvers' own."""

from __future__ import annotations

from dataclasses import dataclass

from lit_gen.score.options import SolverOptions


@dataclass
class DiffusionSampleOptions(SolverOptions):
    """Sampling options of the diffusion models; None means the model's default.

    Args:
        sampler: ``ddpm`` (ancestral, respaced with ``steps``) or ``ddim``, or any sampler of
            ``lit_gen.score`` on the model's VP process (``pc``, ``em``, ``ancestral``, ``euler``,
            ``heun``, ``ode``, ``dpmpp2m``, ...; their options are listed there).
        steps: sampling steps, a subsequence of the T training steps (default: the model's).
        eta: DDIM noise scale: 0 deterministic, 1 the DDPM posterior variance.
        spacing: how the steps are spread: ``linear`` or ``quadratic``.
        guidance_scale: classifier-free guidance scale s: 0 unconditional, 1 conditional (no guidance),
            > 1 stronger; Ho & Salimans' w is s - 1. Needs a class-conditional model.
        guidance_interval: [t_lo, t_hi]: classifier-free guidance only at steps t_lo <= t <= t_hi, the
            conditional model elsewhere (Kynkäänniemi et al. 2024). Default: every step.
        guidance_rescale: phi in [0, 1] of Lin et al. 2024: rescale the guided eps to the conditional
            eps's spread (default 0: off).
        guidance_batching: the two passes of classifier-free guidance as ``joint`` (one forward of 2B,
            best on GPUs), ``split`` (two of B, faster on CPUs) or ``auto`` (joint on CUDA, split
            elsewhere; default).
        classifier_ckpt: a NoisyClassifier checkpoint for classifier guidance (Dhariwal & Nichol 2021),
            trained for this model's noise process.
        classifier_scale: classifier guidance scale s (default 1 with a classifier).
        classifier_form: ``auto``: ancestral ``ddpm`` shifts its mean by s Sigma grad log p(y|x_t)
            (Algorithm 1), other samplers shift eps by -s sqrt(1 - alpha_bar) grad (Algorithm 2);
            or ``mean`` / ``eps``.
    """

    sampler: str | None = None
    steps: int | None = None
    eta: float | None = None
    spacing: str | None = None
    guidance_scale: float | None = None
    guidance_interval: tuple[int, int] | None = None
    guidance_rescale: float | None = None
    guidance_batching: str | None = None
    classifier_ckpt: str | None = None
    classifier_scale: float | None = None
    classifier_form: str | None = None
