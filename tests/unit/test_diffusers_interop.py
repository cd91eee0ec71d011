"""diffusers interop, the parts without a pipeline: the DiffusersUNet adapter against UNet2DModel, the process
of every supported scheduler option against closed forms (float64) and diffusers' own schedulers, the
scheduler map both ways, and diffusers' timestep spacings."""

from __future__ import annotations

import math

import pytest
import torch

from lit_gen.interop.schedulers import method_of, scheduler_of
from lit_gen.methods import DDPM, ImprovedDDPM
from lit_gen.nets import DiffusersUNet
from lit_gen.process.grid import timestep_subsequence
from tests.diffusers_pipelines import UNET, tiny_unet

diffusers = pytest.importorskip("diffusers")  # a test dependency (the dev extra): always installed in CI


def adapter_of(unet, num_classes: int = 0, null_class: bool = True) -> DiffusersUNet:
    config = {k: v for k, v in unet.config.items() if not k.startswith("_")}
    config.pop("num_class_embeds")
    shape = (unet.config.in_channels, unet.config.sample_size, unet.config.sample_size)
    net = DiffusersUNet(shape, num_classes, unet.config.out_channels, null_class=null_class,
                        **{k: v for k, v in config.items() if k not in ("in_channels", "out_channels")})
    net.unet.load_state_dict(unet.state_dict())
    return net.eval()


def test_adapter_forward_equals_unet2dmodel():
    unet = tiny_unet(channels=3)
    net = adapter_of(unet)
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([3.0, 71.0])
    assert torch.equal(net(x, t), unet(x, t).sample)
    assert torch.equal(net(x, torch.tensor(5.0)), unet(x, torch.tensor([5.0, 5.0])).sample)


def test_adapter_labels_and_null_class():
    unet = tiny_unet(num_class_embeds=4)  # 3 classes and the null label 3
    net = adapter_of(unet, num_classes=3)
    x, t, y = torch.randn(3, 1, 8, 8), torch.tensor([1.0, 2.0, 3.0]), torch.tensor([0, 2, 1])
    assert torch.equal(net(x, t, y), unet(x, t, class_labels=y).sample)
    null = torch.full((3,), 3)
    assert torch.equal(net(x, t), unet(x, t, class_labels=null).sample)  # unconditional: the null label
    assert not torch.allclose(net(x, t, y), net(x, t))
    strict = adapter_of(tiny_unet(num_class_embeds=3), num_classes=3, null_class=False)
    assert torch.equal(strict(x, t, y), strict.unet(x, t, class_labels=y).sample)
    with pytest.raises(ValueError, match="no null class"):
        strict(x, t)


def test_adapter_unit_range_halves_the_noise_level_and_the_score():
    unet = tiny_unet(time_embedding_type="fourier", flip_sin_to_cos=True, freq_shift=0)
    net = adapter_of(unet)
    net.unit_range = True
    x, sigma = torch.rand(2, 1, 8, 8) * 2 - 1, torch.tensor([3.0, 0.5])
    expected = unet((x + 1) / 2, sigma / 2).sample / 2
    assert torch.allclose(net(x, sigma), expected, rtol=0, atol=1e-6)


def _formula_alpha_bar(schedule: str, n: int, start: float, end: float) -> torch.Tensor:
    """Independent float64 closed forms of diffusers' three schedules."""
    if schedule == "linear":
        betas = torch.tensor([start + (end - start) * i / (n - 1) for i in range(n)], dtype=torch.float64)
    elif schedule == "scaled_linear":
        roots = [start**0.5 + (end**0.5 - start**0.5) * i / (n - 1) for i in range(n)]
        betas = torch.tensor(roots, dtype=torch.float64) ** 2
    else:  # squaredcos_cap_v2: Nichol & Dhariwal 2021, Eq. 17, betas capped at 0.999
        f = [math.cos((i / n + 0.008) / 1.008 * math.pi / 2) ** 2 for i in range(n + 1)]
        betas = torch.tensor([min(1 - f[i + 1] / f[i], 0.999) for i in range(n)], dtype=torch.float64)
    return torch.cumprod(1 - betas, 0)


