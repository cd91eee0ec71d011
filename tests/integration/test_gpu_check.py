"""benchmarks/gpu_check.sh, the one script for a lent GPU machine, run on CPU processes (SMOKE=1): every check
and the throughput table, so the script a GPU session runs once is known to work before it gets there."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import ROOT, subprocess_env


@pytest.mark.slow  # six checks on 2 CPU processes and three timed UNets, 3-10 min
@pytest.mark.timeout(1500)
def test_gpu_check_script_runs_every_check(tmp_path):
    env = subprocess_env()
    env.update(SMOKE="1", OUT=str(tmp_path), PY=sys.executable)
    proc = subprocess.run(["bash", "benchmarks/gpu_check.sh"], cwd=ROOT, env=env, capture_output=True,
                          text=True,
                          timeout=1400)
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr[-3000:]
    # name (34), result, detail
    rows = [line for line in out.splitlines() if line[35:41].strip() in ("ok", "FAIL")]
    assert len(rows) == 7 and all(r[35:41].strip() == "ok" for r in rows), out
    for name in ("DDP (gloo)", "deepspeed_zero2", "deepspeed_zero3", "fsdp", "export ZeRO-3 folder, sample"):
        assert any(r.startswith(name) for r in rows), (name, out)
    throughput = [line for line in out.splitlines() if "img/s" in line]
    rates = [float(line.split("img/s")[0].split()[-1]) for line in throughput]
    assert len(rates) == 3 and all(rate > 0 for rate in rates), out
    assert (tmp_path / "z3_samples" / "grid.png").is_file()  # sampled from the exported ZeRO-3 checkpoint
