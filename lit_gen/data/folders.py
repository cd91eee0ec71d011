"""Image folders: an unlabelled flat folder, torchvision's class-per-subfolder layout, and captioned folders
(a ``captions.tsv`` of ``<image file><TAB><caption>`` lines)."""

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from lit_gen.data.fakes import FakeData, write_image_folder
from lit_gen.data.images import has_images, image_extensions, is_image, load_image, readable
from lit_gen.data.vision import Split, VisionDataModule


def _check_folder(root: str, num_channels: int, name: str) -> None:
    """One-line errors for the arguments of a folder DataModule."""
    if num_channels not in (1, 3):
        raise ValueError(f"num_channels={num_channels} is not supported; choose one of [1, 3]")
    if not os.path.isdir(root):
        raise ValueError(f"{name} root={root!r} is not a directory")


class FlatImageFolder(Dataset):
    """``(PIL image, 0)`` for every readable image file directly in ``root`` (sorted by name): an unlabelled
    folder."""

    def __init__(self, root: str) -> None:
        paths = sorted(e.path for e in os.scandir(root) if e.is_file() and is_image(e.name))
        if not paths:
            raise FileNotFoundError(f"no images in {root}")
        self.paths = [path for path, ok in zip(paths, readable(paths, root), strict=True) if ok]

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        return load_image(self.paths[index]), 0


def _readable_image_folder(root: str) -> Dataset:
    """torchvision's ImageFolder (a class per sub-folder) over the readable images only, decoded by
    :func:`load_image`."""
    from torchvision.datasets import ImageFolder

    folder = ImageFolder(root, loader=load_image)
    keep = readable([path for path, _ in folder.samples], root)
    folder.samples = [sample for sample, ok in zip(folder.samples, keep, strict=True) if ok]
    folder.imgs, folder.targets = folder.samples, [target for _, target in folder.samples]
    return folder


class _FolderDataModule(VisionDataModule):
    """A user's folder: nothing to download, one split (validation and test are carved from it)."""

    @property
    def expected_path(self) -> str:
        return self.root

    def open_split(self, split: Split, download: bool = False) -> Dataset | None:
        return self.open_train() if split == "train" else None

    def open_train(self) -> Dataset:
        raise NotImplementedError


class ImageFolderDataModule(_FolderDataModule):
    """Images in ``root/<class name>/*.png|jpg|...`` (labels from the folder names, sorted), or directly in
    ``root`` (unlabelled).

    Args:
        root: Directory with the images, or with one sub-directory of images per class.
        image_size: Side of the (square) images: resize the short side, then center-crop.
        num_channels: 3 (RGB) or 1 (grey).
        val_fraction: Fraction of the images held out for validation.
        test_fraction: Fraction of the images held out for testing.
        random_flip: Random horizontal flips of training images.
        class_captions: Caption template with the folder (class) name, e.g. ``"a photo of a {}"``.
        **kwargs: ``batch_size``, ``num_workers``, ``seed`` of ``GenerativeDataModule``.
    """

    dataset_name = "ImageFolder"
    tiny_args = {"image_size": 8}

    @classmethod
    def fake_data(cls, root: Path) -> FakeData:
        if not (root / "images").exists():
            write_image_folder(root / "images")
        return FakeData({"root": str(root / "images")})

    def __init__(
        self,
        *,
        root: str,
        image_size: int = 64,
        num_channels: int = 3,
        val_fraction: float = 0.05,
        test_fraction: float = 0.05,
        random_flip: bool = False,
        class_captions: str | None = None,
        **kwargs: Any,
    ) -> None:
        _check_folder(root, num_channels, "ImageFolder")
        if not has_images(root):  # found at once, before a fit writes anything
            raise FileNotFoundError(f"ImageFolder root={root!r} holds no images "
                                    f"({', '.join(image_extensions())}): put them in it directly, or in "
                                    "one sub-folder per class")
        self.num_channels = num_channels
        self.class_names = sorted(entry.name for entry in os.scandir(root) if entry.is_dir())
        self.num_classes = len(self.class_names)
        super().__init__(
            root=root,
            download=False,
            image_size=image_size,
            random_flip=random_flip,
            val_fraction=val_fraction,
            test_fraction=test_fraction,
            class_captions=class_captions,
            **kwargs,
        )

    def open_train(self) -> Dataset:
        try:
            return _readable_image_folder(self.root) if self.class_names else FlatImageFolder(self.root)
        except FileNotFoundError:  # no images where they should be
            raise FileNotFoundError(
                f"ImageFolder root={self.root!r} holds no images ({', '.join(image_extensions())}): put them "
                "in it directly, or in one sub-folder per class"
            ) from None


