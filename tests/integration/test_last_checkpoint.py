"""``last.ckpt`` holds the final state of a fit however it stops (max_steps between two checkpoint
intervals, max_time, EarlyStopping, a callback's should_stop, SIGINT, SIGTERM), and a resume from it
continues at that step."""

from __future__ import annotations

import re
import signal
from pathlib import Path

import pytest
import torch

from lit_gen.cli import LitGenCLI
from lit_gen.main import cli_main
from tests.conftest import start_fit
from tests.integration.tiny import tiny_args

DIGITS = "ddpm/digits.yaml"
# checkpoints every 5 steps, epochs of 3 steps, no sample grids: the stop falls between two checkpoints
EVERY_5 = ["--checkpoint.every_n_train_steps=5", "--trainer.limit_train_batches=3",
           "--samples.every_n_steps=0",
           "--trainer.max_epochs=-1"]


def _fit(tmp_path: Path, *extra: str, max_steps: int = 7) -> LitGenCLI:
    return LitGenCLI(args=["fit", *tiny_args(DIGITS, tmp_path, max_steps=max_steps), *EVERY_5, *extra])


def _last(tmp_path: Path) -> dict:
    return torch.load(tmp_path / "tiny" / "checkpoints" / "last.ckpt", weights_only=False)


def _assert_last_is_final(tmp_path: Path, cli: LitGenCLI) -> int:
    """last.ckpt is the trainer's final state: step counter, weights (EMA included) and optimizer."""
    ckpt, step = _last(tmp_path), cli.trainer.global_step
    assert ckpt["global_step"] == step
    for key, value in cli.model.state_dict().items():
        assert torch.equal(ckpt["state_dict"][key], value), key
    final_exp_avg = next(iter(cli.trainer.optimizers[0].state.values()))["exp_avg"]
    assert torch.equal(ckpt["optimizer_states"][0]["state"][0]["exp_avg"], final_exp_avg)
    return step


def _resume_continues(tmp_path: Path, step: int) -> None:
    cli = _fit(tmp_path, "--ckpt_path=last", "--trainer.callbacks+=tests.integration.tiny.ExpectStartStep",
               f"--trainer.callbacks.step={step}", max_steps=step + 2)
    assert cli.trainer.global_step == _last(tmp_path)["global_step"] == step + 2


def test_max_steps_between_two_intervals(tmp_path):
    step = _assert_last_is_final(tmp_path, _fit(tmp_path))  # checkpoints at 5; the fit ends at 7
    assert step == 7 and (tmp_path / "tiny/checkpoints/step0000005.ckpt").is_file()
    _resume_continues(tmp_path, 7)


def test_a_callback_setting_should_stop(tmp_path):
    cli = _fit(tmp_path, "--trainer.callbacks+=tests.integration.tiny.StopAtStep",
               "--trainer.callbacks.step=6",
               max_steps=100)
    assert _assert_last_is_final(tmp_path, cli) == 6


def test_early_stopping(tmp_path):
    # val/loss can only fall below +inf: EarlyStopping stops at the first validation, the end of epoch 1 (step
    # 3)
    cli = _fit(tmp_path, "--checkpoint.every_n_train_steps=2", "--trainer.callbacks+=EarlyStopping",
               "--trainer.callbacks.monitor=val/loss", "--trainer.callbacks.stopping_threshold=1e9",
               max_steps=100)
    assert _assert_last_is_final(tmp_path, cli) == 3


def test_max_time(tmp_path):
    cli = _fit(tmp_path, "--trainer.max_time={seconds: 2}",
               "--trainer.callbacks+=tests.integration.tiny.SlowSteps",
               "--trainer.callbacks.seconds=0.3", max_steps=1000)
    step = _assert_last_is_final(tmp_path, cli)
    assert 1 <= step < 1000  # stopped by the clock, not by max_steps
    _resume_continues(tmp_path, step)


def test_a_nan_loss_leaves_the_newest_completed_checkpoint(tmp_path, monkeypatch):
    from lit_gen.methods import DDPM

    real = DDPM.training_step

    def nan_at_step_6(self, batch, batch_idx):
        loss = real(self, batch, batch_idx)
        return loss * float("nan") if self.global_step == 6 else loss

    monkeypatch.setattr(DDPM, "training_step", nan_at_step_6)
    with pytest.raises(FloatingPointError, match="global step 6"):
        cli_main(["fit", *tiny_args(DIGITS, tmp_path, max_steps=100), *EVERY_5])
    assert _last(tmp_path)["global_step"] == 5  # not the broken weights


# SIGINT takes the same path as SIGTERM; its ~12 s subprocess run is in the slow set (CI runs it)
@pytest.mark.parametrize("signum", [pytest.param(signal.SIGINT, marks=pytest.mark.slow), signal.SIGTERM])
def test_a_signal_saves_the_final_step_and_exits_128_plus_signal(signum, tmp_path):
    ready = tmp_path / "ready"
    args = [*tiny_args(DIGITS, tmp_path, max_steps=100_000), *EVERY_5,
            "--checkpoint.every_n_train_steps=1000",
            "--trainer.callbacks+=tests.integration.tiny.SlowSteps", "--trainer.callbacks.seconds=0.1",
            f"--trainer.callbacks.ready_file={ready}"]
    proc = start_fit(args, ready)
    try:
        proc.send_signal(signum)
        _, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signum, stderr[-3000:]
    found = re.search(rf"stopped by {signum.name} at global step (\d+)", stderr)
    assert found, stderr[-3000:]
    step = int(found.group(1))
    assert step >= 3 and _last(tmp_path)["global_step"] == step
    _resume_continues(tmp_path, step)


def test_retention_keeps_last_and_the_newest_k(tmp_path):
    _fit(tmp_path, "--checkpoint.every_n_train_steps=1", "--checkpoint.save_top_k=3", max_steps=8)
    names = sorted(p.name for p in (tmp_path / "tiny" / "checkpoints").iterdir())
    assert names == ["last.ckpt", "step0000006.ckpt", "step0000007.ckpt", "step0000008.ckpt"]
    # a resumed run goes on pruning the same set
    _fit(tmp_path, "--checkpoint.every_n_train_steps=1", "--checkpoint.save_top_k=3", "--ckpt_path=last",
         max_steps=10)
    names = sorted(p.name for p in (tmp_path / "tiny" / "checkpoints").iterdir())
    assert names == ["last.ckpt", "step0000008.ckpt", "step0000009.ckpt", "step0000010.ckpt"]
