"""From sampling options to samples, for every model of a noise process: the guided output function
(:mod:`lit_gen.process.guidance`) and a sampler of either protocol, "one model output in, one step out"
between DDPM's steps (:mod:`lit_gen.diffusion.samplers`) or "the solver owns the model function"
(:mod:`lit_gen.score.solvers`). Methods describe their trained model as a :class:`NoiseModel` and hold no
sampler wiring."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from lit_gen.diffusion.gaussian import GaussianDiffusion
from lit_gen.diffusion.samplers import SAMPLERS, DiffusionSampler, invert_loop, make_sampler, sample_loop
from lit_gen.process import (
    CFG,
    SDE,
    ClassifierFree,
    ClassifierGuidance,
    ClassifierShift,
    ModelFunction,
    OutputFn,
    OutputLayout,
    at_steps,
    mean_shift,
)
from lit_gen.process.model import NetFn
from lit_gen.sampling.options import SAMPLER_NAMES, SOLVER_KEYS
from lit_gen.score.solvers import DETERMINISTIC, SOLVERS, make_solver, solve, solver_options
from lit_gen.utils import Generator

CFG_KEYS = ("guidance_interval", "guidance_rescale")  # what guides (batching only says how)


@dataclass
class NoiseModel:
    """A trained model of a noise process, as the sampler assembly sees it.

    Args:
        name: the method's name, for messages.
        net: ``net(x, model_time, y)``; y is None for an unconditional call.
        sde: the process in continuous time, with the sampling cutoff t_min.
        layout: the output's parameterisation and learned-variance channels.
        clip_denoised: clamp predicted x0 to [-1, 1] (images).
        defaults: the model's ``sampler``, ``steps`` and ``denoise``, and its defaults of solver options.
        diffusion: DDPM's discrete process, for the samplers between its steps (None: solvers only).
        variance: the reverse variance of the ancestral sampler: ``small``, ``large`` or ``learned``.
        num_classes: classes of a conditional model; label ``num_classes`` is its null label (0:
            unconditional).
        guidance_scale: the model's default classifier-free guidance scale.
        null_text: (L,) token ids of the empty caption of a text-conditional model, its null condition
            (its samples' conditions are the captions' ids, (B, L)); None for other models.
    """

    name: str
    net: NetFn
    sde: SDE
    layout: OutputLayout
    clip_denoised: bool
    defaults: dict = field(default_factory=dict)
    diffusion: GaussianDiffusion | None = None
    variance: str = "small"
    num_classes: int = 0
    guidance_scale: float = 1.0
    null_text: torch.Tensor | None = None

    @property
    def conditional(self) -> bool:
        """Whether the network takes a condition: class labels or a caption."""
        return bool(self.num_classes) or self.null_text is not None

    @property
    def null(self):
        """The null condition of classifier-free guidance: the null label, or the empty caption's ids."""
        return self.null_text if self.null_text is not None else self.num_classes

    def samplers(self) -> tuple[str, ...]:
        return SAMPLER_NAMES if self.diffusion is not None else tuple(sorted(SOLVERS))

    def sampler_name(self, options: dict) -> str:
        name = options.get("sampler") or self.defaults["sampler"]
        if name not in self.samplers():
            raise ValueError(f"sampler {name!r} is not supported; choose one of {list(self.samplers())}")
        return name


# --- guidance --------------------------------------------------------------------------------------------
def cfg_of(model: NoiseModel, options: dict, device: torch.device | None = None) -> CFG:
    """The classifier-free guidance ``options`` ask for; a one-line error on an unconditional model. Batching
    ``auto`` is one pass of 2B on CUDA ``device``s, two of B elsewhere."""
    scale = options.get("guidance_scale")
    scale = model.guidance_scale if scale is None else scale
    given = {k: options[k] for k in CFG_KEYS if options.get(k) is not None}
    if not model.conditional and (scale != 1 or given):
        given = {"guidance_scale": scale, **given} if scale != 1 else given
        raise ValueError(f"{given} is classifier-free guidance, which needs a class- or text-conditional "
                         f"model; this {model.name} is unconditional (guide it with --classifier_ckpt "
                         "instead)")
    interval = options.get("guidance_interval")
    batching = options.get("guidance_batching") or "auto"
    if batching not in ("auto", "joint", "split"):
        raise ValueError(f"guidance_batching={batching!r} is not supported; choose one of "
                         "['auto', 'joint', 'split']")
    if batching == "auto":
        batching = "joint" if device is not None and device.type == "cuda" else "split"
    return CFG(scale, tuple(interval) if interval is not None else None,
               options.get("guidance_rescale") or 0.0, batching)


