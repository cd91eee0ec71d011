"""A perceptual distance for autoencoders: VGG-16 features of both images, unit-normalised over channels,
their squared differences averaged over positions and summed over five stages (the distance of LPIPS, Zhang et
al. 2018, Eq. 1, with equal weights). The weights come from a file the user gives; nothing is downloaded."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

STAGE_ENDS = (4, 9, 16, 23, 30)  # torchvision vgg16.features indices after relu1_2, 2_2, 3_3, 4_3 and 5_3
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class PerceptualLoss(nn.Module):
    """``forward(x, y)`` (B,) for images in [-1, 1] (grey images are repeated to RGB).

    Args:
        weights: a state dict of torchvision's ``vgg16`` (e.g. ``torch.save(vgg16(weights="DEFAULT")
            .state_dict(), path)`` on a machine with the internet), read as plain data.
    """

    def __init__(self, weights: str) -> None:
        super().__init__()
        from torchvision.models import vgg16

        if not Path(weights).is_file():
            raise FileNotFoundError(f"perceptual_weights not found: {weights!r} (a torchvision vgg16 state "
                                    "dict; lit_gen downloads nothing)")
        vgg = vgg16(weights=None)
        try:
            vgg.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        except (RuntimeError, KeyError) as err:
            raise ValueError(f"perceptual_weights {weights!r} is not a torchvision vgg16 state dict: "
                             f"{str(err).splitlines()[0][:200]}") from None
        self.features = vgg.features[: STAGE_ENDS[-1] + 1].requires_grad_(False).eval()
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> PerceptualLoss:
        super().train(mode)
        self.features.eval()
        return self

    def _stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x
        h = ((x + 1) / 2 - self.mean) / self.std
        out = []
        for i, layer in enumerate(self.features):
            h = layer(h)
            if i in STAGE_ENDS:
                out.append(h / (h.pow(2).sum(1, keepdim=True).sqrt() + 1e-10))
        return out

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return sum((a - b).pow(2).sum(1).mean((1, 2)) for a, b in zip(self._stages(x), self._stages(y),
                                                                     strict=True))
