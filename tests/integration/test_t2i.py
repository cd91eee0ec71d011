"""Text-to-image latent diffusion through the CLI: the autoencoder, then a latent UNet (DDPM), a latent DiT
(rectified flow), a latent score SDE and a latent NCSN with text fitted on its checkpoint, sampled from
prompt files with guidance and CLIP reranking into samples.npz with their captions, tested, drawn through
the Python API as lit-gen sample draws, and the one-line errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lit_gen.checkpoints import load_module
from lit_gen.main import cli_main
from lit_gen.methods import Autoencoder
from lit_gen.methods.base import TinyCheckpoint
from lit_gen.utils import sample_generators
from tests.conftest import fails_in_one_line
from tests.integration.tiny import fit_tiny, tiny_args, tiny_checkpoint

AUTOENCODER, LDM, DIT = "t2i/autoencoder_shapes.yaml", "t2i/ldm_shapes.yaml", "t2i/dit_shapes.yaml"
SDE, NCSN = "t2i/sde_shapes.yaml", "t2i/ncsn_shapes.yaml"
CLIP_CONFIG = "dalle/clip_shapes.yaml"
PROMPTS = ["a small red circle at the top left", "a large blue square at the center"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("t2i")
    autoencoder = fit_tiny(AUTOENCODER, root, "autoencoder")
    on_it = f"--model.init_args.autoencoder_ckpt={autoencoder}"
    return {"autoencoder": autoencoder, "ldm": fit_tiny(LDM, root, "ldm", on_it),
            "dit": fit_tiny(DIT, root, "dit", on_it), "clip": fit_tiny(CLIP_CONFIG, root, "clip"),
            "sde": fit_tiny(SDE, root, "sde", on_it), "ncsn": fit_tiny(NCSN, root, "ncsn", on_it),
            "root": str(root)}


@pytest.mark.parametrize("model", ["ldm", "dit", "sde", "ncsn"])
def test_sample_from_a_prompt_file_with_guidance_and_reranking(runs, model, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    out = tmp_path / "plain"
    cli_main(["sample", "--ckpt_path", runs[model], "--text_file", str(prompts), "--guidance_scale", "2",
              "--steps", "3", "--output", str(out)])
    data = np.load(out / "samples.npz")
    assert data["arr_0"].shape == (2, 32, 32, 3) and data["arr_0"].dtype == np.uint8  # images, not latents
    assert data["captions"].tolist() == PROMPTS and "arr_1" not in data
    ranked = tmp_path / "ranked"
    cli_main(["sample", "--ckpt_path", runs[model], "--text_file", str(prompts), "--num_candidates", "3",
              "--clip_ckpt", runs["clip"], "--steps", "3", "--output", str(ranked)])
    data = np.load(ranked / "samples.npz")
    assert data["arr_0"].shape == (2, 32, 32, 3) and data["captions"].tolist() == PROMPTS
    assert data["clip_scores"].shape == (2,)
    # the kept candidate is the best of the three: all three, scored, hold it
    every = tmp_path / "every"
    cli_main(["sample", "--ckpt_path", runs[model], "--text", PROMPTS[0], "--num_candidates", "3", "--keep",
              "3", "--clip_ckpt", runs["clip"], "--steps", "3", "--output", str(every)])
    scores = np.load(every / "samples.npz")["clip_scores"]
    np.testing.assert_allclose(scores.max(), data["clip_scores"][0], rtol=1e-5)
    assert scores[0] >= scores[1] >= scores[2]


def test_python_api_draws_as_lit_gen_sample_and_the_model_keeps_its_parts(runs, tmp_path):
    from lit_gen.api import load

    model = load(runs["ldm"], device="cpu")
    images = model.sample(3, prompts=PROMPTS, seed=4, steps=3, guidance_scale=1.5, batch_size=2)
    cli_main(["sample", "--ckpt_path", runs["ldm"], "--text", str(PROMPTS).replace("'", '"'), "--num_samples",
              "3", "--seed", "4", "--steps", "3", "--guidance_scale", "1.5", "--output",
              str(tmp_path / "cli")])
    expected = np.load(tmp_path / "cli" / "samples.npz")["arr_0"]
    assert images.shape == expected.shape == (3, 32, 32, 3)
    assert np.abs(images.astype(int) - expected.astype(int)).max() <= 1  # decoder batches of other sizes
    module = model.module
    assert float(module.latent_scale) > 0 and module.tokenizer.is_fitted  # measured and fitted at fit start
    ckpt = torch.load(runs["ldm"], map_location="cpu", weights_only=True)
    assert any(k.startswith("autoencoder.") for k in ckpt["state_dict"])  # sampling needs only this file
    frozen = load_module(runs["autoencoder"])
    for key, value in frozen.net.state_dict().items():
        torch.testing.assert_close(ckpt["state_dict"][f"autoencoder.{key}"], value, rtol=0, atol=0)


@pytest.mark.parametrize("model, config", [("ldm", LDM), ("sde", SDE)])
def test_lit_gen_test_on_a_latent_model(runs, model, config, tmp_path):
    cli_main(["test", *tiny_args(config, tmp_path, "test"), "--ckpt_path", runs[model]])
    events = EventAccumulator(str(tmp_path / "test")).Reload()
    assert "test/loss" in events.Tags()["scalars"] and "test/bpd" not in events.Tags()["scalars"]


def test_one_line_errors(runs, tmp_path, capsys):
    def fails(args: list[str], *expected: str) -> None:
        fails_in_one_line(capsys, args, *expected)

    fails(["sample", "--ckpt_path", runs["ldm"]], "--text")
    fails(["sample", "--ckpt_path", runs["ldm"], "--text", PROMPTS[0], "--labels", "2"], "not labels")
    fails(["sample", "--ckpt_path", runs["ldm"], "--text", PROMPTS[0], "--inpaint", "a.npz", "--mask",
           "m.npz"], "prompts only")
    fails(["sample", "--ckpt_path", runs["ldm"], "--text", PROMPTS[0], "--num_candidates", "3", "--keep",
           "2"], "clip_ckpt")
    fails(["sample", "--ckpt_path", runs["autoencoder"]], "Autoencoder", "autoencoder_ckpt")
    # an autoencoder of another image size, or another method's checkpoint
    other = tiny_checkpoint(TinyCheckpoint(Autoencoder, {"data_shape": (3, 16, 16)}))
    fails(["fit", *tiny_args(LDM, tmp_path, "size"), f"--model.init_args.autoencoder_ckpt={other}"],
          "(3, 16, 16)", "(3, 32, 32)")
    fails(["fit", *tiny_args(LDM, tmp_path, "clip"), f"--model.init_args.autoencoder_ckpt={runs['clip']}"],
          "CLIP", "Autoencoder")
    fails(["fit", *tiny_args(LDM, tmp_path, "classes"), "--model.init_args.class_conditional=true"],
          "two conditions")
    fails(["reflow", "--ckpt_path", runs["dit"], "--num_pairs", "2", "--output", str(tmp_path / "pairs")],
          "latent or text-conditional")
    fails(["export", "--ckpt_path", runs["sde"], "--format", "diffusers", "--output", str(tmp_path / "pipe")],
          "autoencoder's latents", "no VAE")


def test_a_latent_model_samples_from_its_checkpoint_alone(runs, tmp_path):
    """The autoencoder's architecture, weights and latent scale, and NCSN's sigma_1 measured on the latents,
    live in the model's checkpoint: it samples the same once the autoencoder file is gone."""
    moved = tmp_path / "autoencoder.ckpt"
    moved.write_bytes(open(runs["autoencoder"], "rb").read())
    ckpt = fit_tiny(NCSN, tmp_path, "ncsn", f"--model.init_args.autoencoder_ckpt={moved}")
    before = load_module(ckpt).sample(2, sample_generators(0, 0, 2), captions=PROMPTS, steps=2).x
    moved.unlink()
    model = load_module(ckpt)
    assert tuple(model.hparams.autoencoder_hparams["data_shape"]) == (3, 32, 32)
    assert model.hparams.sigma_begin == model.sde.sigma_max > 2 * model.hparams.sigma_end  # measured
    after = model.sample(2, sample_generators(0, 0, 2), captions=PROMPTS, steps=2).x
    torch.testing.assert_close(after, before, rtol=0, atol=0)


