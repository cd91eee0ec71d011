"""The CLI end to end: every config parses, instantiates and fits; runs resume exactly; checkpoints rebuild
the module and sample; bad input fails in one line without touching an existing run."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import lightning.pytorch as L
import numpy as np
import pytest
import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lit_gen.cli import LitGenCLI
from lit_gen.main import cli_main
from lit_gen.methods import DDPM, ImprovedDDPM
from tests.conftest import EXPERIMENTS
from tests.integration.tiny import method_configs, required_args, tiny_args

DIGITS = "ddpm/digits.yaml"


def fit(config: str, runs_dir: Path, *extra: str, name: str = "tiny", max_steps: int = 2,
        monkeypatch=None) -> Path:
    cli_main(["fit", *tiny_args(config, runs_dir, name, max_steps, monkeypatch), *extra])
    return runs_dir / name


@pytest.mark.parametrize("config", method_configs())
def test_config_instantiates(config, tmp_path, monkeypatch):
    # at its own size, with the files it reads (offline stand-ins) and the checkpoints its method loads
    args = ["--config", str(EXPERIMENTS / config), "--runs_dir", str(tmp_path)]
    cli = LitGenCLI(args=[*args, *required_args(config, monkeypatch)], run=False)
    # linked from the DataModule (a latent model's data_shape is its latents')
    assert getattr(cli.model, "image_shape", cli.model.data_shape) == tuple(cli.datamodule.data_shape)
    assert Path(cli.trainer.logger.log_dir) == tmp_path / cli.config.name


@pytest.mark.parametrize("preset", sorted(p.name for p in (EXPERIMENTS / "trainer").glob("*.yaml")))
def test_trainer_presets_parse(preset, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["fit", "--config", str(EXPERIMENTS / DIGITS), "--config",
                  str(EXPERIMENTS / "trainer" / preset),
                  "--print_config"])
    assert exit_info.value.code in (0, None)
    assert "strategy" in capsys.readouterr().out


@pytest.mark.parametrize("config", method_configs())
def test_fit_smoke(config, tmp_path, monkeypatch):
    run = fit(config, tmp_path, monkeypatch=monkeypatch)
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert (run / "config.yaml").is_file()
    events = EventAccumulator(str(run)).Reload()
    scalars, images = set(events.Tags()["scalars"]), set(events.Tags()["images"])
    assert "train/loss" in scalars
    if config.startswith("classifier/"):  # a noisy classifier: accuracy per quarter of t, no samples
        assert {"val/acc", "val/acc_t0-1", "val/acc_t7-9"} <= scalars, scalars
        assert not (run / "samples").exists()
        return
    # helpers: DALL-E's tokenizer of images and reranker, latent diffusion's autoencoder
    if config.startswith(("dalle/dvae", "dalle/clip", "t2i/autoencoder")):
        kind = config.split("/")[1].split("_")[0]
        expected = {"dvae": {"val/recon_mse", "val/elbo_bpd", "val/perplexity", "val/dead_codes"},
                    "clip": {"val/loss", "val/acc", "train/logit_scale"},
                    "autoencoder": {"val/recon_mse", "val/recon_l1", "train/kl"}}[kind]
        assert expected <= scalars, scalars
        assert ("val/reconstructions" in images) == ("clip" not in config), images
        assert not (run / "samples").exists()
        return
    grids = sorted((run / "samples").glob("step_*.png"))
    assert grids
    # one grid row per class: 10 rows (5 for shapes) of 8x8 digits or 32x32 images
    if config.startswith("cfg/"):
        from PIL import Image

        rows, size = 5 if "shapes" in config else 10, 8 if "digits" in config else 32
        scale = 2 if size == 8 else 1  # 9-pixel rows are doubled to fit the class label left of each
        grid = Image.open(grids[-1])
        assert grid.height == scale * (rows * (size + 1) + 1)
        assert grid.width > scale * (size + 2)  # the label margin
    assert scalars & {"val/loss", "val/bpd", "val/nll"}
    assert any(tag.startswith("samples/") for tag in images)
    if config.startswith(("sde/", "ncsn/")):  # the score field of 2-D score models as a quiver plot
        assert ("samples/score_field" in images) == config.endswith("toy2d.yaml"), images
    if config.startswith("flows/"):  # grids at every configured temperature; density heatmaps for 2-D data
        assert any(tag.startswith("samples/") and "_T0.5" in tag for tag in images), images
        assert ("density/heatmap" in images) == config.endswith("toy2d.yaml")


def test_fit_prints_the_global_batch_and_a_gpu_preset_on_a_cpu_fails_in_one_line(tmp_path, capsys):
    fit(DIGITS, tmp_path, "--config", str(EXPERIMENTS / "trainer" / "accumulate.yaml"), "--config",
        str(EXPERIMENTS / "trainer" / "bf16.yaml"), "--trainer.limit_train_batches=4")
    err = capsys.readouterr().err
    assert "global batch 32 per optimizer step = micro-batch 8 x 4 accumulation step(s) x 1 rank(s)" in err
    if torch.cuda.is_available():
        return
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["fit", *tiny_args(DIGITS, tmp_path, "gpu"), "--config",
                  str(EXPERIMENTS / "trainer" / "gpu.yaml")])
    assert exit_info.value.code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("lit-gen: error:")]
    assert len(lines) == 1 and "no CUDA GPU" in lines[0] and "--trainer.accelerator cpu" in lines[0], lines
    assert not (tmp_path / "gpu").exists()


def test_same_config_twice_and_test_subcommand(tmp_path):
    run = fit(DIGITS, tmp_path)
    # the saved config.yaml must not make the resume abort
    fit(DIGITS, tmp_path, "--ckpt_path=last", max_steps=3)
    cli_main(["test", *tiny_args(DIGITS, tmp_path), "--ckpt_path", str(run / "checkpoints" / "last.ckpt")])
    tags = set(EventAccumulator(str(run)).Reload().Tags()["scalars"])
    assert {"test/loss", "test/bpd", "test/bpd_prior", "test/bpd_kl", "test/bpd_decoder"} <= tags


def test_test_subcommand_estimates_the_bound_from_random_steps(tmp_path, capsys):
    run = fit("iddpm/digits.yaml", tmp_path)
    ckpt = str(run / "checkpoints" / "last.ckpt")
    cli_main(["test", *tiny_args("iddpm/digits.yaml", tmp_path), "--ckpt_path", ckpt,
              "--model.init_args.bound_timesteps=4"])
    events = EventAccumulator(str(run)).Reload()
    assert {"test/bpd", "test/bpd_se", "test/bpd_kl"} <= set(events.Tags()["scalars"])
    assert 0 < events.Scalars("test/bpd_se")[-1].value < events.Scalars("test/bpd")[-1].value
    with pytest.raises(SystemExit):
        cli_main(["test", *tiny_args("iddpm/digits.yaml", tmp_path), "--ckpt_path", ckpt,
                  "--model.init_args.bound_timesteps=1"])
    assert "bound_timesteps=1" in capsys.readouterr().err


def _state(path: Path) -> dict:
    ckpt = torch.load(path, weights_only=False)
    return {
        "state_dict": ckpt["state_dict"],
        "optimizer": ckpt["optimizer_states"][0]["state"],
        "lr_scheduler": ckpt["lr_schedulers"][0]["last_epoch"],
        "global_step": ckpt["global_step"],
    }


@pytest.mark.parametrize(
    "config, specific",
    [
        (DIGITS, ["--model.init_args.net.init_args.dropout=0.1"]),
        # ActNorm's data-dependent init must not run again on resume
        ("flows/glow_digits.yaml", []),
        # condition dropout draws from the per-step seed
        ("cfg/digits.yaml", []),
        ("classifier/digits.yaml", []),
        # continuous t and importance-sampled t draw from the per-step seed; NCSN measures sigma_1 again
        ("sde/subvp_digits.yaml", []),
        ("ncsn/digits.yaml", []),
        # DALL-E's stages: Gumbel noise and the annealed schedules; caption dropout; CLIP's fitted tokenizer
        ("dalle/dvae_shapes.yaml", []),
        ("dalle/transformer_shapes.yaml", []),
        ("dalle/clip_shapes.yaml", []),
        # text-to-image latent models: posterior samples of cached latents, the latent scale, caption dropout
        ("t2i/ldm_shapes.yaml", []),
        ("t2i/dit_shapes.yaml", []),
        ("t2i/sde_shapes.yaml", []),
        ("t2i/ncsn_shapes.yaml", []),  # sigma_1 measured on the latents
    ],
)
def test_resume_matches_uninterrupted_run(config, specific, tmp_path):
    extra = ["--trainer.max_steps=-1", "--trainer.limit_train_batches=4", "--samples.every_n_steps=0",
             "--model.init_args.ema_decay=0.9", *specific,
             "--model.init_args.lr_scheduler=lit_gen.optim.WarmupCosineLR",
             "--model.init_args.lr_scheduler.warmup_steps=2"]
    fit(config, tmp_path, *extra, "--trainer.max_epochs=3", name="straight")
    # the same run, stopped after its first epoch (as by a crash or Ctrl-C), then resumed from last.ckpt
    stop = ["--trainer.callbacks+=tests.integration.tiny.StopAfterEpochs", "--trainer.callbacks.epochs=1"]
    fit(config, tmp_path, *extra, "--trainer.max_epochs=3", *stop, name="resumed")
    assert _state(tmp_path / "resumed/checkpoints/last.ckpt")["global_step"] == 4
    fit(config, tmp_path, *extra, "--trainer.max_epochs=3", "--ckpt_path=last", name="resumed")
    a = _state(tmp_path / "straight/checkpoints/last.ckpt")
    b = _state(tmp_path / "resumed/checkpoints/last.ckpt")
    assert a["global_step"] == b["global_step"] == 12
    assert a["lr_scheduler"] == b["lr_scheduler"]
    assert a["state_dict"].keys() == b["state_dict"].keys()
    assert any(k.startswith("ema.") for k in a["state_dict"])
    for key in a["state_dict"]:
        torch.testing.assert_close(a["state_dict"][key], b["state_dict"][key], rtol=0, atol=0, msg=key)
    for idx, state in a["optimizer"].items():
        for name, value in state.items():
            torch.testing.assert_close(value, b["optimizer"][idx][name], rtol=0, atol=0)


def test_resume_mid_epoch_matches_uninterrupted_run(tmp_path, capsys):
    """Preempted at step 7, two batches into the second 5-batch epoch (1,437 digits, 256 a batch), resumed
    from last.ckpt: the loader skips the 2 batches already trained on, and the run ends bit-identical to an
    uninterrupted one."""
    extra = ["--trainer.max_steps=-1", "--trainer.limit_train_batches=null",
             "--data.init_args.batch_size=256",
             "--samples.every_n_steps=0", "--model.init_args.ema_decay=0.9", "--trainer.max_epochs=3"]
    fit(DIGITS, tmp_path, *extra, name="straight")
    stop = ["--trainer.callbacks+=tests.integration.tiny.StopAfterSteps", "--trainer.callbacks.steps=7"]
    fit(DIGITS, tmp_path, *extra, *stop, name="resumed")
    ckpt = torch.load(tmp_path / "resumed/checkpoints/last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 7 and ckpt["DigitsDataModule"] == {"epoch": 1, "batches": 2,
                                                                     "batch_size": 256}
    with pytest.raises(SystemExit):  # another batch size would not continue the same epoch
        fit(DIGITS, tmp_path, *extra, "--data.init_args.batch_size=128", "--ckpt_path=last", name="resumed")
    assert "batch_size=256" in capsys.readouterr().err
    fit(DIGITS, tmp_path, *extra, "--ckpt_path=last", name="resumed")
    a = _state(tmp_path / "straight/checkpoints/last.ckpt")
    b = _state(tmp_path / "resumed/checkpoints/last.ckpt")
    assert a["global_step"] == b["global_step"] == 15
    for key in a["state_dict"]:
        torch.testing.assert_close(a["state_dict"][key], b["state_dict"][key], rtol=0, atol=0, msg=key)


def test_improved_ddpm_checkpoint_rebuilds_with_its_defaults(tmp_path):
    run = fit("iddpm/digits.yaml", tmp_path)
    model = ImprovedDDPM.load_from_checkpoint(run / "checkpoints" / "last.ckpt")
    assert model.variance == "learned" and model.diffusion.schedule == "cosine"
    assert model.net.out_channels == 2  # eps and v


def test_checkpoint_rebuilds_module_and_samples(tmp_path):
    run = fit(DIGITS, tmp_path)
    ckpt = run / "checkpoints" / "last.ckpt"
    model = DDPM.load_from_checkpoint(ckpt)  # from the checkpoint alone: net class and sizes come from it
    assert model.data_shape == (1, 8, 8) and model.diffusion.num_timesteps == 10
    saved = torch.load(ckpt, weights_only=False)["state_dict"]
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, saved[key])

    def sample(out: str, batch_size: int) -> np.ndarray:
        cli_main(["sample", "--ckpt_path", str(ckpt), "--num_samples", "5", "--seed", "3",
                  "--batch_size", str(batch_size), "--output", str(tmp_path / out)])
        assert (tmp_path / out / "grid.png").is_file()
        return np.load(tmp_path / out / "samples.npz")

    a, b = sample("a", 2), sample("b", 5)
    assert a["arr_0"].shape == (5, 8, 8, 1) and a["arr_0"].dtype == np.uint8
    assert "arr_1" not in a.files  # unconditional model: no labels
    np.testing.assert_array_equal(a["arr_0"], b["arr_0"])  # same seed, any batch size: same images


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize(
    "bad, expected",
    [
        (["--model.init_args.bogus=3"], "bogus"),
        (["--trainer.max_steps=abc"], "abc"),
        (["--model.init_args.beta_schedule=sigmoid"], "sigmoid"),
        (["--ckpt_path", "{tmp}/missing.ckpt"], "missing.ckpt"),
        (["--ckpt_path", "{tmp}/corrupt.ckpt"], "corrupt.ckpt"),
        (["--ckpt_path", "{tmp}/other.ckpt"], "lit_gen.methods.base.GenerativeModule"),
    ],
)
def test_bad_input_fails_in_one_line_and_writes_nothing(bad, expected, tmp_path, capsys):
    run = fit(DIGITS, tmp_path)
    (tmp_path / "corrupt.ckpt").write_bytes(b"not a checkpoint")
    other = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    other["lit_gen"]["class_path"] = "lit_gen.methods.base.GenerativeModule"
    torch.save(other, tmp_path / "other.ckpt")
    before = _digest(run)
    capsys.readouterr()
    args = [a.replace("{tmp}", str(tmp_path)) for a in bad]
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["fit", *tiny_args(DIGITS, tmp_path), *args])
    assert exit_info.value.code == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("lit-gen: error:")]
    assert len(err) == 1 and expected in err[0], err
    assert _digest(run) == before  # nothing in the run was written over


def test_sample_errors(tmp_path, capsys):
    run = fit(DIGITS, tmp_path)
    ckpt = str(run / "checkpoints" / "last.ckpt")
    for args, expected in [
        (["--ckpt_path", str(tmp_path / "nope.ckpt")], "nope.ckpt"),
        (["--ckpt_path", ckpt, "--sampler", "bogus"], "bogus"),
        (["--ckpt_path", ckpt, "--sampler", "ode", "--snr", "0.1"], "snr=0.1 is an option of the ['pc'] "
                                                                    "sampler(s); 'ode' does not take it"),
        (["--ckpt_path", ckpt, "--sampler", "pc", "--eta", "0.5"], "eta"),
        (["--ckpt_path", ckpt, "--sampler", "heun", "--steps", "1"], "steps=1"),
        (["--ckpt_path", ckpt, "--inpaint", str(tmp_path / "x.npz")], "--inpaint and --mask"),
        (["--ckpt_path", ckpt, "--steps", "5000"], "5000"),
        (["--ckpt_path", ckpt, "--sampler", "ddpm", "--eta", "0.5"], "eta"),
        (["--ckpt_path", ckpt, "--num_samples", "1", "--devices", "2"], "num_samples=1 is fewer than the 2 "
                                                                        "ranks"),
    ]:
        with pytest.raises(SystemExit):
            cli_main(["sample", *args, "--output", str(tmp_path / "out")])
        assert expected in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_bf16_mixed_precision_and_no_ema(tmp_path):
    run = fit(DIGITS, tmp_path, "--trainer.precision=bf16-mixed", "--model.init_args.ema_decay=0")
    ckpt = run / "checkpoints" / "last.ckpt"
    assert not any(k.startswith("ema.") for k in torch.load(ckpt, weights_only=False)["state_dict"])
    cli_main(["sample", "--ckpt_path", str(ckpt), "--num_samples", "2", "--steps", "3", "--output",
              str(tmp_path / "s")])
    assert np.load(tmp_path / "s" / "samples.npz")["arr_0"].shape == (2, 8, 8, 1)


def test_interrupted_checkpoint_write_keeps_the_old_file(tmp_path, monkeypatch):
    """Lightning writes checkpoints inside an fsspec transaction: a write that dies leaves last.ckpt
    intact."""
    from fsspec.implementations.local import LocalFileOpener

    run = fit(DIGITS, tmp_path)
    last = run / "checkpoints" / "last.ckpt"
    before = last.read_bytes()

    def dying_write(self, data):
        LocalFileOpener.__dict__["_write_half"](self, data[: len(data) // 2])
        raise OSError("disk died")

    monkeypatch.setattr(LocalFileOpener, "_write_half", LocalFileOpener.write, raising=False)
    monkeypatch.setattr(LocalFileOpener, "write", dying_write)
    model = DDPM.load_from_checkpoint(last)
    trainer = L.Trainer(logger=False, enable_progress_bar=False, max_steps=0)
    trainer.strategy.connect(model)
    with pytest.raises(OSError, match="disk died"):
        trainer.save_checkpoint(last)
    assert last.read_bytes() == before
    assert all(p.suffix == ".ckpt" for p in last.parent.iterdir())  # no temporary file left behind


def test_sample_interpolation_and_inversion(tmp_path, capsys):
    ckpt = str(fit(DIGITS, tmp_path) / "checkpoints" / "last.ckpt")
    cli_main(["sample", "--ckpt_path", ckpt, "--interpolate", "3", "--steps", "5", "--output",
              str(tmp_path / "i")])
    grid = np.load(tmp_path / "i" / "samples.npz")["arr_0"]
    assert grid.shape == (9, 8, 8, 1)
    cli_main(["sample", "--ckpt_path", ckpt, "--invert", str(tmp_path / "i" / "samples.npz"), "--num_samples",
              "4",
              "--steps", "10", "--output", str(tmp_path / "r")])
    assert np.load(tmp_path / "r" / "latents.npz")["arr_0"].shape == (4, 1, 8, 8)
    assert np.load(tmp_path / "r" / "samples.npz")["arr_0"].shape == (4, 8, 8, 1)
    mse = float(re.search(r"reconstruction MSE ([\d.e+-]+)", capsys.readouterr().err).group(1))
    original = np.load(tmp_path / "i" / "samples.npz")["arr_0"][:4].astype(np.float64) / 127.5 - 1
    decoded = np.load(tmp_path / "r" / "samples.npz")["arr_0"].astype(np.float64) / 127.5 - 1
    # the printed value is the images' (before rounding)
    assert abs(mse - ((decoded - original) ** 2).mean()) < 2e-2
    with pytest.raises(SystemExit):
        cli_main(["sample", "--ckpt_path", ckpt, "--interpolate", "3", "--sampler", "ddpm", "--output",
                  str(tmp_path / "bad")])
    assert "--sampler ddim" in capsys.readouterr().err


def test_fid_during_fit_is_logged_with_features_and_sample_count(tmp_path):
    run = fit(DIGITS, tmp_path, "--trainer.callbacks+=FIDMonitor", "--trainer.callbacks.num_samples=12",
              "--trainer.callbacks.batch_size=5", '--trainer.callbacks.sample_options={"steps": 3}')
    events = EventAccumulator(str(run)).Reload()
    assert {"val/fid_digits16_n12", "val/kid_digits16_n12"} <= set(events.Tags()["scalars"])
    assert events.Scalars("val/fid_digits16_n12")[-1].value > 0


def test_fid_chooses_the_best_three_checkpoints(tmp_path):
    preset = yaml.safe_load((EXPERIMENTS / "trainer" / "fid_best3.yaml").read_text())
    fid, best, stop = preset["trainer"]["callbacks"]
    fid["init_args"].update(num_samples=8, batch_size=4, sample_options={"steps": 3})
    best["init_args"]["monitor"] = stop["init_args"]["monitor"] = "val/fid_digits16_n8"
    (tmp_path / "fid.yaml").write_text(yaml.safe_dump(preset))
    run = fit(DIGITS, tmp_path, "--config", str(tmp_path / "fid.yaml"), "--trainer.val_check_interval=1",
              "--trainer.check_val_every_n_epoch=null", "--trainer.limit_train_batches=null", max_steps=6)
    # logged through pl_module.log at every validation (the logger's step is the count of steps before it)
    values = {e.step + 1: e.value for e in EventAccumulator(str(run)).Reload().Scalars("val/fid_digits16_n8")}
    assert sorted(values) == [1, 2, 3, 4, 5, 6]
    kept = sorted(int(p.stem.split("step")[1]) for p in (run / "checkpoints").glob("fid-step*.ckpt"))
    assert kept == sorted(sorted(values, key=values.get)[:3])  # the three lowest FIDs


def test_folder64_grids_and_checkpoints_every_epoch(tmp_path, monkeypatch):
    """The notes' setting: a sample grid and a checkpoint after every epoch (2 batches an epoch here)."""
    run = fit("ddpm/folder64.yaml", tmp_path, "--samples.every_n_steps=0", "--samples.every_n_epochs=1",
              "--checkpoint.every_n_train_steps=0", "--checkpoint.every_n_epochs=1", "--trainer.max_steps=-1",
              "--trainer.max_epochs=3", monkeypatch=monkeypatch)
    assert sorted(p.name for p in (run / "samples").glob("step_*.png")) == [
        "step_0000002.png", "step_0000004.png", "step_0000006.png"]
    assert sorted(p.name for p in (run / "checkpoints").glob("step*.ckpt")) == [
        "step0000002.ckpt", "step0000004.ckpt", "step0000006.ckpt"]
