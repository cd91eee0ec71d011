"""Procedurally generated coloured shapes on black, with class labels (the kind) and captions.

Each image holds one shape: a kind, a colour, a size and a position on a 3x3 grid (with a little
jitter). Captions read "a small red circle at the top left"; every word is in ``SHAPES_VOCABULARY``.
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from lit_gen.data.base import GenerativeDataModule, Splits, TensorDictDataset

SHAPE_KINDS = ("circle", "square", "triangle", "diamond", "cross")
COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (1.0, 0.0, 0.0),
    "green": (0.0, 1.0, 0.0),
    "blue": (0.0, 0.0, 1.0),
    "yellow": (1.0, 1.0, 0.0),
    "magenta": (1.0, 0.0, 1.0),
    "cyan": (0.0, 1.0, 1.0),
    "white": (1.0, 1.0, 1.0),
}
SIZES: dict[str, float] = {"small": 0.1, "medium": 0.14, "large": 0.18}  # radius / image side
POSITIONS = (
    "top left", "top", "top right",
    "left", "center", "right",
    "bottom left", "bottom", "bottom right",
)  # fmt: skip
JITTER = 0.04  # max shift of the centre from its grid cell's centre, as a fraction of the image side
SUPERSAMPLE = 2  # anti-aliasing: render at 2x and average-pool
SHAPES_VOCABULARY = (
    "a", "at", "the",
    *SIZES, *COLOURS, *SHAPE_KINDS,
    *dict.fromkeys(word for position in POSITIONS for word in position.split()),
)  # fmt: skip


def shape_caption(kind: int, colour: int, size: int, position: int) -> str:
    """The caption of one shape, from the indices of its attributes."""
    return f"a {list(SIZES)[size]} {list(COLOURS)[colour]} {SHAPE_KINDS[kind]} at the {POSITIONS[position]}"


@dataclass
class ShapeParams:
    """Attribute indices, each of shape (N,), and the jitter of the centre, shape (N, 2) in [-1, 1]."""

    kind: Tensor
    colour: Tensor
    size: Tensor
    position: Tensor
    jitter: Tensor

    @classmethod
    def sample(cls, n: int, generator: torch.Generator) -> "ShapeParams":
        def pick(choices: int) -> Tensor:
            return torch.randint(choices, (n,), generator=generator)

        jitter = torch.rand(n, 2, generator=generator) * 2 - 1
        return cls(pick(len(SHAPE_KINDS)), pick(len(COLOURS)), pick(len(SIZES)), pick(len(POSITIONS)), jitter)

    def captions(self) -> list[str]:
        columns = (self.kind, self.colour, self.size, self.position)
        return [shape_caption(*row) for row in zip(*(c.tolist() for c in columns), strict=True)]


def _circle(u: Tensor, v: Tensor) -> Tensor:
    return u**2 + v**2 <= 1


def _square(u: Tensor, v: Tensor) -> Tensor:
    return (u.abs() <= 0.85) & (v.abs() <= 0.85)


def _triangle(u: Tensor, v: Tensor) -> Tensor:
    return (v <= 0.85) & (u.abs() <= (v + 1) / 1.85)  # apex up, base 2 radii wide


def _diamond(u: Tensor, v: Tensor) -> Tensor:
    return u.abs() + v.abs() <= 1


def _cross(u: Tensor, v: Tensor) -> Tensor:
    au, av = u.abs(), v.abs()
    return ((au <= 0.3) & (av <= 1)) | ((av <= 0.3) & (au <= 1))


# Inside-tests at offsets (u, v) from the centre in units of the radius, in the order of SHAPE_KINDS;
# u (N, 1, W) and v (N, H, 1) broadcast to a (N, H, W) mask.
SHAPE_MASKS: tuple[Callable[[Tensor, Tensor], Tensor], ...] = (_circle, _square, _triangle, _diamond, _cross)


def render_shapes(params: ShapeParams, image_size: int) -> Tensor:
    """Render shapes on black; returns (N, 3, image_size, image_size) floats in [0, 1]."""
    radius = torch.tensor(list(SIZES.values()))[params.size] * image_size  # (N,)
    row, col = params.position // 3, params.position % 3
    centre = (torch.stack([col, row], dim=1) + 0.5) / 3 * image_size + params.jitter * JITTER * image_size
    centre = centre.clamp(radius[:, None], image_size - radius[:, None])  # (N, 2) as (x, y), in pixels
    side = image_size * SUPERSAMPLE
    grid = (torch.arange(side) + 0.5) / SUPERSAMPLE  # pixel-space coordinates of the sub-pixel centres
    u = (grid[None, None, :] - centre[:, 0, None, None]) / radius[:, None, None]  # (N, 1, side)
    v = (grid[None, :, None] - centre[:, 1, None, None]) / radius[:, None, None]  # (N, side, 1)
    inside = torch.zeros(len(radius), side, side)
    for kind, mask in enumerate(SHAPE_MASKS):
        chosen = params.kind == kind
        inside[chosen] = mask(u[chosen], v[chosen]).float()
    coverage = F.avg_pool2d(inside[:, None], SUPERSAMPLE)  # (N, 1, H, W)
    colour = torch.tensor(list(COLOURS.values()))[params.colour]  # (N, 3)
    return coverage * colour[:, :, None, None]


def generate_shapes(
    n: int, image_size: int, generator: torch.Generator, chunk: int = 1024
) -> TensorDictDataset:
    """``n`` random shapes as a dataset of uint8 images with labels (the kind) and captions."""
    params = ShapeParams.sample(n, generator)
    images = torch.empty(n, 3, image_size, image_size, dtype=torch.uint8)
    for start in range(0, n, chunk):
        part = ShapeParams(*(t[start : start + chunk] for t in vars(params).values()))
        images[start : start + chunk] = (render_shapes(part, image_size) * 255).round().to(torch.uint8)
    return TensorDictDataset(images, params.kind, params.captions())


class ShapesDataModule(GenerativeDataModule):
    """Coloured shapes on black, generated deterministically from ``seed`` in ``setup``.

    Labels are the kind (``class_names``); captions name size, colour, kind and position.

    Args:
        image_size: Side of the (square) images, in pixels.
        num_train: Number of training images.
        num_val: Number of validation images.
        num_test: Number of test images.
        **kwargs: ``batch_size``, ``num_workers``, ``seed`` of ``GenerativeDataModule``.
    """

    num_channels = 3
    num_classes = len(SHAPE_KINDS)
    class_names = SHAPE_KINDS
    vocabulary = SHAPES_VOCABULARY

    def __init__(
        self,
        *,
        image_size: int = 32,
        num_train: int = 10000,
        num_val: int = 1000,
        num_test: int = 1000,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if image_size < 8:
            raise ValueError(f"image_size={image_size} is too small for shapes; use at least 8")
        self.image_size = image_size
        self.num_train, self.num_val, self.num_test = num_train, num_val, num_test
        self.data_shape = (3, image_size, image_size)

    def build_datasets(self) -> Splits:
        sizes = (self.num_train, self.num_val, self.num_test)
        train, val, test = (
            generate_shapes(n, self.image_size, self.generator(stream)) for stream, n in enumerate(sizes)
        )
        return train, val, test
