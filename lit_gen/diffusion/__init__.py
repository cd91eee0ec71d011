"""Pure-torch diffusion math: schedules, the Gaussian noise process, samplers, guidance (no Lightning
imports)."""

from lit_gen.diffusion.gaussian import GaussianDiffusion, eps_x0_from_output, output_from_eps, training_target
from lit_gen.diffusion.guidance import ClassifierGuidance, GuidedDenoiser, drop_labels
from lit_gen.diffusion.losses import diffusion_loss_terms
from lit_gen.diffusion.samplers import (
    SAMPLERS,
    DDIMSampler,
    DDPMSampler,
    DiffusionSampler,
    invert_loop,
    make_sampler,
    sample_loop,
    slerp,
    slerp_grid,
    timestep_subsequence,
)
from lit_gen.diffusion.schedules import cosine_betas, linear_betas, make_betas

__all__ = [
    "SAMPLERS",
    "ClassifierGuidance",
    "GuidedDenoiser",
    "drop_labels",
    "output_from_eps",
    "DDIMSampler",
    "DDPMSampler",
    "DiffusionSampler",
    "GaussianDiffusion",
    "cosine_betas",
    "diffusion_loss_terms",
    "eps_x0_from_output",
    "invert_loop",
    "linear_betas",
    "make_betas",
    "make_sampler",
    "sample_loop",
    "slerp",
    "slerp_grid",
    "timestep_subsequence",
    "training_target",
]
