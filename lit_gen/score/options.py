"""The sampling options of the solver-owned samplers, declared once for every method that offers them
(score models, and DDPM / Improved DDPM checkpoints through their VP process), and the one function that
turns options into a solve."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lit_gen.score.model import ScoreModel
from lit_gen.score.solvers import SOLVERS, make_solver, solve, solver_options
from lit_gen.utils import Generator


@dataclass
class SolverOptions:
    """Sampling options of the score-based samplers; None means the model's default.

    Args:
        sampler: ``pc`` (predictor-corrector), ``em`` (Euler-Maruyama), ``reverse_diffusion``, ``ancestral``,
            ``langevin`` (annealed Langevin, NCSN), or a probability-flow ODE solver: ``euler``, ``heun``,
            ``ode`` (adaptive RK45) or ``dpmpp2m`` (DPM-Solver++(2M)).
        steps: points of the time grid from T down to t_min (the NFE of each sampler is in
            ``lit_gen.score.solvers``; ``ode`` steps adaptively between them).
        spacing: the grid: ``linear`` or ``quadratic`` (denser near t_min) in t, or ``logsnr`` (uniform in
            log(alpha / sigma); the default of ``dpmpp2m``).
        denoise: end with the Tweedie denoising step x0 = E[x0 | x_{t_min}] (one more network call).
        predictor: the predictor of ``pc``: ``reverse_diffusion``, ``ancestral`` or ``euler_maruyama``.
        snr: signal-to-noise ratio of the Langevin corrector of ``pc``.
        n_corrector: Langevin corrector steps per grid point of ``pc``.
        step_lr: epsilon of annealed Langevin (step size epsilon sigma_i^2 / sigma_L^2).
        n_steps_each: Langevin steps per noise level of annealed Langevin.
        rtol: relative tolerance of ``ode``.
        atol: absolute tolerance of ``ode``.
        order: 1 or 2 for ``dpmpp2m`` (order 1 is deterministic DDIM).
    """

    sampler: str | None = None
    steps: int | None = None
    spacing: str | None = None
    denoise: bool | None = None
    predictor: str | None = None
    snr: float | None = None
    n_corrector: int | None = None
    step_lr: float | None = None
    n_steps_each: int | None = None
    rtol: float | None = None
    atol: float | None = None
    order: int | None = None


SOLVER_KEYS = ("predictor", "snr", "n_corrector", "step_lr", "n_steps_each", "rtol", "atol", "order")


def solver_from_options(options: dict, defaults: dict, sde=None):
    """The sampler named in ``options`` (else ``defaults``) with its options: those given are checked against
    what it takes; ``defaults`` fill in only the ones it takes. With ``sde``, also checked against the
    process."""
    name = options.get("sampler") or defaults["sampler"]
    if name not in SOLVERS:
        make_solver(name)  # the one-line error naming the samplers
    given = {k: options[k] for k in SOLVER_KEYS if options.get(k) is not None}
    takes = solver_options(name)
    filled = {k: v for k, v in defaults.items() if k in takes and k not in given and v is not None}
    solver = make_solver(name, **given, **filled)  # raises for a given option the sampler does not take
    if sde is not None:
        solver.check(sde)
    return solver


def time_grid(sde, options: dict, defaults: dict) -> torch.Tensor:
    """The grid of ``options`` (``steps``, ``spacing``); the adaptive ``ode`` defaults to the two end
    points."""
    name = options.get("sampler") or defaults["sampler"]
    steps = options.get("steps") or (2 if name == "ode" else defaults["steps"])
    return sde.time_grid(steps, options.get("spacing") or ("logsnr" if name == "dpmpp2m" else "linear"))


def solver_sample(
    model: ScoreModel,
    options: dict,
    defaults: dict,
    x_T: torch.Tensor,
    generator: Generator = None,
    progress: bool = False,
    trajectory_points: int = 0,
    inpaint: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Sample with the solver of ``options`` on ``model``'s SDE; ``defaults`` holds the method's ``sampler``,
    ``steps``, ``denoise`` and solver defaults."""
    solver = solver_from_options(options, defaults)
    times = time_grid(model.sde, options, defaults)
    denoise = defaults["denoise"] if options.get("denoise") is None else options["denoise"]
    return solve(model, solver, x_T, times, generator, denoise, progress, trajectory_points, inpaint)
