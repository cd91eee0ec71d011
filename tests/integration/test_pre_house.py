"""Checkpoints written before the redesign of issue 22 (noise-process layer, sampler assembly) draw the same
samples with the same ``lit-gen sample`` flags: images uint8-equal but for a rounding step in a handful of
pixels, 2-D points to 1e-5. The fixtures and the command that wrote them are in tests/fixtures/pre_house."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from tests.conftest import ROOT

FIXTURES = ROOT / "tests" / "fixtures" / "pre_house"
SPEC = json.loads((FIXTURES / "draws.json").read_text())


def compare(name: str, got: np.ndarray, want: np.ndarray) -> None:
    assert got.shape == want.shape and got.dtype == want.dtype, name
    if want.dtype == np.uint8:
        diff = np.abs(got.astype(np.int16) - want.astype(np.int16))
        assert diff.max() <= 1 and (diff > 0).mean() <= 0.02, (
            f"{name}: {int((diff > 0).sum())} of {diff.size} pixels differ, by up to {diff.max()}")
    else:
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5, err_msg=name)


@pytest.mark.parametrize("name", sorted(SPEC["draws"]))
def test_pre_redesign_checkpoints_draw_the_same_samples(name, tmp_path, lit_gen):
    ckpt, flags = SPEC["draws"][name]
    for file in ("images.npz", "mask.npz"):
        shutil.copy(FIXTURES / file, tmp_path / file)
    paths = {"images": str(tmp_path / "images.npz"), "mask": str(tmp_path / "mask.npz"),
             "classifier": str(FIXTURES / "checkpoints" / "classifier.ckpt")}
    out = tmp_path / "out"
    result = lit_gen("sample", "--ckpt_path", str(FIXTURES / "checkpoints" / f"{ckpt}.ckpt"),
                     "--num_samples", str(SPEC["num_samples"]), "--batch_size", "3", "--seed", "7",
                     "--device", "cpu", "--output", str(out), *[f.format(**paths) for f in flags])
    assert result.returncode == 0, result.stderr[-2000:]
    compare(name, np.load(out / "samples.npz")["arr_0"], np.load(FIXTURES / "expected.npz")[name])
