"""The 2-D target potentials U(z) of Rezende & Mohamed (2015, Table 1, Fig. 3), p(z) proportional to
exp(-U(z)), for fitting a flow as a variational density by the reverse KL E_q[log q(z) + U(z)] (see
``Flow.sample_with_log_prob``)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch


def _w1(z: torch.Tensor) -> torch.Tensor:
    return torch.sin(2 * math.pi * z[:, 0] / 4)


def _w2(z: torch.Tensor) -> torch.Tensor:
    return 3 * torch.exp(-0.5 * ((z[:, 0] - 1) / 0.6) ** 2)


def _w3(z: torch.Tensor) -> torch.Tensor:
    return 3 * torch.sigmoid((z[:, 0] - 1) / 0.3)


def _neg_log_sum_exp(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return -torch.logaddexp(a, b)


def potential_1(z: torch.Tensor) -> torch.Tensor:
    """U1: a ring of radius 2 cut by two modes along z_1."""
    ring = 0.5 * ((z.norm(dim=1) - 2) / 0.4) ** 2
    return ring + _neg_log_sum_exp(-0.5 * ((z[:, 0] - 2) / 0.6) ** 2, -0.5 * ((z[:, 0] + 2) / 0.6) ** 2)


def potential_2(z: torch.Tensor) -> torch.Tensor:
    """U2: a sine wave."""
    return 0.5 * ((z[:, 1] - _w1(z)) / 0.4) ** 2


def potential_3(z: torch.Tensor) -> torch.Tensor:
    """U3: two sine waves that split apart."""
    a = -0.5 * ((z[:, 1] - _w1(z)) / 0.35) ** 2
    b = -0.5 * ((z[:, 1] - _w1(z) + _w2(z)) / 0.35) ** 2
    return _neg_log_sum_exp(a, b)


def potential_4(z: torch.Tensor) -> torch.Tensor:
    """U4: a sine wave and a shifted copy joined by a sigmoid step."""
    a = -0.5 * ((z[:, 1] - _w1(z)) / 0.4) ** 2
    b = -0.5 * ((z[:, 1] - _w1(z) + _w3(z)) / 0.35) ** 2
    return _neg_log_sum_exp(a, b)


POTENTIALS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "U1": potential_1,
    "U2": potential_2,
    "U3": potential_3,
    "U4": potential_4,
}
