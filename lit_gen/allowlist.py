"""What a file may name: the classes lit_gen imports or instantiates because a checkpoint, a safetensors
file's metadata or a run's config.yaml says so.

A file's content must never choose code to run. Every place where it names a class (a method's ``class_path``,
a net's ``class_path`` in the hyperparameters, an optimizer, an instantiator, a dotted string given to a
callable argument) is checked here first, against an explicit allowlist, before anything is imported:
lit_gen's own methods, networks and flows, torch's optimizers and learning-rate schedulers, and lit_gen's
schedules. Anything else is refused in one line, naming the file, the key and the value.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Iterator
from functools import cache
from typing import Any

# packages whose classes of the kinds below a file may name (importing them runs only lit_gen's and torch's
# code)
ALLOWED_PACKAGES = ("lit_gen.methods", "lit_gen.nets", "lit_gen.flows", "lit_gen.optim", "torch.optim")
# the only instantiator Lightning's hyperparameters may name (LightningCLI writes it)
INSTANTIATORS = frozenset({"lightning.pytorch.cli.instantiate_module"})
CLASS_KEYS = ("class_path", "_class_path")
DOTTED = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)+")


class UntrustedClassError(ValueError):
    """A file names a class or module that lit_gen does not load from files."""


def _kinds() -> tuple[type, ...]:
    import torch
    from torch.optim.lr_scheduler import LRScheduler

    return torch.nn.Module, torch.optim.Optimizer, LRScheduler


@cache
def allowed_classes() -> dict[str, type]:
    """Every name a file may use for a class: ``module.Name`` for each module of :data:`ALLOWED_PACKAGES` that
    exports it (``lit_gen.nets.UNet`` and ``lit_gen.nets.unet.UNet``), and the bare ``Name`` (as a config
    writes ``DDPM``). Only methods, networks, flows (``nn.Module``), optimizers and LR schedulers."""
    import pkgutil
    import sys

    import torch.optim.lr_scheduler  # noqa: F401

    import lit_gen.flows
    import lit_gen.methods
    import lit_gen.nets
    import lit_gen.optim  # noqa: F401

    for package in (lit_gen.methods, lit_gen.nets, lit_gen.flows):
        for info in pkgutil.iter_modules(package.__path__, package.__name__ + "."):
            importlib.import_module(info.name)
    kinds, names = _kinds(), {}
    modules = [m for n, m in list(sys.modules.items()) if m is not None and _in_packages(n)]
    for module in modules:
        for attr, value in vars(module).items():
            if (isinstance(value, type) and issubclass(value, kinds) and not attr.startswith("_")
                    and _in_packages(value.__module__)):
                names[f"{module.__name__}.{attr}"] = value
                names.setdefault(attr, value)
    return names


def _in_packages(module: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in ALLOWED_PACKAGES)


def check_class_path(value: Any, source: str, key: str = "class_path") -> None:
    """Raise :class:`UntrustedClassError` unless ``value`` names an allowed class. Nothing is imported for a
    refused name."""
    if not isinstance(value, str) or value not in allowed_classes():
        raise UntrustedClassError(
            f"{source} names {value!r} as its {key}, which lit_gen does not load from files: only lit_gen's "
            "methods, networks and flows and torch's optimizers and LR schedulers may be named there "
            "(nothing was imported)")


def check_file_data(data: Any, source: str) -> None:
    """Check every class a file's plain data names, at any depth: ``class_path`` / ``_class_path`` values,
    Lightning's ``_instantiator``, and any dotted string whose first part is an importable module
    (jsonargparse would import it for a callable argument such as ``optimizer``). Raise
    :class:`UntrustedClassError` at the first refused one."""
    for key, value in _items(data, ""):
        name = key.rpartition(".")[2]
        if name in CLASS_KEYS:
            check_class_path(value, source, key)
        elif name == "_instantiator":
            if value not in INSTANTIATORS:
                raise UntrustedClassError(f"{source} names {value!r} as its {key}, which lit_gen does not "
                                          f"run; allowed: {sorted(INSTANTIATORS)} (nothing was imported)")
        elif isinstance(value, str) and DOTTED.fullmatch(value) and _importable(value.partition(".")[0]):
            check_class_path(value, source, key)


def _items(data: Any, prefix: str) -> Iterator[tuple[str, Any]]:
    """(dotted key, value) of every leaf and every ``class_path``-like entry of nested dicts and lists."""
    if isinstance(data, dict):
        for key, value in data.items():
            yield from _items(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(data, (list, tuple)):
        for i, value in enumerate(data):
            yield from _items(value, f"{prefix}[{i}]")
    else:
        yield prefix, data


def _importable(top_level: str) -> bool:
    """Whether ``import top_level`` would find a module (found without running it)."""
    try:
        return importlib.util.find_spec(top_level) is not None
    except (ImportError, ValueError):
        return False
