"""Pure-torch diffusion math: beta schedules, the discrete Gaussian process with its bound, and the samplers
that step between DDPM's integer steps (no Lightning imports; guidance lives in lit_gen.process)."""

from lit_gen.diffusion.gaussian import GaussianDiffusion, eps_x0_from_output, training_target
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
)
from lit_gen.diffusion.schedules import cosine_betas, linear_betas, make_betas
from lit_gen.process.grid import timestep_subsequence
from lit_gen.process.guidance import ClassifierGuidance, drop_labels

__all__ = [
    "SAMPLERS",
    "ClassifierGuidance",
    "drop_labels",
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
