"""The DDPM UNet (Ho et al. 2020, "Denoising Diffusion Probabilistic Models", appendix B).

A PixelCNN++-style UNet backbone with Wide-ResNet blocks, GroupNorm, a sinusoidal time embedding added
inside every residual block, and single-head self-attention at the 16x16 resolution. With the CIFAR-10
settings (``base_channels=128, channel_mults=(1, 2, 2, 2), num_res_blocks=2, attention_resolutions=(16,),
dropout=0.1``) it has 35.7 M parameters, as in the paper. Optional class conditioning adds a learned label
embedding (with an extra NULL label for classifier-free guidance) to the time embedding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from lit_gen.nets.embeddings import timestep_embedding


def _group_norm(channels: int, num_groups: int) -> nn.GroupNorm:
    """GroupNorm with the most groups <= ``num_groups`` that divide ``channels`` with >= 2 channels per group.

    One-channel groups would be instance norm, which subtracts the per-channel time-embedding shift that
    ResBlock adds right before its second norm, making narrow nets blind to t. Standard widths (e.g. 32
    groups on >= 64 channels) are unaffected.
    """
    limit = max(1, min(num_groups, channels // 2))
    groups = max(g for g in range(1, limit + 1) if channels % g == 0)
    return nn.GroupNorm(groups, channels, eps=1e-6)


class ResBlock(nn.Module):
    """Residual block: GN, SiLU, conv3x3, + Linear(SiLU(emb)), GN, SiLU, dropout, conv3x3 (zero-init).

    With ``adaptive_norm`` the embedding gives a scale and a shift of the second GroupNorm instead of an
    added bias: GN(h) * (1 + scale) + shift (AdaGN, Dhariwal & Nichol 2021, Sec. 3)."""

    def __init__(
        self, in_channels: int, out_channels: int, emb_dim: int, dropout: float, num_groups: int,
        adaptive_norm: bool = False,
    ):
        super().__init__()
        self.adaptive_norm = adaptive_norm
        self.norm1 = _group_norm(in_channels, num_groups)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.emb_proj = nn.Linear(emb_dim, out_channels * (2 if adaptive_norm else 1))
        self.norm2 = _group_norm(out_channels, num_groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)  # the block starts as the identity (skip) map
        nn.init.zeros_(self.conv2.bias)
        # 1x1 "network-in-network" projection on the skip path when the width changes.
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))  # (B, C_out, H, W)
        e = self.emb_proj(F.silu(emb))[:, :, None, None]  # (B, C_out or 2 C_out, 1, 1) broadcast over H, W
        if self.adaptive_norm:
            scale, shift = e.chunk(2, dim=1)
            h = self.norm2(h) * (1 + scale) + shift
        else:
            h = self.norm2(h + e)
        h = self.conv2(self.dropout(F.silu(h)))  # (B, C_out, H, W)
        return self.skip(x) + h


class AttentionBlock(nn.Module):
    """Spatial self-attention over all H*W positions with a residual connection (zero-init output proj)."""

    def __init__(self, channels: int, num_heads: int, num_groups: int):
        super().__init__()
        if channels % num_heads != 0:
            raise ValueError(f"num_heads={num_heads} must divide the attention width {channels}")
        self.num_heads = num_heads
        self.norm = _group_norm(channels, num_groups)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        qkv = self.qkv(self.norm(x))  # (B, 3C, H, W)
        qkv = qkv.reshape(B, 3, self.num_heads, C // self.num_heads, H * W)  # (B, 3, heads, d, HW)
        q, k, v = qkv.transpose(-1, -2).unbind(dim=1)  # each (B, heads, HW, d)
        h = F.scaled_dot_product_attention(q, k, v)  # (B, heads, HW, d)
        h = h.transpose(-1, -2).reshape(B, C, H, W)  # (B, C, H, W)
        return x + self.proj_out(h)


class CrossAttentionBlock(nn.Module):
    """Attention from every position to a context sequence (B, M, context_dim), e.g. a caption's token
    states, with a residual connection and a zero-initialised output (LDM's conditioning, Rombach et al.
    2022, Eq. 3). Without a context it is the identity."""

    def __init__(self, channels: int, context_dim: int, num_heads: int, num_groups: int):
        super().__init__()
        if channels % num_heads != 0:
            raise ValueError(f"num_heads={num_heads} must divide the attention width {channels}")
        self.num_heads = num_heads
        self.norm = _group_norm(channels, num_groups)
        self.q = nn.Conv2d(channels, channels, 1)
        self.kv = nn.Linear(context_dim, 2 * channels)
        self.proj_out = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        if context is None:
            return x
        B, C, H, W = x.shape
        heads, d = self.num_heads, C // self.num_heads
        q = self.q(self.norm(x)).reshape(B, heads, d, H * W).transpose(-1, -2)  # (B, heads, HW, d)
        k, v = self.kv(context).reshape(B, context.shape[1], 2, heads, d).permute(2, 0, 3, 1, 4)
        h = F.scaled_dot_product_attention(q, k.to(q.dtype), v.to(q.dtype))  # (B, heads, HW, d)
        return x + self.proj_out(h.transpose(-1, -2).reshape(B, C, H, W))


class Downsample(nn.Module):
    """Halve H and W with a stride-2 3x3 convolution."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)  # (B, C, H/2, W/2)


