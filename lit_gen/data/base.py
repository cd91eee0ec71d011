"""The common contract of every lit_gen DataModule.

Items are dicts: ``{"x": FloatTensor}`` (images in [-1, 1], shape (C, H, W); toy data shape (2,)),
plus ``"y"`` (int64 scalar) where labels exist and ``"caption"`` (str) where captions exist, so the
default collate gives dict batches. ``batch_size`` is global and divided across ranks; the training
sampler is always a seeded ``DistributedSampler``, so the shuffle order depends only on (seed, epoch).
"""

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import lightning.pytorch as pl
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from lit_gen.data.fakes import FakeData

Item = dict[str, Any]
Splits = tuple[Dataset, Dataset, Dataset]


class DatasetNotFoundError(FileNotFoundError):
    """Raised when a dataset's files are not on disk (and were not downloaded)."""

    def __init__(self, name: str, path: str) -> None:
        super().__init__(
            f"{name} not found (or incomplete) at {path}: "
            "pass --data.init_args.download true to download it, or place the files there"
        )


class TensorDictDataset(Dataset):
    """A dataset backed by precomputed tensors (and optionally captions), returning dict items.

    Args:
        x: Data, shape (N, ...): floats returned as they are, or uint8 images in [0, 255] returned
            as floats in [-1, 1] (a quarter of the memory of float storage).
        y: Integer labels, shape (N,), or None.
        captions: One caption per item, or None.
    """

    def __init__(self, x: Tensor, y: Tensor | None = None, captions: Sequence[str] | None = None) -> None:
        for name, other in (("y", y), ("captions", captions)):
            if other is not None and len(other) != len(x):
                raise ValueError(f"{name} has {len(other)} items but x has {len(x)}")
        self.x = x
        self.y = None if y is None else y.long()
        self.captions = None if captions is None else list(captions)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: int) -> Item:
        x = self.x[index]
        item: Item = {"x": to_signed(x.float() / 255) if x.dtype == torch.uint8 else x}
        if self.y is not None:
            item["y"] = self.y[index]
        if self.captions is not None:
            item["caption"] = self.captions[index]
        return item

    def subset(self, indices: Tensor) -> "TensorDictDataset":
        """A new dataset holding the items at ``indices``."""
        captions = None if self.captions is None else [self.captions[i] for i in indices.tolist()]
        return TensorDictDataset(self.x[indices], None if self.y is None else self.y[indices], captions)


def split_indices(n: int, fractions: Sequence[float], generator: torch.Generator) -> list[Tensor]:
    """Randomly partition ``range(n)`` into a remainder and one part per fraction.

    Returns:
        ``[rest, part_1, ..., part_k]`` with ``len(part_i) == round(fractions[i] * n)``.
    """
    if any(f < 0 for f in fractions) or sum(fractions) >= 1:
        raise ValueError(f"split fractions {list(fractions)} must be >= 0 and sum to less than 1")
    perm = torch.randperm(n, generator=generator)
    sizes = [round(f * n) for f in fractions]
    parts = list(torch.split(perm, [n - sum(sizes), *sizes]))
    return [p.sort().values for p in parts]


class ResumableSampler(DistributedSampler):
    """A DistributedSampler (order from (seed, epoch) only) that can start epoch ``e`` after its first
    ``skip`` indices on this rank (``resume_at(e, skip)``): the part of the epoch a resumed run has already
    trained on. Every iteration in epoch ``e`` skips them (Lightning may create an iterator before the one it
    trains on); the next epoch starts from the beginning."""

    _resume: tuple[int, int] | None = None  # (epoch, indices to skip)

    def resume_at(self, epoch: int, skip: int) -> None:
        self._resume = (epoch, skip) if skip > 0 else None

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        if self._resume is not None and self._resume[0] != epoch:
            self._resume = None

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())
        skip = self._resume[1] if self._resume is not None and self._resume[0] == self.epoch else 0
        return iter(indices[skip:])


