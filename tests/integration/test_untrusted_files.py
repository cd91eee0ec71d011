"""A file's content never chooses code to run: every class or module a checkpoint, a safetensors file's
metadata or a run's config.yaml names is checked against lit_gen's allowlist before anything is imported, and
refused in one line otherwise (issue 24, item 1)."""

from __future__ import annotations

import json
import sys

import pytest
import torch
import yaml

from lit_gen.allowlist import UntrustedClassError, allowed_classes, check_file_data
from lit_gen.checkpoints import TAG, load_frozen
from lit_gen.main import cli_main
from lit_gen.methods import DiscreteVAE, NoisyClassifier
from tests.conftest import EXPERIMENTS

DDPM_PATH = "lit_gen.methods.ddpm.DDPM"


def _popen(marker) -> dict:
    return {"class_path": "subprocess.Popen", "init_args": {"args": f"touch {marker}", "shell": True}}


def _attacks(marker) -> dict[str, tuple[dict, dict]]:
    """name: (the lit_gen tag, the hyperparameters) of a crafted checkpoint."""
    ddpm = {"class_path": DDPM_PATH, "version": "0.1.0"}
    return {
        "method": ({"class_path": "this.Foo", "version": "0.1.0"}, {}),
        "method_popen": ({"class_path": "subprocess.Popen", "version": "0.1.0"}, {"args": f"touch {marker}"}),
        "net": (ddpm, {"_class_path": "lit_gen.methods.DDPM", "net": _popen(marker)}),
        "net_module": (ddpm, {"net": {"class_path": "this.Foo"}}),
        "optimizer_string": (ddpm, {"optimizer": "this.Foo"}),
        "class_path": (ddpm, {"_class_path": "this.Foo"}),
        "instantiator": (ddpm, {"_instantiator": "this.Foo"}),
        "nested_list": (ddpm, {"flow": {"init_args": {"layers": [{"class_path": "this.Foo"}]}}}),
    }


def _refused(args: list[str], capsys, marker) -> str:
    sys.modules.pop("this", None)
    with pytest.raises(SystemExit) as exit_info:
        cli_main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("lit-gen: error:"), err
    assert "this" not in sys.modules  # `import this` prints its poem: nothing named by the file was imported
    assert not marker.exists()  # no command ran
    return err[0]


@pytest.mark.parametrize("attack", list(_attacks(None)))
@pytest.mark.parametrize("command", ["sample", "test", "export"])
def test_a_checkpoint_naming_a_foreign_class_is_refused_before_any_import(attack, command, tmp_path, capsys):
    marker = tmp_path / "code-ran"
    tag, hparams = _attacks(marker)[attack]
    path = tmp_path / "crafted.ckpt"
    torch.save({"state_dict": {}, TAG: tag, "hyper_parameters": hparams}, path)
    args = {
        "sample": ["sample", "--ckpt_path", str(path), "--output", str(tmp_path / "out")],
        "export": ["export", "--ckpt_path", str(path), "--output", str(tmp_path / "m.safetensors")],
        "test": ["test", "--config", str(EXPERIMENTS / "ddpm/digits.yaml"), "--ckpt_path", str(path),
                 "--runs_dir", str(tmp_path / "runs")],
    }[command]
    err = _refused(args, capsys, marker)
    reasons = ("does not load from files", "not a method of this version", "does not run")
    assert any(reason in err for reason in reasons), err
    assert not (tmp_path / "out").exists() and not (tmp_path / "m.safetensors").exists()
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("expected", [DiscreteVAE, NoisyClassifier])
def test_a_checkpoint_loaded_by_another_method_is_checked_too(expected, tmp_path):
    marker = tmp_path / "code-ran"
    path = tmp_path / "helper.ckpt"
    torch.save({"state_dict": {}, TAG: {"class_path": f"{expected.__module__}.{expected.__name__}"},
                "hyper_parameters": {"net": _popen(marker)}}, path)
    with pytest.raises(UntrustedClassError, match="subprocess.Popen"):
        load_frozen(path, "cpu", expected)  # as DALLE loads its dVAE, classifier guidance its classifier
    assert not marker.exists()


def _safetensors(path, meta: dict) -> None:
    from safetensors.torch import save_file

    save_file({"net.weight": torch.zeros(1)}, str(path), metadata={TAG: json.dumps(meta)})


