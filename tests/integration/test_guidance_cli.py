"""Guidance through the CLI: `lit-gen sample` builds its flags from the method's declared options, CFG on a
conditional checkpoint, classifier guidance on an unconditional one (with a classifier checkpoint), labels in
arr_1, balanced labels by default, and one-line errors that leave nothing behind."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from lit_gen.main import cli_main
from tests.integration.tiny import fit_tiny


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> dict[str, str]:
    runs = tmp_path_factory.mktemp("runs")
    return {
        "cfg": fit_tiny("cfg/digits.yaml", runs, "cfg"),
        "ddpm": fit_tiny("ddpm/digits.yaml", runs, "ddpm"),
        "classifier": fit_tiny("classifier/digits.yaml", runs, "classifier"),
        "cosine_classifier": fit_tiny("classifier/digits.yaml", runs, "cos",
                                      "--model.init_args.beta_schedule=cosine"),
    }


def _sample(tmp_path: Path, ckpt: str, *args: str) -> dict:
    out = tmp_path / "out"
    cli_main(["sample", "--ckpt_path", ckpt, "--num_samples", "6", "--steps", "3", "--output", str(out),
              *args])
    return dict(np.load(out / "samples.npz"))


def test_classifier_free_guidance_with_requested_and_balanced_labels(ckpts, tmp_path):
    requested = _sample(tmp_path, ckpts["cfg"], "--labels", "[3]", "--guidance_scale", "3")
    assert requested["arr_0"].shape == (6, 8, 8, 1) and requested["arr_1"].tolist() == [3] * 6
    balanced = _sample(tmp_path, ckpts["cfg"], "--guidance_scale", "2", "--guidance_interval", "[2, 8]",
                       "--guidance_rescale", "0.7", "--sampler", "ddpm")
    assert balanced["arr_1"].tolist() == [0, 1, 2, 3, 4, 5]
    same = _sample(tmp_path, ckpts["cfg"], "--guidance_scale", "2", "--guidance_interval", "[2, 8]",
                   "--guidance_rescale", "0.7", "--sampler", "ddpm", "--batch_size", "4")
    np.testing.assert_array_equal(same["arr_0"], balanced["arr_0"])  # sample i depends on (seed, i) alone


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_classifier_guidance_of_an_unconditional_model(ckpts, tmp_path, sampler):
    guided = _sample(tmp_path, ckpts["ddpm"], "--classifier_ckpt", ckpts["classifier"], "--classifier_scale",
                     "2",
                     "--labels", "[1, 7]", "--sampler", sampler)
    assert guided["arr_1"].tolist() == [1, 7] * 3
    plain = _sample(tmp_path, ckpts["ddpm"], "--sampler", sampler)
    assert "arr_1" not in plain and not np.array_equal(plain["arr_0"], guided["arr_0"])


def test_sample_help_lists_the_methods_declared_options(ckpts, capsys):
    with pytest.raises(SystemExit):
        cli_main(["sample", "--ckpt_path", ckpts["cfg"], "--help"])
    text = capsys.readouterr().out
    for flag in ("--guidance_scale", "--guidance_interval", "--classifier_ckpt", "--classifier_form",
                 "--eta"):
        assert flag in text
    assert "0 unconditional, 1 conditional" in " ".join(text.split())


@pytest.mark.parametrize(
    "which, args, message",
    [
        ("ddpm", ["--guidance_scale", "3"], "needs a class- or text-conditional model"),
        ("ddpm", ["--labels", "[2]"], "labels were given, but this DDPM is unconditional"),
        ("cfg", ["--labels", "[12]"], "label 12 is out of range: the model has 10 classes"),
        ("ddpm", ["--classifier_ckpt", "COSINE"], r"trained for the noise process \(cosine, T=10\)"),
        ("ddpm", ["--classifier_ckpt", "CFG"], "is a checkpoint of lit_gen.methods.ddpm.DDPM, not of"),
        ("cfg", ["--temperature", "0.5"], "temperature"),
        ("classifier", [], "NoisyClassifier is not a generative model"),
        ("ddpm", ["--classifier_ckpt", "CLASSIFIER", "--sampler", "ddim", "--classifier_form", "mean"],
         "classifier_form='mean' needs the ancestral sampler"),
    ],
)
def test_bad_guidance_input_fails_in_one_line(ckpts, tmp_path, capsys, which, args, message):
    names = {"COSINE": "cosine_classifier", "CFG": "cfg", "CLASSIFIER": "classifier"}
    args = [ckpts[names[a]] if a in names else a for a in args]
    with pytest.raises(SystemExit) as exit_info:
        _sample(tmp_path, ckpts[which], *args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("lit-gen: error:"), err
    assert re.search(message, err[0]), err[0]
    assert not (tmp_path / "out").exists()
