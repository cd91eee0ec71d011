"""Flows through the CLI: test/bpd, ``lit-gen sample --temperature``, latent interpolation and exact
inversion."""

from __future__ import annotations

import re

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lit_gen.main import cli_main
from tests.integration.test_cli import fit
from tests.integration.tiny import tiny_args

GLOW = "flows/glow_digits.yaml"


@pytest.fixture(scope="module")
def glow_run(tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    return runs, fit(GLOW, runs)


def test_test_subcommand_logs_bits_per_dim(glow_run):
    runs, run = glow_run
    cli_main(["test", *tiny_args(GLOW, runs), "--ckpt_path", str(run / "checkpoints" / "last.ckpt")])
    events = EventAccumulator(str(run)).Reload()
    assert "test/bpd" in events.Tags()["scalars"]
    assert 0 < events.Scalars("test/bpd")[-1].value < 16


def test_sample_at_temperatures(glow_run, tmp_path, capsys):
    _, run = glow_run
    ckpt = str(run / "checkpoints" / "last.ckpt")

    def sample(*args: str) -> np.ndarray:
        out = tmp_path / f"s{len(list(tmp_path.iterdir()))}"
        cli_main(["sample", "--ckpt_path", ckpt, "--num_samples", "4", "--output", str(out), *args])
        assert (out / "grid.png").is_file()
        return np.load(out / "samples.npz")["arr_0"]

    warm, cold = sample("--temperature", "0.7"), sample("--temperature", "0")
    assert warm.shape == cold.shape == (4, 8, 8, 1) and warm.dtype == np.uint8
    assert (cold == cold[:1]).all() and not (warm == warm[:1]).all()  # T = 0: the same image four times
    np.testing.assert_array_equal(sample("--temperature", "0.7", "--batch_size", "3"), warm)
    for args, expected in [(["--steps", "5"],
                            "unrecognized arguments: --steps 5"), (["--temperature", "-0.5"],
                                                                   "temperature=-0.5")]:
        with pytest.raises(SystemExit):
            cli_main(["sample", "--ckpt_path", ckpt, *args, "--output", str(tmp_path / "bad")])
        assert expected in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_interpolation_and_exact_inversion(glow_run, tmp_path, capsys):
    _, run = glow_run
    ckpt = str(run / "checkpoints" / "last.ckpt")
    cli_main(["sample", "--ckpt_path", ckpt, "--interpolate", "3", "--output", str(tmp_path / "i")])
    grid = np.load(tmp_path / "i" / "samples.npz")["arr_0"]
    assert grid.shape == (9, 8, 8, 1)
    cli_main(["sample", "--ckpt_path", ckpt, "--invert", str(tmp_path / "i" / "samples.npz"),
              "--num_samples", "9", "--output", str(tmp_path / "r")])
    assert np.load(tmp_path / "r" / "latents.npz")["arr_0"].shape == (9, 1, 8, 8)
    np.testing.assert_array_equal(np.load(tmp_path / "r" / "samples.npz")["arr_0"], grid)  # exact round trip
    mse = float(re.search(r"reconstruction MSE ([\d.e+-]+)", capsys.readouterr().err).group(1))
    assert mse < 1e-4  # a flow inverts exactly up to float32 rounding (7e-6 seen); a wrong inverse is > 1e-2


def test_bf16_mixed_fit(tmp_path):
    run = fit(GLOW, tmp_path, "--trainer.precision=bf16-mixed")
    events = EventAccumulator(str(run)).Reload()
    assert np.isfinite(events.Scalars("val/bpd")[-1].value)


def test_checkpoint_of_another_architecture_fails_in_one_line(glow_run, tmp_path, capsys):
    import torch

    _, run = glow_run
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    key = next(k for k in ckpt["state_dict"] if k.endswith("conditioner.net.0.weight"))
    ckpt["state_dict"][key] = ckpt["state_dict"][key][:, :1]  # as if built with other channel counts
    torch.save(ckpt, tmp_path / "other.ckpt")
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["sample", "--ckpt_path", str(tmp_path / "other.ckpt"), "--output", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("lit-gen: error:")]
    assert len(err) == 1 and "do not fit" in err[0] and "size mismatch" in err[0], err
    assert not (tmp_path / "out").exists()