@pytest.mark.parametrize("schedule", ["linear", "scaled_linear", "squaredcos_cap_v2"])
@pytest.mark.parametrize("num_train_timesteps,beta_start,beta_end", [(1000, 1e-4, 0.02), (50, 8.5e-4, 0.012)])
def test_process_equals_the_scheduler(schedule, num_train_timesteps, beta_start, beta_end):
    scheduler = diffusers.DDPMScheduler(num_train_timesteps=num_train_timesteps, beta_schedule=schedule,
                                        beta_start=beta_start, beta_end=beta_end)
    method, hparams = method_of({**scheduler.config, "_class_name": "DDPMScheduler"})
    assert method == "DDPM"
    model = DDPM(data_shape=(1, 8, 8), net=lambda *a: torch.nn.Identity(), **hparams)
    ours = model.diffusion.alpha_bar
    assert ours.dtype == torch.float64
    expected = _formula_alpha_bar(schedule, num_train_timesteps, beta_start, beta_end)
    assert torch.allclose(ours, expected, rtol=1e-8, atol=1e-8)
    # diffusers keeps its betas in float32: equal to their rounding
    assert torch.allclose(ours, scheduler.alphas_cumprod.double(), rtol=2e-6, atol=1e-7)


CONFIGS = [
    {"_class_name": "DDPMScheduler", "variance_type": "fixed_small", "prediction_type": "epsilon"},
    {"_class_name": "DDPMScheduler", "variance_type": "fixed_large", "prediction_type": "sample",
     "clip_sample": False, "beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012},
    {"_class_name": "DDPMScheduler", "variance_type": "learned_range", "prediction_type": "v_prediction",
     "beta_schedule": "squaredcos_cap_v2", "num_train_timesteps": 4000},
    {"_class_name": "DDIMScheduler", "prediction_type": "v_prediction", "num_train_timesteps": 100},
]


@pytest.mark.parametrize("config", CONFIGS)
def test_the_scheduler_map_goes_both_ways(config):
    method, hparams = method_of(config)
    assert method == ("ImprovedDDPM" if config.get("variance_type") == "learned_range" else "DDPM")
    name, back = scheduler_of(method, hparams)
    assert name == config["_class_name"]
    scheduler = getattr(diffusers, name).from_config(back)
    for key, value in config.items():
        if key != "_class_name" and not (key.startswith("beta_") and config.get("beta_schedule") ==
                                         "squaredcos_cap_v2"):
            assert scheduler.config[key] == value, key
    assert method_of({**dict(scheduler.config), "_class_name": name})[1] == hparams


def test_hyperparameters_build_the_model():
    _, hparams = method_of(CONFIGS[2])
    model = ImprovedDDPM(data_shape=(1, 8, 8), net=lambda *a: torch.nn.Identity(), **hparams)
    assert (model.variance, model.prediction_type, model.diffusion.num_timesteps) == ("learned", "v", 4000)


@pytest.mark.parametrize("option,value", [
    ("beta_schedule", "sigmoid"), ("thresholding", True), ("steps_offset", 1), ("set_alpha_to_one", False),
    ("variance_type", "learned"), ("rescale_betas_zero_snr", True), ("trained_betas", [0.1, 0.2]),
    ("prediction_type", "flow"), ("clip_sample_range", 2.0),
])
def test_unsupported_scheduler_options_are_named(option, value):
    with pytest.raises(ValueError, match=option) as err:
        method_of({"_class_name": "DDPMScheduler", option: value})
    assert "\n" not in str(err.value)


def test_other_schedulers_and_methods_are_refused():
    with pytest.raises(ValueError, match="EulerDiscreteScheduler.*is not supported"):
        method_of({"_class_name": "EulerDiscreteScheduler"})
    with pytest.raises(ValueError, match="FlowMatching checkpoint has no diffusers pipeline"):
        scheduler_of("FlowMatching", {})
    with pytest.raises(ValueError, match="learned variance has no DDIMScheduler"):
        scheduler_of("ImprovedDDPM", {"sampler": "ddim"})


@pytest.mark.parametrize("spacing", ["leading", "trailing"])
@pytest.mark.parametrize("steps", [1, 7, 50, 1000])
def test_spacings_equal_diffusers(spacing, steps):
    scheduler = diffusers.DDIMScheduler(timestep_spacing=spacing)
    scheduler.set_timesteps(steps)
    assert timestep_subsequence(1000, steps, spacing).tolist() == scheduler.timesteps.tolist()


def test_unet_config_keys_pass_through():
    net = DiffusersUNet((1, 8, 8), 0, 2, **UNET, in_channels=3, sample_size=32)  # replaced by the data's
    config = net.unet.config
    assert (config.in_channels, config.sample_size, config.out_channels) == (1, 8, 2)
    assert tuple(net.unet.config.block_out_channels) == UNET["block_out_channels"]


def test_gradient_checkpointing_keeps_the_gradients():
    plain = DiffusersUNet((1, 8, 8), 0, 1, **UNET).train()
    ckpt = DiffusersUNet((1, 8, 8), 0, 1, gradient_checkpointing=True, **UNET).train()
    ckpt.load_state_dict(plain.state_dict())
    assert ckpt.unet.is_gradient_checkpointing and not plain.unet.is_gradient_checkpointing
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([1.0, 7.0])
    for net in (plain, ckpt):
        net(x, t).square().sum().backward()
    for (name, a), b in zip(plain.named_parameters(), ckpt.parameters(), strict=True):
        assert torch.allclose(a.grad, b.grad, rtol=1e-5, atol=1e-6), name


UNET_CASES = [
    dict(base_channels=32, channel_mults=[1, 2, 2], num_res_blocks=1, attention_resolutions=[4],
         num_groups=8),
    dict(base_channels=32, channel_mults=[1, 2], num_res_blocks=2, attention_resolutions=[8], num_heads=2,
         adaptive_norm=True, num_groups=8, dropout=0.1),
]


@pytest.mark.parametrize("case", range(len(UNET_CASES)))
@pytest.mark.parametrize("num_classes", [0, 3])
def test_lit_gen_unet_converts_to_an_equal_unet2dmodel(case, num_classes):
    from lit_gen.interop.unet import to_unet2d
    from lit_gen.nets import UNet

    torch.manual_seed(case)
    net = UNet((3, 16, 16), num_classes, 6, **UNET_CASES[case])
    for p in net.parameters():  # the zero-initialised output layers too
        torch.nn.init.normal_(p, std=0.05)
    unet = to_unet2d(net, check=False)
    assert sum(p.numel() for p in unet.parameters()) == sum(p.numel() for p in net.parameters())
    x, t = torch.randn(4, 3, 16, 16), torch.tensor([0.0, 3.0, 500.0, 999.0])
    y = torch.tensor([0, 2, num_classes, 1]) if num_classes else None
    with torch.no_grad():
        ours, theirs = net.eval()(x, t, y), unet(x, t, class_labels=y).sample
    assert torch.allclose(ours, theirs, rtol=0, atol=1e-5)


@pytest.mark.parametrize("args,words", [
    (dict(num_groups=32), "GroupNorm groups"),  # 16 groups at width 32, 32 at 64
    (dict(num_groups=8, time_scale=1000.0), "time_scale"),
    (dict(num_groups=8, num_heads=2, attention_resolutions=[16, 8]), "head size"),
])
def test_unets_that_do_not_map_are_refused(args, words):
    from lit_gen.interop.unet import to_unet2d
    from lit_gen.nets import UNet

    net = UNet((3, 16, 16), 0, 3, base_channels=32, channel_mults=[1, 2], num_res_blocks=1,
               **{"attention_resolutions": [8], **args})
    with pytest.raises(ValueError, match=words) as err:
        to_unet2d(net)
    assert "\n" not in str(err.value)


def test_spacing_and_time_input_are_refused_where_they_do_not_apply():
    from lit_gen.diffusion import GaussianDiffusion
    from lit_gen.process import make_sde

    sde = GaussianDiffusion("linear", 100).sde
    for spacing in ("leading", "trailing"):  # the solvers' grid must end at t_min
        with pytest.raises(ValueError, match="spacing of the ddpm and ddim samplers"):
            sde.time_grid(10, spacing)
    with pytest.raises(ValueError, match="time_input='sigma' is for the VE SDE"):
        make_sde("vp", time_input="sigma")
    assert float(make_sde("ve", time_input="sigma", sigma_min=0.1, sigma_max=10).model_time(
        torch.tensor(1.0))) == pytest.approx(10.0)


def test_scheduler_spacing_and_clip_range():
    _, hparams = method_of({"_class_name": "DDIMScheduler", "timestep_spacing": "trailing"})
    assert hparams["spacing"] == "trailing"
    assert scheduler_of("DDPM", {**hparams, "spacing": "linear"})[1]["timestep_spacing"] == "linspace"
    with pytest.raises(ValueError, match="spacing='quadratic'"):
        scheduler_of("DDPM", {**hparams, "spacing": "quadratic"})
    assert method_of({"_class_name": "DDPMScheduler", "clip_sample": False, "clip_sample_range": 3.0})
    with pytest.raises(ValueError, match="clip_sample_range=3.0"):
        method_of({"_class_name": "DDPMScheduler", "clip_sample_range": 3.0})
