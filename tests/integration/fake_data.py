"""Point the configs that read torchvision sets at tiny fake files (no internet here)."""

from __future__ import annotations

from pathlib import Path

import yaml

from tests.conftest import EXPERIMENTS
from tests.fakes import write_cifar10, write_mnist


def fake_data_args(config: str, runs_dir: Path, monkeypatch) -> list[str]:
    """Arguments for a torchvision-backed config to read fake files; none for embedded data."""
    data_class = yaml.safe_load((EXPERIMENTS / config).read_text())["data"]["class_path"]
    root = runs_dir / "fake_data"
    if data_class == "MNISTDataModule":
        if not (root / "MNIST").exists():
            write_mnist(root / "MNIST" / "raw")
    elif data_class == "CIFAR10DataModule":
        if not (root / "cifar-10-batches-py").exists():
            write_cifar10(root / "cifar-10-batches-py", monkeypatch)
    else:
        return []
    return [f"--data.init_args.root={root}"]
