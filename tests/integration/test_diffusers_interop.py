"""Importing and exporting diffusers pipelines (small random ones written by the tests, offline): lit_gen's
samplers on an imported DDPM / DDIM pipeline give the pipeline's own output from the same x_T, timesteps and
noise; export -> from_pretrained -> import is the identity; every unsupported case is one line, exit 2,
nothing written."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lit_gen.api import load
from lit_gen.interop.pipelines import export_diffusers, import_diffusers
from lit_gen.sampling import assembly
from tests.diffusers_pipelines import save_pipeline, tiny_unet

diffusers = pytest.importorskip("diffusers")  # a test dependency (the dev extra): always installed in CI

SHAPE = (3, 1, 8, 8)


def _images(x: torch.Tensor) -> np.ndarray:
    """lit_gen's data space [-1, 1] as the pipelines' output_type 'np' (N, H, W, C in [0, 1])."""
    return (x / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()


def _ours(model, options: dict, seed: int = 1) -> np.ndarray:
    """lit_gen's sampler from the pipeline's x_T and noise: one generator, x_T drawn first, as a pipeline
    draws them."""
    generator = torch.Generator().manual_seed(seed)
    x_T = torch.randn(SHAPE, generator=generator)
    noise_model = model.module.noise_model(model.module.sampling_net)
    return _images(assembly.sample(noise_model, options, x_T, generator)[0])


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
@pytest.mark.parametrize("clip_sample", [True, False])
def test_samplers_equal_the_pipelines(tmp_path, prediction_type, clip_sample):
    config = dict(num_train_timesteps=100, prediction_type=prediction_type, clip_sample=clip_sample)
    src = save_pipeline(tmp_path / "pipe", "DDIMScheduler", **config)
    import_diffusers(str(src), tmp_path / "x.ckpt")
    model = load(tmp_path / "x.ckpt")
    ddim = diffusers.DDIMPipeline.from_pretrained(str(src))
    for eta in (0.0, 1.0):
        # diffusers' DDIM reuses the unclipped eps unless told otherwise; lit_gen recomputes eps from the
        # clipped x0, as guided-diffusion does
        ref = ddim(batch_size=3, generator=torch.Generator().manual_seed(1), num_inference_steps=10, eta=eta,
                   use_clipped_model_output=True, output_type="np").images
        ours = _ours(model, {"sampler": "ddim", "steps": 10, "spacing": "leading", "eta": eta})
        assert np.abs(ours - ref).max() < 1e-4, eta
    ddpm = diffusers.DDPMPipeline(unet=ddim.unet, scheduler=diffusers.DDPMScheduler.from_config(
        ddim.scheduler.config))
    ref = ddpm(batch_size=3, generator=torch.Generator().manual_seed(1), num_inference_steps=10,
               output_type="np").images
    assert np.abs(_ours(model, {"sampler": "ddpm", "steps": 10, "spacing": "leading"}) - ref).max() < 1e-4
    # load(...).sample with the pipeline's x_T (eta 0): the same images
    x_T = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1))
    sampled = model.sample(3, x_T=x_T, sampler="ddim", steps=10, spacing="leading", output="tensor")
    ref = ddim(batch_size=3, generator=torch.Generator().manual_seed(1), num_inference_steps=10,
               use_clipped_model_output=True, output_type="np").images
    assert np.abs(_images(sampled) - ref).max() < 1e-4


@pytest.mark.parametrize("variance_type", ["fixed_large", "learned_range"])
def test_ancestral_variances_equal_the_pipeline(tmp_path, variance_type):
    channels = 2 if variance_type == "learned_range" else 1
    src = save_pipeline(tmp_path / "pipe", unet=tiny_unet(out_channels=channels), num_train_timesteps=50,
                        variance_type=variance_type, beta_schedule="squaredcos_cap_v2")
    import_diffusers(str(src), tmp_path / "x.ckpt")
    model = load(tmp_path / "x.ckpt")
    assert type(model.module).__name__ == ("ImprovedDDPM" if channels == 2 else "DDPM")
    pipe = diffusers.DDPMPipeline.from_pretrained(str(src))
    for steps in (50, 10):
        ref = pipe(batch_size=3, generator=torch.Generator().manual_seed(1), num_inference_steps=steps,
                   output_type="np").images
        ours = _ours(model, {"sampler": "ddpm", "steps": steps, "spacing": "leading"})
        assert np.abs(ours - ref).max() < 1e-4, steps


def test_class_conditional_pipeline(tmp_path):
    src = save_pipeline(tmp_path / "pipe", unet=tiny_unet(num_class_embeds=4), num_train_timesteps=20)
    import_diffusers(str(src), tmp_path / "strict.ckpt")
    strict = load(tmp_path / "strict.ckpt")
    assert strict.module.num_classes == 4
    x = strict.sample(4, labels=[0, 3], sampler="ddim", steps=5, output="tensor")
    assert x.shape == (4, 1, 8, 8)
    with pytest.raises(ValueError, match="no null class"):
        strict.sample(2, guidance_scale=3.0, sampler="ddim", steps=5)
    import_diffusers(str(src), tmp_path / "guided.ckpt", null_class=True)
    guided = load(tmp_path / "guided.ckpt")
    assert guided.module.num_classes == 3
    net, unet = guided.module.sampling_net, diffusers.UNet2DModel.from_pretrained(str(src), subfolder="unet")
    xt, t, y = torch.randn(2, 1, 8, 8), torch.tensor([4.0, 9.0]), torch.tensor([2, 0])
    with torch.no_grad():
        assert torch.equal(net(xt, t, y), unet(xt, t, class_labels=y).sample)
    # s = 0 is the null label's (unconditional) sample, s = 1 the conditional one
    opts = {"sampler": "ddim", "steps": 5, "output": "tensor", "labels": [1]}
    x_T = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    cond = guided.sample(2, x_T=x_T, guidance_scale=1.0, **opts)
    uncond = guided.sample(2, x_T=x_T, guidance_scale=0.0, **opts)
    assert not torch.allclose(cond, uncond)
    assert guided.sample(2, x_T=x_T, guidance_scale=3.0, **opts).isfinite().all()


def test_score_sde_ve_pipeline(tmp_path):
    unet = tiny_unet(time_embedding_type="fourier", flip_sin_to_cos=True, freq_shift=0)
    src = save_pipeline(tmp_path / "pipe", "ScoreSdeVeScheduler", unet=unet, num_train_timesteps=20,
                        sigma_min=0.01, sigma_max=50.0, snr=0.15)
    import_diffusers(str(src), tmp_path / "ve.ckpt")
    model = load(tmp_path / "ve.ckpt")
    module = model.module
    scheduler = diffusers.ScoreSdeVeScheduler.from_pretrained(str(src), subfolder="scheduler")
    scheduler.set_timesteps(10)
    scheduler.set_sigmas(10)
    times = module.sde.time_grid(10, "linear")
    # the grid: the pipeline's noise levels, on lit_gen's [-1, 1] scale (twice its [0, 1] scale)
    assert torch.allclose(module.sde.sigma(times) / 2, scheduler.sigmas.double(), rtol=1e-6, atol=0)
    # the score: the pipeline's UNet output (its score in [0, 1]) at the same point and noise level
    u = torch.rand(2, 1, 8, 8)
    x, t = 2 * u - 1, times[3:5]
    score = module.score_model(module.sampling_net).score(x, t)
    with torch.no_grad():
        ref = unet(u, (module.sde.sigma(t) / 2).float()).sample
    assert torch.allclose(score * 2, ref, rtol=1e-5, atol=1e-5)
    assert model.sample(2, sampler="pc", steps=5, output="tensor").isfinite().all()


def test_export_round_trip(tmp_path):
    src = save_pipeline(tmp_path / "pipe", num_train_timesteps=30, prediction_type="v_prediction",
                        beta_schedule="scaled_linear", beta_start=0.001, beta_end=0.03)
    import_diffusers(str(src), tmp_path / "a.ckpt")
    folder, name = export_diffusers(tmp_path / "a.ckpt", tmp_path / "out")
    assert name == "DDPMPipeline"
    pipe = diffusers.DDPMPipeline.from_pretrained(str(folder))
    original = diffusers.DDPMPipeline.from_pretrained(str(src))
    for key, value in original.unet.state_dict().items():
        assert torch.equal(pipe.unet.state_dict()[key], value), key
    for key in ("num_train_timesteps", "beta_schedule", "beta_start", "beta_end", "prediction_type",
                "variance_type", "clip_sample"):
        assert pipe.scheduler.config[key] == original.scheduler.config[key], key
    import_diffusers(str(folder), tmp_path / "b.ckpt")
    a, b = (torch.load(tmp_path / n, weights_only=True) for n in ("a.ckpt", "b.ckpt"))
    assert a["hyper_parameters"] == b["hyper_parameters"]
    assert a["state_dict"].keys() == b["state_dict"].keys()
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    x = pipe(batch_size=2, generator=torch.Generator().manual_seed(0), num_inference_steps=3,
             output_type="np").images
    assert x.shape == (2, 8, 8, 1)


def _unsupported(tmp_path, case: str):
    """A pipeline folder that lit-gen import must refuse, and the words its error names."""
    if case == "scheduler option":
        return save_pipeline(tmp_path / case, thresholding=True), "thresholding"
    if case == "schedule":
        return save_pipeline(tmp_path / case, beta_schedule="sigmoid"), "beta_schedule"
    if case == "text UNet":
        folder = save_pipeline(tmp_path / case)
        index = json.loads((folder / "model_index.json").read_text())
        index["unet"] = ["diffusers", "UNet2DConditionModel"]
        (folder / "model_index.json").write_text(json.dumps(index))
        return folder, "UNet2DConditionModel"
    if case == "pipeline":
        folder = save_pipeline(tmp_path / case)
        index = json.loads((folder / "model_index.json").read_text())
        index["_class_name"] = "LDMPipeline"
        (folder / "model_index.json").write_text(json.dumps(index))
        return folder, "LDMPipeline"
    return tmp_path / "missing", "neither a pipeline folder"


@pytest.mark.parametrize("case", ["schedule", "text UNet", "pipeline", "missing"])
def test_unsupported_pipelines_are_refused(tmp_path, case):
    folder, words = _unsupported(tmp_path, case)
    with pytest.raises(ValueError, match=words):
        import_diffusers(str(folder), tmp_path / "x.ckpt")
    assert not (tmp_path / "x.ckpt").exists()


def test_cli_import_sample_and_refusals(lit_gen, tmp_path):
    src = save_pipeline(tmp_path / "pipe", num_train_timesteps=20)
    result = lit_gen("import", "diffusers", str(src), "--output", str(tmp_path / "x.ckpt"))
    assert result.returncode == 0, result.stderr
    assert "a DDPM checkpoint" in result.stderr
    result = lit_gen("sample", "--ckpt_path", str(tmp_path / "x.ckpt"), "--num_samples", "4", "--sampler",
                     "dpmpp2m", "--steps", "5", "--output", str(tmp_path / "samples"))
    assert result.returncode == 0, result.stderr
    assert np.load(tmp_path / "samples" / "samples.npz")["arr_0"].shape == (4, 8, 8, 1)
    folder, words = _unsupported(tmp_path, "scheduler option")
    result = lit_gen("import", "diffusers", str(folder), "--output", str(tmp_path / "bad.ckpt"))
    assert result.returncode == 2 and words in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (tmp_path / "bad.ckpt").exists()
    result = lit_gen("export", "--ckpt_path", str(tmp_path / "x.ckpt"), "--format", "diffusers", "--output",
                     str(tmp_path / "exported"))
    assert result.returncode == 0, result.stderr
    assert diffusers.DDPMPipeline.from_pretrained(str(tmp_path / "exported")).unet is not None
