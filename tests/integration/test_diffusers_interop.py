"""Importing and exporting diffusers pipelines (small random ones written by the tests, offline): lit_gen's
samplers on an imported DDPM / DDIM pipeline give the pipeline's own output from the same x_T, timesteps and
noise; export -> from_pretrained -> import is the identity; every unsupported case is one line, exit 2,
nothing written."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from lit_gen.api import load
from lit_gen.interop.pipelines import export_diffusers, import_diffusers
from lit_gen.sampling import assembly
from tests.conftest import ROOT, subprocess_env
from tests.diffusers_pipelines import save_pipeline, tiny_unet
from tests.integration.tiny import fit_tiny, tiny_args

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
    # load(...).sample with the pipeline's x_T (eta 0): the same images, at the pipeline's spacing
    assert model.module.hparams.spacing == "leading"
    x_T = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1))
    sampled = model.sample(3, x_T=x_T, sampler="ddim", steps=10, output="tensor")
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
    unet = tiny_unet(channels=3, time_embedding_type="fourier", flip_sin_to_cos=True, freq_shift=0)
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
    u = torch.rand(2, 3, 8, 8)  # ScoreSdeVePipeline draws 3 channels
    x, t = 2 * u - 1, times[3:5]
    score = module.score_model(module.sampling_net).score(x, t)
    with torch.no_grad():
        ref = unet(u, (module.sde.sigma(t) / 2).float()).sample
    assert torch.allclose(score * 2, ref, rtol=1e-5, atol=1e-5)
    assert model.sample(2, sampler="pc", steps=5, output="tensor").isfinite().all()
    # and back: the same scheduler config and UNet
    folder, name = export_diffusers(tmp_path / "ve.ckpt", tmp_path / "out")
    pipe = diffusers.ScoreSdeVePipeline.from_pretrained(str(folder))
    assert name == "ScoreSdeVePipeline"
    for key in ("num_train_timesteps", "sigma_min", "sigma_max", "snr", "sampling_eps", "correct_steps"):
        assert pipe.scheduler.config[key] == pytest.approx(scheduler.config[key], rel=1e-12), key
    assert all(torch.equal(v, pipe.unet.state_dict()[k]) for k, v in unet.state_dict().items())
    assert pipe(num_inference_steps=2, output_type="np").images.shape == (1, 8, 8, 3)


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


# the keys of experiments/ddpm/cifar10_diffusers.yaml beyond DiffusersUNet's tiny settings
CIFAR_UNET = dict(flip_sin_to_cos=False, freq_shift=1, downsample_padding=0, norm_eps=1e-6,
                  attention_head_dim=8)


def test_fine_tune_and_test_an_imported_pipeline(lit_gen, tmp_path, monkeypatch):
    """``--model.init_args.init_from`` an imported pipeline starts a fit from its weights (lr 0 keeps them),
    and ``lit-gen test`` reports the bound in bits/dim of the imported checkpoint."""
    src = save_pipeline(tmp_path / "pipe", unet=tiny_unet(channels=3, size=16, **CIFAR_UNET),
                        num_train_timesteps=10)
    assert lit_gen("import", "diffusers", str(src), "--output", str(tmp_path / "x.ckpt")).returncode == 0
    args = tiny_args("ddpm/cifar10_diffusers.yaml", tmp_path / "runs", "tune", monkeypatch=monkeypatch)
    args += ["--model.init_args.num_timesteps=10", "--model.init_args.optimizer.init_args.lr=0",
             "--samples.every_n_steps=0"]
    result = lit_gen("fit", *args, f"--model.init_args.init_from={tmp_path / 'x.ckpt'}")
    assert result.returncode == 0, result.stderr
    assert "start from the sampling weights" in result.stderr
    last = tmp_path / "runs" / "tune" / "checkpoints" / "last.ckpt"
    tuned = torch.load(last, weights_only=True)["state_dict"]
    imported = torch.load(tmp_path / "x.ckpt", weights_only=True)["state_dict"]
    for key, value in imported.items():
        if key.startswith(("net.", "ema.module.")):
            assert torch.equal(tuned[key], value), key
    test_args = [a for a in args if not a.startswith("--checkpoint")]
    result = lit_gen("test", *test_args, "--ckpt_path", str(tmp_path / "x.ckpt"))
    assert result.returncode == 0, result.stderr
    assert "test/bpd" in result.stdout


def test_missing_diffusers_is_one_line(tmp_path):
    """Without the extra, a diffusers config and lit-gen import each end in one line naming it."""
    code = ("import sys; sys.modules['diffusers'] = None; from lit_gen.main import cli_main; "
            "cli_main(sys.argv[1:])")
    for args in (["fit", "--config", "experiments/ddpm/folder64_diffusers.yaml"],
                 ["import", "diffusers", str(tmp_path), "--output", str(tmp_path / "x.ckpt")]):
        result = subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, capture_output=True, text=True,
                                env=subprocess_env())
        assert result.returncode == 2, result.stderr
        assert result.stderr.strip().splitlines() == [result.stderr.strip()]
        assert "pip install 'lit_gen[diffusers]'" in result.stderr


def test_lit_gen_unet_exports_to_an_equal_pipeline(tmp_path):
    """A DDPM trained with lit_gen's own UNet exports to a DDPMPipeline whose UNet2DModel gives the same
    outputs (1e-5) and whose DDIM samples are lit_gen's (1e-4); a UNet that does not map is one line."""
    from lit_gen.checkpoints import load_module

    ckpt = fit_tiny("ddpm/digits.yaml", tmp_path / "runs", "unet",
                    "--model.init_args.net.init_args.num_groups=4", "--model.init_args.ema_decay=0.5",
                    "--model.init_args.spacing=leading")  # exported as the pipeline's timestep_spacing
    folder, name = export_diffusers(ckpt, tmp_path / "pipe")
    pipe = diffusers.DDIMPipeline.from_pretrained(str(folder))
    module = load_module(ckpt)
    x, t = torch.randn(2, *module.data_shape), torch.tensor([0.0, 9.0])
    with torch.no_grad():
        ours, theirs = module.sampling_net(x, t), pipe.unet(x, t).sample
    assert torch.allclose(ours, theirs, rtol=0, atol=1e-5)
    shape = (3, *module.data_shape)
    ref = pipe(batch_size=3, generator=torch.Generator().manual_seed(1), num_inference_steps=5,
               use_clipped_model_output=True, output_type="np").images
    x_T = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    assert pipe.scheduler.config.timestep_spacing == "leading"
    sampled = load(ckpt).sample(3, x_T=x_T, sampler="ddim", steps=5, output="tensor")
    assert np.abs(_images(sampled) - ref).max() < 1e-4
    narrow = fit_tiny("ddpm/digits.yaml", tmp_path / "runs", "narrow")  # 4 groups at width 8, 8 at 16
    with pytest.raises(ValueError, match="GroupNorm groups"):
        export_diffusers(narrow, tmp_path / "narrow")
    assert not (tmp_path / "narrow").exists()


