"""DiT, the diffusion transformer of Peebles & Xie 2023 ("Scalable Diffusion Models with Transformers"): the
image cut into p x p patches, a stack of transformer blocks conditioned on time and class by adaLN-Zero, and a
final adaptive layer norm and linear map back to patches. Optional cross-attention to a sequence of text
embeddings (as PixArt-alpha adds it, Chen et al. 2023). A denoiser like lit_gen's UNet: ``net(x, t, y=None)``.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from lit_gen.nets.embeddings import timestep_embedding

# the paper's model sizes (Table 1): hidden width, depth, heads
PRESETS = {"S": (384, 12, 6), "B": (768, 12, 12), "L": (1024, 24, 16), "XL": (1152, 28, 16)}


def patchify(x: torch.Tensor, p: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, H/p * W/p, p * p * C), patches in row-major order, each (p, p, C) flattened."""
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // p, p, w // p, p)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, (h // p) * (w // p), p * p * c)


def unpatchify(tokens: torch.Tensor, p: int, channels: int, height: int, width: int) -> torch.Tensor:
    """The inverse of :func:`patchify`: (B, N, p * p * C) -> (B, C, H, W)."""
    b = tokens.shape[0]
    x = tokens.reshape(b, height // p, width // p, p, p, channels)
    return x.permute(0, 5, 1, 3, 2, 4).reshape(b, channels, height, width)


def sincos_2d(dim: int, rows: int, cols: int) -> torch.Tensor:
    """Fixed 2-D sine-cosine position embeddings (rows * cols, dim): half the width encodes the row, half the
    column, each with 1-D sinusoids (the paper's choice, from MAE)."""
    if dim % 4:
        raise ValueError(f"DiT hidden_size={dim} must be divisible by 4 for 2-D sin-cos positions")
    r, c = torch.meshgrid(torch.arange(rows, dtype=torch.float64), torch.arange(cols, dtype=torch.float64),
                          indexing="ij")
    return torch.cat([timestep_embedding(r.flatten(), dim // 2), timestep_embedding(c.flatten(), dim // 2)],
                     dim=1).float()


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: x * (1 + scale) + shift, per sample (B, 1, D) over the tokens."""
    return x * (1 + scale[:, None]) + shift[:, None]


class Attention(nn.Module):
    """Multi-head attention with scaled_dot_product_attention: self-attention, or cross-attention to a
    ``context`` (B, M, context_dim)."""

    def __init__(self, dim: int, heads: int, context_dim: int | None = None) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"DiT num_heads={heads} must divide hidden_size={dim}")
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(context_dim or dim, 2 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        b, n, d = x.shape
        source = x if context is None else context
        q = self.q(x).reshape(b, n, self.heads, d // self.heads).transpose(1, 2)  # (B, heads, N, d_h)
        kv = self.kv(source).reshape(b, source.shape[1], 2, self.heads, d // self.heads)
        k, v = kv.permute(2, 0, 3, 1, 4)  # each (B, heads, M, d_h)
        h = F.scaled_dot_product_attention(q, k, v)  # (B, heads, N, d_h)
        return self.out(h.transpose(1, 2).reshape(b, n, d))


class DiTBlock(nn.Module):
    """adaLN-Zero block (Peebles & Xie 2023, Fig. 3): shift, scale and gate of the attention and the MLP
    regressed from the conditioning c, the gates zero at init so the block starts as the identity; with
    ``context_dim``, cross-attention to the text between them."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, context_dim: int | None = None) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.cross = Attention(dim, heads, context_dim) if context_dim else None
        self.norm_cross = nn.LayerNorm(dim, eps=1e-6) if context_dim else None
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        nn.init.zeros_(self.adaLN_modulation[1].weight)  # adaLN-Zero: every gate 0, the block the identity
        nn.init.zeros_(self.adaLN_modulation[1].bias)

    def forward(self, x: torch.Tensor, c: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = self.adaLN_modulation(c).chunk(6, dim=1)
        x = x + gate_a[:, None] * self.attn(modulate(self.norm1(x), shift_a, scale_a))
        if self.cross is not None and context is not None:
            x = x + self.cross(self.norm_cross(x), context)
        return x + gate_m[:, None] * self.mlp(modulate(self.norm2(x), shift_m, scale_m))


class FinalLayer(nn.Module):
    """Adaptive layer norm and a linear map to p * p * out_channels per token, zero at init (the net predicts
    0 at first, as lit_gen's UNet does)."""

    def __init__(self, dim: int, patch_size: int, out_channels: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))
        self.linear = nn.Linear(dim, patch_size * patch_size * out_channels)
        for layer in (self.adaLN_modulation[1], self.linear):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm(x), shift, scale))


class DiT(nn.Module):
    """A diffusion transformer denoiser: ``forward(x, t, y=None, context=None)`` maps images x (B, C, H, W),
    the method's model time t (B,) and labels y (B,) (null label ``num_classes``) to (B, out_channels, H, W).

    Args:
        data_shape: (C, H, W) of one sample; H and W divisible by ``patch_size``.
        num_classes: classes of a conditional method (0: unconditional); label ``num_classes`` is the null
            one.
        out_channels: what the method predicts (2C with a learned variance).
        size: a preset of the paper, ``S``, ``B``, ``L`` or ``XL`` (Table 1), or None (default) for the three
            below.
        hidden_size: token width (with ``size`` None).
        depth: transformer blocks (with ``size`` None).
        num_heads: attention heads (with ``size`` None).
        patch_size: p: the image becomes (H/p)(W/p) tokens (2, 4 or 8 in the paper).
        mlp_ratio: MLP width over the token width.
        learned_positions: learned position embeddings instead of the fixed 2-D sin-cos ones.
        context_dim: width of text embeddings to cross-attend to (``forward``'s ``context``); None: none.
        time_scale: multiplier of t before the sinusoidal embedding (1 for DDPM's steps and (N - 1) t).
        gradient_checkpointing: recompute each block in backward during training.
    """

    # a seconds-long CPU version, for tests and smoke runs
    tiny_args = {"hidden_size": 32, "depth": 2, "num_heads": 2, "patch_size": 2}

    def __init__(self, data_shape: tuple[int, ...] = (3, 32, 32), num_classes: int = 0,
                 out_channels: int | None = None, size: Literal["S", "B", "L", "XL"] | None = None,
                 hidden_size: int = 384,
                 depth: int = 12, num_heads: int = 6, patch_size: int = 2, mlp_ratio: float = 4.0,
                 learned_positions: bool = False, context_dim: int | None = None, time_scale: float = 1.0,
                 gradient_checkpointing: bool = False) -> None:
        super().__init__()
        if size is not None:
            if size not in PRESETS:
                raise ValueError(f"DiT size={size!r} is not supported; choose one of {list(PRESETS)} or None")
            hidden_size, depth, num_heads = PRESETS[size]
        if len(data_shape) != 3 or data_shape[1] % patch_size or data_shape[2] % patch_size:
            raise ValueError(f"DiT needs images (C, H, W) with H and W divisible by patch_size={patch_size}, "
                             f"got data_shape={tuple(data_shape)}")
        channels, height, width = data_shape
        self.data_shape, self.num_classes, self.patch_size = tuple(data_shape), num_classes, patch_size
        self.out_channels = out_channels or channels
        self.time_scale, self.gradient_checkpointing = time_scale, gradient_checkpointing
        self.frequency_dim = 256  # the sinusoid of t before the MLP (the paper's)
        self.patch_embed = nn.Conv2d(channels, hidden_size, patch_size, stride=patch_size)
        rows, cols = height // patch_size, width // patch_size
        positions = sincos_2d(hidden_size, rows, cols)[None]
        if learned_positions:
            self.positions = nn.Parameter(positions)
        else:
            self.register_buffer("positions", positions, persistent=False)
        self.time_embed = nn.Sequential(nn.Linear(self.frequency_dim, hidden_size), nn.SiLU(),
                                        nn.Linear(hidden_size, hidden_size))
        self.label_embed = nn.Embedding(num_classes + 1, hidden_size) if num_classes else None
        self.blocks = nn.ModuleList(DiTBlock(hidden_size, num_heads, mlp_ratio, context_dim)
                                    for _ in range(depth))
        self.final = FinalLayer(hidden_size, patch_size, self.out_channels)

    def condition(self, t: torch.Tensor, y: torch.Tensor | None, batch: int) -> torch.Tensor:
        """c = time embedding + label embedding (the null label when y is None), (B, D)."""
        t = t.reshape(-1).expand(batch) if t.numel() == 1 else t
        weight = self.time_embed[0].weight
        c = self.time_embed(timestep_embedding(t * self.time_scale, self.frequency_dim).to(weight.dtype))
        if self.label_embed is not None:
            if y is None:
                y = torch.full((batch,), self.num_classes, dtype=torch.long, device=c.device)
            c = c + self.label_embed(y)
        return c

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None,
                context: torch.Tensor | None = None) -> torch.Tensor:
        c = self.condition(t, y, x.shape[0])  # (B, D)
        h = self.patch_embed(x).flatten(2).transpose(1, 2) + self.positions  # (B, N, D)
        use_ckpt = self.gradient_checkpointing and self.training and torch.is_grad_enabled()
        for block in self.blocks:
            h = checkpoint(block, h, c, context, use_reentrant=False) if use_ckpt else block(h, c, context)
        _, height, width = self.data_shape
        return unpatchify(self.final(h, c), self.patch_size, self.out_channels, height, width)

    def fsdp_units(self) -> list[nn.Module]:
        """The transformer blocks: FSDP's and ZeRO-3's units of sharding."""
        return list(self.blocks)
