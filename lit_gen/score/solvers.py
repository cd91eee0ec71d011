"""Samplers that own the model calls: predictors, the Langevin corrector, predictor-corrector, annealed
Langevin, and probability-flow ODE solvers, all run by one loop, :func:`solve`.

Protocol. A grid of times t_0 = T > t_1 > ... > t_{K-1} = t_min (``SDE.time_grid``) is visited point by point;
at each point the solver is called once, ``step(model, x, t, t_next, generator)``, and may call the model (a
:class:`~lit_gen.process.ModelFunction`) as often as it needs; ``t_next`` is None at the last point. After
the last point the loop removes the remaining noise with one Tweedie step, x0 = E[x0 | x_{t_min}] (the
"final noise removal" of score_sde and NCSNv2; ``denoise=False`` keeps x_{t_min}). Every time is float64 (B,).

Predictor-corrector order (Song et al. 2021, Algorithm 2 / 3): at each grid point first ``n_corrector``
Langevin corrector steps at t, then the predictor from t to t_next; at the last point the corrector alone.
With K grid points a sampler therefore makes, per batch:

- em, reverse_diffusion, ancestral, euler, dpmpp2m: K - 1 calls, plus 1 to denoise;
- pc: (K - 1)(n_corrector + 1) + n_corrector, plus 1;
- heun: 2 (K - 1), plus 1;  langevin (annealed): K n_steps_each, plus 1;
- ode (adaptive RK45): whatever the error control needs; read ``model.nfe``.
"""

from __future__ import annotations

import inspect
import math

import torch
from tqdm.auto import tqdm

from lit_gen.process.model import ModelFunction
from lit_gen.utils import Generator, append_dims, randn


