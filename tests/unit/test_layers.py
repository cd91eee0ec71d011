"""Arrows that point one way: the plain-torch layers (networks, flows, the noise processes, sharding helpers)
import no Lightning, and no method imports the CLI, a callback or ``lit_gen.sample``."""

from __future__ import annotations

import ast
import subprocess
import sys

import pytest

from tests.conftest import ROOT, subprocess_env

UPWARD = ("lit_gen.cli", "lit_gen.callbacks", "lit_gen.sample")  # what a method may not import
PLAIN_TORCH = ["lit_gen.nets", "lit_gen.flows", "lit_gen.diffusion", "lit_gen.sharding", "lit_gen.visual"]


@pytest.mark.parametrize("module", PLAIN_TORCH)
def test_plain_torch_layers_import_no_lightning(module):
    code = f"import sys, {module}; print(sorted(m for m in sys.modules if m.startswith('lightning')))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=subprocess_env(), capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]", f"{module} imports {out.stdout.strip()}"


def test_methods_import_no_cli_callback_or_sample_module():
    for path in sorted((ROOT / "lit_gen" / "methods").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [node.module] if isinstance(node, ast.ImportFrom) and node.module else []
            names += [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
            upward = [n for n in names if n.startswith(UPWARD)]
            assert not upward, (path.name, upward)