def test_a_frozen_clip_text_tower_conditions_the_model(runs, tmp_path):
    ckpt = fit_tiny(LDM, tmp_path, "clip_text", f"--model.init_args.text.clip_ckpt={runs['clip']}",
                    "--trainer.max_steps=3")
    model, clip = load_module(ckpt), load_module(runs["clip"])
    assert model.hparams.text["dim"] == clip.hparams.dim and model.hparams.text["depth"] == clip.hparams.depth
    assert torch.equal(model.tokenizer.json, clip.tokenizer.json)  # CLIP's tokenizer, kept in the checkpoint
    from lit_gen.nets.text_encoder import clip_text_weights

    tower = clip_text_weights(clip.sampling_net.state_dict())
    for net in (model.net, model.ema.module):  # frozen through training, in the weights and their average
        for key, value in net.text.state_dict().items():
            torch.testing.assert_close(value, tower[key], rtol=0, atol=0, msg=key)
    assert not any(p.requires_grad for p in model.net.text.parameters())
    out = model.sample(2, captions=PROMPTS, steps=2)
    assert out.x.shape == (2, 3, 32, 32)


def test_a_latent_cache_file_is_shared_by_models_on_one_autoencoder(runs, tmp_path, capsys):
    cache = tmp_path / "latents.pt"
    on_it = [f"--model.init_args.autoencoder_ckpt={runs['autoencoder']}",
             f"--model.init_args.latent_cache={cache}"]
    fit_tiny(LDM, tmp_path, "first", *on_it)
    written = torch.load(cache, weights_only=True)
    assert len(written["keys"]) == len(written["moments"]) >= 8  # the images of the first epoch
    capsys.readouterr()
    fit_tiny(DIT, tmp_path, "second", *on_it)
    assert f"cached latents read from {cache}" in capsys.readouterr().err
    other = tiny_checkpoint(TinyCheckpoint(Autoencoder, {"data_shape": (3, 32, 32), "channels": 4}))
    fit_tiny(DIT, tmp_path, "third", f"--model.init_args.autoencoder_ckpt={other}",
             f"--model.init_args.latent_cache={cache}")
    assert "latents of another autoencoder" in capsys.readouterr().err
