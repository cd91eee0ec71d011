"""Every kind of stop resumes bit-identically (issue 24, items 2 and 3): ``max_steps`` inside an epoch, a
signal during a step, during a sample grid and during validation. A signal stops a grid or validation at once,
draws no end-of-fit grid, saves the last completed step and exits with 128 + the signal."""

from __future__ import annotations

import os
import signal

import lightning.pytorch as L
import pytest
import torch

from lit_gen.main import cli_main
from lit_gen.methods import DDPM
from tests.integration.tiny import tiny_args

DIGITS = "ddpm/digits.yaml"
# epochs of 5 steps, validation at each epoch's end, no step checkpoints: a stop at step 3 is inside epoch 0
EXTRA = ["--trainer.max_epochs=-1", "--trainer.limit_train_batches=5",
         "--checkpoint.every_n_train_steps=1000",
         "--samples.every_n_steps=0", "--model.init_args.ema_decay=0.9"]


class SignalAt(L.Callback):
    """Sends ``signum`` to this process at the start of training step ``step`` (1-based), or at the first
    validation batch after it (``during: validation``)."""

    def __init__(self, step: int, during: str = "step", signum: int = int(signal.SIGTERM)) -> None:
        self.step, self.during, self.signum = step, during, signum

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.during == "step" and trainer.global_step == self.step - 1:
            os.kill(os.getpid(), self.signum)

    def on_validation_batch_start(self, trainer, pl_module, *args) -> None:
        if self.during == "validation" and not trainer.sanity_checking and trainer.global_step >= self.step:
            os.kill(os.getpid(), self.signum)


def _fit(runs, name: str, max_steps: int, *extra: str) -> None:
    cli_main(["fit", *tiny_args(DIGITS, runs, name, max_steps), *EXTRA, *extra])


def _last(runs, name: str) -> dict:
    return torch.load(runs / name / "checkpoints" / "last.ckpt", weights_only=True)


def _stopped(runs, name: str, max_steps: int, *extra: str, signum=signal.SIGTERM) -> None:
    with pytest.raises(SystemExit) as exit_info:
        _fit(runs, name, max_steps, *extra)
    assert exit_info.value.code == 128 + signum


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> dict:
    runs = tmp_path_factory.mktemp("straight")
    _fit(runs, "straight", 8)
    return _last(runs, "straight")


def _assert_resumes_exactly(runs, name: str, stopped_at: int, straight: dict) -> None:
    ckpt = _last(runs, name)
    assert ckpt["global_step"] == stopped_at
    _fit(runs, name, 8, "--ckpt_path=last")
    resumed = _last(runs, name)
    assert resumed["global_step"] == straight["global_step"] == 8
    for key, value in straight["state_dict"].items():
        torch.testing.assert_close(resumed["state_dict"][key], value, rtol=0, atol=0, msg=key)


def test_max_steps_inside_an_epoch_resumes_exactly(tmp_path, straight):
    _fit(tmp_path, "run", 3)
    assert _last(tmp_path, "run")["DigitsDataModule"] == {"epoch": 0, "batches": 3, "batch_size": 8}
    _assert_resumes_exactly(tmp_path, "run", 3, straight)


def test_a_signal_during_a_step_saves_that_step_and_resumes_exactly(tmp_path, straight, capsys):
    _stopped(tmp_path, "run", 8, "--trainer.callbacks+=tests.integration.test_preemption.SignalAt",
             "--trainer.callbacks.step=3")
    assert "stopped by SIGTERM at global step 3" in capsys.readouterr().err
    _assert_resumes_exactly(tmp_path, "run", 3, straight)


def test_a_signal_during_a_sample_grid_stops_it_at_once(tmp_path, straight, monkeypatch):
    calls = {"started": 0, "finished": 0}
    real = DDPM.sample

    def sample(self, *args, **kwargs):
        calls["started"] += 1
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C while the grid at step 2 is drawn
        out = real(self, *args, **kwargs)
        calls["finished"] += 1
        return out

    monkeypatch.setattr(DDPM, "sample", sample)
    _stopped(tmp_path, "run", 8, "--samples.every_n_steps=2", signum=signal.SIGINT)
    assert calls == {"started": 1, "finished": 0}  # stopped inside the first grid; no end-of-fit grid either
    assert not (tmp_path / "run" / "samples").exists()
    monkeypatch.setattr(DDPM, "sample", real)
    _assert_resumes_exactly(tmp_path, "run", 2, straight)


def test_a_signal_during_validation_stops_it_at_once(tmp_path, straight):
    # validation after step 5 (the end of epoch 0); the signal comes at its first batch
    _stopped(tmp_path, "run", 8, "--trainer.callbacks+=tests.integration.test_preemption.SignalAt",
             "--trainer.callbacks.step=5", "--trainer.callbacks.during=validation",
             "--trainer.limit_val_batches=3")
    _assert_resumes_exactly(tmp_path, "run", 5, straight)


def test_sigterm_during_a_long_sample_grid_saves_within_seconds(tmp_path):
    """As a scheduler sends it: SIGTERM to a separate process while its sample grid (1,000 steps of 256
    samples, tens of seconds) is being drawn; the process saves step 3 and exits 143 within seconds, without
    finishing the grid."""
    import time

    from tests.conftest import start_fit

    ready = tmp_path / "ready"
    args = [*tiny_args(DIGITS, tmp_path, max_steps=100), *EXTRA, "--model.init_args.num_timesteps=1000",
            "--samples.every_n_steps=3", "--samples.num_samples=256", "--samples.trajectory_samples=0",
            "--trainer.callbacks+=tests.integration.tiny.SlowSteps", "--trainer.callbacks.seconds=0",
            f"--trainer.callbacks.ready_file={ready}"]  # touched at the end of step 3, just before its grid
    proc = start_fit(args, ready)
    try:
        time.sleep(1.0)  # well inside the grid
        signalled = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=120)
        elapsed = time.monotonic() - signalled
    finally:
        proc.kill()
    assert proc.returncode == 143, stderr[-3000:]
    assert "stopped by SIGTERM at global step 3" in stderr, stderr[-3000:]
    assert elapsed < 8, f"{elapsed:.1f} s from the signal to the exit"
    assert _last(tmp_path, "tiny")["global_step"] == 3
    assert not (tmp_path / "tiny" / "samples").exists()  # the grid was never finished
