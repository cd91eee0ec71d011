"""Latent diffusion's pieces against oracles: the autoencoder's shapes and the Gaussian KL in closed form
(torch.distributions in float64), its ELBO in bits/dim, the perceptual term, the latent scale (unit std on the
data it was measured on, kept in the checkpoint), latent models decoding to images, and the one-line
errors."""

from __future__ import annotations

import math
from functools import partial

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from lit_gen.data.shapes import generate_shapes
from lit_gen.methods import DDPM, NCSN, Autoencoder, FlowMatching, ScoreSDE
from lit_gen.methods.base import TinyCheckpoint
from lit_gen.methods.latent import LatentCache
from lit_gen.nets import DiT, UNet
from lit_gen.nets.autoencoder import AutoencoderNet, gaussian_kl, posterior_sample
from lit_gen.nets.perceptual import PerceptualLoss
from tests.integration.tiny import tiny_checkpoint

TINY_AE = dict(latent_channels=2, channels=8, channel_mults=[1, 2])
SHAPES = generate_shapes(64, 16, torch.Generator().manual_seed(0))


def Items():  # noqa: N802 - the dataset of the shapes, items {"x", "y", "caption"} with x in [-1, 1]
    return SHAPES


def autoencoder_ckpt(tmp_path, data_shape=(3, 16, 16)) -> str:
    """An untrained tiny Autoencoder checkpoint (seed 0)."""
    return tiny_checkpoint(TinyCheckpoint("Autoencoder", {"data_shape": data_shape, **TINY_AE}))


def test_autoencoder_shapes_and_gaussian_kl_closed_form():
    net = AutoencoderNet((3, 16, 16), 4, 8, (1, 2, 2))
    assert net.latent_shape == (4, 4, 4)
    mean, logvar = net.moments(torch.randn(2, 3, 16, 16))
    assert mean.shape == logvar.shape == (2, 4, 4, 4)
    assert net.decode(mean).shape == (2, 3, 16, 16)
    with pytest.raises(ValueError, match="not divisible"):
        AutoencoderNet((3, 10, 10), 4, 8, (1, 2, 2))
    m, lv = torch.randn(2, 3, 4, 4, dtype=torch.float64), torch.randn(2, 3, 4, 4, dtype=torch.float64)
    expected = kl_divergence(Normal(m, (0.5 * lv).exp()), Normal(0.0, 1.0)).flatten(1).sum(1)
    torch.testing.assert_close(gaussian_kl(m, lv), expected, rtol=1e-8, atol=1e-8)
    g = torch.Generator().manual_seed(0)
    z = posterior_sample(m[:1].expand(20000, -1, -1, -1), lv[:1].expand(20000, -1, -1, -1), g)
    torch.testing.assert_close(z.mean(0), m[0], rtol=0, atol=0.05 * (0.5 * lv[0]).exp().max().item())
    torch.testing.assert_close(z.var(0).log(), lv[0], rtol=0, atol=0.05)


def test_autoencoder_trains_and_reports_its_elbo():
    torch.manual_seed(0)
    model = Autoencoder(data_shape=(3, 16, 16), **TINY_AE)
    x = torch.stack([Items()[i]["x"] for i in range(8)])
    optimizer = torch.optim.Adam(model.net.parameters(), lr=3e-3)
    first = None
    for _ in range(30):
        loss = model.training_step({"x": x}, 0)
        first = first if first is not None else loss.item()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < first  # it learns
    recon, kl, _ = model._terms(model.net, x, torch.Generator().manual_seed(0))
    # the decoder's Laplace NLL: |x - x_hat| / b + log(2b) per dimension
    assert recon.shape == kl.shape == (8,) and (kl >= 0).all()
    assert (recon / 768 > math.log(0.2)).all()


