"""LightningDataModules: embedded sets (digits, shapes, 2-D toys), torchvision image sets and the
(noise, sample) pairs of ``lit-gen reflow``.

Every item is a dict ``{"x": FloatTensor[, "y": int64][, "caption": str]}``; see ``base``. Captions: shapes,
CaptionedImageFolderDataModule, and labelled sets with ``class_captions``.
"""

from lit_gen.data.base import DatasetNotFoundError, GenerativeDataModule
from lit_gen.data.digits import DigitsDataModule
from lit_gen.data.folders import CaptionedImageFolderDataModule, ImageFolderDataModule
from lit_gen.data.pairs import PairsDataModule
from lit_gen.data.shapes import ShapesDataModule
from lit_gen.data.toy2d import Toy2DDataModule
from lit_gen.data.vision import (
    CelebADataModule,
    CIFAR10DataModule,
    FashionMNISTDataModule,
    MNISTDataModule,
    VisionDataModule,
)

__all__ = [
    "CaptionedImageFolderDataModule",
    "CelebADataModule",
    "CIFAR10DataModule",
    "DatasetNotFoundError",
    "DigitsDataModule",
    "FashionMNISTDataModule",
    "GenerativeDataModule",
    "ImageFolderDataModule",
    "MNISTDataModule",
    "PairsDataModule",
    "ShapesDataModule",
    "Toy2DDataModule",
    "VisionDataModule",
]
