"""2-D toy densities as used in the FFJORD / RealNVP-style papers, scaled to roughly [-4, 4].

Every sampler takes ``(n, generator)`` (None: torch's global generator) and returns (n, 2) floats.
Where the density is known in closed form (``8gaussians``, ``checkerboard``), a ``*_log_prob``
function gives it exactly.
"""

import math
from collections.abc import Callable
from typing import Any, Literal

import torch
from torch import Tensor

from lit_gen.data.base import GenerativeDataModule, Splits, TensorDictDataset

Toy2DName = Literal["swiss_roll", "moons", "8gaussians", "checkerboard", "rings"]

# 8gaussians (FFJORD): centres at radius 4 with std 0.5, the whole set divided by sqrt(2).
EIGHT_GAUSSIANS_RADIUS = 4 / math.sqrt(2)
EIGHT_GAUSSIANS_STD = 0.5 / math.sqrt(2)
# checkerboard (FFJORD): a 4x4 board of squares of side 2 on [-4, 4]^2, uniform on the 8 black ones.
CHECKERBOARD_HALF_WIDTH = 4.0
CHECKERBOARD_SQUARE = 2.0
RINGS_RADII = (3.0, 2.25, 1.5, 0.75)  # FFJORD "rings": 4 concentric circles with noise std 0.08


def _uniform(n: int, generator: torch.Generator | None, low: float = 0.0, high: float = 1.0) -> Tensor:
    return torch.rand(n, generator=generator) * (high - low) + low


def _normal(shape: tuple[int, ...], generator: torch.Generator | None, std: float = 1.0) -> Tensor:
    return torch.randn(shape, generator=generator) * std


def eight_gaussians_centres() -> Tensor:
    """The 8 mixture means, (8, 2), on a circle at angles k * pi / 4."""
    angles = torch.arange(8) * (math.pi / 4)
    return EIGHT_GAUSSIANS_RADIUS * torch.stack([angles.cos(), angles.sin()], dim=1)


def sample_8gaussians(n: int, generator: torch.Generator | None = None) -> Tensor:
    centres = eight_gaussians_centres()[torch.randint(8, (n,), generator=generator)]
    return centres + _normal((n, 2), generator, EIGHT_GAUSSIANS_STD)


def eight_gaussians_log_prob(x: Tensor) -> Tensor:
    """Exact log-density of ``8gaussians`` at x (..., 2): an equal mixture of isotropic Gaussians."""
    centres = eight_gaussians_centres().to(x)
    sq_dist = ((x[..., None, :] - centres) ** 2).sum(-1)  # (..., 8)
    log_normal = -sq_dist / (2 * EIGHT_GAUSSIANS_STD**2) - math.log(2 * math.pi * EIGHT_GAUSSIANS_STD**2)
    return torch.logsumexp(log_normal, dim=-1) - math.log(8)


def sample_checkerboard(n: int, generator: torch.Generator | None = None) -> Tensor:
    # A uniform point on a random row of the board, then a random black square within that row.
    s, half = CHECKERBOARD_SQUARE, CHECKERBOARD_HALF_WIDTH
    x1 = _uniform(n, generator, -half, half)
    column = torch.floor(x1 / s)
    row_pair = torch.randint(int(half / s), (n,), generator=generator) * 2 - half / s  # even rows
    row = row_pair + torch.remainder(column, 2)  # black: row + column even
    x2 = (row + _uniform(n, generator)) * s
    return torch.stack([x1, x2], dim=1)


def checkerboard_log_prob(x: Tensor) -> Tensor:
    """Exact log-density of ``checkerboard`` at x (..., 2): uniform on the black squares, else -inf."""
    s, half = CHECKERBOARD_SQUARE, CHECKERBOARD_HALF_WIDTH
    inside = ((x >= -half) & (x < half)).all(-1)
    black = torch.remainder(torch.floor(x / s).sum(-1), 2) == 0
    black_area = (2 * half) ** 2 / 2
    log_density = torch.full(x.shape[:-1], -math.log(black_area), dtype=x.dtype, device=x.device)
    return log_density.masked_fill(~(inside & black), -math.inf)


