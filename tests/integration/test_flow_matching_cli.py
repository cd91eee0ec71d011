"""Flow matching through ``lit-gen sample`` and ``test``: Euler by default with its NFE printed, every ODE
solver with labels and classifier-free guidance (its math: tests/unit/test_flow_matching.py), inversion that
round-trips through the ODE, latent interpolation, inpainting that keeps the known pixels, and test/bpd and
test/straightness."""

from __future__ import annotations

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.integration.tiny import fit_tiny, tiny_args

CFG = "flow_matching/cfg_digits.yaml"


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> str:
    return fit_tiny(CFG, tmp_path_factory.mktemp("runs"), "fm")


def sample(lit_gen, ckpt: str, output, *args: str):
    proc = lit_gen("sample", "--ckpt_path", ckpt, "--num_samples", "4", "--output", str(output), *args)
    assert proc.returncode == 0, proc.stderr
    return np.load(output / "samples.npz"), proc.stderr


def test_euler_by_default_and_every_ode_solver_with_labels_and_guidance(lit_gen, ckpt, tmp_path):
    _, err = sample(lit_gen, ckpt, tmp_path / "default")
    assert "NFE (network evaluations per batch): 4" in err  # the tiny grid: 5 points, 4 Euler steps
    for sampler in ("euler", "heun", "midpoint", "rk45", "dpmpp2m"):
        out, err = sample(lit_gen, ckpt, tmp_path / sampler, "--sampler", sampler, "--steps", "5", "--labels",
                          "3", "--guidance_scale", "2")
        assert out["arr_1"].tolist() == [3] * 4 and out["arr_0"].shape == (4, 8, 8, 1)
        assert "NFE" in err


def test_inversion_round_trips_and_interpolation_decodes(lit_gen, ckpt, tmp_path):
    images = np.random.default_rng(1).integers(0, 256, size=(3, 8, 8, 1), dtype=np.uint8)
    np.savez(tmp_path / "images.npz", images)
    _, err = sample(lit_gen, ckpt, tmp_path / "inv", "--invert", str(tmp_path / "images.npz"), "--sampler",
                    "rk45", "--rtol", "1e-6", "--atol", "1e-6")
    assert float(err.split("reconstruction MSE ")[1].split()[0]) < 1e-4
    assert np.load(tmp_path / "inv" / "latents.npz")["arr_0"].shape == (3, 1, 8, 8)
    grid, _ = sample(lit_gen, ckpt, tmp_path / "interp", "--interpolate", "3", "--steps", "5")
    assert grid["arr_0"].shape == (9, 8, 8, 1)


def test_inpainting_keeps_the_known_pixels(lit_gen, ckpt, tmp_path):
    images = np.random.default_rng(0).integers(0, 256, size=(2, 8, 8, 1), dtype=np.uint8)
    mask = np.zeros((8, 8), dtype=np.uint8)
    mask[:, :4] = 1
    np.savez(tmp_path / "images.npz", images)
    np.savez(tmp_path / "mask.npz", mask)
    out, _ = sample(lit_gen, ckpt, tmp_path / "inpaint", "--inpaint", str(tmp_path / "images.npz"), "--mask",
                    str(tmp_path / "mask.npz"), "--steps", "5")
    np.testing.assert_array_equal(out["arr_0"][:, :, :4], images[[0, 1, 0, 1], :, :4])
    assert not np.array_equal(out["arr_0"][:, :, 4:], images[[0, 1, 0, 1], :, 4:])


def test_test_reports_bits_per_dim_and_straightness(lit_gen, ckpt, tmp_path):
    runs = tmp_path / "runs"
    proc = lit_gen("test", *tiny_args(CFG, runs, name="fm"), "--ckpt_path", ckpt)
    assert proc.returncode == 0, proc.stderr
    events = EventAccumulator(str(runs / "fm")).Reload()
    assert {"test/bpd", "test/straightness", "test/nfe"} <= set(events.Tags()["scalars"])
    assert 0 < events.Scalars("test/bpd")[-1].value < 16
    assert events.Scalars("test/straightness")[-1].value >= 0
