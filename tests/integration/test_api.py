"""The Python API (issue 27, part 4): ``lit_gen.load(X).sample(...)`` draws the images of ``lit-gen sample``
with the same options and seed (any batch size), from checkpoints and exported safetensors alike; given noise,
labels and guidance; ``log_likelihood`` of uint8 images; one-line errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lit_gen import load  # lit_gen.load, imported on first use
from tests.integration.tiny import fit_tiny


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> dict[str, str]:
    runs = tmp_path_factory.mktemp("runs")
    return {"ddpm": fit_tiny("ddpm/digits.yaml", runs, "ddpm"),
            "fm": fit_tiny("flow_matching/cfg_digits.yaml", runs, "fm")}


def cli_samples(lit_gen_cli, ckpt: str, output, *args: str) -> np.ndarray:
    proc = lit_gen_cli("sample", "--ckpt_path", ckpt, "--output", str(output), *args)
    assert proc.returncode == 0, proc.stderr
    return np.load(output / "samples.npz")["arr_0"]


def test_load_and_sample_draw_the_images_of_lit_gen_sample(ckpts, lit_gen, tmp_path):
    model = load(ckpts["ddpm"])
    images = model.sample(5, seed=3, sampler="ddim", steps=3, batch_size=2)
    assert images.dtype == np.uint8 and images.shape == (5, 8, 8, 1)
    expected = cli_samples(lit_gen, ckpts["ddpm"], tmp_path / "cli", "--num_samples", "5", "--seed", "3",
                           "--sampler", "ddim", "--steps", "3")
    np.testing.assert_array_equal(images, expected)
    guided = load(ckpts["fm"]).sample(4, labels=3, guidance_scale=2.0, sampler="heun", steps=4)
    expected = cli_samples(lit_gen, ckpts["fm"], tmp_path / "fm", "--num_samples", "4", "--labels", "3",
                           "--guidance_scale", "2", "--sampler", "heun", "--steps", "4")
    np.testing.assert_array_equal(guided, expected)


def test_exported_weights_given_noise_tensors_and_likelihood(ckpts, lit_gen, tmp_path):
    proc = lit_gen("export", "--ckpt_path", ckpts["fm"], "--output", str(tmp_path / "fm.safetensors"))
    assert proc.returncode == 0, proc.stderr
    model, exported = load(ckpts["fm"]), load(tmp_path / "fm.safetensors")
    np.testing.assert_array_equal(model.sample(3, seed=1, steps=4), exported.sample(3, seed=1, steps=4))
    x_T = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    x = model.sample(3, x_T=x_T, output="tensor", steps=4)
    direct = model.module.sample(3, latents=x_T, labels=torch.tensor([0, 1, 2]), steps=4).x
    torch.testing.assert_close(x, direct, rtol=0, atol=0)
    out = model.log_likelihood(model.sample(2, steps=4))
    assert out["bpd"].shape == (2,) and torch.isfinite(out["bpd"]).all()


def test_one_line_errors(ckpts):
    model = load(ckpts["fm"])
    for kwargs, message in [({"output": "png"}, "output='png' is not supported"),
                            ({"x_T": torch.zeros(2, 1, 8, 8)}, r"x_T must be \(3, 1, 8, 8\)"),
                            ({"sampler": "nope"}, "sampler 'nope' is not supported"),
                            ({"labels": 12}, "label 12 is out of range"),
                            ({"prompts": ["a cat"]}, "prompts are for a text-to-image model")]:
        with pytest.raises(ValueError, match=message):
            model.sample(3, **kwargs)
    with pytest.raises(ValueError, match=r"images of shape \(3, 4, 4\) do not fit"):
        model.log_likelihood(np.zeros((1, 4, 4, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="--device 'cuda:7'"):
        load(ckpts["fm"], device="cuda:7")

