"""Reflow through the CLI: ``lit-gen reflow`` writes the teacher's deterministic (noise, sample) pairs, a
student fits on them from the teacher's weights (``init_from``), resumes without the teacher, and reports its
straightness in ``lit-gen test``; one-line errors for teachers without an ODE or with a prior other than
N(0, I); the pairs of two processes equal those of one."""

from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lit_gen.checkpoints import load_module, read_checkpoint
from tests.conftest import ROOT, subprocess_env
from tests.integration.tiny import fit_tiny, tiny_args

TOY = "flow_matching/toy2d.yaml"


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> str:
    return fit_tiny(TOY, tmp_path_factory.mktemp("runs"), "teacher")


def reflow(lit_gen, teacher: str, output, *extra: str):
    return lit_gen("reflow", "--ckpt_path", teacher, "--num_pairs", "40", "--steps", "5", "--batch_size",
                   "16", "--output", str(output), *extra)


def test_reflow_writes_the_teachers_ode_pairs(lit_gen, teacher, tmp_path):
    proc = reflow(lit_gen, teacher, tmp_path / "pairs")
    assert proc.returncode == 0, proc.stderr
    assert "wrote 40 pairs" in proc.stderr and "(euler, 5 steps)" in proc.stderr
    pairs = np.load(tmp_path / "pairs" / "pairs.npz")
    assert pairs["x0"].shape == pairs["noise"].shape == (40, 2) and "labels" not in pairs.files
    assert str(pairs["sampler"]) == "euler" and int(pairs["steps"]) == 5 and int(pairs["num_classes"]) == 0
    assert float(pairs["guidance_scale"]) == 1.0 and str(pairs["teacher"]) == teacher
    model = load_module(teacher)  # the teacher's own sampler from the same noise
    noise = torch.from_numpy(pairs["noise"][:7])
    x = model.sample(7, latents=noise, sampler="euler", steps=5).x
    np.testing.assert_allclose(pairs["x0"][:7], x.numpy(), rtol=0, atol=1e-6)


def test_a_student_starts_from_the_teacher_resumes_without_it_and_reports_straightness(lit_gen, teacher,
                                                                                          tmp_path):
    assert reflow(lit_gen, teacher, tmp_path / "pairs").returncode == 0
    runs = tmp_path / "runs"
    student = [*tiny_args(TOY, runs, name="student"), "--data", "PairsDataModule",
               f"--data.init_args.path={tmp_path / 'pairs' / 'pairs.npz'}", "--data.init_args.batch_size=8",
               "--data.init_args.val_fraction=0.2", "--data.init_args.test_fraction=0.2",
               "--samples.every_n_steps=0"]
    frozen = ["--model.init_args.optimizer.init_args.lr=0", f"--model.init_args.init_from={teacher}"]
    proc = lit_gen("fit", *student, *frozen, "--trainer.max_steps=1")
    assert proc.returncode == 0, proc.stderr
    assert f"the weights start from the sampling weights of {teacher}" in proc.stderr
    state, source = read_checkpoint(runs / "student/checkpoints/last.ckpt")["state_dict"], read_checkpoint(
        teacher)["state_dict"]
    compared = 0
    for key, value in source.items():  # lr 0: both networks still hold the teacher's EMA weights
        if key.startswith("ema.module."):
            torch.testing.assert_close(state[key], value, rtol=0, atol=0)
            torch.testing.assert_close(state["net." + key.removeprefix("ema.module.")], value, rtol=0, atol=0)
            compared += 1
    assert compared > 4
    gone = tmp_path / "teacher_gone.ckpt"
    (ROOT / teacher).rename(gone)  # a resume reads its own checkpoint, never the teacher's
    try:
        proc = lit_gen("fit", *student, *frozen, "--trainer.max_steps=3", "--ckpt_path", "last")
    finally:
        gone.rename(teacher)
    assert proc.returncode == 0, proc.stderr
    assert "start from the sampling weights" not in proc.stderr
    assert read_checkpoint(runs / "student/checkpoints/last.ckpt")["global_step"] == 3
    proc = lit_gen("test", *student, "--ckpt_path", "last")
    assert proc.returncode == 0, proc.stderr
    scalars = EventAccumulator(str(runs / "student")).Reload().Tags()["scalars"]
    assert {"test/straightness", "test/nll", "test/loss"} <= set(scalars)


def test_init_from_a_checkpoint_of_another_method_fails_in_one_line(lit_gen, tmp_path):
    ddpm = fit_tiny("ddpm/toy2d.yaml", tmp_path / "runs", "ddpm")
    proc = lit_gen("fit", *tiny_args(TOY, tmp_path / "runs", name="student"),
                   f"--model.init_args.init_from={ddpm}")
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) <= 2, proc.stderr
    assert f"'init_from {ddpm}' is a checkpoint of lit_gen.methods.ddpm.DDPM" in proc.stderr, proc.stderr
    assert not (tmp_path / "runs" / "student").exists()


@pytest.mark.parametrize("config, message", [
    ("flows/realnvp_toy2d.yaml", "reflow needs a teacher with a probability-flow ODE.*NormalizingFlow"),
    ("sde/ve_toy2d.yaml", r"prior is N\(0, .*\^2 I\) \(a VE process\)"),
])
def test_reflow_refuses_teachers_it_cannot_use_in_one_line(lit_gen, config, message, tmp_path):
    ckpt = fit_tiny(config, tmp_path / "runs", "other")
    proc = reflow(lit_gen, ckpt, tmp_path / "pairs")
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert re.search(message, proc.stderr), proc.stderr
    assert not (tmp_path / "pairs").exists()


def test_reflow_one_line_errors_for_bad_flags(lit_gen, teacher, tmp_path):
    for extra, message in ((["--num_pairs", "0"], "--num_pairs 0 must be >= 1"),
                           (["--sampler", "em"], "reflow pairs need a deterministic sampler: one of "
                                                 "['dpmpp2m', 'euler', 'heun', 'midpoint', 'ode', 'rk45']; "
                                                 "got --sampler 'em'")):
        proc = lit_gen("reflow", "--ckpt_path", teacher, "--output", str(tmp_path / "p"), *extra)
        assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert not (tmp_path / "p").exists()


@pytest.mark.slow  # a 2-process job
def test_reflow_over_two_processes_equals_one_process(teacher, tmp_path):
    env = subprocess_env() | {"OMP_NUM_THREADS": "1"}
    for devices in (1, 2):
        proc = subprocess.run([sys.executable, "-m", "lit_gen", "reflow", "--ckpt_path", teacher,
                               "--num_pairs", "11", "--steps", "4", "--batch_size", "3", "--device", "cpu",
                               "--devices", str(devices), "--output", str(tmp_path / str(devices))],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
    one, two = np.load(tmp_path / "1" / "pairs.npz"), np.load(tmp_path / "2" / "pairs.npz")
    for key in ("x0", "noise"):
        np.testing.assert_array_equal(two[key], one[key])
