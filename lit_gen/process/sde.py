"""The forward SDEs of Song et al. 2021, "Score-Based Generative Modeling through Stochastic Differential
Equations" (Sec. 3.4 and appendix B), as scalar functions of t.

Every SDE here is linear, dx = f(t) x dt + g(t) dw on t in [0, T], with a Gaussian perturbation kernel
p_t(x | x0) = N(alpha(t) x0, sigma(t)^2 I). A subclass defines four scalars of t (B,): ``f``, ``g2`` (g^2),
``alpha`` and ``sigma``; everything else (drift, marginals, prior, discretisation, the reverse SDE and the
probability-flow ODE) follows here once, for tensors of any rank. Time math is float64 and cast to x's dtype.

The network of a model trained on an SDE sees ``model_time(t)``: (N - 1) t for the continuous SDEs (as in
score_sde, 999 t for N = 1000), and the integer step n at t = (n + 1) / N for a DDPM checkpoint's
:class:`DiscreteVPSDE` (its ``time_of_step`` and ``model_time`` are the one map between DDPM's steps and t).
"""

from __future__ import annotations

import math

import torch

from lit_gen.process.grid import timestep_subsequence
from lit_gen.utils import Generator, append_dims, randn


def _time(t: torch.Tensor | float) -> torch.Tensor:
    return torch.as_tensor(t, dtype=torch.float64)


