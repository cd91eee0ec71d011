"""scikit-learn's bundled 8x8 handwritten digits (1,797 images, 10 classes): offline and tiny."""

from typing import Any

import torch
import torch.nn.functional as F

from lit_gen.data.base import GenerativeDataModule, Splits, TensorDictDataset, split_indices, to_signed
from lit_gen.utils import check_choice

DIGITS_IMAGE_SIZES = (8, 16, 32)


def load_digits_tensor(image_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """All digits as images in [-1, 1] of shape (1797, 1, image_size, image_size), and their labels."""
    from sklearn.datasets import load_digits  # lazy: sklearn adds about a second to import time

    digits = load_digits()
    x = torch.as_tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0  # (N, 1, 8, 8) in [0, 1]
    if image_size != x.shape[-1]:
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", antialias=True)
    return to_signed(x.clamp(0, 1)), torch.as_tensor(digits.target, dtype=torch.int64)


class DigitsDataModule(GenerativeDataModule):
    """scikit-learn's 8x8 digits, resized to ``image_size``, split deterministically by ``seed``.

    Args:
        image_size: Side of the (square) images: 8, 16 or 32.
        val_fraction: Fraction of the 1,797 images held out for validation.
        test_fraction: Fraction of the images held out for testing.
        **kwargs: ``batch_size``, ``num_workers``, ``seed`` of ``GenerativeDataModule``.
    """

    num_channels = 1
    num_classes = 10
    tiny_args = {"image_size": 8}

    def __init__(
        self, *, image_size: int = 16, val_fraction: float = 0.1, test_fraction: float = 0.1, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        check_choice("image_size", image_size, DIGITS_IMAGE_SIZES)
        self.image_size = image_size
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.data_shape = (1, image_size, image_size)

    def build_datasets(self) -> Splits:
        full = TensorDictDataset(*load_digits_tensor(self.image_size))
        parts = split_indices(len(full), [self.val_fraction, self.test_fraction], self.generator())
        train, val, test = (full.subset(p) for p in parts)
        return train, val, test
