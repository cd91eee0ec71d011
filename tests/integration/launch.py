"""Launching multi-process runs from tests, as a user would: torchrun jobs (one or several single-process
"nodes"), and several fits in one job (:mod:`tests.integration.fits_job`) to pay the start-up once."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import EXPERIMENTS, ROOT, subprocess_env
from tests.integration.tiny import tiny_args


def torchrun(args: list[str], nodes: int = 1, timeout: int = 900, **env_extra) -> subprocess.CompletedProcess:
    """``torchrun --nproc_per_node 2 ARGS`` (or ``nodes`` single-process "nodes" on localhost)."""
    env = subprocess_env()
    env.update(OMP_NUM_THREADS="1", **env_extra)
    run = [sys.executable, "-m", "torch.distributed.run"]
    pipes = {"cwd": ROOT, "env": env, "stdout": subprocess.PIPE, "stderr": subprocess.STDOUT, "text": True}
    if nodes == 1:
        launch = ["--nproc_per_node", "2", "--master_port", str(_free_port())]
        procs = [subprocess.Popen([*run, *launch, *args], **pipes)]
    else:
        port = str(_free_port())
        node = ["--nnodes", str(nodes), "--nproc_per_node", "1", "--master_addr", "127.0.0.1",
                "--master_port", port]
        procs = [subprocess.Popen([*run, *node, "--node_rank", str(rank), *args], **pipes)
                 for rank in range(nodes)]
    outs = []
    try:
        for proc in procs:
            outs.append(proc.communicate(timeout=timeout)[0])
    finally:
        for proc in procs:
            proc.kill()
    result = subprocess.CompletedProcess(args, max(p.returncode for p in procs), "\n".join(outs), "")
    assert result.returncode == 0, result.stdout[-4000:]
    return result


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def job_args(config: str, runs_dir: Path, name: str, preset: str, steps: int, *extra: str) -> list[str]:
    """The arguments of a tiny fit of ``config`` on 2 CPU processes under ``preset``."""
    return [*tiny_args(config, runs_dir, name=name, max_steps=steps),
            "--config", str(EXPERIMENTS / "trainer" / f"{preset}.yaml"), "--trainer.accelerator=cpu",
            "--trainer.devices=2", "--data.init_args.batch_size=16", *extra]


def fit_args(*args, **kwargs) -> list[str]:
    """``-m lit_gen fit`` with :func:`job_args`: one fit as its own torchrun job."""
    return ["-m", "lit_gen", "fit", *job_args(*args, **kwargs)]


def fits_job(tmp_path: Path, runs: list[tuple[str, list[str]]], timeout: int = 900) -> str:
    """The fits ``runs`` (name, :func:`job_args`) in the processes of one torchrun job, in order; fails with
    the traceback of any that failed; returns the job's output."""
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps([{"name": name, "args": args} for name, args in runs]))
    out = torchrun(["-m", "tests.integration.fits_job", str(plan)], timeout=timeout).stdout
    results = json.loads(plan.with_suffix(".results.json").read_text())
    assert list(results) == [name for name, _ in runs]
    failed = {name: r["traceback"] for name, r in results.items() if "error" in r}
    assert not failed, json.dumps(failed, indent=1)[-6000:]
    return out