def test_perceptual_term_from_a_weights_file(tmp_path):
    from torchvision.models import vgg16

    torch.manual_seed(0)
    path = tmp_path / "vgg16.pth"
    torch.save(vgg16(weights=None).state_dict(), path)
    loss = PerceptualLoss(str(path))
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    assert torch.equal(loss(x, x), torch.zeros(2))
    assert (loss(x, x.flip(-1)) > 0).all()
    assert loss(x[:, :1], x[:, :1]).shape == (2,)  # grey images
    with pytest.raises(FileNotFoundError, match="downloads nothing"):
        PerceptualLoss(str(tmp_path / "missing.pth"))
    torch.save({"a": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="not a torchvision vgg16"):
        PerceptualLoss(str(tmp_path / "bad.pth"))


def test_latent_scale_makes_the_latents_unit_std_and_is_kept(tmp_path):
    path = autoencoder_ckpt(tmp_path)
    net = partial(UNet, base_channels=8, channel_mults=[1], num_res_blocks=1, attention_resolutions=[])
    model = DDPM(data_shape=(3, 16, 16), net=net, num_timesteps=10, autoencoder_ckpt=path)
    assert model.data_shape == (2, 8, 8) and model.image_shape == (3, 16, 16)
    model.load_autoencoder(path)
    model.measure_latent_scale(Items())
    scale = float(model.latent_scale)
    x = torch.stack([Items()[i]["x"] for i in range(len(SHAPES))])
    torch.manual_seed(0)
    z = model.latent_batch({"x": x}, sample=True)["x"]
    assert abs(z.std().item() - 1) < 0.02  # unit std on the data it was measured on
    model.measure_latent_scale(Items())  # measured once: a resumed or loaded model keeps it
    assert float(model.latent_scale) == scale
    reloaded = DDPM(**{k: v for k, v in model.hparams.items() if k != "autoencoder_ckpt"})
    reloaded.load_state_dict(model.state_dict())
    assert float(reloaded.latent_scale) == scale
    # the cache gives the moments of recomputation
    cache, net = LatentCache(), model.autoencoder
    first = cache(net, x[:4])
    again = cache(net, x[:4])
    for a, b, c in zip(first, again, net.moments(x[:4]), strict=True):
        assert torch.equal(a, b) and torch.allclose(a, c, atol=1e-6)
    assert len(cache.moments) == 4


def fit_start(model, dataset) -> None:
    """``on_fit_start`` of a model outside a Trainer: one process, the data set ``dataset``."""
    from types import SimpleNamespace

    model._trainer = SimpleNamespace(datamodule=SimpleNamespace(train_dataset=dataset), global_rank=0,
                                     strategy=SimpleNamespace(broadcast=lambda x, src=0: x))
    model.on_fit_start()
    model._trainer = None


@pytest.mark.parametrize("method", [ScoreSDE, NCSN])
def test_score_models_learn_latents_and_ncsn_measures_sigma_1_on_them(tmp_path, method, monkeypatch):
    path = autoencoder_ckpt(tmp_path)
    net = partial(UNet, base_channels=8, channel_mults=[1], num_res_blocks=1, attention_resolutions=[])
    extra = {"sigma_begin": None, "n_steps_each": 2} if method is NCSN else {"num_scales": 10}
    model = method(data_shape=(3, 16, 16), net=net, autoencoder_ckpt=path, sampling_steps=3, **extra)
    assert model.data_shape == (2, 8, 8)
    # never clamped on latents: by no sampler, nor by the score model of the likelihood
    assert not model.noise_model(model.sampling_net).clip_denoised
    assert not model.score_model(model.sampling_net).clip_denoised
    model.load_autoencoder(path)
    fit_start(model, Items())
    assert float(model.latent_scale) > 0
    if method is NCSN:  # NCSNv2's sigma_1: the largest distance between two points it trains on
        z = scaled_posterior_samples(model, SHAPES, model.seed)
        assert model.hparams.sigma_begin == pytest.approx(torch.pdist(z).max().item(), rel=1e-6)
        assert model.sde.sigma_max == model.hparams.sigma_begin
    torch.manual_seed(0)
    model.configure_model()
    loss = model.training_step({"x": torch.stack([Items()[i]["x"] for i in range(4)])}, 0)
    assert loss.isfinite()
    out = model.sample(2)
    assert out.x.shape == (2, 3, 16, 16) and out.x.abs().max() <= 1  # decoded to images
    with pytest.raises(ValueError, match="latents: its ODE"):
        model.log_likelihood(out.x)
    # a classifier of images cannot guide a model of latents
    from lit_gen.methods import NoisyClassifier, noise_process

    monkeypatch.setattr(noise_process, "load_frozen",
                        lambda *args: NoisyClassifier(data_shape=(3, 16, 16), num_classes=3))
    with pytest.raises(ValueError, match=r"shape \(3, 16, 16\).*\(2, 8, 8\) \(an autoencoder's latents\)"):
        model.sample(2, classifier_ckpt="images.ckpt")


def scaled_posterior_samples(model, dataset, seed: int) -> torch.Tensor:
    """z = (mean + std eps) x latent scale of every item, in the order and with the noise of ``seed``,
    flattened, float64 (computed here from the autoencoder's moments, not by the model)."""
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))
    x = torch.stack([dataset[int(i)]["x"] for i in order])
    with torch.no_grad():
        mean, logvar = model.autoencoder.moments(x)
    eps = torch.randn(mean.shape, generator=torch.Generator().manual_seed(seed))
    return ((mean + (0.5 * logvar).exp() * eps) * model.latent_scale).flatten(1).double()