class Upsample(nn.Module):
    """Double H and W with nearest-neighbour upsampling followed by a 3x3 convolution."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))  # (B, C, 2H, 2W)


class _EmbedSequential(nn.Sequential):
    """A sequence of blocks; residual blocks also receive the embedding, cross-attention the context.
    Optionally checkpointed."""

    def forward(self, h: torch.Tensor, emb: torch.Tensor, use_checkpoint: bool = False,
                context: torch.Tensor | None = None) -> torch.Tensor:
        for layer in self:
            args = (h, emb) if isinstance(layer, ResBlock) else (h, context) if isinstance(
                layer, CrossAttentionBlock) else (h,)
            if use_checkpoint and isinstance(layer, (ResBlock, AttentionBlock, CrossAttentionBlock)):
                # Recompute activations in backward instead of storing them; RNG state (dropout) is replayed.
                h = checkpoint(layer, *args, use_reentrant=False)
            else:
                h = layer(*args)
        return h


def _check_shape(name: str, data_shape: tuple[int, ...], num_classes: int, channel_mults) -> None:
    if len(data_shape) != 3:
        raise ValueError(f"{name} needs data_shape=(C, H, W), got data_shape={data_shape}")
    if num_classes < 0:
        raise ValueError(f"num_classes={num_classes} must be >= 0")
    if len(channel_mults) < 1:
        raise ValueError(f"channel_mults={channel_mults} must have at least one level")
    _, height, width = data_shape
    factor = 2 ** (len(channel_mults) - 1)
    if height % factor != 0 or width % factor != 0:
        raise ValueError(
            f"image size {height}x{width} is not divisible by 2**(len(channel_mults)-1)={factor} "
            f"(channel_mults={tuple(channel_mults)})"
        )


class _Trunk(nn.Module):
    """What the UNet and its encoder half share: the time (+ label) embedding, the input convolution, the
    down path (each unit's output kept as a skip) and the middle block. Arguments as in :class:`UNet`."""

    def __init__(
        self,
        data_shape: tuple[int, ...],
        num_classes: int,
        base_channels: int,
        channel_mults: tuple[int, ...],
        num_res_blocks: int,
        attention_resolutions: tuple[int, ...],
        dropout: float,
        num_heads: int,
        num_groups: int,
        time_scale: float,
        gradient_checkpointing: bool,
        adaptive_norm: bool,
        context_dim: int | None = None,
    ):
        super().__init__()
        data_shape = tuple(data_shape)
        _check_shape(type(self).__name__, data_shape, num_classes, channel_mults)
        in_channels, height, width = data_shape
        self.data_shape = data_shape
        self.num_classes = num_classes
        self.time_scale = time_scale
        self.gradient_checkpointing = gradient_checkpointing
        self.base_channels = base_channels
        self.attention_resolutions = tuple(attention_resolutions)
        emb_dim = 4 * base_channels  # DDPM: sinusoid of width ch -> Dense(4ch) -> SiLU -> Dense(4ch)

        self.time_embed = nn.Sequential(
            nn.Linear(base_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)
        )
        self.label_embed = nn.Embedding(num_classes + 1, emb_dim) if num_classes > 0 else None
        self._block_args = (emb_dim, dropout, num_groups, adaptive_norm, num_heads)
        self.context_dim = context_dim

        # Down path: every unit's output is kept as a skip connection for the up path.
        self.conv_in = nn.Conv2d(in_channels, base_channels, 3, padding=1)
        self.down = nn.ModuleList()
        ch, resolution = base_channels, height
        self.skip_channels = [ch]
        for level, mult in enumerate(channel_mults):
            for _ in range(num_res_blocks):
                unit = [self.res(ch, base_channels * mult)]
                ch = base_channels * mult
                if resolution in attention_resolutions:
                    unit.extend(self.attn(ch))
                self.down.append(_EmbedSequential(*unit))
                self.skip_channels.append(ch)
            if level != len(channel_mults) - 1:
                self.down.append(_EmbedSequential(Downsample(ch)))
                resolution //= 2
                self.skip_channels.append(ch)
        self.middle = _EmbedSequential(self.res(ch, ch), *self.attn(ch), self.res(ch, ch))
        self.trunk_channels, self.trunk_resolution = ch, resolution

    def res(self, c_in: int, c_out: int) -> ResBlock:
        emb_dim, dropout, num_groups, adaptive_norm, _ = self._block_args
        return ResBlock(c_in, c_out, emb_dim, dropout, num_groups, adaptive_norm)

    def attn(self, c: int) -> list[nn.Module]:
        """Self-attention, then cross-attention to the context when the net takes one."""
        _, _, num_groups, _, num_heads = self._block_args
        cross = [CrossAttentionBlock(c, self.context_dim, num_heads, num_groups)] if self.context_dim else []
        return [AttentionBlock(c, num_heads, num_groups), *cross]

    def embed(self, t: torch.Tensor, y: torch.Tensor | None, batch_size: int) -> torch.Tensor:
        """Time (+ label) embedding, shape (B, 4 * base_channels)."""
        t = t.reshape(-1).expand(batch_size) if t.numel() == 1 else t  # (B,)
        weight = self.time_embed[0].weight
        t_emb = timestep_embedding(t * self.time_scale, self.base_channels).to(weight.dtype)  # (B, ch)
        emb = self.time_embed(t_emb)  # (B, 4ch)
        if self.label_embed is not None:
            if y is None:  # all NULL labels
                y = torch.full((batch_size,), self.num_classes, dtype=torch.long, device=emb.device)
            emb = emb + self.label_embed(y)  # (B, 4ch)
        return emb

    def fsdp_units(self) -> list[nn.Module]:
        """The blocks FSDP shards and gathers one at a time (each runs through its forward only)."""
        return [*self.down, self.middle, *getattr(self, "up", [])]

    def encode(
        self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None, context: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor, bool]:
        """(h after the middle block, the skips, the embedding, whether to checkpoint activations);
        ``context`` (B, M, context_dim): what cross-attention attends to."""
        if x.ndim != 4 or x.shape[1] != self.data_shape[0]:
            raise ValueError(
                f"{type(self).__name__} expects x of shape (B, {self.data_shape[0]}, H, W), got "
                f"{tuple(x.shape)}"
            )
        use_ckpt = self.gradient_checkpointing and self.training and torch.is_grad_enabled()
        emb = self.embed(t, y, x.shape[0])  # (B, 4ch)
        h = self.conv_in(x)  # (B, ch, H, W)
        skips = [h]
        for unit in self.down:
            h = unit(h, emb, use_ckpt, context)
            skips.append(h)
        h = self.middle(h, emb, use_ckpt, context)  # (B, ch * mult[-1], H / 2^L, W / 2^L)
        return h, skips, emb, use_ckpt


class UNet(_Trunk):
    """DDPM UNet denoiser (Ho et al. 2020) for image-shaped data, optionally class-conditional.

    ``forward(x, t, y=None)`` maps x (B, C, H, W), timesteps t (B,) and labels y (B,) to (B, out_channels,
    H, W). The same network serves eps-, x0- or v-prediction and score models; it knows nothing of the loss.
    """

    # a seconds-long CPU version, for tests and smoke runs
    tiny_args = {"base_channels": 8, "channel_mults": [1, 2], "num_res_blocks": 1,
                 "attention_resolutions": [4], "dropout": 0.0}

    def __init__(
        self,
        data_shape: tuple[int, ...],
        num_classes: int,
        out_channels: int | None = None,
        base_channels: int = 64,
        channel_mults: tuple[int, ...] = (1, 2, 2, 2),
        num_res_blocks: int = 2,
        attention_resolutions: tuple[int, ...] = (16,),
        dropout: float = 0.0,
        num_heads: int = 1,
        num_groups: int = 32,
        time_scale: float = 1.0,
        gradient_checkpointing: bool = False,
        adaptive_norm: bool = False,
        context_dim: int | None = None,
    ):
        """Build the UNet.

        Args:
            data_shape: Shape of one sample, (C, H, W). Injected by the method from the data.
            num_classes: Number of class labels; 0 for an unconditional net. Label index ``num_classes`` is
                the NULL label, "unconditional" (used when ``y`` is None and for classifier-free guidance).
            out_channels: Output channels; None means the data channels C (use 2*C for a learned variance).
            base_channels: Width of the first level; level i has ``base_channels * channel_mults[i]``.
            channel_mults: Width multiplier per resolution level; one downsampling between levels, so H
                and W must be divisible by ``2 ** (len(channel_mults) - 1)``.
            num_res_blocks: Residual blocks per level on the way down (one more per level on the way up).
            attention_resolutions: Spatial sizes (feature-map height) at which self-attention follows each
                residual block; e.g. (16,) for 32x32 images as in DDPM. Sizes never reached are ignored.
            dropout: Dropout rate inside residual blocks (DDPM used 0.1 on CIFAR-10).
            num_heads: Attention heads; must divide the width at every attention resolution.
            num_groups: GroupNorm groups; narrow layers use the largest divisor of their width that is
                <= num_groups and leaves >= 2 channels per group.
            time_scale: Multiplier applied to t before the sinusoidal embedding (e.g. 1000 for t in [0, 1]).
            gradient_checkpointing: Recompute residual/attention activations in backward during training to
                save memory at the cost of extra compute.
            adaptive_norm: Inject the time + label embedding as a scale and shift of each residual block's
                second GroupNorm (AdaGN, Dhariwal & Nichol 2021) instead of adding it.
            context_dim: Width of a context sequence (a caption's token states) that cross-attention after
                each self-attention attends to (Rombach et al. 2022); None: none. Text-conditional methods
                set it to their text encoder's width.
        """
        super().__init__(
            data_shape, num_classes, base_channels, channel_mults, num_res_blocks, attention_resolutions,
            dropout,
            num_heads, num_groups, time_scale, gradient_checkpointing, adaptive_norm, context_dim,
        )
        self.out_channels = out_channels if out_channels is not None else self.data_shape[0]
        self.up, ch = self._up_path(channel_mults, num_res_blocks, attention_resolutions)
        self.norm_out = _group_norm(ch, num_groups)
        self.conv_out = nn.Conv2d(ch, self.out_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)  # the net predicts 0 at init
        nn.init.zeros_(self.conv_out.bias)

    def _up_path(self, channel_mults, num_res_blocks: int,
                 attention_resolutions) -> tuple[nn.ModuleList, int]:
        """num_res_blocks + 1 units per level, each consuming one skip connection; and the last width."""
        skip_channels = list(self.skip_channels)
        ch, resolution = self.trunk_channels, self.trunk_resolution
        up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mults))):
            for i in range(num_res_blocks + 1):
                unit = [self.res(ch + skip_channels.pop(), self.base_channels * mult)]
                ch = self.base_channels * mult
                if resolution in attention_resolutions:
                    unit.extend(self.attn(ch))
                if level != 0 and i == num_res_blocks:
                    unit.append(Upsample(ch))
                    resolution *= 2
                up.append(_EmbedSequential(*unit))
        assert not skip_channels
        return up, ch

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None,
                context: torch.Tensor | None = None) -> torch.Tensor:
        """Predict the network target for noisy images.

        Args:
            x: Noisy images, (B, C, H, W).
            t: Timesteps, (B,) integer steps or continuous times (scaled by ``time_scale``); a scalar is
                broadcast to the batch.
            y: Labels (B,) int64 in [0, num_classes], where ``num_classes`` is NULL; None means all NULL.
                Ignored by an unconditional net (``num_classes == 0``).
            context: (B, M, context_dim) states of a text encoder for the cross-attention of a net built with
                ``context_dim`` (None: no cross-attention).

        Returns:
            Tensor of shape (B, out_channels, H, W).
        """
        h, skips, emb, use_ckpt = self.encode(x, t, y, context)
        for unit in self.up:
            h = unit(torch.cat([h, skips.pop()], dim=1), emb, use_ckpt, context)
        return self.conv_out(F.silu(self.norm_out(h)))  # (B, out_channels, H, W)