def classifier_form(options: dict, sampler: DiffusionSampler | None, name: str) -> str:
    """``eps`` or ``mean`` (the ancestral sampler's mean shift) for classifier guidance on ``sampler``."""
    form = options.get("classifier_form") or "auto"
    if form not in ("auto", "mean", "eps"):
        raise ValueError(f"classifier_form={form!r} is not supported; choose one of ['auto', 'eps', 'mean']")
    has_mean = sampler is not None and sampler.has_mean
    if form == "mean" and not has_mean:
        raise ValueError(f"classifier_form='mean' needs the ancestral sampler 'ddpm'; {name!r} shifts eps by "
                         f"the classifier's gradient (classifier_form 'eps')")
    return "mean" if form == "auto" and has_mean else ("eps" if form == "auto" else form)


def guided(model: NoiseModel, options: dict, labels: torch.Tensor | None,
           classifier: ClassifierGuidance | None, sampler: DiffusionSampler | None = None,
           device: torch.device | None = None):
    """(the output function with the guidance of ``options``, the mean shift of an ancestral step or None),
    for samples on ``device``."""
    cfg = cfg_of(model, options, device)
    fn: OutputFn = ClassifierFree(model.net, model.sde, model.layout, labels if model.conditional else None,
                                  model.null, cfg)
    if classifier is None:
        return fn, None
    if classifier_form(options, sampler, model.sampler_name(options)) == "mean":
        return fn, mean_shift(classifier, model.sde)
    return ClassifierShift(fn, model.sde, model.layout, classifier), None


# --- the two protocols -----------------------------------------------------------------------------------
def step_sampler(model: NoiseModel, options: dict, name: str) -> DiffusionSampler:
    """The sampler ``name`` between DDPM's steps, with its steps set."""
    solver_only = sorted(k for k in (*SOLVER_KEYS, "denoise") if options.get(k) is not None)
    if solver_only:
        raise ValueError(f"{solver_only[0]}={options[solver_only[0]]!r} is an option of the samplers of "
                         f"lit_gen.score (pc, em, ode, ...); the {name!r} sampler does not take it")
    if options.get("eta") is not None and name != "ddim":
        raise ValueError(f"eta={options['eta']} is a DDIM option; the {name!r} sampler does not take it")
    extra = {"eta": options["eta"]} if options.get("eta") is not None else {}
    sampler = make_sampler(name, model.diffusion, prediction_type=model.layout.prediction.name,
                           clip_denoised=model.clip_denoised, variance=model.variance, **extra)
    sampler.set_timesteps(options.get("steps") or model.defaults["steps"],
                          options.get("spacing") or model.defaults.get("spacing") or "linear")
    return sampler


def solver(model: NoiseModel, options: dict, name: str):
    """The solver ``name``: the options given are checked against what it takes; the model's defaults fill in
    only those it takes."""
    if options.get("eta"):  # eta 0 is deterministic, as every solver of the ODE is
        raise ValueError(f"eta={options['eta']} works with the ddpm and ddim samplers, not {name!r}")
    given = {k: options[k] for k in SOLVER_KEYS if options.get(k) is not None}
    takes = solver_options(name)
    filled = {k: v for k, v in model.defaults.items() if k in takes and k not in given and v is not None}
    built = make_solver(name, **given, **filled)  # raises for a given option the sampler does not take
    built.check(model.sde)
    return built


def time_grid(model: NoiseModel, options: dict, name: str) -> torch.Tensor:
    """The solver's grid (``steps``, ``spacing``); the adaptive ``ode`` (``rk45``) defaults to the two end
    points."""
    steps = options.get("steps") or (2 if name in ("ode", "rk45") else model.defaults["steps"])
    default = model.sde.solver_spacing if name == "dpmpp2m" else "linear"
    return model.sde.time_grid(steps, options.get("spacing") or default)


