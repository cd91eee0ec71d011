"""A residual MLP denoiser for 2-D toy data and other flat vectors."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from lit_gen.nets.embeddings import timestep_embedding


class _ResidualMLPBlock(nn.Module):
    """h + W2 SiLU(W1 SiLU(h) + P emb): a pre-activation residual block with the embedding added inside."""

    def __init__(self, hidden_dim: int, emb_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(hidden_dim, hidden_dim)
        self.emb_proj = nn.Linear(emb_dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, hidden_dim)

    def forward(self, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        z = self.fc1(F.silu(h)) + self.emb_proj(F.silu(emb))  # (B, hidden)
        return h + self.fc2(F.silu(z))  # (B, hidden)


class MLPDenoiser(nn.Module):
    """Residual MLP denoiser: ``forward(x, t, y=None)`` with x (B, *data_shape), t (B,), y (B,) or None.

    The input is flattened; the output has shape (B, *data_shape) by default, or (B, out_channels,
    *data_shape[1:]) when ``out_channels`` is given (``out_channels`` plays the role of output channels, so
    for vector data (D,) it is (B, out_channels); pass 2*D for a learned variance).
    """

    tiny_args = {"hidden_dim": 16, "num_layers": 2}  # a seconds-long CPU version, for tests and smoke runs

    def __init__(
        self,
        data_shape: tuple[int, ...],
        num_classes: int,
        out_channels: int | None = None,
        hidden_dim: int = 256,
        num_layers: int = 4,
        time_embed_dim: int = 64,
        time_scale: float = 1.0,
    ):
        """Build the MLP.

        Args:
            data_shape: Shape of one sample, e.g. (2,) for 2-D toy data. Injected by the method.
            num_classes: Number of class labels; 0 for an unconditional net. Label index ``num_classes`` is
                the NULL label (used when ``y`` is None and for classifier-free guidance).
            out_channels: Output size along dim 1; None means ``data_shape[0]`` (output shaped like the
                input).
            hidden_dim: Width of the hidden layers.
            num_layers: Number of residual blocks (two linear layers each).
            time_embed_dim: Width of the sinusoidal time embedding.
            time_scale: Multiplier applied to t before the sinusoidal embedding (e.g. 1000 for t in [0, 1]).
        """
        super().__init__()
        data_shape = tuple(data_shape)
        if len(data_shape) < 1:
            raise ValueError(f"MLPDenoiser needs a non-empty data_shape, got data_shape={data_shape}")
        if num_classes < 0:
            raise ValueError(f"num_classes={num_classes} must be >= 0")
        self.data_shape = data_shape
        self.num_classes = num_classes
        self.time_scale = time_scale
        self.time_embed_dim = time_embed_dim
        self.out_shape = (out_channels if out_channels is not None else data_shape[0], *data_shape[1:])
        in_features = math.prod(data_shape)

        self.time_embed = nn.Sequential(
            nn.Linear(time_embed_dim, hidden_dim), nn.SiLU(), nn.Linear(hidden_dim, hidden_dim)
        )
        self.label_embed = nn.Embedding(num_classes + 1, hidden_dim) if num_classes > 0 else None
        self.input_proj = nn.Linear(in_features, hidden_dim)
        self.blocks = nn.ModuleList(_ResidualMLPBlock(hidden_dim, hidden_dim) for _ in range(num_layers))
        self.output_proj = nn.Linear(hidden_dim, math.prod(self.out_shape))

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Predict the network target for noisy samples.

        Args:
            x: Noisy samples, (B, *data_shape).
            t: Timesteps, (B,) integer steps or continuous times (scaled by ``time_scale``); a scalar is
                broadcast to the batch.
            y: Labels (B,) int64 in [0, num_classes], where ``num_classes`` is NULL; None means all NULL.
                Ignored by an unconditional net (``num_classes == 0``).

        Returns:
            Tensor of shape (B, *out_shape), see the class docstring.
        """
        B = x.shape[0]
        if tuple(x.shape[1:]) != self.data_shape:
            raise ValueError(f"MLPDenoiser expects x of shape (B, {self.data_shape}), got {tuple(x.shape)}")
        t = t.reshape(-1).expand(B) if t.numel() == 1 else t  # (B,)
        weight = self.time_embed[0].weight
        t_emb = timestep_embedding(t * self.time_scale, self.time_embed_dim).to(weight.dtype)  # (B, E)
        emb = self.time_embed(t_emb)  # (B, hidden)
        if self.label_embed is not None:
            if y is None:  # all NULL labels
                y = torch.full((B,), self.num_classes, dtype=torch.long, device=x.device)
            emb = emb + self.label_embed(y)  # (B, hidden)
        h = self.input_proj(x.reshape(B, -1))  # (B, hidden)
        for block in self.blocks:
            h = block(h, emb)  # (B, hidden)
        return self.output_proj(F.silu(h)).reshape(B, *self.out_shape)  # (B, *out_shape)
