"""Conditioner networks of coupling layers and learned priors.

A conditioner reads the unchanged part of a coupling layer's input and outputs the parameters that
transform the other part. It need not be invertible. Every conditioner here ends in a zero-initialised
layer, so a coupling starts as a fixed, input-independent map (Kingma & Dhariwal 2018, Sec. 3.3).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from lit_gen.flows.layers import ActNorm
from lit_gen.utils import check_choice

Norm = Literal["actnorm", "batchnorm", "none"]
NORMS = {"actnorm", "batchnorm", "none"}


class ZeroConv2d(nn.Module):
    """3x3 convolution with zero weights and bias, scaled per output channel by exp(logscale_factor * logs).

    Glow's last layer of every NN() and of the split priors (Kingma & Dhariwal 2018, Sec. 3.3); the
    learned log-scale ``logs`` (zero at init) multiplied by ``logscale_factor`` (3 in the released code)
    lets the output scale move faster than the weights.
    """

    def __init__(self, in_channels: int, out_channels: int, logscale_factor: float = 3.0):
        """Build the layer.

        Args:
            in_channels: Input channels.
            out_channels: Output channels.
            logscale_factor: Multiplier of the learned per-channel log-scale.
        """
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        nn.init.zeros_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)
        self.logs = nn.Parameter(torch.zeros(out_channels))
        self.logscale_factor = logscale_factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) * (self.logscale_factor * self.logs).exp()[:, None, None]  # (B, C_out, H, W)


class _ActNorm2d(nn.Module):
    """ActNorm as a plain activation layer (the log-det is not needed inside a conditioner)."""

    def __init__(self, channels: int):
        super().__init__()
        self.actnorm = ActNorm(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.actnorm(x)[0]


def _norm(kind: Norm, channels: int) -> nn.Module:
    check_choice("norm", kind, NORMS)
    if kind == "actnorm":
        return _ActNorm2d(channels)
    if kind == "batchnorm":
        return nn.BatchNorm2d(channels)
    return nn.Identity()


class MLPConditioner(nn.Module):
    """Vector conditioner: Linear -> ReLU blocks and a zero-initialised output layer (NICE Sec. 5.1 uses
    ReLU MLPs with 5 hidden layers of 1000 units on MNIST)."""

    def __init__(
        self, in_features: int, out_features: int, hidden_features: int = 256, num_hidden_layers: int = 2
    ):
        """Build the MLP.

        Args:
            in_features: Input size.
            out_features: Output size.
            hidden_features: Width of each hidden layer.
            num_hidden_layers: Number of hidden layers (>= 1).
        """
        super().__init__()
        if num_hidden_layers < 1:
            raise ValueError(f"num_hidden_layers={num_hidden_layers} must be >= 1")
        layers: list[nn.Module] = []
        width = in_features
        for _ in range(num_hidden_layers):
            layers += [nn.Linear(width, hidden_features), nn.ReLU()]
            width = hidden_features
        out = nn.Linear(width, out_features)
        nn.init.zeros_(out.weight)
        nn.init.zeros_(out.bias)
        self.net = nn.Sequential(*layers, out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # (B, out_features)


class GlowConditioner(nn.Module):
    """Glow's NN() (Kingma & Dhariwal 2018, Sec. 5: 3x3, 1x1 and 3x3 convolutions, 512 hidden channels,
    ReLU): conv3x3 -> ActNorm -> ReLU -> conv1x1 -> ActNorm -> ReLU -> zero conv3x3, with ActNorm after the
    hidden convolutions as in the released code."""

    def __init__(self, in_channels: int, out_channels: int, hidden_channels: int = 512):
        """Build the network.

        Args:
            in_channels: Input channels.
            out_channels: Output channels.
            hidden_channels: Width of the two hidden layers (512 in Glow).
        """
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, hidden_channels, 3, padding=1, bias=False),
            _ActNorm2d(hidden_channels),
            nn.ReLU(),
            nn.Conv2d(hidden_channels, hidden_channels, 1, bias=False),
            _ActNorm2d(hidden_channels),
            nn.ReLU(),
            ZeroConv2d(hidden_channels, out_channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # (B, C_out, H, W)


class _ResidualBlock(nn.Module):
    """Pre-activation residual block: x + conv3x3(ReLU(norm(conv3x3(ReLU(norm(x))))))."""

    def __init__(self, channels: int, norm: Norm):
        super().__init__()
        self.net = nn.Sequential(
            _norm(norm, channels),
            nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
            _norm(norm, channels),
            nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.net(x)


class ResNetConditioner(nn.Module):
    """RealNVP's conditioner (Dinh et al. 2017, Sec. 4.1: deep residual networks with batch normalisation;
    8 blocks of 64 channels on CIFAR-10): conv3x3 -> residual blocks -> norm -> ReLU -> zero conv3x3."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        hidden_channels: int = 64,
        num_blocks: int = 2,
        norm: Norm = "batchnorm",
    ):
        """Build the network.

        Args:
            in_channels: Input channels.
            out_channels: Output channels.
            hidden_channels: Width of the residual blocks.
            num_blocks: Number of residual blocks.
            norm: Normalisation inside the blocks: ``batchnorm`` (RealNVP), ``actnorm`` or ``none``.
        """
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, hidden_channels, 3, padding=1),
            *[_ResidualBlock(hidden_channels, norm) for _ in range(num_blocks)],
            _norm(norm, hidden_channels),
            nn.ReLU(),
            ZeroConv2d(hidden_channels, out_channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # (B, C_out, H, W)