# --- what methods call -----------------------------------------------------------------------------------
def sample(
    model: NoiseModel,
    options: dict,
    x_T: torch.Tensor,
    generator: Generator = None,
    labels: torch.Tensor | None = None,
    classifier: ClassifierGuidance | None = None,
    progress: bool = False,
    trajectory_points: int = 0,
    inpaint: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, list[torch.Tensor], int]:
    """Samples from x_T with the sampler and guidance of ``options``: (x, trajectory, NFE per batch).
    ``labels`` are the requested classes (conditional or classifier-guided); ``inpaint`` = (x_known, mask)
    fills in where mask is 0 (solvers)."""
    name = model.sampler_name(options)
    if name in SAMPLERS:
        if inpaint is not None:
            raise ValueError(f"inpainting runs on the samplers of lit_gen.score "
                             f"({', '.join(sorted(SOLVERS))}); {name!r} does not support it")
        sampler = step_sampler(model, options, name)
        fn, shift = guided(model, options, labels, classifier, sampler, x_T.device)
        x, trajectory = sample_loop(at_steps(fn, model.sde), sampler, x_T, generator, progress,
                                    trajectory_points, shift)
        return x, trajectory, len(sampler.timesteps)  # one (batched) call per step
    built, times = solver(model, options, name), time_grid(model, options, name)
    fn, _ = guided(model, options, labels, classifier, device=x_T.device)
    function = ModelFunction(fn, model.sde, model.layout, model.clip_denoised)
    denoise = options.get("denoise")
    x, trajectory = solve(function, built, x_T, times, generator,
                          model.defaults["denoise"] if denoise is None else denoise, progress,
                          trajectory_points, inpaint)
    return x, trajectory, function.nfe


def check(model: NoiseModel, options: dict, labels: torch.Tensor | None = None,
          classifier: ClassifierGuidance | None = None) -> None:
    """Everything :func:`sample` would refuse, without sampling."""
    name = model.sampler_name(options)
    if name in SAMPLERS:
        guided(model, options, labels, classifier, step_sampler(model, options, name))
    else:
        solver(model, options, name)
        time_grid(model, options, name)
        guided(model, options, labels, classifier)


def deterministic_options(model: NoiseModel, options: dict) -> dict:
    """``options`` for latent interpolation and inversion: deterministic DDIM (eta = 0) on a DDPM checkpoint
    by default, or a probability-flow ODE solver without the final denoising step (default RK45 on score
    models)."""
    default = "ddim" if model.diffusion is not None else "ode"
    name = options.get("sampler") or default
    if name == "ddim" and model.diffusion is not None and options.get("eta", 0.0) == 0.0:
        return {**options, "sampler": "ddim", "eta": 0.0}
    if name not in DETERMINISTIC:
        ddim = "--sampler ddim --eta 0 or " if model.diffusion is not None else ""
        given = {k: v for k, v in options.items() if k in ("sampler", "eta")}
        raise ValueError(f"latent interpolation and inversion need a deterministic sampler: {ddim}an ODE "
                         f"sampler {sorted(DETERMINISTIC)}; got {given}")
    return {**options, "sampler": name, "denoise": False}


@torch.no_grad()
def invert(model: NoiseModel, options: dict, x0: torch.Tensor, labels: torch.Tensor | None = None,
           progress: bool = False) -> torch.Tensor:
    """Encode x0 to the latent x_T by the deterministic sampler of ``options`` run backwards: DDIM inversion
    (Song et al. 2021, Sec. 4.3), or the probability-flow ODE on the sampling grid run upwards."""
    options = deterministic_options(model, options)
    name = options["sampler"]
    fn, _ = guided(model, {**options, "guidance_scale": 1.0}, labels, None)  # the conditional model
    if name in SAMPLERS:
        return invert_loop(at_steps(fn, model.sde), step_sampler(model, options, name), x0, progress)
    times = time_grid(model, options, name).flip(0)
    function = ModelFunction(fn, model.sde, model.layout, model.clip_denoised)
    return solve(function, solver(model, options, name), x0, times, denoise=False, progress=progress)[0]
