"""Shared test fixtures: a clean distributed environment and a helper that runs the CLI in-process."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = ROOT / "experiments"
DIST_VARS = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK")


def subprocess_env() -> dict[str, str]:
    """This process's environment without rank variables, for a CLI or torchrun subprocess that starts its own job."""
    return {k: v for k, v in os.environ.items() if k not in DIST_VARS}


@pytest.fixture(autouse=True)
def clean_dist_env(monkeypatch):
    """Lightning leaves rank variables behind; a later test must not think it is inside a DDP job."""
    for var in DIST_VARS:
        monkeypatch.delenv(var, raising=False)
    yield
    for var in DIST_VARS:
        os.environ.pop(var, None)
