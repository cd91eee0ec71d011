"""A small image classifier whose penultimate layer serves as the feature space of the Fréchet distance
on the embedded datasets (digits, shapes), where Inception features do not fit."""

from __future__ import annotations

import torch
from torch import nn


class ImageClassifier(nn.Module):
    """Conv-GroupNorm-SiLU blocks, stride-2 downsampling, global average pooling, then a linear head.

    Args:
        data_shape: (C, H, W) of the images, in [-1, 1].
        num_classes: number of labels of the head.
        width: channels of the first block (doubled at each downsampling).
        num_levels: resolution levels.
        feature_dim: size of the feature vector returned by :meth:`features`.
    """

    def __init__(
        self, data_shape: tuple[int, ...], num_classes: int, width: int = 32, num_levels: int = 3,
        feature_dim: int = 64
    ) -> None:
        super().__init__()
        layers, ch = [], data_shape[0]
        for level in range(num_levels):
            out = width * 2**level
            layers += [nn.Conv2d(ch, out, 3, stride=1 if level == 0 else 2, padding=1), nn.GroupNorm(8, out),
                       nn.SiLU(), nn.Conv2d(out, out, 3, padding=1), nn.GroupNorm(8, out), nn.SiLU()]
            ch = out
        self.body = nn.Sequential(*layers)
        self.project = nn.Sequential(nn.Linear(ch, feature_dim), nn.SiLU())
        self.head = nn.Linear(feature_dim, num_classes)
        self.num_features = feature_dim

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) in [-1, 1] -> (B, feature_dim)."""
        return self.project(self.body(x).mean((2, 3)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))