def _at(t: float | torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Time t as a float64 batch (B,) on x's device."""
    return torch.full((x.shape[0],), float(t), dtype=torch.float64, device=x.device)


def _dims(a: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return append_dims(a.to(x.dtype), x.ndim)


class Solver:
    """Base of the samplers of :func:`solve`."""

    def check(self, sde) -> None:
        """Raise a one-line ValueError if this sampler cannot run on ``sde`` (called before any sampling)."""

    def reset(self, times: torch.Tensor) -> None:
        """Called before a solve with its grid (K,) (multistep solvers clear their history here)."""

    def step(self, model: ModelFunction, x: torch.Tensor, t: float, t_next: float | None,
             generator: Generator):
        raise NotImplementedError


# --- predictors ----------------------------------------------------------------------------------------
class EulerMaruyama(Solver):
    """Euler-Maruyama on the reverse SDE (Song et al. 2021, Eq. 6): x <- x + (f x - g^2 score) dt + g
    sqrt(|dt|) z."""

    def step(self, model, x, t, t_next, generator):
        if t_next is None:
            return x
        tb = _at(t, x)
        dt = t_next - t  # < 0
        drift = model.sde.reverse_drift(x, tb, model.score(x, tb))
        g = model.sde.sde(x, tb)[1]
        return x + drift * dt + _dims(g, x) * math.sqrt(-dt) * randn(x.shape, generator, x.device, x.dtype)


class ReverseDiffusion(Solver):
    """The reverse of the SDE's own discretisation (Song et al. 2021, Eq. 46): x <- x - f_i + G_i^2 score +
    G_i z."""

    def step(self, model, x, t, t_next, generator):
        if t_next is None:
            return x
        tb = _at(t, x)
        f, G = model.sde.discretize(x, tb, _at(t_next, x))
        mean = x - f + _dims(G**2, x) * model.score(x, tb)
        return mean + _dims(G, x) * randn(x.shape, generator, x.device, x.dtype)


class Ancestral(Solver):
    """Ancestral sampling from q(x_next | x_t, x0 = E[x0 | x_t]) for any of the Gaussian kernels: with x_t = a
    x_next + b z, a = alpha_t / alpha_next, b^2 = sigma_t^2 - a^2 sigma_next^2, the posterior has mean (a
    sigma_next^2 x_t + alpha_next b^2 x0) / sigma_t^2 and variance sigma_next^2 b^2 / sigma_t^2. On a DDPM
    grid it is DDPM's ancestral step (Ho et al. 2020, Eqs. 6-7); on VE it is SMLD's (Song et al. 2021, Eq.
    47)."""

    def step(self, model, x, t, t_next, generator):
        if t_next is None:
            return x
        tb, nb = _at(t, x), _at(t_next, x)
        sde = model.sde
        alpha_t, sigma_t, alpha_n, sigma_n = sde.alpha(tb), sde.sigma(tb), sde.alpha(nb), sde.sigma(nb)
        a = alpha_t / alpha_n
        b2 = (sigma_t**2 - a**2 * sigma_n**2).clamp(min=0)
        x0 = model.x0(x, tb)
        mean = _dims(a * sigma_n**2 / sigma_t**2, x) * x + _dims(alpha_n * b2 / sigma_t**2, x) * x0
        std = (sigma_n**2 * b2 / sigma_t**2).sqrt()
        return mean + _dims(std, x) * randn(x.shape, generator, x.device, x.dtype)


PREDICTORS = {"euler_maruyama": EulerMaruyama, "reverse_diffusion": ReverseDiffusion, "ancestral": Ancestral}


# --- Langevin ------------------------------------------------------------------------------------------
def langevin_step(x: torch.Tensor, score: torch.Tensor, z: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
    """One Langevin step x + step score + sqrt(2 step) z, step (B,)."""
    return x + _dims(step, x) * score + _dims((2 * step).sqrt(), x) * z


class LangevinCorrector(Solver):
    """Langevin MCMC at fixed t with the step size set by a signal-to-noise ratio (Song et al. 2021,
    Algorithm 5): step = 2 alpha_i (snr ||z|| / ||score||)^2.

    The norms are averaged over the batch, as in score_sde: per-sample norms give an unbounded step to a
    sample that sits at a mode (||score|| ~ 0), which in low dimension blows the chain up. PC samples
    therefore depend on the other samples of their batch (the other samplers' do not).

    Args:
        snr: the target signal-to-noise ratio r (0.16 for VE on CIFAR-10, 0.01 for VP in the paper).
        n_corrector: corrector steps per grid point.
    """

    def __init__(self, snr: float = 0.16, n_corrector: int = 1) -> None:
        if snr <= 0:
            raise ValueError(f"snr={snr} must be > 0")
        if n_corrector < 0:
            raise ValueError(f"n_corrector={n_corrector} must be >= 0")
        self.snr, self.n_corrector = snr, n_corrector

    def correct(self, model, x, t, generator):
        tb = _at(t, x)
        alpha = model.sde.langevin_alpha(tb).to(device=x.device, dtype=x.dtype)
        for _ in range(self.n_corrector):
            grad = model.score(x, tb)
            z = randn(x.shape, generator, x.device, x.dtype)
            ratio = z.flatten(1).norm(dim=1).mean() / grad.flatten(1).norm(dim=1).mean().clamp(min=1e-12)
            x = langevin_step(x, grad, z, 2 * alpha * (self.snr * ratio) ** 2)
        return x

    def step(self, model, x, t, t_next, generator):
        return self.correct(model, x, t, generator)


class PredictorCorrector(Solver):
    """Predictor-corrector sampling (Song et al. 2021, Sec. 4.2): at each grid point ``n_corrector`` Langevin
    steps at t, then the predictor to the next point.

    Args:
        predictor: ``reverse_diffusion`` (the paper's default), ``ancestral`` or ``euler_maruyama``.
        snr: see :class:`LangevinCorrector`.
        n_corrector: see :class:`LangevinCorrector`.
    """

    def __init__(self, predictor: str = "reverse_diffusion", snr: float = 0.16, n_corrector: int = 1) -> None:
        if predictor not in PREDICTORS:
            raise ValueError(f"predictor={predictor!r} is not supported; choose one of {sorted(PREDICTORS)}")
        self.predictor, self.corrector = PREDICTORS[predictor](), LangevinCorrector(snr, n_corrector)

    def step(self, model, x, t, t_next, generator):
        x = self.corrector.correct(model, x, t, generator)
        return self.predictor.step(model, x, t, t_next, generator)


class AnnealedLangevin(Solver):
    """Annealed Langevin dynamics (Song & Ermon 2019, Algorithm 1): at each noise level sigma_i of the grid,
    ``n_steps_each`` steps x <- x + (a_i / 2) score + sqrt(a_i) z with a_i = step_lr sigma_i^2 / sigma_L^2,
    sigma_L the last level; :func:`solve` then takes the final denoising step x + sigma_L^2 score (Tweedie's
    formula; Jolicoeur-Martineau et al. 2021, used by NCSNv2).

    Args:
        step_lr: epsilon (2e-5 in the paper for sigma_L = 0.01).
        n_steps_each: T, Langevin steps per noise level (100 in the paper).
    """

    def __init__(self, step_lr: float = 2e-5, n_steps_each: int = 100) -> None:
        if step_lr <= 0 or n_steps_each < 1:
            raise ValueError(f"step_lr={step_lr} must be > 0 and n_steps_each={n_steps_each} >= 1")
        self.step_lr, self.n_steps_each = step_lr, n_steps_each

    def reset(self, times):
        self._t_last = float(times[-1])

    def check(self, sde) -> None:
        # the step sizes a_i ~ sigma_i^2 assume x_t = x0 + sigma z; on VP / sub-VP they blow up or stall
        if not torch.allclose(sde.alpha(torch.tensor([0.5, 1.0], dtype=torch.float64)),
                              torch.ones(2, dtype=torch.float64)):
            raise ValueError(f"annealed Langevin ('langevin') is NCSN's sampler for a variance-exploding "
                             f"process; {sde!r} is not one: use 'pc' (Langevin corrector with snr) or "
                             f"another sampler")

    def step(self, model, x, t, t_next, generator):
        tb = _at(t, x)
        sigma, sigma_last = model.sde.sigma(tb), model.sde.sigma(_at(self._t_last, x))
        a = self.step_lr * sigma**2 / sigma_last**2  # (B,)
        for _ in range(self.n_steps_each):
            z = randn(x.shape, generator, x.device, x.dtype)
            x = langevin_step(x, model.score(x, tb), z, a.to(x.dtype) / 2)
        return x


# --- probability-flow ODE ------------------------------------------------------------------------------
class EulerODE(Solver):
    """Euler steps of the probability-flow ODE (Song et al. 2021, Eq. 13)."""

    def step(self, model, x, t, t_next, generator):
        if t_next is None:
            return x
        return x + (t_next - t) * model.ode_drift(x, _at(t, x))


class Heun(Solver):
    """Heun's second-order method on the probability-flow ODE (Karras et al. 2022, Algorithm 1 without churn):
    d_cur at t, an Euler step to t_next, d' there, and the step with (d_cur + d') / 2."""

    def step(self, model, x, t, t_next, generator):
        if t_next is None:
            return x
        h = t_next - t
        d_cur = model.ode_drift(x, _at(t, x))
        x_euler = x + h * d_cur
        d_prime = model.ode_drift(x_euler, _at(t_next, x))
        return x + h * 0.5 * (d_cur + d_prime)


class Midpoint(Solver):
    """The explicit midpoint method (second order, two calls a step) on the probability-flow ODE: the drift at
    t, an Euler half step to (t + t_next) / 2, and the whole step with the drift there."""

    def step(self, model, x, t, t_next, generator):
        if t_next is None:
            return x
        h = t_next - t
        x_half = x + 0.5 * h * model.ode_drift(x, _at(t, x))
        return x + h * model.ode_drift(x_half, _at(t + 0.5 * h, x))


class RK45(Solver):
    """Adaptive Dormand-Prince RK45 (torchdiffeq's ``dopri5``) on the probability-flow ODE between grid
    points; the error control sets the NFE, which the model counts.

    Args:
        rtol: relative tolerance (1e-5 in score_sde).
        atol: absolute tolerance (1e-5 in score_sde).
    """

    def __init__(self, rtol: float = 1e-5, atol: float = 1e-5) -> None:
        if rtol <= 0 or atol <= 0:
            raise ValueError(f"rtol={rtol} and atol={atol} must be > 0")
        self.rtol, self.atol = rtol, atol

    def step(self, model, x, t, t_next, generator):
        if t_next is None:
            return x
        from torchdiffeq import odeint

        def drift(s: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return model.ode_drift(y, _at(s, y))

        span = torch.tensor([t, t_next], dtype=torch.float64, device=x.device)
        # step_t: land on the end point instead of stepping past it (t < t_min is outside the SDE's domain)
        return odeint(drift, x, span, rtol=self.rtol, atol=self.atol, method="dopri5",
                      options={"step_t": span})[-1]


class DPMSolverPP(Solver):
    """DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++", Algorithm 2), multistep in lambda = log(alpha/sigma)
    with data prediction x0: with h = lambda_next - lambda_t,

        x_next = (sigma_next / sigma_t) x - alpha_next (e^{-h} - 1) D,

    D = x0_t at order 1 (exactly deterministic DDIM) and D = (1 + 1/(2r)) x0_t - 1/(2r) x0_prev,
    r = h_prev / h, at order 2 (the first step is first order).

    Args:
        order: 1 or 2.
    """

    def __init__(self, order: int = 2) -> None:
        if order not in (1, 2):
            raise ValueError(f"order={order} is not supported; choose 1 or 2")
        self.order = order

    def reset(self, times):
        self._prev: tuple[torch.Tensor, torch.Tensor] | None = None  # (x0, h) of the previous step

    def step(self, model, x, t, t_next, generator):
        if t_next is None:
            return x
        sde = model.sde
        tb, nb = _at(t, x), _at(t_next, x)
        h = sde.log_snr(nb) - sde.log_snr(tb)  # (B,) > 0
        x0 = model.x0(x, tb)
        D = x0
        # a step to or from an end of the path where sigma or alpha is 0 (h infinite) is first order
        if self.order == 2 and self._prev is not None and torch.isfinite(self._prev[1]).all() \
                and torch.isfinite(h).all():
            x0_prev, h_prev = self._prev
            r = _dims(h_prev / h, x)
            D = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * x0_prev
        self._prev = (x0, h)
        ratio = sde.sigma(nb) / sde.sigma(tb)
        return _dims(ratio, x) * x - _dims(sde.alpha(nb) * torch.expm1(-h), x) * D


SOLVERS: dict[str, type[Solver]] = {
    "em": EulerMaruyama,
    "reverse_diffusion": ReverseDiffusion,
    "ancestral": Ancestral,
    "pc": PredictorCorrector,
    "langevin": AnnealedLangevin,
    "euler": EulerODE,
    "heun": Heun,
    "midpoint": Midpoint,
    "ode": RK45,
    "rk45": RK45,  # "ode" under the solver's own name
    "dpmpp2m": DPMSolverPP,
}
DETERMINISTIC = frozenset({"euler", "heun", "midpoint", "ode", "rk45", "dpmpp2m"})


def solver_options(name: str) -> frozenset[str]:
    """The options the sampler ``name`` takes (its constructor's parameters)."""
    params = inspect.signature(SOLVERS[name].__init__).parameters.values()
    return frozenset(p.name for p in params
                     if p.name != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))


def make_solver(name: str, **options) -> Solver:
    """Build the sampler ``name`` with ``options`` (None values mean the sampler's default); an option the
    sampler does not take is a one-line error naming the samplers that do."""
    if name not in SOLVERS:
        raise ValueError(f"sampler {name!r} is not supported; choose one of {sorted(SOLVERS)}")
    given = {k: v for k, v in options.items() if v is not None}
    for key in sorted(set(given) - solver_options(name)):
        takers = sorted(n for n in SOLVERS if key in solver_options(n))
        raise ValueError(f"{key}={given[key]!r} is an option of the {takers} sampler(s); {name!r} does not "
                         f"take it")
    return SOLVERS[name](**given)


@torch.no_grad()
def solve(
    model: ModelFunction,
    solver: Solver,
    x_T: torch.Tensor,
    times: torch.Tensor,
    generator: Generator = None,
    denoise: bool = True,
    progress: bool = False,
    trajectory_points: int = 0,
    inpaint: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Run ``solver`` over the grid ``times`` (K,) from x_T; returns the sample and, with
    ``trajectory_points``, that many snapshots of x along the way.

    ``inpaint`` = (x_known, mask), mask 1 where x is known: after every step the known part is replaced by a
    draw of the forward process at the new time (Song et al. 2021, appendix I.2), and by x_known at the end.
    """
    times = torch.as_tensor(times, dtype=torch.float64)
    num = len(times)
    keep = set(torch.linspace(0, num - 1,
                              trajectory_points).round().long().tolist()) if trajectory_points else set()
    solver.check(model.sde)
    solver.reset(times)
    x, trajectory = x_T, []
    for i in tqdm(range(num), desc="sampling", disable=not progress, leave=False):
        t, t_next = float(times[i]), (float(times[i + 1]) if i + 1 < num else None)
        x = solver.step(model, x, t, t_next, generator)
        if inpaint is not None and t_next is not None:
            known, mask = inpaint
            mean, std = model.sde.marginal_prob(known, _at(t_next, x))
            noised = mean + _dims(std, x) * randn(x.shape, generator, x.device, x.dtype)
            x = mask * noised + (1 - mask) * x
        if i in keep:
            trajectory.append(x)
    if denoise:
        x = model.x0(x, _at(times[-1], x))
    if inpaint is not None:
        known, mask = inpaint
        x = mask * known + (1 - mask) * x
    return x, trajectory