class SDE:
    """A linear SDE on [0, T] discretised into N steps, with the small-t cutoff ``t_min`` of its samplers
    and likelihood (VP's score is singular at t = 0; VE may start at t = 0, where sigma = sigma_min)."""

    T = 1.0
    prior_std = 1.0
    solver_spacing = "logsnr"  # DPM-Solver's default grid (Lu et al. 2022, Sec. 3.3)

    def __init__(self, num_scales: int, t_min: float) -> None:
        if num_scales < 2:
            raise ValueError(f"num_scales={num_scales} must be >= 2")
        if not 0 <= t_min < self.T:
            raise ValueError(f"t_min={t_min} must lie in [0, {self.T})")
        self.N, self.t_min = int(num_scales), float(t_min)

    # --- the four scalars a subclass defines -------------------------------------------------------
    def f(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def g2(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def alpha(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    # --- derived ------------------------------------------------------------------------------------
    def d_alpha(self, t: torch.Tensor) -> torch.Tensor:
        """d alpha / dt = f alpha (f = d log alpha / dt)."""
        return self.f(t) * self.alpha(t)

    def d_sigma(self, t: torch.Tensor) -> torch.Tensor:
        """d sigma / dt, from g^2 = d sigma^2 / dt - 2 f sigma^2 (Kingma et al. 2021, "Variational Diffusion
        Models", Eq. 29 in reverse)."""
        sigma = self.sigma(t)
        return (self.g2(t) + 2 * self.f(t) * sigma**2) / (2 * sigma)

    def ode_drift(self, x: torch.Tensor, t: torch.Tensor, eps: torch.Tensor,
                  x0: torch.Tensor) -> torch.Tensor:
        """The probability-flow drift f x - g^2 score / 2 (Song et al. 2021, Eq. 13) at the model's eps (the
        score is -eps / sigma). It equals d_alpha x0 + d_sigma eps; a path whose f and g^2 are singular
        somewhere (the linear path at t = 1) overrides it with that form."""
        sigma = append_dims(self.sigma(t).to(x.dtype), x.ndim)
        return self.reverse_drift(x, t, -eps / sigma, probability_flow=True)

    #: what the network sees as time: ``scaled``, (N - 1) t; ``sigma``, the noise level sigma(t) (NCSN++ as
    #: diffusers' ScoreSdeVe pipelines feed it)
    time_input = "scaled"

    def model_time(self, t: torch.Tensor) -> torch.Tensor:
        """The time input of the network: (N - 1) t, or sigma(t) with ``time_input`` 'sigma'."""
        return self.sigma(_time(t)) if self.time_input == "sigma" else (self.N - 1) * _time(t)

    def log_snr(self, t: torch.Tensor) -> torch.Tensor:
        """lambda(t) = log(alpha / sigma), DPM-Solver's half log-SNR (Lu et al. 2022, Sec. 3.1)."""
        t = _time(t)
        return torch.log(self.alpha(t)) - torch.log(self.sigma(t))

    def sde(self, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Drift f(t) x (B, ...) and diffusion g(t) (B,)."""
        t = _time(t)
        return append_dims(self.f(t).to(x.dtype), x.ndim) * x, self.g2(t).sqrt().to(x.dtype)

    def marginal_prob(self, x0: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean alpha(t) x0 (B, ...) and std sigma(t) (B,) of p_t(x | x0)."""
        t = _time(t)
        return append_dims(self.alpha(t).to(x0.dtype), x0.ndim) * x0, self.sigma(t).to(x0.dtype)

    def prior_sampling(self, shape: tuple[int, ...], generator: Generator = None, device="cpu",
                       dtype=torch.float32):
        """x_T ~ N(0, prior_std^2 I)."""
        return self.prior_std * randn(shape, generator, device, dtype)

    def prior_logp(self, z: torch.Tensor) -> torch.Tensor:
        """log N(z; 0, prior_std^2 I) per sample (B,), in nats."""
        d = z[0].numel()
        var = self.prior_std**2
        return -0.5 * d * math.log(2 * math.pi * var) - z.flatten(1).pow(2).sum(1) / (2 * var)

    def discretize(self, x: torch.Tensor, t: torch.Tensor,
                   s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The forward step from s < t to t as x_t = x_s + f_i + G_i z: returns (f_i (B, ...), G_i (B,)).
        Euler-Maruyama here; VP and VE override it with their exact steps (Song et al. 2021, appendix E.2)."""
        t, dt = _time(t), _time(t) - _time(s)
        drift, g = self.sde(x, t)
        return drift * append_dims(dt.to(x.dtype), x.ndim), g * dt.sqrt().to(x.dtype)

    def reverse_drift(self, x: torch.Tensor, t: torch.Tensor, score: torch.Tensor,
                      probability_flow: bool = False):
        """Drift of the reverse-time SDE, f x - g^2 score (Eq. 6), or of the probability-flow ODE,
        f x - g^2 score / 2 (Eq. 13), in forward time (integrate it from T down to t_min)."""
        drift, g = self.sde(x, t)
        return drift - append_dims(g**2 * (0.5 if probability_flow else 1.0), x.ndim) * score

    def time_grid(self, steps: int, spacing: str = "linear") -> torch.Tensor:
        """``steps`` times (float64) from T down to t_min: ``linear`` in t, ``quadratic`` (denser near t_min),
        or ``logsnr``: uniform in lambda = log(alpha / sigma), DPM-Solver's choice (Lu et al. 2022, Sec.
        3.3)."""
        if steps < 2:
            raise ValueError(f"steps={steps} must be >= 2 (the grid runs from T down to t_min)")
        u = torch.linspace(1, 0, steps, dtype=torch.float64)
        if spacing == "logsnr":
            return self._times_of_log_snr(u)
        if spacing == "quadratic":
            u = u**2
        elif spacing != "linear":
            raise ValueError(f"spacing={spacing!r} is not supported; choose one of "
                             f"['linear', 'logsnr', 'quadratic']")
        return self.t_min + (self.T - self.t_min) * u

    def _times_of_log_snr(self, u: torch.Tensor) -> torch.Tensor:
        """Times whose lambda is spread uniformly, u = 1 at lambda(T) down to u = 0 at lambda(t_min), by
        bisection (lambda decreases in t)."""
        lo_t, hi_t = torch.tensor(self.t_min, dtype=torch.float64), torch.tensor(self.T, dtype=torch.float64)
        if self.t_min == 0:
            lo_t = torch.tensor(1e-12, dtype=torch.float64)
        lam = self.log_snr(hi_t) + (1 - u) * (self.log_snr(lo_t) - self.log_snr(hi_t))  # targets
        lo, hi = torch.full_like(u, float(lo_t)), torch.full_like(u, float(hi_t))
        for _ in range(100):
            mid = (lo + hi) / 2
            above = self.log_snr(mid) > lam  # mid is too early
            lo, hi = torch.where(above, mid, lo), torch.where(above, hi, mid)
        t = (lo + hi) / 2
        t[0], t[-1] = self.T, self.t_min
        return t

    def langevin_alpha(self, t: torch.Tensor) -> torch.Tensor:
        """alpha_i of the Langevin corrector's step size (Song et al. 2021, Algorithm 5): 1 here."""
        return torch.ones_like(_time(t))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(N={self.N}, t_min={self.t_min})"


class VPSDE(SDE):
    """Variance preserving: dx = -beta(t)/2 x dt + sqrt(beta(t)) dw, beta(t) = beta_min + t (beta_max -
    beta_min) (Song et al. 2021, Eq. 11), the continuous limit of DDPM. Its N-step discretisation has DDPM's
    betas, beta_i = beta_min / N + i / (N - 1) (beta_max - beta_min) / N (1e-4 ... 0.02 for the defaults).

    Args:
        beta_min: beta(0) (0.1 in the paper).
        beta_max: beta(1) (20 in the paper).
        num_scales: N, discretisation steps.
        t_min: small-t cutoff of samplers and likelihood (1e-3 for sampling, 1e-5 for likelihood in the
            paper).
    """

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, num_scales: int = 1000,
                 t_min: float = 1e-3):
        if not 0 < beta_min < beta_max:
            raise ValueError(f"VP SDE needs 0 < beta_min < beta_max, got beta_min={beta_min}, "
                             f"beta_max={beta_max}")
        if t_min <= 0:
            raise ValueError(f"t_min={t_min} must be > 0: the VP and sub-VP scores are singular at t = 0")
        super().__init__(num_scales, t_min)
        self.beta_min, self.beta_max = float(beta_min), float(beta_max)

    @classmethod
    def from_settings(cls, num_scales: int, t_min: float | None, settings: dict) -> VPSDE:
        """From flat settings (a method's hyperparameters); t_min defaults to 1e-3 (the paper's, sampling)."""
        return cls(settings["beta_min"], settings["beta_max"], num_scales, 1e-3 if t_min is None else t_min)

    @property
    def discrete_betas(self) -> torch.Tensor:
        return torch.linspace(self.beta_min / self.N, self.beta_max / self.N, self.N, dtype=torch.float64)

    def beta(self, t: torch.Tensor) -> torch.Tensor:
        return self.beta_min + _time(t) * (self.beta_max - self.beta_min)

    def log_alpha(self, t: torch.Tensor) -> torch.Tensor:
        """log alpha(t) = -1/2 int_0^t beta = -t^2 (beta_max - beta_min) / 4 - t beta_min / 2."""
        t = _time(t)
        return -0.25 * t**2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min

    def f(self, t):
        return -0.5 * self.beta(t)

    def g2(self, t):
        return self.beta(t)

    def alpha(self, t):
        return torch.exp(self.log_alpha(t))

    def sigma(self, t):
        return (-torch.expm1(2 * self.log_alpha(t))).sqrt()

    def discretize(self, x, t, s):
        """The DDPM step from s to t: beta_i = 1 - (alpha(t) / alpha(s))^2, x_t = sqrt(1 - beta_i) x_s +
        sqrt(beta_i) z."""
        beta = -torch.expm1(2 * (self.log_alpha(t) - self.log_alpha(s)))  # (B,)
        return append_dims(((1 - beta).sqrt() - 1).to(x.dtype), x.ndim) * x, beta.sqrt().to(x.dtype)

    def langevin_alpha(self, t):
        # 1 - beta_i of the step that ends at t, on the model's N-step grid
        return torch.exp(2 * (self.log_alpha(t) - self.log_alpha((_time(t) - 1 / self.N).clamp(min=0))))

    def __repr__(self):
        return f"VPSDE(beta_min={self.beta_min}, beta_max={self.beta_max}, N={self.N}, t_min={self.t_min})"


class SubVPSDE(VPSDE):
    """sub-VP: dx = -beta(t)/2 x dt + sqrt(beta(t) (1 - exp(-2 int_0^t beta))) dw (Song et al. 2021, Eq. 12);
    p_t(x | x0) = N(alpha x0, (1 - alpha^2)^2 I) with VP's alpha, so its variance stays below VP's."""

    def g2(self, t):
        return self.beta(t) * -torch.expm1(4 * self.log_alpha(t))

    def sigma(self, t):
        return -torch.expm1(2 * self.log_alpha(t))

    discretize = SDE.discretize  # no closed-form step: Euler-Maruyama, as in score_sde

    def __repr__(self):
        return super().__repr__().replace("VPSDE", "SubVPSDE", 1)


class VESDE(SDE):
    """Variance exploding: dx = sqrt(d sigma^2 / dt) dw, sigma(t) = sigma_min (sigma_max / sigma_min)^t
    (Song et al. 2021, Eq. 9), the continuous limit of NCSN's geometric noise levels.

    Args:
        sigma_min: smallest noise level (0.01 in the paper).
        sigma_max: largest noise level, about the largest pairwise distance of the training data (NCSNv2,
            Technique 1; 50 for CIFAR-10).
        num_scales: N, discretisation steps (noise levels).
        t_min: small-t cutoff (1e-5 in the paper).
    """

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0, num_scales: int = 1000,
                 t_min: float = 1e-5):
        if not 0 < sigma_min < sigma_max:
            raise ValueError(f"VE SDE needs 0 < sigma_min < sigma_max, got sigma_min={sigma_min}, "
                             f"sigma_max={sigma_max}")
        super().__init__(num_scales, t_min)
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)
        self.prior_std = self.sigma_max

    @classmethod
    def from_settings(cls, num_scales: int, t_min: float | None, settings: dict) -> VESDE:
        """From flat settings (a method's hyperparameters); t_min defaults to the paper's 1e-5."""
        return cls(settings["sigma_min"], settings["sigma_max"], num_scales, 1e-5 if t_min is None else t_min)

    def f(self, t):
        return torch.zeros_like(_time(t))

    def g2(self, t):
        return self.sigma(t) ** 2 * (2 * math.log(self.sigma_max / self.sigma_min))

    def alpha(self, t):
        return torch.ones_like(_time(t))

    def sigma(self, t):
        return self.sigma_min * (self.sigma_max / self.sigma_min) ** _time(t)

    def discretize(self, x, t, s):
        """SMLD's step from s to t: x_t = x_s + sqrt(sigma(t)^2 - sigma(s)^2) z."""
        g = (self.sigma(t) ** 2 - self.sigma(s) ** 2).clamp(min=0).sqrt()
        return torch.zeros_like(x), g.to(x.dtype)

    def __repr__(self):
        return (f"VESDE(sigma_min={self.sigma_min}, sigma_max={self.sigma_max}, N={self.N}, "
                f"t_min={self.t_min})")


class DiscreteVPSDE(SDE):
    """The VP process of a DDPM checkpoint, read from its alpha_bar (N,): step n sits at t_n = (n + 1) / N,
    and log alpha(t) = log(alpha_bar) / 2 is interpolated linearly in t between the steps (and to 0 at t = 0),
    as in DPM-Solver's discrete ``NoiseScheduleVP`` (Lu et al. 2022, appendix D). Every VP sampler and ODE
    solver then runs on DDPM / Improved DDPM checkpoints; the network sees the (fractional) step N t - 1.
    """

    def __init__(self, alpha_bar: torch.Tensor) -> None:
        alpha_bar = torch.as_tensor(alpha_bar, dtype=torch.float64).cpu()
        super().__init__(len(alpha_bar), 1.0 / len(alpha_bar))
        self.alpha_bar = alpha_bar
        # knots t_0 = 0, t_{n+1} = (n + 1) / N
        self._t = torch.linspace(0, 1, self.N + 1, dtype=torch.float64)
        self._log_alpha = torch.cat([torch.zeros(1, dtype=torch.float64), 0.5 * alpha_bar.log()])

    def _knots(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(t knots, log alpha at them) on ``device``, copied there once."""
        cache = self.__dict__.setdefault("_on_device", {})
        if device not in cache:
            cache[device] = (self._t.to(device), self._log_alpha.to(device))
        return cache[device]

    def _segment(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        t = _time(t)
        knots, values = self._knots(t.device)
        i = torch.searchsorted(knots, t.clamp(0, 1), right=True).clamp(1, self.N) - 1
        return t, i, knots, values

    def log_alpha(self, t):
        t, i, knots, values = self._segment(t)
        slope = (values[i + 1] - values[i]) / (knots[i + 1] - knots[i])
        return values[i] + slope * (t - knots[i])

    def f(self, t):
        t, i, knots, values = self._segment(t)
        return (values[i + 1] - values[i]) / (knots[i + 1] - knots[i])  # d log alpha / dt

    def g2(self, t):
        return -2 * self.f(t)

    def alpha(self, t):
        return torch.exp(self.log_alpha(t))

    def sigma(self, t):
        return (-torch.expm1(2 * self.log_alpha(t))).sqrt()

    discretize = VPSDE.discretize
    langevin_alpha = VPSDE.langevin_alpha

    def model_time(self, t):
        """The (fractional) step n of time t: the inverse of :meth:`time_of_step`."""
        return self.N * _time(t) - 1

    def time_of_step(self, n: torch.Tensor) -> torch.Tensor:
        """t = (n + 1) / N of DDPM's integer step n (float64)."""
        return (torch.as_tensor(n).double() + 1) / self.N

    def time_grid(self, steps: int, spacing: str = "linear") -> torch.Tensor:
        """The solvers' grid: the DDIM / respaced-DDPM steps of
        :func:`~lit_gen.process.grid.timestep_subsequence` as times (``linear``, ``quadratic``), or uniform in
        log-SNR between them (``logsnr``, fractional steps). diffusers' ``leading`` and ``trailing`` are
        spacings of the ddpm and ddim samplers only (the grid must end at t_min)."""
        if spacing == "logsnr":
            return super().time_grid(steps, spacing)
        if spacing in ("leading", "trailing"):
            raise ValueError(f"spacing={spacing!r} is a spacing of the ddpm and ddim samplers; the solvers "
                             f"take ['linear', 'logsnr', 'quadratic']")
        if steps < 2:
            raise ValueError(f"steps={steps} must be >= 2 (the grid runs from T down to t_min)")
        return self.time_of_step(timestep_subsequence(self.N, steps, spacing))

    def __repr__(self):
        return f"DiscreteVPSDE(N={self.N})"


SDES = {"vp": VPSDE, "subvp": SubVPSDE, "ve": VESDE}


def sigma_max_from_data(x: torch.Tensor, max_points: int = 2000,
                        generator: torch.Generator | None = None) -> float:
    """The largest Euclidean distance between two training points (NCSNv2, Technique 1: sigma_1 that large
    lets Langevin move between any two modes), on at most ``max_points`` of them (a lower bound above
    that)."""
    x = x.flatten(1).double()
    if len(x) > max_points:
        x = x[torch.randperm(len(x), generator=generator)[:max_points]]
    return float(torch.cdist(x, x, compute_mode="donot_use_mm_for_euclid_dist").max())


def make_sde(name: str, num_scales: int = 1000, t_min: float | None = None, beta_min: float = 0.1,
             beta_max: float = 20.0, sigma_min: float = 0.01, sigma_max: float = 50.0,
             time_input: str = "scaled") -> SDE:
    """Build ``vp``, ``subvp`` or ``ve`` from flat parameters (each takes its own; the others are ignored)."""
    if name not in SDES:
        raise ValueError(f"sde={name!r} is not supported; choose one of {sorted(SDES)}")
    if time_input not in ("scaled", "sigma"):
        raise ValueError(f"time_input={time_input!r} is not supported; choose one of ['scaled', 'sigma']")
    if time_input == "sigma" and name != "ve":
        raise ValueError(f"time_input='sigma' is for the VE SDE (NCSN++ conditioned on its noise level); "
                         f"sde={name!r} takes time_input 'scaled'")
    settings = dict(beta_min=beta_min, beta_max=beta_max, sigma_min=sigma_min, sigma_max=sigma_max)
    sde = SDES[name].from_settings(num_scales, t_min, settings)
    sde.time_input = time_input
    return sde