def sample_swiss_roll(n: int, generator: torch.Generator | None = None) -> Tensor:
    # sklearn.datasets.make_swiss_roll(noise=1.0), keeping the (x, z) plane, divided by 5 (FFJORD).
    t = 1.5 * math.pi * (1 + 2 * _uniform(n, generator))
    roll = torch.stack([t * t.cos(), t * t.sin()], dim=1)
    return (roll + _normal((n, 2), generator)) / 5


def sample_moons(n: int, generator: torch.Generator | None = None) -> Tensor:
    # sklearn.datasets.make_moons(noise=0.1) with uniform angles, then * 2 + (-1, -0.2) (FFJORD).
    angle = _uniform(n, generator, 0, math.pi)
    outer = torch.stack([angle.cos(), angle.sin()], dim=1)
    inner = torch.stack([1 - angle.cos(), 0.5 - angle.sin()], dim=1)
    is_inner = torch.rand(n, 1, generator=generator) < 0.5
    moons = torch.where(is_inner, inner, outer) + _normal((n, 2), generator, 0.1)
    return moons * 2 + torch.tensor([-1.0, -0.2])


def sample_rings(n: int, generator: torch.Generator | None = None) -> Tensor:
    radius = torch.tensor(RINGS_RADII)[torch.randint(len(RINGS_RADII), (n,), generator=generator)]
    angle = _uniform(n, generator, 0, 2 * math.pi)
    rings = radius[:, None] * torch.stack([angle.cos(), angle.sin()], dim=1)
    return rings + _normal((n, 2), generator, 0.08)


TOY2D_SAMPLERS: dict[str, Callable[[int, torch.Generator | None], Tensor]] = {
    "swiss_roll": sample_swiss_roll,
    "moons": sample_moons,
    "8gaussians": sample_8gaussians,
    "checkerboard": sample_checkerboard,
    "rings": sample_rings,
}
TOY2D_LOG_PROBS: dict[str, Callable[[Tensor], Tensor]] = {
    "8gaussians": eight_gaussians_log_prob,
    "checkerboard": checkerboard_log_prob,
}


class Toy2DDataModule(GenerativeDataModule):
    """A 2-D toy density, sampled deterministically from ``seed``; items are ``{"x": (2,)}``.

    Args:
        name: Which density.
        num_train: Number of training points.
        num_val: Number of validation points.
        num_test: Number of test points.
        **kwargs: ``batch_size``, ``num_workers``, ``seed`` of ``GenerativeDataModule``.
    """

    data_shape = (2,)
    num_classes = 0

    def __init__(
        self,
        *,
        name: Toy2DName = "8gaussians",
        num_train: int = 20000,
        num_val: int = 2000,
        num_test: int = 2000,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if name not in TOY2D_SAMPLERS:
            raise ValueError(f"name={name!r} is not supported; choose one of {sorted(TOY2D_SAMPLERS)}")
        self.name = name
        self.num_train, self.num_val, self.num_test = num_train, num_val, num_test

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` fresh points, (n, 2), drawn with ``generator`` (torch's global generator if None)."""
        return TOY2D_SAMPLERS[self.name](n, generator)

    def log_prob(self, x: Tensor) -> Tensor | None:
        """Exact log-density at x (..., 2) where known in closed form, else None."""
        log_prob = TOY2D_LOG_PROBS.get(self.name)
        return None if log_prob is None else log_prob(x)

    def build_datasets(self) -> Splits:
        sizes = (self.num_train, self.num_val, self.num_test)
        train, val, test = (
            TensorDictDataset(self.sample(n, self.generator(stream))) for stream, n in enumerate(sizes)
        )
        return train, val, test
