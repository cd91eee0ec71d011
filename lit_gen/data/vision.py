"""Image sets read with torchvision: MNIST, FashionMNIST, CIFAR-10 and CelebA (image folders: ``folders``).

Downloads happen only in ``prepare_data`` and only with ``download=True``; missing files raise
``DatasetNotFoundError``. Sets without a validation split carve one from the training split,
deterministically from ``seed``.
"""

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import torch
from torch.utils.data import Dataset

from lit_gen.data.base import DatasetNotFoundError, GenerativeDataModule, Item, Splits, split_indices
from lit_gen.data.fakes import FakeData, write_celeba, write_cifar10, write_mnist

Split = Literal["train", "val", "test"]
SPLITS: tuple[Split, ...] = ("train", "val", "test")


class VisionDictDataset(Dataset):
    """Items ``{"x": transform(image)[, "y": label][, "caption": str]}`` of a torchvision dataset, restricted
    to ``indices``.

    Args:
        base: A dataset of ``(image, target)`` pairs.
        transform: Maps an image to a tensor.
        indices: The items of ``base`` to keep, or None for all of them.
        labelled: Whether to return the integer target as ``"y"``.
        caption: ``caption(base_index, target)``, the caption of an item, or None for no captions.
    """

    def __init__(
        self,
        base: Dataset,
        transform: Callable[[Any], torch.Tensor],
        indices: torch.Tensor | None,
        labelled: bool,
        caption: Callable[[int, Any], str] | None = None,
    ) -> None:
        self.base = base
        self.transform = transform
        self.indices: list[int] = (
            indices.tolist() if indices is not None else list(range(len(base)))  # type: ignore[arg-type]
        )
        self.labelled = labelled
        self.caption = caption

    @property
    def captions(self) -> list[str] | None:
        """Every item's caption, read from the base's ``targets`` without loading images (None without)."""
        targets = getattr(self.base, "targets", None)
        if self.caption is None or targets is None:
            return None
        return [self.caption(i, int(targets[i])) for i in self.indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> Item:
        image, target = self.base[self.indices[index]]
        item: Item = {"x": self.transform(image)}
        if self.labelled:
            item["y"] = torch.tensor(target, dtype=torch.int64)
        if self.caption is not None:
            item["caption"] = self.caption(self.indices[index], target)
        return item


class VisionDataModule(GenerativeDataModule):
    """Base of the torchvision-backed image sets; subclasses implement ``open_split`` and ``expected_path``.

    Args:
        root: Directory holding the dataset files.
        download: Download the files in ``prepare_data`` if they are missing.
        image_size: Side of the (square) images: resize the short side, then center-crop.
        random_flip: Random horizontal flips of training images.
        val_fraction: Fraction of the training split held out for validation (sets without one).
        test_fraction: Fraction of the training split held out for testing (sets without one).
        class_captions: A caption template for labelled sets, e.g. ``"a photo of a {}"``: each item gets the
            caption with its class name (``class_names``), for text-to-image models. None: no captions.
        **kwargs: ``batch_size``, ``num_workers``, ``seed`` of ``GenerativeDataModule``.
    """

    dataset_name: str
    num_channels: int
    class_names: tuple[str, ...] = ()

    def __init__(
        self,
        *,
        root: str,
        download: bool,
        image_size: int,
        random_flip: bool,
        val_fraction: float,
        test_fraction: float,
        class_captions: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if image_size < 1:
            raise ValueError(f"image_size={image_size} must be >= 1")
        if class_captions is not None and ("{}" not in class_captions or not self.num_classes):
            raise ValueError(f"class_captions={class_captions!r} needs a labelled set and one '{{}}' for the "
                             f"class name (e.g. 'a photo of a {{}}'); {type(self).__name__} has "
                             f"{self.num_classes} classes")
        self.class_captions = class_captions
        self.root = root
        self.download = download
        self.image_size = image_size
        self.random_flip = random_flip
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.data_shape = (self.num_channels, image_size, image_size)

    @property
    def expected_path(self) -> str:
        """Where the dataset's files must be, for the error message when they are missing."""
        raise NotImplementedError

    def open_split(self, split: Split, download: bool = False) -> Dataset | None:
        """The raw ``(image, target)`` dataset of ``split``, or None when the set has no such split."""
        raise NotImplementedError

    def prepare_data(self) -> None:
        if self.download:
            self.open_split("train", download=True)  # torchvision downloads every split at once

    def _open(self, split: Split) -> Dataset | None:
        try:
            return self.open_split(split)
        except RuntimeError as error:  # torchvision: "Dataset not found or corrupted. ..."
            if "not found" in str(error):
                raise DatasetNotFoundError(self.dataset_name, self.expected_path) from error
            raise

    def transform(self, train: bool) -> Callable[[Any], torch.Tensor]:
        """Resize + center-crop to ``image_size``, [flip], to a tensor in [-1, 1]."""
        from torchvision import transforms as T

        steps: list[Callable] = [T.Resize(self.image_size), T.CenterCrop(self.image_size)]
        if self.num_channels == 1:
            steps.append(T.Grayscale(num_output_channels=1))
        if train and self.random_flip:
            steps.append(T.RandomHorizontalFlip())
        steps += [T.ToTensor(), T.Normalize([0.5] * self.num_channels, [0.5] * self.num_channels)]
        return T.Compose(steps)

    def caption_of(self) -> Callable[[int, Any], str] | None:
        """``caption(base_index, target)`` of this set's items, or None (no captions)."""
        if self.class_captions is None:
            return None
        template, names = self.class_captions, self.class_names
        return lambda index, target: template.format(names[int(target)])

    def build_datasets(self) -> Splits:
        raw = {split: self._open(split) for split in SPLITS}
        train_raw = raw["train"]
        assert train_raw is not None, f"{type(self).__name__}.open_split('train') returned None"
        carved = [split for split in ("val", "test") if raw[split] is None]
        fractions = {"val": self.val_fraction, "test": self.test_fraction}
        parts = split_indices(len(train_raw), [fractions[s] for s in carved], self.generator())
        indices = dict(zip(["train", *carved], parts, strict=True))

        def wrap(split: Split) -> VisionDictDataset:
            native = raw[split]
            base = native if native is not None else train_raw
            transform = self.transform(train=split == "train")
            return VisionDictDataset(base, transform, indices.get(split), labelled=self.num_classes > 0,
                                     caption=self.caption_of())

        return wrap("train"), wrap("val"), wrap("test")


class _TrainTestDataModule(VisionDataModule):
    """A torchvision set with ``train=True/False`` splits and no validation split.

    Args:
        root: Directory holding the set's folder (``MNIST/raw``, ``cifar-10-batches-py``, ...).
        download: Download the files in ``prepare_data`` if they are missing.
        image_size: Side of the (square) images.
        val_fraction: Fraction of the training images held out for validation.
        random_flip: Random horizontal flips of training images; None: the set's default (on for CIFAR-10).
        class_captions: Caption template with the class name, e.g. ``"a photo of a {}"`` (None: no captions).
        **kwargs: ``batch_size``, ``num_workers``, ``seed`` of ``GenerativeDataModule``.
    """

    torchvision_class: str  # name in torchvision.datasets
    folder: str  # under root
    default_random_flip: bool

    def __init__(
        self,
        *,
        root: str = "data",
        download: bool = False,
        image_size: int = 32,
        val_fraction: float = 0.05,
        random_flip: bool | None = None,
        class_captions: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            root=root,
            download=download,
            image_size=image_size,
            random_flip=self.default_random_flip if random_flip is None else random_flip,
            val_fraction=val_fraction,
            test_fraction=0.0,
            class_captions=class_captions,
            **kwargs,
        )

    @property
    def expected_path(self) -> str:
        return os.path.join(self.root, self.folder)

    def open_split(self, split: Split, download: bool = False) -> Dataset | None:
        import torchvision.datasets

        if split == "val":
            return None
        dataset_class = getattr(torchvision.datasets, self.torchvision_class)
        return dataset_class(self.root, train=split == "train", download=download)


class MNISTDataModule(_TrainTestDataModule):
    """MNIST digits (28x28 grey, 10 classes), resized to ``image_size``.

    Args:
        root: Directory holding ``MNIST/raw`` (``FashionMNIST/raw`` for Fashion-MNIST).
        download: Download the files in ``prepare_data`` if they are missing.
        image_size: Side of the (square) images.
        val_fraction: Fraction of the 60,000 training images held out for validation.
        random_flip: Random horizontal flips of training images (None: off).
        **kwargs: ``batch_size``, ``num_workers``, ``seed`` of ``GenerativeDataModule``.
    """

    dataset_name = "MNIST"
    torchvision_class = "MNIST"
    folder = "MNIST/raw"

    @classmethod
    def fake_data(cls, root: Path) -> FakeData:
        if not (root / cls.folder).exists():
            write_mnist(root / cls.folder)
        return FakeData({"root": str(root)})
    num_channels = 1
    num_classes = 10
    default_random_flip = False
    class_names = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


class FashionMNISTDataModule(MNISTDataModule):
    """Fashion-MNIST (28x28 grey clothes, 10 classes), resized to ``image_size``; arguments as
    ``MNISTDataModule`` (files under ``FashionMNIST/raw``)."""

    dataset_name = "FashionMNIST"
    torchvision_class = "FashionMNIST"
    folder = "FashionMNIST/raw"
    class_names = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
                   "ankle boot")


class CIFAR10DataModule(_TrainTestDataModule):
    """CIFAR-10 (32x32 colour, 10 classes).

    Args:
        root: Directory holding ``cifar-10-batches-py``.
        download: Download the files in ``prepare_data`` if they are missing.
        image_size: Side of the (square) images.
        val_fraction: Fraction of the 50,000 training images held out for validation.
        random_flip: Random horizontal flips of training images (None: on).
        **kwargs: ``batch_size``, ``num_workers``, ``seed`` of ``GenerativeDataModule``.
    """

    dataset_name = "CIFAR10"
    torchvision_class = "CIFAR10"
    folder = "cifar-10-batches-py"

    @classmethod
    def fake_data(cls, root: Path) -> FakeData:
        return FakeData({"root": str(root)}, write_cifar10(root / cls.folder))
    num_channels = 3
    num_classes = 10
    default_random_flip = True
    class_names = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


class CelebADataModule(VisionDataModule):
    """CelebA aligned faces (178x218 colour; unlabelled here), with its own train/valid/test splits.

    Args:
        root: Directory holding ``celeba`` (``img_align_celeba/`` and the ``list_*.txt`` files).
        download: Download the files in ``prepare_data`` if they are missing.
        image_size: Side of the (square) images.
        random_flip: Random horizontal flips of training images.
        **kwargs: ``batch_size``, ``num_workers``, ``seed`` of ``GenerativeDataModule``.
    """

    dataset_name = "CelebA"
    num_channels = 3
    num_classes = 0
    tiny_args = {"image_size": 16}

    def __init__(
        self,
        *,
        root: str = "data",
        download: bool = False,
        image_size: int = 64,
        random_flip: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            root=root,
            download=download,
            image_size=image_size,
            random_flip=random_flip,
            val_fraction=0.0,
            test_fraction=0.0,
            **kwargs,
        )

    @property
    def expected_path(self) -> str:
        return os.path.join(self.root, "celeba")

    @classmethod
    def fake_data(cls, root: Path) -> FakeData:
        return FakeData({"root": str(root)}, write_celeba(root / "celeba"))

    def open_split(self, split: Split, download: bool = False) -> Dataset | None:
        from torchvision.datasets import CelebA

        celeba_split = {"train": "train", "val": "valid", "test": "test"}[split]
        return CelebA(self.root, split=celeba_split, target_type=[], download=download)