def test_classifier_guidance_and_ode_likelihood_on_an_imported_pipeline(lit_gen, tmp_path):
    """A noisy classifier trained for the pipeline's process (linear betas, T = 10) guides the imported
    model, and lit-gen test reports the ODE bits/dim beside the bound."""
    classifier = fit_tiny("classifier/digits.yaml", tmp_path / "runs", "classifier")  # 8x8 digits, T = 10
    unet = tiny_unet(channels=1, size=8)
    with torch.no_grad():  # a smooth ODE for the likelihood: a random net's raw output is far from one
        unet.conv_out.weight.mul_(0.01)
    src = save_pipeline(tmp_path / "pipe", unet=unet, num_train_timesteps=10)
    import_diffusers(str(src), tmp_path / "x.ckpt")
    for sampler in ("ddpm", "ddim"):
        result = lit_gen("sample", "--ckpt_path", str(tmp_path / "x.ckpt"), "--num_samples", "4", "--sampler",
                         sampler, "--classifier_ckpt", classifier, "--classifier_scale", "3", "--labels", "7",
                         "--output", str(tmp_path / sampler))
        assert result.returncode == 0, result.stderr
        assert np.load(tmp_path / sampler / "samples.npz")["arr_1"].tolist() == [7] * 4
    args = tiny_args("ddpm/digits_diffusers.yaml", tmp_path / "runs", "test")
    args = [a for a in args if not a.startswith("--model.init_args.net")]
    # 2 test batches of 4 (an ODE solve each; "=1" would parse as the float 1.0, all of them)
    result = lit_gen("test", *args, "--ckpt_path", str(tmp_path / "x.ckpt"), "--model.init_args.ode_bpd=true",
                     "--data.init_args.image_size=8", "--trainer.limit_test_batches=2",
                     "--data.init_args.batch_size=4")
    assert result.returncode == 0, result.stderr
    assert "test/ode_bpd" in result.stdout and "test/bpd" in result.stdout


def test_a_hub_id_that_cannot_be_downloaded_is_one_line(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # as HF_HUB_OFFLINE=1 does
    with pytest.raises(ValueError, match="could not download 'google/ddpm-cifar10-32' from the Hugging Face"):
        import_diffusers("google/ddpm-cifar10-32", tmp_path / "x.ckpt")
    assert not (tmp_path / "x.ckpt").exists()


def test_memory_reads_the_diffusers_unet(lit_gen):
    result = lit_gen("memory", "--config", "experiments/ddpm/digits_diffusers.yaml", "--devices", "2",
                     "--batch_size", "8")
    assert result.returncode == 0, result.stderr
    assert "network: 1.11 M parameters (DiffusersUNet)" in result.stdout
    assert "fsdp " in result.stdout and "deepspeed_zero3 " in result.stdout


def test_refused_imports_and_exports_are_one_line(tmp_path):
    """A UNet config key this diffusers does not know, and the export of a class-conditional model (the
    pipelines sample unconditionally), each end in one line with nothing written."""
    folder = save_pipeline(tmp_path / "pipe", unet=tiny_unet(num_class_embeds=4), num_train_timesteps=10)
    import_diffusers(str(folder), tmp_path / "cond.ckpt", null_class=True)
    with pytest.raises(ValueError, match="class-conditional; diffusers' DDPM pipeline calls its UNet"):
        export_diffusers(tmp_path / "cond.ckpt", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    config = json.loads((folder / "unet" / "config.json").read_text())
    (folder / "unet" / "config.json").write_text(json.dumps({**config, "future_option": 1}))
    with pytest.raises(ValueError, match=r"does not take: \['future_option'\]"):
        import_diffusers(str(folder), tmp_path / "x.ckpt")
    assert not (tmp_path / "x.ckpt").exists()
