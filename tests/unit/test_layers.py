"""Arrows that point one way (docs/architecture.md): the plain-torch layers import no Lightning; lit_gen's
modules import each other without a cycle (imports inside functions included); each layer imports only the
layers below it; no method imports the CLI, a callback or ``lit_gen.sample``, nor another method's file except
to subclass it; and no file in lit_gen is over 400 lines, no function over 60."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, subprocess_env

PACKAGE = ROOT / "lit_gen"
# what a method may not import
UPWARD = ("lit_gen.cli", "lit_gen.main", "lit_gen.callbacks", "lit_gen.sample", "lit_gen.memory")
PLAIN_TORCH = ["lit_gen.nets", "lit_gen.flows", "lit_gen.diffusion", "lit_gen.score", "lit_gen.process",
               "lit_gen.sampling", "lit_gen.likelihood", "lit_gen.dalle", "lit_gen.text", "lit_gen.sharding",
               "lit_gen.visual"]
# layer -> the lit_gen layers it may not import (the ones above it)
ABOVE = {
    "lit_gen.process": ("lit_gen.diffusion", "lit_gen.score", "lit_gen.sampling", "lit_gen.methods"),
    "lit_gen.diffusion": ("lit_gen.score", "lit_gen.sampling", "lit_gen.methods"),
    "lit_gen.score": ("lit_gen.diffusion", "lit_gen.sampling", "lit_gen.methods"),
    "lit_gen.sampling": ("lit_gen.methods",),
    "lit_gen.nets": ("lit_gen.process", "lit_gen.diffusion", "lit_gen.score", "lit_gen.methods"),
    "lit_gen.flows": ("lit_gen.methods",),
    "lit_gen.dalle": ("lit_gen.methods",),
}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> list[tuple[str, list[str]]]:
    """(module, imported names) of every import in the file, at any depth, relative ones resolved."""
    found = []
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            module = ".".join(p for p in (base, node.module) if p)
            found.append((module, [alias.name for alias in node.names]))
    return found


def graph() -> dict[str, set[str]]:
    """lit_gen module -> the lit_gen modules it imports (``from package import name`` counts the submodule
    ``package.name`` when there is one)."""
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    edges = {}
    for name, path in files.items():
        targets = set()
        for module, names in imports(path):
            if not module.startswith("lit_gen"):
                continue
            subs = [f"{module}.{n}" for n in names if f"{module}.{n}" in files]
            targets.update(subs or [module])
        edges[name] = {t for t in targets if t in files and t != name}
    return edges


@pytest.mark.parametrize("module", PLAIN_TORCH)
def test_plain_torch_layers_import_no_lightning(module):
    code = f"import sys, {module}; print(sorted(m for m in sys.modules if m.startswith('lightning')))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=subprocess_env(), capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]", f"{module} imports {out.stdout.strip()}"


def test_no_import_cycles():
    edges, state, stack = graph(), {}, []

    def visit(node: str) -> None:  # depth-first; a node on the stack reached again closes a cycle
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == "open":
                cycle = stack[stack.index(nxt):] + [nxt]
                # a package's __init__ re-exporting its submodules is not a cycle of code
                if not any(a == b.rpartition(".")[0] or b == a.rpartition(".")[0]
                           for a, b in zip(cycle, cycle[1:], strict=False)):
                    raise AssertionError(f"import cycle: {' -> '.join(cycle)}")
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node)


@pytest.mark.parametrize("layer", sorted(ABOVE))
def test_each_layer_imports_only_the_layers_below_it(layer):
    for module, targets in graph().items():
        if module == layer or module.startswith(layer + "."):
            upward = sorted(t for t in targets if t.startswith(ABOVE[layer]))
            assert not upward, f"{module} imports {upward}, a layer above it"


def test_methods_import_no_cli_callback_or_sample_module():
    for path in sorted((PACKAGE / "methods").glob("*.py")):
        upward = [m for m, _ in imports(path) if m.startswith(UPWARD)]
        assert not upward, (path.name, upward)


def test_a_method_imports_another_method_file_only_to_subclass_it():
    # the shared bases and their parts (text conditioning and reranking, latent space): no method in them
    shared = {"lit_gen.methods.base", "lit_gen.methods.generative", "lit_gen.methods.noise_process",
              "lit_gen.methods.text", "lit_gen.methods.latent", "lit_gen.methods"}
    for path in sorted((PACKAGE / "methods").glob("*.py")):
        if path.name == "__init__.py":  # the registry
            continue
        tree = ast.parse(path.read_text())
        bases = {b.id for node in ast.walk(tree) if isinstance(node, ast.ClassDef) for b in node.bases
                 if isinstance(b, ast.Name)}
        for module, names in imports(path):
            if module.startswith("lit_gen.methods.") and module not in shared:
                assert set(names) <= bases, f"{path.name} imports {names} from {module} without subclassing"


def test_files_and_functions_stay_small():
    for path in sorted(PACKAGE.rglob("*.py")):
        lines = path.read_text().splitlines()
        assert len(lines) <= 400, f"{path.relative_to(ROOT)} has {len(lines)} lines (at most 400)"
        for node in ast.walk(ast.parse("\n".join(lines))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = node.end_lineno - node.lineno + 1
                assert length <= 60, f"{path.relative_to(ROOT)}:{node.lineno} {node.name} has {length} lines"
