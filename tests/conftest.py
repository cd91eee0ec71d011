"""Shared test fixtures: a clean distributed environment and a helper that runs the CLI in-process."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = ROOT / "experiments"
DIST_VARS = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK")


def subprocess_env() -> dict[str, str]:
    """This process's environment without rank variables, for a CLI or torchrun subprocess that starts its own
    job."""
    return {k: v for k, v in os.environ.items() if k not in DIST_VARS}


def start_fit(args: list[str], ready: Path, timeout: float = 120, stderr=subprocess.PIPE,
              **popen) -> subprocess.Popen:
    """``python -m lit_gen fit ARGS`` in a subprocess (one thread, no rank variables), returned once it has
    touched ``ready`` (``tests.integration.tiny.SlowSteps``' ready_file): a test can then signal a run inside
    its loop."""
    proc = subprocess.Popen([sys.executable, "-m", "lit_gen", "fit", *args], cwd=ROOT, text=True,
                            env=subprocess_env() | {"OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL,
                            stderr=stderr, **popen)
    deadline = time.monotonic() + timeout
    while not ready.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    if not ready.exists():
        proc.kill()
        _, err = proc.communicate()
        raise AssertionError(f"the run never reached its training loop: {(err or '')[-2000:]}")
    return proc


@pytest.fixture(autouse=True)
def clean_dist_env(monkeypatch):
    """Lightning leaves rank variables behind; a later test must not think it is inside a DDP job."""
    for var in DIST_VARS:
        monkeypatch.delenv(var, raising=False)
    yield
    for var in DIST_VARS:
        os.environ.pop(var, None)


def pytest_runtest_setup(item):
    """A run given a wall-clock deadline (``LIT_GEN_TEST_DEADLINE``, Unix seconds; `.ci/run` sets one for the
    slow set) starts no test after it, so a slower CI machine reports the rest as skipped instead of running
    out of time."""
    deadline = os.environ.get("LIT_GEN_TEST_DEADLINE")
    if deadline and time.time() > float(deadline):
        pytest.skip(f"past the run's deadline (LIT_GEN_TEST_DEADLINE={deadline}); run it with `pytest "
                    f"{item.nodeid}`")


LAST = {"test_every_method_fits_and_resumes_exactly_under_every_preset": 1,
        "test_gpu_check_script_runs_every_check": 2}


def pytest_collection_modifyitems(config, items):
    """The longest slow tests run last: the preset sweep, then the CPU run of the GPU script. Under
    `.ci/run`'s deadline a slower machine then skips some presets' sweeps, not the other scaling checks."""
    # stable: file order otherwise
    items.sort(key=lambda item: LAST.get(getattr(item, "originalname", item.name), 0))
