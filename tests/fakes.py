"""Tiny fake files in the real on-disk formats of torchvision's sets (there is no internet here)."""

from __future__ import annotations

import pickle
import struct
from pathlib import Path

import numpy as np
from PIL import Image


def write_mnist(raw: Path, n_train: int = 40, n_test: int = 10) -> None:
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        header = struct.pack(">IIII", 2051, n, 28, 28)
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(header + images.tobytes())
        labels = (np.arange(n) % 10).astype(np.uint8)
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 2049, n) + labels.tobytes())


def write_cifar10(folder: Path, monkeypatch, per_batch: int = 8) -> None:
    from torchvision.datasets import CIFAR10

    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        (folder / name).write_bytes(pickle.dumps({"data": data, "labels": list(range(per_batch))}))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"c{i}" for i in range(10)]}))
    # Fake files cannot match the real md5 sums: check existence only (in the test, not the library).
    monkeypatch.setattr(CIFAR10, "train_list", [[name, None] for name in names[:5]])
    monkeypatch.setattr(CIFAR10, "test_list", [["test_batch", None]])
    monkeypatch.setattr(CIFAR10, "meta", {**CIFAR10.meta, "md5": None})


def write_celeba(folder: Path, monkeypatch, n: int = 12) -> None:
    from torchvision.datasets import CelebA

    (folder / "img_align_celeba").mkdir(parents=True)
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
    monkeypatch.setattr(CelebA, "file_list", [(gid, None, name) for gid, _, name in CelebA.file_list])
