"""Pure-torch diffusion math: schedules, the Gaussian noise process, samplers (no Lightning imports)."""

from lit_gen.diffusion.gaussian import GaussianDiffusion, eps_x0_from_output, training_target
from lit_gen.diffusion.samplers import (
    SAMPLERS,
    DDIMSampler,
    DDPMSampler,
    DiffusionSampler,
    make_sampler,
    sample_loop,
    timestep_subsequence,
)
from lit_gen.diffusion.schedules import cosine_betas, linear_betas, make_betas

__all__ = [
    "SAMPLERS",
    "DDIMSampler",
    "DDPMSampler",
    "DiffusionSampler",
    "GaussianDiffusion",
    "cosine_betas",
    "eps_x0_from_output",
    "linear_betas",
    "make_betas",
    "make_sampler",
    "sample_loop",
    "timestep_subsequence",
    "training_target",
]
