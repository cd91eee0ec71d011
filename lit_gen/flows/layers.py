"""Invertible layers without a neural conditioner: normalisations, channel mixing, reshaping, scaling.

Each works on vectors (B, C) and images (B, C, H, W) alike; "channel" means dim 1.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from lit_gen.flows.core import FlowLayer, per_channel, spatial_size
from lit_gen.utils import check_choice


def _channel_moments(x: torch.Tensor, sync: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and (biased) variance of a (B, C, ...) tensor. With ``sync`` (only under no_grad:
    the all-reduce is not differentiated) they are pooled over all ranks of a running process group, so
    every rank computes the same statistics."""
    dims = [0, *range(2, x.ndim)]
    count = torch.tensor(float(x.numel() // x.shape[1]), dtype=x.dtype, device=x.device)
    total = x.sum(dims)  # (C,)
    distributed = sync and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    if distributed:
        dist.all_reduce(total)
        dist.all_reduce(count)
    mean = total / count  # (C,)
    sq = ((x - per_channel(mean, x.ndim)) ** 2).sum(dims)  # (C,) two passes: exact even for large means
    if distributed:
        dist.all_reduce(sq)
    return mean, sq / count


class ActNorm(FlowLayer):
    """Activation normalisation (Kingma & Dhariwal 2018, Sec. 3.1): z = s * x + b per channel.

    Data-dependent initialisation: the first ``forward`` call sets s and b so that its batch has zero mean
    and unit variance per channel (statistics pooled over H, W and, under torch.distributed, over every
    rank). The ``initialized`` flag is a persistent buffer, so a model restored from a checkpoint is not
    re-initialised. Call ``forward`` (or ``log_prob`` of the model) on a data batch before sampling.
    """

    def __init__(self, num_channels: int, eps: float = 1e-6):
        """Build an ActNorm layer (identity until initialised).

        Args:
            num_channels: Number of channels C (features for vector data).
            eps: Added to the initial standard deviation, s = 1 / (std + eps).
        """
        super().__init__()
        self.eps = eps
        self.log_s = nn.Parameter(torch.zeros(num_channels))  # log of the scale s
        self.b = nn.Parameter(torch.zeros(num_channels))
        self.register_buffer("initialized", torch.tensor(False))
        self._initialized_seen = False  # host-side copy of the flag: no device sync per call once set

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self._initialized_seen = False  # re-read the loaded flag on the next call

    @torch.no_grad()
    def initialize(self, x: torch.Tensor) -> None:
        """Set s = 1 / (std + eps), b = -mean * s from the batch x and mark the layer initialised."""
        mean, var = _channel_moments(x, sync=True)
        s = 1.0 / (var.sqrt() + self.eps)
        self.log_s.copy_(s.log())
        self.b.copy_(-mean * s)
        self.initialized.fill_(True)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not self._initialized_seen:
            if not bool(self.initialized):
                self.initialize(x)
            self._initialized_seen = True
        z = x * per_channel(self.log_s.exp(), x.ndim) + per_channel(self.b, x.ndim)
        # Glow Table 1: log|det| = h * w * sum(log|s|).
        log_det = spatial_size(x) * self.log_s.sum()
        return z, log_det.expand(x.shape[0])

    def inverse(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = (z - per_channel(self.b, z.ndim)) * per_channel((-self.log_s).exp(), z.ndim)
        log_det = -spatial_size(z) * self.log_s.sum()
        return x, log_det.expand(z.shape[0])


class BatchNormFlow(FlowLayer):
    """Batch normalisation as a flow layer (Dinh et al. 2017, Sec. 3.7).

    z = (x - mu) / sqrt(var + eps) * exp(log_gamma) + beta per channel. In training mode mu and var are the
    batch statistics (treated as constants in the log-det, as in the paper) and update running averages;
    in eval mode, and always in ``inverse``, the running averages are used. A train-mode forward is
    therefore inverted exactly only after switching to eval mode.
    """

    def __init__(self, num_channels: int, momentum: float = 0.05, eps: float = 1e-4):
        """Build the layer.

        Args:
            num_channels: Number of channels C (features for vector data).
            momentum: Weight of the new batch in the running averages.
            eps: Added to the variance for stability.
        """
        super().__init__()
        self.momentum = momentum
        self.eps = eps
        self.log_gamma = nn.Parameter(torch.zeros(num_channels))
        self.beta = nn.Parameter(torch.zeros(num_channels))
        self.register_buffer("running_mean", torch.zeros(num_channels))
        self.register_buffer("running_var", torch.ones(num_channels))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.training:
            mean, var = _channel_moments(x, sync=False)  # per-rank statistics, like nn.BatchNorm2d under DDP
            with torch.no_grad():
                self.running_mean.lerp_(mean, self.momentum)
                self.running_var.lerp_(var, self.momentum)
        else:
            mean, var = self.running_mean, self.running_var
        log_scale = self.log_gamma - 0.5 * torch.log(var + self.eps)  # (C,)
        z = (x - per_channel(mean, x.ndim)) * per_channel(log_scale.exp(), x.ndim)
        z = z + per_channel(self.beta, x.ndim)
        return z, (spatial_size(x) * log_scale.sum()).expand(x.shape[0])

    def inverse(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        log_scale = self.log_gamma - 0.5 * torch.log(self.running_var + self.eps)  # (C,)
        x = (z - per_channel(self.beta, z.ndim)) * per_channel((-log_scale).exp(), z.ndim)
        x = x + per_channel(self.running_mean, z.ndim)
        return x, (-spatial_size(z) * log_scale.sum()).expand(z.shape[0])


class InvertibleConv1x1(FlowLayer):
    """Invertible 1x1 convolution (Kingma & Dhariwal 2018, Sec. 3.2), a learned linear map of the channels.

    With ``lu_decomposed`` (Glow Sec. 3.2) W = P L (U + diag(s)): P a fixed permutation, L unit lower
    triangular, U strictly upper triangular, s = sign(s) * exp(log|s|) with the signs fixed and log|s|
    learned, so log|det W| = sum(log|s|) costs O(C). W starts as a random rotation. On vectors (B, C) the
    layer is the linear map z = W x.
    """

    def __init__(self, num_channels: int, lu_decomposed: bool = True):
        """Build the layer.

        Args:
            num_channels: Number of channels C.
            lu_decomposed: Parameterise W by its LU decomposition (O(C) log-det); otherwise learn W itself
                and take log|det W| with ``slogdet`` (O(C^3)).
        """
        super().__init__()
        self.lu_decomposed = lu_decomposed
        # random rotation (Glow Sec. 3.2)
        w_init = torch.linalg.qr(torch.randn(num_channels, num_channels))[0]
        if lu_decomposed:
            P, L, U = torch.linalg.lu(w_init)
            s = torch.diagonal(U)
            self.register_buffer("P", P)
            self.register_buffer("sign_s", torch.sign(s))
            self.register_buffer("lower_mask", torch.tril(torch.ones(num_channels, num_channels), -1))
            self.register_buffer("eye", torch.eye(num_channels))
            self.L = nn.Parameter(torch.tril(L, -1))
            self.U = nn.Parameter(torch.triu(U, 1))
            self.log_s = nn.Parameter(s.abs().log())
        else:
            self.weight = nn.Parameter(w_init)

    def _factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(unit lower L, upper U + diag(s)) with the masks applied."""
        L = self.L * self.lower_mask + self.eye
        U = self.U * self.lower_mask.T + torch.diag(self.sign_s * self.log_s.exp())
        return L, U

    def weight_matrix(self) -> torch.Tensor:
        """W (C, C); with LU, W = P L (U + diag(s)) (Glow Sec. 3.2)."""
        if not self.lu_decomposed:
            return self.weight
        L, U = self._factors()
        return self.P @ L @ U

    def inverse_weight_matrix(self) -> torch.Tensor:
        """W^-1 (C, C); with LU, (U + diag(s))^-1 L^-1 P^T by two triangular solves."""
        if not self.lu_decomposed:
            return torch.linalg.inv(self.weight)
        L, U = self._factors()
        l_inv_pt = torch.linalg.solve_triangular(L, self.P.T, upper=False, unitriangular=True)
        return torch.linalg.solve_triangular(U, l_inv_pt, upper=True)

    def log_abs_det_weight(self) -> torch.Tensor:
        if self.lu_decomposed:
            return self.log_s.sum()
        return torch.linalg.slogdet(self.weight)[1]

    @staticmethod
    def _mix(weight: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 2:
            return F.linear(x, weight)  # (B, C)
        return F.conv2d(x, weight[:, :, None, None])  # (B, C, H, W)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # W, its inverse and the mixing stay in x's dtype under autocast: in bf16 W^-1 W would be off by ~1e-2
        with torch.autocast(x.device.type, enabled=False):
            # Glow Table 1: log|det| = h * w * log|det W|.
            log_det = spatial_size(x) * self.log_abs_det_weight()
            return self._mix(self.weight_matrix().to(x.dtype), x), log_det.expand(x.shape[0])

    def inverse(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.autocast(z.device.type, enabled=False):
            log_det = -spatial_size(z) * self.log_abs_det_weight()
            return self._mix(self.inverse_weight_matrix().to(z.dtype), z), log_det.expand(z.shape[0])


class Permutation(FlowLayer):
    """A fixed permutation of the channels: reversal (Dinh et al. 2017) or a random shuffle (Glow Sec.
    3.2)."""

    def __init__(self, num_channels: int, kind: Literal["reverse", "shuffle"] = "reverse", seed: int = 0):
        """Build the permutation.

        Args:
            num_channels: Number of channels C.
            kind: ``reverse`` flips the channel order; ``shuffle`` draws a random order once.
            seed: Seed of the shuffle (ignored for ``reverse``).
        """
        super().__init__()
        check_choice("kind", kind, {"reverse", "shuffle"})
        if kind == "reverse":
            perm = torch.arange(num_channels - 1, -1, -1)
        else:
            perm = torch.randperm(num_channels, generator=torch.Generator().manual_seed(seed))
        self.register_buffer("perm", perm)
        self.register_buffer("inv_perm", torch.argsort(perm))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x[:, self.perm], x.new_zeros(x.shape[0])

    def inverse(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return z[:, self.inv_perm], z.new_zeros(z.shape[0])


class Squeeze(FlowLayer):
    """Space-to-channel reshaping (Dinh et al. 2017, Sec. 3.6, Fig. 3): (B, C, H, W) -> (B, 4C, H/2, W/2).

    Each 2x2 patch becomes 4 channels; output channel 4c + 2i + j holds input channel c at offset (i, j).
    A permutation, so log|det| = 0.
    """

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        B, C, H, W = x.shape
        if H % 2 or W % 2:
            raise ValueError(f"Squeeze needs even H and W, got {H}x{W}")
        z = x.reshape(B, C, H // 2, 2, W // 2, 2).permute(0, 1, 3, 5, 2, 4)  # (B, C, 2, 2, H/2, W/2)
        return z.reshape(B, 4 * C, H // 2, W // 2), x.new_zeros(B)

    def inverse(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        B, C4, h, w = z.shape
        x = z.reshape(B, C4 // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3)  # (B, C, h, 2, w, 2)
        return x.reshape(B, C4 // 4, 2 * h, 2 * w), z.new_zeros(B)


class Flatten(FlowLayer):
    """(B, *shape) -> (B, D) and back, so vector flows (NICE, MLPFlow) model images as flat vectors. A
    reshape, so log|det| = 0."""

    def __init__(self, shape: tuple[int, ...]):
        """Build the layer.

        Args:
            shape: Shape of one sample, e.g. (C, H, W).
        """
        super().__init__()
        self.shape = tuple(shape)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x.flatten(1), x.new_zeros(x.shape[0])

    def inverse(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return z.view(z.shape[0], *self.shape), z.new_zeros(z.shape[0])


class DiagonalScaling(FlowLayer):
    """NICE's final scaling layer (Dinh et al. 2014, Sec. 3.3): z = exp(s) * x elementwise, log|det| = sum(s).

    It lets the otherwise volume-preserving additive couplings weight each dimension.
    """

    def __init__(self, shape: tuple[int, ...]):
        """Build the layer (identity at init).

        Args:
            shape: Shape of one sample, e.g. (D,) for vectors.
        """
        super().__init__()
        self.log_scale = nn.Parameter(torch.zeros(tuple(shape)))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x * self.log_scale.exp(), self.log_scale.sum().expand(x.shape[0])

    def inverse(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return z * (-self.log_scale).exp(), (-self.log_scale.sum()).expand(z.shape[0])

