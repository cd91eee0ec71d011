"""Offline stand-ins for the sets that live in files: a few random images in each set's real on-disk format,
so that tests and smoke runs read them through the same code as the real files (nothing is downloaded).
Each DataModule's ``fake_data`` classmethod names its writer here."""

from __future__ import annotations

import pickle
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image


@dataclass
class FakeData:
    """What a DataModule's ``fake_data`` gives: the init_args that point it at the files, and the attributes
    to patch while they are read, as ``(owner, name, value)`` (torchvision checks md5 sums that fake files
    cannot match; a test applies these with ``monkeypatch.setattr``)."""

    init_args: dict[str, Any] = field(default_factory=dict)
    patches: list[tuple[Any, str, Any]] = field(default_factory=list)


def write_mnist(raw: Path, n_train: int = 40, n_test: int = 10) -> None:
    """``train-*`` and ``t10k-*`` idx files (MNIST and Fashion-MNIST share the format)."""
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        header = struct.pack(">IIII", 2051, n, 28, 28)
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(header + images.tobytes())
        labels = (np.arange(n) % 10).astype(np.uint8)
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 2049, n) + labels.tobytes())


def write_cifar10(folder: Path, per_batch: int = 8) -> list[tuple[Any, str, Any]]:
    """The five pickled training batches, the test batch and ``batches.meta`` (once); returns the md5
    patches."""
    from torchvision.datasets import CIFAR10

    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    if not (folder / "batches.meta").exists():  # written last
        folder.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(0)
        for name in names:
            data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
            (folder / name).write_bytes(pickle.dumps({"data": data, "labels": list(range(per_batch))}))
        (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"c{i}" for i in range(10)]}))
    return [(CIFAR10, "train_list", [[name, None] for name in names[:5]]),
            (CIFAR10, "test_list", [["test_batch", None]]),
            (CIFAR10, "meta", {**CIFAR10.meta, "md5": None})]


def write_celeba(folder: Path, n: int = 48) -> list[tuple[Any, str, Any]]:
    """``img_align_celeba/`` and the five ``list_*`` / ``identity_*`` files; returns the md5 patch."""
    from torchvision.datasets import CelebA

    patches = [(CelebA, "file_list", [(gid, None, name) for gid, _, name in CelebA.file_list])]
    if (folder / "list_attr_celeba.txt").exists():  # written last
        return patches
    (folder / "img_align_celeba").mkdir(parents=True, exist_ok=True)
    names = [f"{i:06d}.png" for i in range(1, n + 1)]
    for name in names:
        Image.new("RGB", (178, 218), (200, 100, 50)).save(folder / "img_align_celeba" / name)

    def write(filename: str, header: list[str] | None, values) -> None:
        rows = [f"{name} {' '.join(map(str, values(i)))}" for i, name in enumerate(names)]
        lines = ([str(n), " ".join(header)] if header is not None else []) + rows
        (folder / filename).write_text("\n".join(lines) + "\n")

    write("list_eval_partition.txt", None, lambda i: [i % 3])
    write("identity_CelebA.txt", None, lambda i: [i])
    write("list_bbox_celeba.txt", ["image_id", "x_1", "y_1", "width", "height"], lambda i: [0, 0, 10, 10])
    write("list_landmarks_align_celeba.txt", [f"l{j}" for j in range(10)], lambda i: [0] * 10)
    write("list_attr_celeba.txt", [f"a{j}" for j in range(40)], lambda i: [1] * 40)
    return patches


def write_image_folder(root: Path, n: int = 24, size: int = 64, captions: bool = False) -> None:
    """``n`` random RGB PNG images of ``size`` x ``size`` directly in ``root``, and with ``captions`` a
    ``captions.tsv`` naming each with one of three captions."""
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(root / f"{i:03d}.png")
    if captions:
        lines = [f"{i:03d}.png\ta picture of noise number {i % 3}\n" for i in range(n)]
        (root / "captions.tsv").write_text("".join(lines))
