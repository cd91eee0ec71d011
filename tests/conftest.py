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


def pytest_collection_modifyitems(config, items):
    """lit_gen filters the warnings it handles when imported (``lit_gen.console.SILENCED``, each with its
    reason); pytest resets the filters around every test phase, so each test gets them as marks: tests see
    what users see, fixtures included."""
    from lit_gen.console import SILENCED

    marks = [pytest.mark.filterwarnings(f"ignore:{pattern}") for pattern, _ in SILENCED]
    for item in items:
        for mark in marks:
            item.add_marker(mark)
    # the longest first, so that on 2 workers (make test-slow) they run beside the rest, not after it
    items.sort(key=lambda item: -FIRST.get(getattr(item, "originalname", item.name), 0))  # stable otherwise


FIRST = {"test_every_family_under_every_preset_and_every_method_under_ddp_and_zero3": 2,
         "test_gpu_check_script_runs_every_check": 1}


@pytest.fixture(autouse=True)
def clean_dist_env(monkeypatch):
    """Lightning leaves rank variables behind; a later test must not think it is inside a DDP job."""
    for var in DIST_VARS:
        monkeypatch.delenv(var, raising=False)
    yield
    for var in DIST_VARS:
        os.environ.pop(var, None)


@pytest.fixture
def lit_gen(capsys):
    """``lit-gen ARGS`` in this process (these commands launch no processes of their own): its exit code and
    output, as a subprocess would give them."""

    from lit_gen.main import cli_main

    def run(*args: str) -> subprocess.CompletedProcess:
        capsys.readouterr()
        try:
            cli_main(list(args))
            code = 0
        except SystemExit as exit_info:
            code = exit_info.code or 0
        out = capsys.readouterr()
        return subprocess.CompletedProcess(args, code, out.out, out.err)

    return run


def fails_in_one_line(capsys, args: list[str], *expected: str) -> None:
    """``lit-gen ARGS`` exits with 2 and one ``lit-gen: error:`` line holding every ``expected`` text."""
    from lit_gen.main import cli_main

    with pytest.raises(SystemExit) as info:
        cli_main(args)
    assert info.value.code == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("lit-gen: error:")]
    assert len(err) == 1 and all(e in err[0] for e in expected), err