class GenerativeDataModule(pl.LightningDataModule):
    """Base class: subclasses set ``data_shape`` and ``num_classes`` in ``__init__`` and implement
    ``build_datasets``.

    Args:
        batch_size: Global batch size, divided evenly across ranks.
        num_workers: DataLoader worker processes per rank.
        seed: Seed for deterministic splits, data generation and the training shuffle order.
    """

    data_shape: tuple[int, ...]
    num_classes: int = 0

    def __init__(self, *, batch_size: int = 128, num_workers: int = 0, seed: int = 0) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} must be >= 1")
        if seed < 0:
            raise ValueError(f"seed={seed} must be >= 0")
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = seed
        self._splits: Splits | None = None

    # init_args that shrink this set for a seconds-long CPU run of any config on it (tests, smoke runs)
    tiny_args: ClassVar[dict[str, Any]] = {}

    @classmethod
    def fake_data(cls, root: Path) -> FakeData:
        """Offline stand-in files for this set under ``root`` (written once), in its real format: what to pass
        and patch to read them. A set that lives in files overrides this; embedded sets need nothing."""
        return FakeData()

    # --- subclass hook -------------------------------------------------------------------------

    def build_datasets(self) -> Splits:
        """Build the (train, val, test) datasets; called once, from ``setup``."""
        raise NotImplementedError

    # --- datasets ------------------------------------------------------------------------------

    def setup(self, stage: str | None = None) -> None:
        if self._splits is None:
            self._splits = self.build_datasets()

    def _split(self, index: int) -> Dataset:
        self.setup()
        assert self._splits is not None
        return self._splits[index]

    @property
    def train_dataset(self) -> Dataset:
        return self._split(0)

    @property
    def val_dataset(self) -> Dataset:
        return self._split(1)

    @property
    def test_dataset(self) -> Dataset:
        return self._split(2)

    def generator(self, stream: int = 0) -> torch.Generator:
        """A CPU generator seeded by ``seed`` and ``stream`` (0 <= stream < 1000), one stream per use."""
        return torch.Generator().manual_seed(self.seed * 1000 + stream)

    # --- distribution --------------------------------------------------------------------------

    @property
    def world_size(self) -> int:
        return self.trainer.world_size if self.trainer is not None else 1

    @property
    def global_rank(self) -> int:
        return self.trainer.global_rank if self.trainer is not None else 0

    @property
    def per_rank_batch_size(self) -> int:
        if self.batch_size % self.world_size:
            raise ValueError(
                f"batch_size={self.batch_size} is not divisible by the world size {self.world_size}"
            )
        return self.batch_size // self.world_size

    # --- loaders -------------------------------------------------------------------------------

    def _loader(self, dataset: Dataset, sampler: DistributedSampler | None, drop_last: bool) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=self.per_rank_batch_size,
            sampler=sampler,
            shuffle=False,
            drop_last=drop_last,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def _distributed_sampler(self, dataset: Dataset, train: bool) -> DistributedSampler:
        return (ResumableSampler if train else DistributedSampler)(
            dataset,
            num_replicas=self.world_size,
            rank=self.global_rank,
            shuffle=train,
            seed=self.seed,
            drop_last=train,
        )

    def train_dataloader(self) -> DataLoader:
        # Always a DistributedSampler (even on one process): the order depends only on (seed, epoch),
        # Lightning calls set_epoch on it and does not replace it. Resumable mid-epoch (see state_dict).
        self._train_sampler = self._distributed_sampler(self.train_dataset, True)
        if self._resume is not None:
            self._train_sampler.resume_at(*self._resume)
        return self._loader(self.train_dataset, self._train_sampler, True)

    # --- mid-epoch resume ---------------------------------------------------------------------- Lightning
    # saves state_dict() in every checkpoint and hands it back to load_state_dict() on resume. It is the
    # number of training batches of the current epoch already done (read from the trainer, so the fetcher's
    # prefetching does not count); a resumed run's sampler skips their indices (without loading them) and the
    # run draws exactly what an uninterrupted one draws.

    _train_sampler: ResumableSampler | None = None
    _resume: tuple[int, int] | None = None

    def state_dict(self) -> dict[str, int]:
        trainer = self.trainer
        if trainer is None or self._train_sampler is None:
            return {}
        return {"epoch": trainer.current_epoch,
                "batches": trainer.fit_loop.epoch_loop.batch_progress.current.processed,
                "batch_size": self.batch_size}

    def load_state_dict(self, state: dict[str, int]) -> None:
        trainer = getattr(self, "trainer", None)
        # only fitting continues an epoch
        if not state or (trainer is not None and trainer.state.fn != "fit"):
            return
        self.check_resumable(state)
        self._resume = (state["epoch"], state["batches"] * self.per_rank_batch_size)
        # the loader exists already (Lightning may build it before restoring)
        if self._train_sampler is not None:
            self._train_sampler.resume_at(*self._resume)

    def check_resumable(self, state: dict[str, int]) -> None:
        """Raise a one-line ValueError if a checkpoint's DataModule ``state`` cannot be continued by this
        one."""
        if state.get("batch_size", self.batch_size) != self.batch_size:
            raise ValueError(f"the checkpoint was written at batch_size={state['batch_size']}; resuming it "
                             f"at batch_size={self.batch_size} would not continue the same epoch "
                             f"(use the same one)")

    def _eval_loader(self, dataset: Dataset) -> DataLoader:
        sampler = self._distributed_sampler(dataset, False) if self.world_size > 1 else None
        return self._loader(dataset, sampler, False)

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader(self.val_dataset)

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader(self.test_dataset)


def dataset_captions(dataset: Dataset, name: str = "the training set") -> list[str]:
    """Every caption of ``dataset`` (its ``captions`` when it keeps them, else read item by item); a one-line
    ValueError when it has none."""
    captions = getattr(dataset, "captions", None)
    if captions is None and len(dataset) and "caption" in dataset[0]:
        captions = [dataset[i]["caption"] for i in range(len(dataset))]
    if not captions:
        raise ValueError(f"{name} ({type(dataset).__name__}) has no captions: a text-to-image model needs a "
                         "captioned DataModule (ShapesDataModule, CaptionedImageFolderDataModule, or a "
                         "labelled set with class_captions)")
    return list(captions)


def to_signed(x: Tensor) -> Tensor:
    """Map values in [0, 1] to [-1, 1]."""
    return x * 2 - 1