def test_latent_models_decode_to_images_and_refuse_pixel_jobs(tmp_path):
    path = autoencoder_ckpt(tmp_path)
    model = FlowMatching(data_shape=(3, 16, 16), net=partial(DiT, hidden_size=16, depth=1, num_heads=2,
                                                             patch_size=2),
                         autoencoder_ckpt=path, sampling_steps=3)
    model.load_autoencoder(path)
    model.measure_latent_scale(Items())
    out = model.sample(3, trajectory_points=2)
    assert out.x.shape == (3, 3, 16, 16) and out.x.abs().max() <= 1
    assert all(snap.shape == (3, 3, 16, 16) for snap in out.trajectory)
    z = torch.randn(3, *model.data_shape)
    decoded = model.sample(3, latents=z).x
    torch.testing.assert_close(decoded, model.sample(3, latents=z).x)  # deterministic from its latents
    latents = model.invert(decoded, steps=3)  # an image's latents run backwards
    assert latents.shape == (3, 2, 8, 8)
    with pytest.raises(ValueError, match="latents: its ODE"):
        model.log_likelihood(decoded)
    with pytest.raises(ValueError, match="cannot inpaint"):
        model.sample(1, inpaint=(decoded[:1], torch.ones(1, 3, 16, 16)))
    assert not model.abilities.inpainting and FlowMatching.abilities_of(model.hparams) == model.abilities
    with pytest.raises(ValueError, match=r"images of shape \(3, 16, 16\).*\(3, 32, 32\)"):
        DDPM(data_shape=(3, 32, 32), autoencoder_ckpt=path)
    with pytest.raises(FileNotFoundError, match="autoencoder_ckpt not found"):
        DDPM(data_shape=(3, 16, 16), autoencoder_ckpt=str(tmp_path / "missing.ckpt"))


def test_the_latent_cache_file_round_trips_and_belongs_to_one_autoencoder(tmp_path):
    from lit_gen.methods.latent import weights_digest

    net = AutoencoderNet((3, 16, 16), 2, 8, (1, 2))
    x = torch.stack([SHAPES[i]["x"] for i in range(6)])
    cache = LatentCache()
    moments = cache(net, x)
    digest = weights_digest(net)
    cache.save(tmp_path / "latents.pt", digest)
    read = LatentCache()
    assert read.load(tmp_path / "latents.pt", digest) and read.saved == 6
    for a, b in zip(read(net, x), moments, strict=True):
        assert torch.equal(a, b)  # served from the file, as computed
    other = AutoencoderNet((3, 16, 16), 2, 8, (1, 2))
    assert weights_digest(other) != digest
    assert not LatentCache().load(tmp_path / "latents.pt", weights_digest(other))


def test_the_latent_cache_is_bounded_and_serves_what_it_cannot_keep(capsys, tmp_path):
    net = AutoencoderNet((3, 16, 16), 2, 8, (1, 2))
    x = torch.stack([SHAPES[i]["x"] for i in range(6)])
    each = 2 * 2 * 8 * 8 * 4  # mean and log-variance, 2x8x8 fp32
    cache = LatentCache(max_bytes=4 * each)
    first = cache(net, x)
    assert len(cache.moments) == 4 and cache.full  # four kept, two encoded every time
    assert "latent cache is full" in capsys.readouterr().err
    for a, b in zip(cache(net, x), first, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    assert len(cache.moments) == 4 and capsys.readouterr().err == ""  # said once
    # a file read into a smaller cache keeps what fits
    full = LatentCache()
    full(net, x)
    full.save(tmp_path / "latents.pt", "digest")
    small = LatentCache(max_bytes=4 * each)
    assert small.load(tmp_path / "latents.pt", "digest") and len(small.moments) == 4 and small.full
