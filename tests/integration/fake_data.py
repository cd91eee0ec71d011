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
    elif data_class == "ImageFolderDataModule":  # a flat folder of 64x64 images
        root = root / "images"
        if not root.exists():
            write_image_folder(root)
    elif data_class == "CaptionedImageFolderDataModule":  # the same, with a captions file
        root = root / "captioned"
        if not root.exists():
            write_image_folder(root)
            (root / "captions.tsv").write_text("".join(f"{i:03d}.png\ta picture of noise number {i % 3}\n"
                                                       for i in range(24)))
    else:
        return []
    return [f"--data.init_args.root={root}"]


def write_image_folder(root: Path, n: int = 24, size: int = 64) -> None:
    """``n`` random RGB PNG images of ``size`` x ``size`` directly in ``root``."""
    import numpy as np
    from PIL import Image

    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(root / f"{i:03d}.png")
