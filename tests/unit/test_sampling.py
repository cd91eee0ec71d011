"""The sampler assembly (lit_gen.sampling) and what the redesign gave the score models: the declared options
cover every sampler and solver option (nothing can be added to one and dropped by the other);
class-conditional ScoreSDE with classifier-free guidance through every solver; guidance rescale on the
solvers; deterministic inversion of a DDPM checkpoint by an ODE solver as well as by DDIM."""

from __future__ import annotations

from dataclasses import fields
from functools import partial
from typing import get_args, get_type_hints

import pytest
import torch

from lit_gen.diffusion import SAMPLERS
from lit_gen.methods import DDPM, ScoreSDE
from lit_gen.nets import UNet
from lit_gen.sampling import SOLVER_KEYS, NoiseSampleOptions
from lit_gen.sampling.options import Sampler
from lit_gen.score import SOLVERS, solver_options
from lit_gen.score.solvers import PREDICTORS
from lit_gen.utils import sample_generators

K = 3
NET = partial(UNet, base_channels=8, channel_mults=(1, 2), num_res_blocks=1, attention_resolutions=(4,))


def _randomise(module: torch.nn.Module) -> None:
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(0.2 * torch.randn(p.shape, generator=g))


def _conditional_score_sde(**kw) -> ScoreSDE:
    model = ScoreSDE((1, 8, 8), K, net=NET, num_scales=20, class_conditional=True, ema_decay=0, **kw)
    _randomise(model.net)
    model.log = lambda *args, **kwargs: None  # training_step outside a Trainer
    return model


def test_the_declared_options_cover_every_sampler_and_solver_option():
    declared = {f.name for f in fields(NoiseSampleOptions)}
    takes = set().union(*(solver_options(name) for name in SOLVERS))
    assert takes == set(SOLVER_KEYS) and set(SOLVER_KEYS) <= declared
    assert set(get_args(Sampler)) == set(SAMPLERS) | set(SOLVERS)
    predictor = get_type_hints(NoiseSampleOptions)["predictor"]  # Literal[...] | None
    assert set(get_args(get_args(predictor)[0])) == set(PREDICTORS)


def test_options_that_are_not_guidance_and_deterministic_eta_pass_where_they_always_did():
    model = DDPM((1, 8, 8), 0, net=NET, num_timesteps=20, ema_decay=0)
    model.check_sample_options({"guidance_batching": "joint"})  # how to batch, not guidance
    model.check_sample_options({"sampler": "heun", "eta": 0.0})  # eta 0: deterministic, as the ODE is
    with pytest.raises(ValueError, match="eta=0.5 works with the ddpm and ddim samplers, not 'heun'"):
        model.check_sample_options({"sampler": "heun", "eta": 0.5})
    with pytest.raises(ValueError, match="guidance_batching='both' is not supported"):
        model.check_sample_options({"guidance_batching": "both"})


def test_an_unconditional_score_model_inverts_with_a_classifier_s_labels_given():
    model = ScoreSDE((1, 8, 8), K, net=NET, num_scales=20, ema_decay=0)
    x0 = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(1)) * 2 - 1
    options = model.deterministic_options({"sampler": "euler", "steps": 3})
    latents = model.invert(x0, labels=torch.tensor([0, 1]), **options)  # lit-gen sample passes them
    assert latents.shape == x0.shape and torch.isfinite(latents).all()


@pytest.mark.parametrize("sampler", ["heun", "dpmpp2m", "pc"])
def test_a_class_conditional_score_model_is_guided_on_every_solver(sampler):
    model = _conditional_score_sde()
    draw = partial(model.sample, 4, progress=False, sampler=sampler, steps=4)
    a, b = torch.tensor([0, 1, 2, 0]), torch.tensor([2, 2, 1, 1])
    gens = partial(sample_generators, 0, 0, 4)
    # s = 0 is the unconditional model: the labels do not matter; s = 1 and s = 3 follow them
    unconditional = draw(gens(), labels=a, guidance_scale=0.0).x
    assert torch.equal(unconditional, draw(gens(), labels=b, guidance_scale=0.0).x)
    for s in (1.0, 3.0):
        assert not torch.allclose(draw(gens(), labels=a, guidance_scale=s).x,
                                  draw(gens(), labels=b, guidance_scale=s).x)
    # guidance rescale now reaches the solvers too
    plain = draw(gens(), labels=a, guidance_scale=3.0).x
    assert not torch.allclose(draw(gens(), labels=a, guidance_scale=3.0, guidance_rescale=0.7).x, plain)


def test_a_class_conditional_score_model_drops_labels_with_p_uncond():
    x = torch.randn(6, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    losses = {}
    for p in (0.0, 1.0):
        model = _conditional_score_sde(p_uncond=p)
        for name, y in (("a", torch.arange(6) % K), ("b", (torch.arange(6) + 1) % K)):
            torch.manual_seed(3)
            losses[p, name] = model.training_step({"x": x, "y": y}, 0).item()
    assert losses[1.0, "a"] == losses[1.0, "b"]
    assert losses[0.0, "a"] != losses[0.0, "b"]


def test_unconditional_score_models_refuse_classifier_free_guidance_in_one_line():
    model = ScoreSDE((1, 8, 8), K, net=NET, num_scales=20, ema_decay=0)
    with pytest.raises(ValueError, match="guidance_scale=2.0 needs class_conditional=True"):
        ScoreSDE((1, 8, 8), K, net=NET, guidance_scale=2.0)
    with pytest.raises(ValueError, match="is classifier-free guidance, which needs a class- or "
                                         "text-conditional model; this ScoreSDE is unconditional"):
        model.check_sample_options({"guidance_scale": 3.0})


@pytest.mark.parametrize("sampler", ["ddim", "heun"])
def test_a_ddpm_checkpoint_inverts_by_ddim_or_an_ode_solver(sampler):
    model = DDPM((1, 8, 8), 0, net=NET, num_timesteps=50, ema_decay=0, clip_denoised=False)
    _randomise(model.net)
    with torch.no_grad():
        model.net.conv_out.weight.mul_(0.05)  # a gentle field: the ODE is well resolved by 25 steps
    x0 = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(1)) * 2 - 1
    options = model.deterministic_options({"sampler": sampler, "steps": 25})
    latents = model.invert(x0, **options)
    decoded = model.sample(2, latents=latents, **options).x
    assert (decoded - x0).abs().max() < 0.05
    assert (latents - x0).abs().mean() > 0.1  # a real encoding, not the identity