class CaptionedImages(Dataset):
    """``(PIL image, index)`` for each line ``<file name><TAB><caption>`` of a captions file, images in
    ``root``. Every listed image must exist and every caption be non-empty (one-line errors naming the
    line)."""

    def __init__(self, root: str, captions_file: str) -> None:
        if not os.path.isfile(captions_file):
            raise FileNotFoundError(f"captions file not found: {captions_file!r} "
                                    "(one '<image file><TAB><caption>' per line)")
        self.paths, self.captions = [], []
        with open(captions_file, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                name, _, caption = line.rstrip("\n").partition("\t")
                if not caption.strip():
                    raise ValueError(f"{captions_file}:{number}: no caption for {name!r} (expected "
                                     "'<image file><TAB><caption>')")
                path = os.path.join(root, name)
                if not os.path.isfile(path):
                    raise FileNotFoundError(f"{captions_file}:{number}: image {name!r} not found in {root!r}")
                self.paths.append(path)
                self.captions.append(caption.strip())
        if not self.paths:
            raise ValueError(f"captions file {captions_file!r} lists no images")
        keep = readable(self.paths, root)
        self.paths = [p for p, ok in zip(self.paths, keep, strict=True) if ok]
        self.captions = [c for c, ok in zip(self.captions, keep, strict=True) if ok]
        self.targets = list(range(len(self.paths)))  # the index: captions are looked up by it

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        return load_image(self.paths[index]), index


class CaptionedImageFolderDataModule(_FolderDataModule):
    """Users' own text-image pairs: images in ``root`` and a captions file of ``<image file><TAB><caption>``
    lines.

    Args:
        root: Directory with the images.
        captions_file: The captions file (default ``<root>/captions.tsv``).
        image_size: Side of the (square) images: resize the short side, then center-crop.
        num_channels: 3 (RGB) or 1 (grey).
        val_fraction: Fraction of the pairs held out for validation.
        test_fraction: Fraction of the pairs held out for testing.
        **kwargs: ``batch_size``, ``num_workers``, ``seed`` of ``GenerativeDataModule``.

    No random flips: a caption may say "left" or "right".
    """

    dataset_name = "CaptionedImageFolder"
    tiny_args = {"image_size": 8}

    @classmethod
    def fake_data(cls, root: Path) -> FakeData:
        if not (root / "captioned").exists():
            write_image_folder(root / "captioned", captions=True)
        return FakeData({"root": str(root / "captioned")})

    def __init__(
        self,
        *,
        root: str,
        captions_file: str | None = None,
        image_size: int = 64,
        num_channels: int = 3,
        val_fraction: float = 0.05,
        test_fraction: float = 0.05,
        **kwargs: Any,
    ) -> None:
        _check_folder(root, num_channels, "CaptionedImageFolder")
        self.num_channels = num_channels
        self.captions_file = captions_file or os.path.join(root, "captions.tsv")
        super().__init__(root=root, download=False, image_size=image_size, random_flip=False,
                         val_fraction=val_fraction, test_fraction=test_fraction, **kwargs)

    def open_train(self) -> Dataset:
        self._images = CaptionedImages(self.root, self.captions_file)
        return self._images

    def caption_of(self) -> Callable[[int, Any], str]:
        return lambda index, target: self._images.captions[index]
