"""A 2-process DDP fit on CPU (gloo), launched as a subprocess of the CLI as a user would."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.conftest import EXPERIMENTS, ROOT, start_fit, subprocess_env
from tests.integration.launch import fits_job, job_args
from tests.integration.tiny import tiny_args


def _fit_ddp(config: str, tmp_path, *extra: str) -> None:
    args = tiny_args(config, tmp_path, name="ddp", max_steps=4)
    args += ["--config", str(EXPERIMENTS / "trainer" / "ddp.yaml"), "--trainer.accelerator=cpu",
             "--data.init_args.batch_size=16", *extra]
    env = subprocess_env()
    env["OMP_NUM_THREADS"] = "1"
    proc = subprocess.run([sys.executable, "-m", "lit_gen", "fit", *args], cwd=ROOT, env=env,
                          capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.slow  # processes of its own; `make test-slow` (CI) runs it
def test_parameters_and_buffers_come_in_the_same_order_in_every_process():
    """DDP and Lightning copy parameters and buffers from rank 0 to the other ranks by position. A module that
    registered them in a set's order (DALL-E's attention masks once did) put rank 0's row mask under another
    rank's column mask: the order must not depend on the process's hash seed."""
    procs = [subprocess.Popen([sys.executable, "-m", "tests.integration.module_order"], cwd=ROOT, text=True,
                              env=subprocess_env() | {"PYTHONHASHSEED": seed, "OMP_NUM_THREADS": "1"},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for seed in ("1", "2")]
    outputs = []
    for proc in procs:
        out, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, err[-3000:]
        outputs.append(out)
    # one config per method, DALL-E's transformer included
    assert "dalle/transformer_shapes.yaml" in outputs[0]
    assert outputs[0] == outputs[1]


@pytest.mark.slow  # processes of its own; `make test-slow` (CI) runs it
def test_ddp_glow_actnorm_init_is_pooled_over_ranks(tmp_path):
    # each rank initialises ActNorm on its own shard of the init batch; without pooling the statistics the
    # ranks would train different models (DDP averages gradients, not weights)
    _fit_ddp("flows/glow_digits.yaml", tmp_path, "--model.init_args.init_batch_size=32",
             "--trainer.callbacks+=tests.integration.tiny.AssertSameWeightsAcrossRanks")
    assert "val/bpd" in EventAccumulator(str(tmp_path / "ddp")).Reload().Tags()["scalars"]


@pytest.mark.slow  # processes of its own; `make test-slow` (CI) runs it
def test_ddp_two_processes_on_cpu(tmp_path):
    _fit_ddp("ddpm/digits.yaml", tmp_path, "--model.init_args.timestep_sampler=loss-aware")
    run = tmp_path / "ddp"
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["global_step"] == 4
    # loss-aware timesteps: every rank recorded all 4 steps x 16 global samples, gathered across ranks
    assert ckpt["state_dict"]["timesteps.loss_counts"].sum().item() == 4 * 16
    # every rank loads batch_size / world_size = 8 samples per step
    assert sorted(p.name for p in run.iterdir() if p.is_dir()) == ["checkpoints", "samples"]
    assert len(list(run.glob("events.out.tfevents.*"))) == 1  # only rank 0 writes logs
    assert "val/loss" in EventAccumulator(str(run)).Reload().Tags()["scalars"]


@pytest.mark.slow  # three 2-process fits
def test_ddp_resume_mid_epoch_matches_uninterrupted_run(tmp_path):
    """2 processes, preempted two batches into an epoch and resumed: bit-identical to the uninterrupted
    run."""
    extra = ["--trainer.max_steps=-1", "--trainer.limit_train_batches=null",
             "--data.init_args.batch_size=256",
             "--trainer.max_epochs=2", "--samples.every_n_steps=0", "--trainer.limit_val_batches=0"]
    stop = ["--trainer.callbacks+=tests.integration.tiny.StopAfterSteps", "--trainer.callbacks.steps=7"]
    runs = (("straight", "straight", []), ("interrupted", "resumed", stop),
            ("resumed", "resumed", ["--ckpt_path=last"]))  # in one torchrun job
    fits_job(tmp_path, [(name, job_args("ddpm/digits.yaml", tmp_path / folder, "ddp", "ddp", -1, *extra,
                                        *more)) for name, folder, more in runs])
    interrupted = torch.load(tmp_path / "resumed/ddp/checkpoints/step0000007.ckpt", weights_only=True)
    assert interrupted["DigitsDataModule"]["batches"] == 2  # two batches into its second epoch
    a, b = (torch.load(tmp_path / d / "ddp/checkpoints/last.ckpt", weights_only=True) for d in ("straight",
                                                                                                "resumed"))
    # 718 digits a rank, 128 a rank and step: 5 steps an epoch
    assert a["global_step"] == b["global_step"] == 10
    for key in a["state_dict"]:
        torch.testing.assert_close(a["state_dict"][key], b["state_dict"][key], rtol=0, atol=0, msg=key)


@pytest.mark.slow  # a 2-process sampling job
def test_sampling_sharded_over_two_processes_equals_one_process(tmp_path):
    """lit-gen sample --devices 2: the samples (and their balanced labels) of a one-process run, in index
    order, with 11 samples so that one rank's last batch is short; --png writes one file per sample."""
    import numpy as np
    from PIL import Image

    from lit_gen.main import cli_main

    cli_main(["fit", *tiny_args("cfg/digits.yaml", tmp_path, name="cfg")])
    ckpt = str(tmp_path / "cfg" / "checkpoints" / "last.ckpt")
    common = ["sample", "--ckpt_path", ckpt, "--num_samples", "11", "--batch_size", "3", "--guidance_scale",
              "2",
              "--device", "cpu"]
    env = subprocess_env()
    env["OMP_NUM_THREADS"] = "1"
    for devices, name in ((2, "two"), (1, "one")):  # both with one thread each, so only the sharding differs
        proc = subprocess.run([sys.executable, "-m", "lit_gen", *common, "--devices", str(devices), "--png",
                               "true",
                               "--output", str(tmp_path / name)], cwd=ROOT, env=env, capture_output=True,
                               text=True,
                              timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
    one, two = np.load(tmp_path / "one" / "samples.npz"), np.load(tmp_path / "two" / "samples.npz")
    np.testing.assert_array_equal(one["arr_1"], np.arange(11) % 10)
    np.testing.assert_array_equal(two["arr_1"], one["arr_1"])
    np.testing.assert_array_equal(two["arr_0"], one["arr_0"])
    pngs = sorted((tmp_path / "two" / "png").glob("*.png"))
    assert [p.name for p in pngs[:2]] == ["000000.png", "000001.png"] and len(pngs) == 11
    np.testing.assert_array_equal(np.asarray(Image.open(pngs[7])), one["arr_0"][7, ..., 0])
    assert not (tmp_path / "two" / ".shards").exists()


@pytest.mark.slow  # processes of its own; `make test-slow` (CI) runs it
def test_ddp_sigterm_to_every_rank_saves_one_step_and_exits_143(tmp_path):
    """As SLURM preempts a job: SIGTERM to every process of a 2-process fit, in its sample grid or between
    steps; the ranks agree on one step, save it once and exit 143; a resume continues from that step."""
    import os
    import re
    import signal

    ready = tmp_path / "ready"
    args = tiny_args("ddpm/digits.yaml", tmp_path, name="ddp", max_steps=1000)
    args += ["--config", str(EXPERIMENTS / "trainer" / "ddp.yaml"), "--trainer.accelerator=cpu",
             "--data.init_args.batch_size=16", "--trainer.max_epochs=-1",
             "--checkpoint.every_n_train_steps=1000",
             "--samples.every_n_steps=3", "--trainer.callbacks+=tests.integration.tiny.SlowSteps",
             "--trainer.callbacks.seconds=0.2", f"--trainer.callbacks.ready_file={ready}"]
    # its own group: the ranks and no one else
    proc = start_fit(args, ready, timeout=180, start_new_session=True)
    try:
        os.killpg(proc.pid, signal.SIGTERM)  # every rank, as a scheduler does
        _, stderr = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 143, stderr[-3000:]
    found = re.search(r"stopped by SIGTERM at global step (\d+)", stderr)
    assert found, stderr[-3000:]
    step = int(found.group(1))
    assert torch.load(tmp_path / "ddp/checkpoints/last.ckpt", weights_only=True)["global_step"] == step >= 3
    _fit_ddp("ddpm/digits.yaml", tmp_path, "--ckpt_path=last", f"--trainer.max_steps={step + 2}",
             "--trainer.callbacks+=tests.integration.tiny.ExpectStartStep",
             f"--trainer.callbacks.step={step}")
    assert torch.load(tmp_path / "ddp/checkpoints/last.ckpt", weights_only=True)["global_step"] == step + 2
