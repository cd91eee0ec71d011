"""Reading and loading lit_gen checkpoints with one-line errors (missing, corrupt, or of another method); one
method loads another's checkpoint (a classifier for guidance) through :func:`load_module`."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import torch

TAG = "lit_gen"  # checkpoint key holding {"class_path": ..., "version": ...}


class CheckpointError(ValueError):
    """A checkpoint path that cannot be used; the message names the path and the reason."""


def class_path(obj_or_cls) -> str:
    cls = obj_or_cls if isinstance(obj_or_cls, type) else type(obj_or_cls)
    return f"{cls.__module__}.{cls.__qualname__}"


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by lit_gen, or raise :class:`CheckpointError` saying why it cannot be used."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {str(path)!r}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means the file is unusable
        reason = str(err).strip().splitlines()[0][:160] if str(err).strip() else ""
        raise CheckpointError(f"{str(path)!r} is not a readable checkpoint ({type(err).__name__}: {reason})") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise CheckpointError(f"{str(path)!r} is not a Lightning checkpoint (no 'state_dict')")
    if TAG not in ckpt:
        raise CheckpointError(f"{str(path)!r} was not written by lit_gen (no {TAG!r} entry)")
    return ckpt


def import_class(path: str) -> type:
    """The class at a dotted ``module.Class`` path."""
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def checkpoint_class(ckpt: dict[str, Any]) -> type:
    """The LightningModule class that wrote ``ckpt``."""
    path = ckpt[TAG]["class_path"]
    try:
        return import_class(path)
    except (ImportError, AttributeError):
        raise CheckpointError(f"the checkpoint's method {path} is not in this version of lit_gen") from None


def check_method(ckpt: dict[str, Any], expected: type, path: str | Path = "checkpoint") -> None:
    """Raise if ``ckpt`` was written by another method than ``expected``."""
    found = ckpt.get(TAG, {}).get("class_path")
    if found != class_path(expected):
        raise CheckpointError(
            f"{str(path)!r} is a checkpoint of {found}, not of {class_path(expected)}; "
            "use a checkpoint of the same method or change model.class_path"
        )


def load_module(path: str | Path, device: str | torch.device = "cpu", expected: type | None = None, ema: bool = True):
    """The LightningModule of a lit_gen checkpoint, in eval mode on ``device``; with ``expected``, a checkpoint of
    another method raises :class:`CheckpointError`. ``ema=False`` drops the EMA weights."""
    ckpt = read_checkpoint(path)
    if expected is not None:
        check_method(ckpt, expected, path)
    model = checkpoint_class(ckpt).load_from_checkpoint(path, map_location=device, weights_only=False)
    model.eval()
    if not ema:
        model.ema = None
    return model


def load_frozen(path: str | Path, device: str | torch.device, expected: type):
    """:func:`load_module` with every parameter frozen: a module that another method only evaluates."""
    model = load_module(path, device, expected)
    model.requires_grad_(False)
    return model
