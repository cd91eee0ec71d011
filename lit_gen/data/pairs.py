"""(noise, sample) pairs drawn by a teacher's ODE (``lit-gen reflow``), the data of a 2-rectified flow (Liu et
al. 2023): items ``{"x": the teacher's sample, "noise": the noise it started from[, "y": its label]}``.

The file is ``pairs.npz`` with ``x0`` and ``noise`` (float32, N x data shape), ``labels`` (int64, N) when the
teacher is class-conditional, and ``num_classes``, ``teacher``, ``sampler`` and ``steps`` describing the draw.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from lit_gen.data.base import GenerativeDataModule, Item, Splits, TensorDictDataset, split_indices
from lit_gen.data.fakes import FakeData
from lit_gen.files import atomic_write

PAIRS_KEYS = ("x0", "noise")


class PairsDataset(TensorDictDataset):
    """Samples ``x`` with the ``noise`` each started from (and labels ``y``)."""

    def __init__(self, x: Tensor, noise: Tensor, y: Tensor | None = None) -> None:
        if noise.shape != x.shape:
            raise ValueError(f"noise has shape {tuple(noise.shape)} but x {tuple(x.shape)}")
        super().__init__(x, y)
        self.noise = noise

    def __getitem__(self, index: int) -> Item:
        return {**super().__getitem__(index), "noise": self.noise[index]}

    def subset(self, indices: Tensor) -> PairsDataset:
        return PairsDataset(self.x[indices], self.noise[indices], None if self.y is None else self.y[indices])


def read_pairs(path: str | Path) -> dict[str, Any]:
    """The arrays of a pairs file as tensors (and its description); one-line errors for a missing or foreign
    file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pairs file not found: {str(path)!r} (write one with lit-gen reflow "
                                "--ckpt_path TEACHER --num_pairs N --output DIR; it is DIR/pairs.npz)")
    try:
        with np.load(path, allow_pickle=False) as f:
            out = {k: f[k] for k in f.files}
    except (OSError, TypeError, ValueError, zipfile.BadZipFile) as err:  # .npy, corrupt, foreign
        raise ValueError(f"{str(path)!r} is not a pairs file of lit-gen reflow (an npz with "
                         f"{list(PAIRS_KEYS)}): {' '.join(str(err).split())[:200]}") from None
    missing = [k for k in PAIRS_KEYS if k not in out]
    if missing:
        raise ValueError(f"{str(path)!r} is not a pairs file of lit-gen reflow: it lacks {missing} (it has "
                         f"{sorted(out)})")
    pairs = {k: torch.from_numpy(out[k]).float() for k in PAIRS_KEYS}
    pairs["labels"] = torch.from_numpy(out["labels"]).long() if "labels" in out else None
    pairs["num_classes"] = int(out.get("num_classes", 0))
    labels, k = pairs["labels"], pairs["num_classes"]
    if labels is not None and len(labels) and not (0 <= int(labels.min()) and int(labels.max()) < k):
        raise ValueError(f"{str(path)!r}: labels {int(labels.min())} to {int(labels.max())} do not fit its "
                         f"num_classes={k}")
    return pairs


def write_pairs(path: Path, x0: Tensor, noise: Tensor, labels: Tensor | None, **description) -> None:
    """``path``: the pairs file :func:`read_pairs` reads (written atomically)."""
    arrays = {"x0": x0.float().cpu().numpy(), "noise": noise.float().cpu().numpy()}
    if labels is not None:
        arrays["labels"] = labels.cpu().numpy().astype(np.int64)
    arrays |= {k: np.asarray(v) for k, v in description.items()}
    atomic_write(path, lambda file: np.savez(file, **arrays))


def write_fake_pairs(root: Path, n: int = 32, shape: tuple[int, ...] = (1, 8, 8)) -> Path:
    """A pairs file of ``n`` random pairs of ``shape`` with 10 classes (offline configs and tests)."""
    root.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(0)
    noise = torch.randn((n, *shape), generator=generator)
    x0 = (0.5 * noise + 0.1 * torch.randn((n, *shape), generator=generator)).clamp(-1, 1)
    write_pairs(root / "pairs.npz", x0, noise, torch.arange(n) % 10, num_classes=10, teacher="fake",
                sampler="euler", steps=2)
    return root / "pairs.npz"


class PairsDataModule(GenerativeDataModule):
    """The pairs of ``lit-gen reflow``, split deterministically by ``seed``; shape and classes from the file.

    Args:
        path: the ``pairs.npz`` that ``lit-gen reflow`` wrote.
        val_fraction: fraction of the pairs held out for validation.
        test_fraction: fraction held out for testing.
        **kwargs: ``batch_size``, ``num_workers``, ``seed`` of ``GenerativeDataModule``.
    """

    def __init__(self, *, path: str, val_fraction: float = 0.02, test_fraction: float = 0.02,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.path = path
        self.pairs = read_pairs(path)
        self.val_fraction, self.test_fraction = val_fraction, test_fraction
        self.data_shape = tuple(self.pairs["x0"].shape[1:])
        self.num_classes = self.pairs["num_classes"]

    @classmethod
    def fake_data(cls, root: Path) -> FakeData:
        path = root / "pairs.npz"
        if not path.exists():
            write_fake_pairs(root)
        return FakeData({"path": str(path)})

    def build_datasets(self) -> Splits:
        p = self.pairs
        full = PairsDataset(p["x0"], p["noise"], p["labels"])
        parts = split_indices(len(full), [self.val_fraction, self.test_fraction], self.generator())
        train, val, test = (full.subset(part) for part in parts)
        return train, val, test