@pytest.mark.parametrize("meta_kind", ["hparams_class_path", "class_path", "nested"])
def test_safetensors_metadata_naming_a_foreign_class_is_refused(meta_kind, tmp_path, capsys):
    marker = tmp_path / "code-ran"
    meta = {
        "hparams_class_path": {"class_path": DDPM_PATH,
                               "hyper_parameters": {"_class_path": "subprocess.Popen",
                                                                           "args": f"touch {marker}",
                                                                           "shell": True}},
        "class_path": {"class_path": "this.Foo", "hyper_parameters": {}},
        "nested": {"class_path": DDPM_PATH, "hyper_parameters": {"net": _popen(marker)}},
    }[meta_kind]
    weights = tmp_path / "model.safetensors"
    _safetensors(weights, meta)
    err = _refused(["sample", "--weights", str(weights), "--output", str(tmp_path / "out")], capsys, marker)
    assert str(weights) in err and not (tmp_path / "out").exists()


def test_a_config_given_with_weights_is_checked(tmp_path, capsys):
    marker = tmp_path / "code-ran"
    weights = tmp_path / "model.safetensors"
    _safetensors(weights, {"class_path": DDPM_PATH, "hyper_parameters": {}})
    for model in ({"class_path": "lit_gen.methods.DDPM", "init_args": {"net": _popen(marker)}},
                  {"class_path": "this.Foo"}):
        config = tmp_path / "config.yaml"
        config.write_text(yaml.safe_dump({"model": model}))
        err = _refused(["sample", "--weights", str(weights), "--config", str(config), "--output",
                        str(tmp_path / "o")],
                       capsys, marker)
        assert "--config" in err and ("subprocess.Popen" in err or "this.Foo" in err), err


def test_the_allowlist_holds_every_class_the_shipped_configs_and_checkpoints_name():
    allowed = allowed_classes()
    for config in EXPERIMENTS.rglob("*.yaml"):
        model = (yaml.safe_load(config.read_text()) or {}).get("model")
        if model:
            check_file_data({"model": model}, str(config))  # raises for a class the allowlist lacks
    for name in ("DDPM", "lit_gen.methods.DDPM", DDPM_PATH, "lit_gen.nets.UNet", "lit_gen.nets.unet.UNet",
                 "torch.optim.AdamW", "torch.optim.lr_scheduler.StepLR", "lit_gen.optim.WarmupCosineLR",
                 "lit_gen.flows.Glow"):
        assert name in allowed, name
    for name in ("os.system", "subprocess.Popen", "builtins.eval", "lit_gen.utils.randn", "torch.load",
                 "lit_gen.checkpoints.import_class", "lightning.pytorch.cli.instantiate_module"):
        assert name not in allowed, name
    # plain strings with dots that are not modules pass (file names, versions)
    check_file_data({"dvae_ckpt": "dvae.ckpt", "version": "0.1.0", "path": "runs/x/last.ckpt"}, "test")


class _Payload:
    """Unpickling this calls os.system, as a malicious file would."""

    def __init__(self, marker) -> None:
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_a_deepspeed_folder_is_read_as_plain_data(tmp_path, capsys):
    """DeepSpeed's own readers unpickle in full; lit_gen makes them read plain data (export and resume)."""
    marker, folder = tmp_path / "code-ran", tmp_path / "last.ckpt"
    (folder / "checkpoint").mkdir(parents=True)
    (folder / "latest").write_text("checkpoint")
    torch.save({TAG: {"class_path": DDPM_PATH}, "module": {}, "hyper_parameters": {}, "buffer_names": [],
                "param_shapes": [{}], "shared_params": {}, "ds_version": "0.18.0"},
               folder / "checkpoint" / "mp_rank_00_model_states.pt")
    torch.save({"optimizer_state_dict": _Payload(marker)},
               folder / "checkpoint" / "zero_pp_rank_0_mp_rank_00_optim_states.pt")
    err = _refused(["export", "--ckpt_path", str(folder), "--output", str(tmp_path / "m.ckpt")], capsys,
                   marker)
    assert "refused to open" in err and not (tmp_path / "m.ckpt").exists(), err
