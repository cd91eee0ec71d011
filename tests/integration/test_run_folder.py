"""A run's folder is its user's data (issue 24, items 4-9): a fit never mixes its checkpoints with another's,
two fits never share a folder, checkpoint writes are atomic and a failed one stops the fit in one line,
refused and evaluation commands write nothing into the run, and image folders with bad files are handled up
front."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from lit_gen.data.fakes import write_image_folder
from lit_gen.main import cli_main
from tests.conftest import start_fit
from tests.integration.test_cli import _digest
from tests.integration.tiny import tiny_args

DIGITS = "ddpm/digits.yaml"
QUIET = ["--samples.every_n_steps=0", "--checkpoint.every_n_train_steps=1000"]


def _fit(runs: Path, *extra: str, name: str = "tiny", max_steps: int = 2) -> Path:
    cli_main(["fit", *tiny_args(DIGITS, runs, name, max_steps), *QUIET, *extra])
    return runs / name


def _error(args: list[str], capsys, code: int = 2) -> str:
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        cli_main(args)
    assert exit_info.value.code == code
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("lit-gen: error:")]
    assert len(err) == 1, err
    return err[0]


# --- 4: a reused run name -----------------------------------------------------------------------------------
def test_a_fresh_fit_into_a_run_with_checkpoints_is_refused_and_overwrite_starts_afresh(tmp_path, capsys):
    run = _fit(tmp_path, max_steps=3)
    before = _digest(run)
    err = _error(["fit", *tiny_args(DIGITS, tmp_path, max_steps=2), *QUIET], capsys)
    assert "already holds checkpoints" in err and "--ckpt_path last" in err and "--name" in err, err
    assert _digest(run) == before  # config.yaml, logs and checkpoints untouched
    _fit(tmp_path, "--overwrite=true", max_steps=2)  # deletes the old run's checkpoints and logs first
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 2
    assert len(list(run.glob("events.out.tfevents.*"))) == 1
    _fit(tmp_path, "--ckpt_path=last", max_steps=4)  # resuming is always allowed
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 4


def test_a_run_in_use_by_a_live_fit_is_locked(tmp_path, capsys):
    ready = tmp_path / "ready"
    args = [*tiny_args(DIGITS, tmp_path, max_steps=100_000), *QUIET, "--trainer.limit_train_batches=3",
            "--trainer.callbacks+=tests.integration.tiny.SlowSteps", "--trainer.callbacks.seconds=0.1",
            f"--trainer.callbacks.ready_file={ready}"]
    proc = start_fit(args, ready, stderr=subprocess.DEVNULL)
    try:
        err = _error(["fit", *tiny_args(DIGITS, tmp_path, max_steps=2), *QUIET, "--ckpt_path=last"], capsys,
                     code=1)
        assert "is in use by another lit-gen fit (pid" in err, err
    finally:
        proc.kill()
        proc.wait()
    _fit(tmp_path, "--ckpt_path=last", max_steps=1)  # the lock dies with its process


@pytest.mark.parametrize("name", ["../escape", "/abs/run", "a/../../b", ""])
def test_a_run_name_outside_the_runs_folder_is_refused(name, tmp_path, capsys):
    err = _error(["fit", *tiny_args(DIGITS, tmp_path / "runs"), f"--name={name}"], capsys)
    assert "--name" in err and "inside --runs_dir" in err, err
    assert not (tmp_path / "runs").exists() and not (tmp_path / "escape").exists()


# --- 5: atomic writes, failed writes ------------------------------------------------------------------------
def test_checkpoints_are_replaced_atomically_even_with_tmpdir_elsewhere(tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", "/dev/shm" if os.path.isdir("/dev/shm") else str(tmp_path / "elsewhere"))
    run = _fit(tmp_path, "--checkpoint.every_n_train_steps=1", max_steps=1)
    last = run / "checkpoints" / "last.ckpt"
    inode = last.stat().st_ino
    _fit(tmp_path, "--checkpoint.every_n_train_steps=1", "--ckpt_path=last", max_steps=2)
    assert last.stat().st_ino != inode  # a new file renamed over the old one, not rewritten in place
    assert sorted(p.name for p in last.parent.iterdir()) == ["last.ckpt", "step0000001.ckpt",
                                                             "step0000002.ckpt"]


def test_a_failed_checkpoint_write_stops_the_fit_at_once_in_one_line(tmp_path, capsys, monkeypatch):
    run = _fit(tmp_path, "--checkpoint.every_n_train_steps=1", max_steps=2)
    before = (run / "checkpoints" / "last.ckpt").read_bytes()
    real_save = torch.save

    def disk_full(obj, f, *args, **kwargs):
        if isinstance(obj, dict) and obj.get("global_step") == 3:
            f.write(b"half a checkpoint")
            raise OSError(28, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", disk_full)
    err = _error(["fit", *tiny_args(DIGITS, tmp_path, max_steps=10), *QUIET,
                  "--checkpoint.every_n_train_steps=1",
                  "--ckpt_path=last"], capsys, code=1)
    assert "could not write" in err and "step0000003.ckpt" in err and "No space left on device" in err, err
    assert (run / "checkpoints" / "last.ckpt").read_bytes() == before  # the old file is whole
    # no temporary file left
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.startswith(".")]


def test_an_unwritable_checkpoint_folder_is_found_before_training(tmp_path, capsys):
    (tmp_path / "blocker").write_text("a file where the folder should be")
    err = _error(["fit", *tiny_args(DIGITS, tmp_path, name="other"),
                  f"--checkpoint.dirpath={tmp_path / 'blocker' / 'checkpoints'}"], capsys, code=1)
    assert "cannot be written" in err or "is a file" in err, err


# --- 6, 7: refused and evaluation commands write nothing ----------------------------------------------------
def test_refused_and_evaluation_commands_leave_the_run_as_it_was(tmp_path, capsys):
    run = _fit(tmp_path, max_steps=3)
    before = _digest(run)
    config = str(run / "config.yaml")
    _error(["fit", *tiny_args(DIGITS, tmp_path), *QUIET, "--data.init_args.batch_size=4", "--ckpt_path=last"],
           capsys)
    cli_main(["test", "--config", config, "--ckpt_path=last", "--trainer.limit_test_batches=1"])
    after = _digest(run)
    assert after["config.yaml"] == before["config.yaml"]
    assert {k: v for k, v in after.items() if "tfevents" not in k} == {k: v for k, v in before.items()
                                                                        if "tfevents" not in k}


@pytest.mark.parametrize("bad",
                         ["--model.init_args.ema_decay=1.5", "--model.init_args.optimizer.init_args.lr=-1",
                                 "--samples.num_samples=0", "--data.init_args.root={empty}"])
def test_settings_that_fail_leave_no_run_folder(bad, tmp_path, capsys):
    args = tiny_args(DIGITS, tmp_path / "runs")
    if "root" in bad:  # an image folder without images
        (tmp_path / "empty").mkdir()
        args = tiny_args("ddpm/folder64.yaml", tmp_path / "runs")
    err = _error(["fit", *args, bad.format(empty=tmp_path / "empty")], capsys)
    assert any(word in err for word in ("ema_decay=1.5", "lr", "num_samples=0", "holds no images")), err
    assert not (tmp_path / "runs").exists()


def test_test_with_ckpt_path_last_and_no_checkpoint_is_refused(tmp_path, capsys):
    err = _error(["test", *tiny_args(DIGITS, tmp_path), "--ckpt_path=last"], capsys)
    assert "no " in err and "last.ckpt" in err, err


# --- 8: image folders ---------------------------------------------------------------------------------------
def test_bad_images_are_skipped_with_a_count_and_16_bit_images_keep_their_range(tmp_path, capsys):
    from PIL import Image

    from lit_gen.data import ImageFolderDataModule
    from lit_gen.data.images import UnreadableImageError, load_image

    root = tmp_path / "images"
    write_image_folder(root, n=6, size=16)
    good = (root / "000.png").read_bytes()
    (root / "truncated.png").write_bytes(good[: len(good) // 2])
    (root / "garbage.jpg").write_bytes(b"not an image at all")
    grey16 = (np.arange(256, dtype=np.uint16).reshape(16, 16) * 257)  # 0 .. 65535
    Image.fromarray(grey16).save(root / "deep.png")
    data = ImageFolderDataModule(root=str(root), image_size=16, val_fraction=0, test_fraction=0)
    data.setup()
    assert len(data.train_dataset) == 7  # 6 + the 16-bit one
    err = capsys.readouterr().err
    assert "skipped 2 of 9 images" in err and "truncated.png" in err and "garbage.jpg" in err, err
    deep = np.asarray(load_image(str(root / "deep.png")))[..., 0]
    np.testing.assert_array_equal(deep, np.arange(256).reshape(16, 16))  # not clipped to white
    with pytest.raises(UnreadableImageError, match="truncated.png"):
        load_image(str(root / "truncated.png"))


def test_an_image_that_fails_mid_fit_is_named_and_the_last_step_saved(tmp_path, capsys, monkeypatch):
    from lit_gen.data import folders
    from lit_gen.data.images import UnreadableImageError

    root = tmp_path / "images"
    write_image_folder(root, n=24, size=16)
    real, calls = folders.load_image, {"n": 0}

    def breaks_later(path):
        calls["n"] += 1
        if calls["n"] > 40:  # passes the up-front check, fails to decode mid-fit (a file changed on disk)
            raise UnreadableImageError(f"cannot read the image {path!r}: image file is truncated")
        return real(path)

    monkeypatch.setattr(folders, "load_image", breaks_later)
    args = [*tiny_args("ddpm/folder64.yaml", tmp_path / "runs", max_steps=100), *QUIET,
            f"--data.init_args.root={root}",
            "--trainer.limit_train_batches=null"]
    err = _error(["fit", *args], capsys)
    assert "cannot read the image" in err and str(root) in err, err
    ckpt = torch.load(tmp_path / "runs" / "tiny" / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] >= 1


# --- 9: sample and export outputs ---------------------------------------------------------------------------
def test_sample_and_export_check_their_output_before_the_work(tmp_path, capsys):
    run = _fit(tmp_path)
    ckpt = str(run / "checkpoints" / "last.ckpt")
    (tmp_path / "a_file").write_text("x")
    for args, expected, code in [
        (["sample", "--ckpt_path", ckpt, "--output", str(tmp_path / "a_file")], "is a file, not a folder", 1),
        (["sample", "--ckpt_path", ckpt, "--output", str(tmp_path / "a_file" / "sub")], "cannot be written",
         1),
        (["sample", "--ckpt_path", ckpt, "--steps", "0"], "steps=0 must be >= 1", 2),
        (["sample", "--ckpt_path", ckpt, "--device", "cuda:7"], "--device 'cuda:7'", 2),
        (["sample", "--ckpt_path", ckpt, "--device", "toaster"], "is not a device", 2),
        (["export", "--ckpt_path", ckpt, "--output", str(tmp_path / "a_file" / "m.safetensors")],
         "is a file, not a folder", 1),
    ]:
        err = _error(args, capsys, code)
        assert expected in err, (args, err)
    assert yaml.safe_load((run / "config.yaml").read_text())["name"] == "tiny"
