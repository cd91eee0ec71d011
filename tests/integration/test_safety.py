"""Checkpoints cannot run code: every command that opens a checkpoint reads it as plain data and refuses, in
one line, a file whose unpickling would run code (and the code does not run). Exported safetensors weights
sample exactly what their checkpoint samples."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from lit_gen.checkpoints import TAG, load_weights, read_checkpoint
from lit_gen.main import cli_main
from tests.conftest import EXPERIMENTS
from tests.integration.test_cli import fit


class _Payload:
    """Unpickling this calls os.system, as a malicious checkpoint would."""

    def __init__(self, marker) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _crafted(tmp_path, name: str = "evil.ckpt"):
    marker = tmp_path / "code-ran"
    path = tmp_path / name
    torch.save({"state_dict": {}, TAG: {"class_path": "lit_gen.methods.ddpm.DDPM", "version": "0.1.0"},
                "hyper_parameters": {"sampler": _Payload(marker)}}, path)
    return path, marker


@pytest.mark.parametrize("command", ["sample", "test", "fit", "export"])
def test_a_checkpoint_that_would_run_code_is_refused(command, tmp_path, capsys):
    path, marker = _crafted(tmp_path)
    args = {
        "sample": ["sample", "--ckpt_path", str(path), "--output", str(tmp_path / "out")],
        "export": ["export", "--ckpt_path", str(path), "--output", str(tmp_path / "m.safetensors")],
    }.get(command, [command, "--config", str(EXPERIMENTS / "ddpm/digits.yaml"), "--ckpt_path", str(path),
                    "--runs_dir", str(tmp_path / "runs")])
    with pytest.raises(SystemExit) as exit_info:
        cli_main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("lit-gen: error: refused to open"), err
    assert "posix.system" in err[0] or "os.system" in err[0]
    assert not marker.exists()  # the payload never ran
    assert not (tmp_path / "out").exists() and not (tmp_path / "m.safetensors").exists()
    # the same file, fully unpickled, does run it: the test would catch a loader that unpickles
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_lit_gen_checkpoints_are_plain_data(tmp_path):
    run = fit("cfg/digits.yaml", tmp_path)
    ckpt = read_checkpoint(run / "checkpoints" / "last.ckpt")  # weights_only=True
    assert ckpt["hyper_parameters"]["net"]["class_path"] == "lit_gen.nets.UNet"


def test_export_to_safetensors_samples_like_the_checkpoint(tmp_path, capsys):
    run = fit("cfg/digits.yaml", tmp_path, "--model.init_args.ema_decay=0.5", max_steps=3)
    ckpt, weights = run / "checkpoints" / "last.ckpt", tmp_path / "model.safetensors"
    cli_main(["export", "--ckpt_path", str(ckpt), "--output", str(weights)])
    from safetensors import safe_open

    with safe_open(str(weights), framework="pt") as f:
        assert not any(k.startswith("ema.") for k in f.keys())
        # the EMA weights, not the trained ones
        saved = torch.load(ckpt, weights_only=True)["state_dict"]
        key = next(k for k in f.keys() if k.startswith("net.") and k.endswith("weight"))
        torch.testing.assert_close(f.get_tensor(key), saved["ema.module." + key[4:]], rtol=0, atol=0)
        assert not torch.equal(saved[key], saved["ema.module." + key[4:]])
    common = ["--num_samples", "6", "--labels", "3", "--guidance_scale", "2"]
    cli_main(["sample", "--ckpt_path", str(ckpt), "--output", str(tmp_path / "a"), *common])
    cli_main(["sample", "--weights", str(weights), "--output", str(tmp_path / "b"), *common])
    cli_main(["sample", "--weights", str(weights), "--config", str(run / "config.yaml"), "--output",
              str(tmp_path / "c"), *common])
    a, b, c = (np.load(tmp_path / d / "samples.npz") for d in "abc")
    np.testing.assert_array_equal(a["arr_0"], b["arr_0"])
    np.testing.assert_array_equal(a["arr_0"], c["arr_0"])
    np.testing.assert_array_equal(b["arr_1"], np.full(6, 3))
    # the config's model section replaces the metadata's hyperparameters
    model = load_weights(weights,
                         config={"class_path": "lit_gen.methods.DDPM", "init_args": {"sampling_steps": 7}})
    assert model.hparams.sampling_steps == 7 and model.ema is None


def test_export_and_weights_errors(tmp_path, capsys):
    run = fit("cfg/digits.yaml", tmp_path)
    ckpt = str(run / "checkpoints" / "last.ckpt")
    capsys.readouterr()
    for args, expected in [
        (["export", "--ckpt_path", ckpt, "--output", str(tmp_path / "m.pt")],
         "writes a .safetensors or a .ckpt file"),
        (["sample", "--weights", str(tmp_path / "none.safetensors")], "weights file not found"),
        (["sample", "--weights", ckpt], "is not a readable safetensors file"),
        (["sample", "--ckpt_path", ckpt, "--weights", ckpt], "not both"),
        (["sample"], "needs --ckpt_path"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            cli_main(args)
        assert exit_info.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and expected in err[0], (args, err)


def test_help_lists_sample_and_export_and_predict_is_gone(capsys):
    with pytest.raises(SystemExit):
        cli_main(["--help"])
    out = capsys.readouterr().out
    assert "lit-gen sample" in out and "lit-gen export" in out and "predict" not in out
