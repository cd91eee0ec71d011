"""Score models through the CLI: `lit-gen test` reports bits/dim and NFE by the ODE; `lit-gen sample` runs
every sampler on score checkpoints and the VP ones on DDPM checkpoints (DPM-Solver++ at order 1 is DDIM, the
ancestral predictor is DDPM), inpaints, inverts, and guides; NCSN sets sigma_1 from the data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lit_gen.checkpoints import load_module
from lit_gen.main import cli_main
from lit_gen.score.sde import sigma_max_from_data
from lit_gen.utils import sample_generators
from tests.integration.tiny import fit_tiny, tiny_args


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> dict[str, str]:
    runs = tmp_path_factory.mktemp("runs")
    return {
        "vp": fit_tiny("sde/vp_digits.yaml", runs, "vp"),
        "ncsn": fit_tiny("ncsn/digits.yaml", runs, "ncsn"),
        "ddpm": fit_tiny("ddpm/digits.yaml", runs, "ddpm"),
        "cfg": fit_tiny("cfg/digits.yaml", runs, "cfg"),
        "classifier": fit_tiny("classifier/digits.yaml", runs, "classifier"),
        # the paper's VP discretisation (N = 1000) has DDPM's T = 1000 betas, so a T = 1000 classifier can
        # guide it
        "vp1000": fit_tiny("sde/vp_digits.yaml", runs, "vp1000", "--model.init_args.num_scales=1000"),
        "classifier1000": fit_tiny("classifier/digits.yaml", runs, "classifier1000",
                                   "--model.init_args.num_timesteps=1000"),
        "runs": str(runs),
    }


def _sample(tmp_path: Path, ckpt: str, *args: str) -> dict:
    out = tmp_path / "out"
    cli_main(["sample", "--ckpt_path", ckpt, "--num_samples", "4", "--output", str(out), *args])
    return dict(np.load(out / "samples.npz"))


def test_test_subcommand_reports_ode_bits_per_dim_and_nfe(ckpts, capsys):
    runs = Path(ckpts["runs"])
    cli_main(["test", *tiny_args("sde/vp_digits.yaml", runs, "vp"), "--ckpt_path", ckpts["vp"]])
    printed = capsys.readouterr().out
    assert "test/bpd" in printed and "test/nfe" in printed
    events = EventAccumulator(str(runs / "vp")).Reload()
    bpd = events.Scalars("test/bpd")[-1].value
    assert {"test/loss", "test/bpd", "test/nfe"} <= set(events.Tags()["scalars"])
    assert 0 < bpd < 20 and events.Scalars("test/nfe")[-1].value >= 6  # dopri5: 6 calls per step at least


@pytest.mark.parametrize("sampler",
                         ["pc", "em", "reverse_diffusion", "ancestral", "euler", "heun", "ode", "dpmpp2m"])
def test_every_sampler_runs_on_a_score_checkpoint_and_reports_its_nfe(ckpts, tmp_path, capsys, sampler):
    out = _sample(tmp_path, ckpts["vp"], "--sampler", sampler, "--steps", "4")
    assert out["arr_0"].shape == (4, 8, 8, 1) and out["arr_0"].dtype == np.uint8
    assert "NFE (network evaluations per batch)" in capsys.readouterr().err


def test_ncsn_sets_sigma_1_from_the_data_and_runs_its_samplers(ckpts, tmp_path):
    model = load_module(ckpts["ncsn"], "cpu")
    from lit_gen.data import DigitsDataModule

    data = DigitsDataModule(image_size=8, batch_size=8, num_workers=0)
    data.setup("fit")
    points = torch.cat([b["x"] for b in data.train_dataloader()])
    assert model.hparams.sigma_begin == pytest.approx(sigma_max_from_data(points), rel=1e-6)
    assert model.sde.sigma_max == model.hparams.sigma_begin and model.sde.N == 10
    langevin = _sample(tmp_path, ckpts["ncsn"], "--n_steps_each", "2")  # annealed Langevin, its default
    # a VE sampler on an NCSN checkpoint
    pc = _sample(tmp_path, ckpts["ncsn"], "--sampler", "pc", "--steps", "4")
    assert langevin["arr_0"].shape == pc["arr_0"].shape == (4, 8, 8, 1)


def test_dpm_solver_pp_order_one_is_ddim_and_ancestral_is_ddpm_on_a_ddpm_checkpoint(ckpts):
    model = load_module(ckpts["ddpm"], "cpu")
    for p in model.sampling_net.parameters():  # a trained-looking net: the tiny fit leaves the last conv at 0
        p.data.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))

    def draw(**options):
        return model.sample(5, sample_generators(1, 0, 5), **options).x

    ddim, dpm = draw(sampler="ddim", steps=6), draw(sampler="dpmpp2m", order=1, steps=6, spacing="linear")
    assert (ddim - draw(sampler="ddim", steps=3)).abs().max() > 1e-3  # the comparison can fail
    torch.testing.assert_close(dpm, ddim, rtol=0, atol=1e-5)
    torch.testing.assert_close(draw(sampler="ancestral", steps=6), draw(sampler="ddpm", steps=6), rtol=0,
                               atol=1e-5)


def test_guidance_through_the_score_samplers(ckpts, tmp_path):
    cfg = _sample(tmp_path, ckpts["cfg"], "--sampler", "heun", "--steps", "3", "--guidance_scale", "3",
                  "--labels", "[2]")
    assert cfg["arr_1"].tolist() == [2] * 4
    guided = _sample(tmp_path, ckpts["ddpm"], "--sampler", "em", "--steps", "3", "--classifier_ckpt",
                     ckpts["classifier"], "--classifier_scale", "5", "--labels", "[1, 7]")
    plain = _sample(tmp_path, ckpts["ddpm"], "--sampler", "em", "--steps", "3")
    assert guided["arr_1"].tolist() == [1, 7, 1, 7] and not np.array_equal(plain["arr_0"], guided["arr_0"])


def test_classifier_guidance_of_a_vp_score_model(ckpts, tmp_path, capsys):
    guided = _sample(tmp_path, ckpts["vp1000"], "--sampler", "em", "--steps", "3", "--classifier_ckpt",
                     ckpts["classifier1000"], "--classifier_scale", "5", "--labels", "[4]")
    plain = _sample(tmp_path, ckpts["vp1000"], "--sampler", "em", "--steps", "3")
    assert guided["arr_1"].tolist() == [4] * 4 and not np.array_equal(plain["arr_0"], guided["arr_0"])
    for ckpt, classifier, expected in [
        # NCSN is VE: unknown to the classifier
        (ckpts["ncsn"], ckpts["classifier"], "needs a VP score model"),
        (ckpts["vp"], ckpts["classifier1000"], "was trained for the noise process"),  # N = 10 vs T = 1000
    ]:
        with pytest.raises(SystemExit):
            cli_main(["sample", "--ckpt_path", ckpt, "--classifier_ckpt", classifier, "--output",
                      str(tmp_path / "bad")])
        assert expected in capsys.readouterr().err


def test_inpainting_keeps_the_known_pixels(ckpts, tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(2, 8, 8, 1), dtype=np.uint8)
    mask = np.zeros((8, 8), dtype=np.uint8)
    mask[:, :4] = 1  # the left half is known
    np.savez(tmp_path / "images.npz", images)
    np.savez(tmp_path / "mask.npz", mask)
    for ckpt in (ckpts["vp"], ckpts["ddpm"]):
        out = _sample(tmp_path, ckpt, "--sampler", "pc", "--steps", "4", "--inpaint",
                      str(tmp_path / "images.npz"),
                      "--mask", str(tmp_path / "mask.npz"))["arr_0"]
        np.testing.assert_array_equal(out[:, :, :4], images[[0, 1, 0, 1], :, :4])
        assert not np.array_equal(out[:, :, 4:], images[[0, 1, 0, 1], :, 4:])


def test_inpainting_errors_name_the_bad_input(ckpts, tmp_path, capsys):
    np.savez(tmp_path / "images.npz", np.zeros((2, 8, 8, 1), dtype=np.uint8))
    np.savez(tmp_path / "mask.npz", np.zeros((5, 5), dtype=np.uint8))
    for ckpt, args, expected in [
        (ckpts["vp"], ["--mask", str(tmp_path / "mask.npz")], "--mask must have shape"),
        (ckpts["ddpm"], ["--mask", str(tmp_path / "mask.npz"), "--sampler", "ddim"],
         "--mask must have shape"),
        (ckpts["vp"], ["--mask", str(tmp_path / "nope.npz")], "nope.npz"),
    ]:
        with pytest.raises(SystemExit):
            cli_main(["sample", "--ckpt_path", ckpt, "--inpaint", str(tmp_path / "images.npz"), *args,
                      "--output", str(tmp_path / "bad")])
        assert expected in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_invert_round_trips_through_the_probability_flow_ode(ckpts, tmp_path, capsys):
    images = np.random.default_rng(1).integers(0, 256, size=(3, 8, 8, 1), dtype=np.uint8)
    np.savez(tmp_path / "images.npz", images)
    cli_main(["sample", "--ckpt_path", ckpts["vp"], "--invert", str(tmp_path / "images.npz"), "--num_samples",
              "3",
              "--output", str(tmp_path / "inv")])
    mse = float(capsys.readouterr().err.split("reconstruction MSE ")[1].split()[0])
    assert mse < 1e-4 and (tmp_path / "inv" / "latents.npz").is_file()


def test_score_sample_errors(ckpts, tmp_path, capsys):
    for ckpt, args, expected in [
        (ckpts["vp"], ["--sampler", "langevin"], "variance-exploding"),
        (ckpts["vp"], ["--sampler", "ddim"], "sampler 'ddim' is not supported"),
        (ckpts["vp"], ["--sampler", "em", "--order", "2"], "order=2 is an option of the ['dpmpp2m']"),
        (ckpts["vp"], ["--labels", "[1]"], "unconditional"),
        (ckpts["ddpm"],
         ["--sampler", "pc", "--classifier_form", "mean", "--classifier_ckpt", ckpts["classifier"]],
         "classifier_form='mean'"),
        (ckpts["ddpm"], ["--sampler", "pc", "--guidance_rescale", "0.5"], "guidance_rescale"),
        (ckpts["ddpm"], ["--sampler", "ddim", "--snr", "0.1"], "snr=0.1 is an option of the samplers of "
                                                               "lit_gen.score"),
    ]:
        with pytest.raises(SystemExit):
            cli_main(["sample", "--ckpt_path", ckpt, "--num_samples", "2", "--output", str(tmp_path / "bad"),
                      *args])
        err = capsys.readouterr().err
        assert expected in err and err.count("\n") == 1, err
    assert not (tmp_path / "bad").exists()
