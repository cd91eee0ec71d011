"""lit_gen's UNet as an equivalent diffusers ``UNet2DModel``: the config that builds the same network and its
weights renamed (the fused qkv convolution split into to_q / to_k / to_v). The two are the DDPM UNet of Ho et
al. 2020 (appendix B) in both libraries: the same blocks in the same order, with the same skips. What does
not map (a time scale, narrow layers with fewer norm groups, heads that differ between widths) is refused in
one line."""

from __future__ import annotations

import torch
from torch import nn

from lit_gen.nets.diffusers_unet import require_diffusers
from lit_gen.nets.unet import AttentionBlock, Downsample, ResBlock, UNet, Upsample


def unet2d_config(net: UNet) -> dict:
    """``UNet2DModel``'s config for lit_gen's ``net``, or a one-line error naming what has no counterpart."""
    if not isinstance(net, UNet):
        raise ValueError(f"a {type(net).__name__} has no UNet2DModel counterpart (a text-conditional model "
                         "cross-attends to its caption, which UNet2DModel cannot)")
    if net.context_dim:
        raise ValueError(f"a UNet with context_dim={net.context_dim} has no UNet2DModel counterpart "
                         "(cross-attention to text is UNet2DConditionModel's)")
    if net.time_scale != 1.0:
        raise ValueError(f"a UNet with time_scale={net.time_scale} has no UNet2DModel counterpart (it embeds "
                         f"the time as given)")
    norms = {m.num_groups for m in net.modules() if isinstance(m, nn.GroupNorm)}
    groups = net.norm_out.num_groups
    if norms != {groups}:
        raise ValueError(f"this UNet's layers use {sorted(norms)} GroupNorm groups; UNet2DModel uses one "
                         f"number everywhere (set num_groups to divide every width with >= 2 channels per "
                         f"group)")
    attentions = [m for m in net.modules() if isinstance(m, AttentionBlock)]
    dims = {a.proj_out.in_channels // a.num_heads for a in attentions}
    heads = attentions[0].num_heads
    if heads > 1 and len(dims) > 1:
        raise ValueError(f"num_heads={heads} at widths of head size {sorted(dims)}: UNet2DModel has one head "
                         f"size (attention_head_dim) for every attention layer")
    widths = [net.base_channels * m for m in _mults(net)]
    resolutions = [net.data_shape[1] // 2**i for i in range(len(widths))]
    attn = [r in net.attention_resolutions for r in resolutions]
    adaptive = net.down[0][0].adaptive_norm
    return {
        "sample_size": net.data_shape[1] if net.data_shape[1] == net.data_shape[2] else net.data_shape[1:],
        "in_channels": net.data_shape[0], "out_channels": net.out_channels,
        "block_out_channels": widths, "layers_per_block": _blocks_per_level(net),
        "down_block_types": ["AttnDownBlock2D" if a else "DownBlock2D" for a in attn],
        "up_block_types": ["AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)],
        "attention_head_dim": None if heads == 1 else dims.pop(), "norm_num_groups": groups,
        "attn_norm_num_groups": groups, "norm_eps": net.norm_out.eps, "flip_sin_to_cos": False,
        "freq_shift": 0,
        "downsample_padding": 1, "dropout": net.down[0][0].dropout.p, "act_fn": "silu",
        "resnet_time_scale_shift": "scale_shift" if adaptive else "default",
        "num_class_embeds": net.num_classes + 1 if net.num_classes else None,
    }


def _mults(net: UNet) -> list[int]:
    """The width multiplier of each level, read off the down path (a level ends at a Downsample)."""
    mults, width = [], None
    for unit in net.down:
        if isinstance(unit[0], Downsample):
            mults.append(width // net.base_channels)
        else:
            width = unit[0].conv1.out_channels
    return [*mults, width // net.base_channels]


def _blocks_per_level(net: UNet) -> int:
    units = sum(isinstance(unit[0], ResBlock) for unit in net.down)
    return units // len(_mults(net))


def _res(ours: ResBlock, theirs: str) -> dict[str, torch.Tensor]:
    names = {"norm1": "norm1", "conv1": "conv1", "emb_proj": "time_emb_proj", "norm2": "norm2",
             "conv2": "conv2"}
    if isinstance(ours.skip, nn.Conv2d):
        names["skip"] = "conv_shortcut"
    return {f"{theirs}.{names[k.split('.')[0]]}.{k.split('.')[1]}": v for k, v in ours.state_dict().items()}


def _attn(ours: AttentionBlock, theirs: str) -> dict[str, torch.Tensor]:
    c = ours.proj_out.in_channels
    weight, bias = ours.qkv.weight[:, :, 0, 0], ours.qkv.bias
    state = {f"{theirs}.group_norm.weight": ours.norm.weight, f"{theirs}.group_norm.bias": ours.norm.bias,
             f"{theirs}.to_out.0.weight": ours.proj_out.weight[:, :, 0, 0],
             f"{theirs}.to_out.0.bias": ours.proj_out.bias}
    for i, name in enumerate(("to_q", "to_k", "to_v")):  # lit_gen's qkv channels: all q, then k, then v
        state[f"{theirs}.{name}.weight"] = weight[i * c:(i + 1) * c]
        state[f"{theirs}.{name}.bias"] = bias[i * c:(i + 1) * c]
    return state


def _unit(unit: nn.Module, block: str, index: int, resample: str) -> dict[str, torch.Tensor]:
    """One unit of lit_gen's down or up path: its residual block, attention and resampling convolution."""
    state = {}
    for layer in unit:
        if isinstance(layer, ResBlock):
            state |= _res(layer, f"{block}.resnets.{index}")
        elif isinstance(layer, AttentionBlock):
            state |= _attn(layer, f"{block}.attentions.{index}")
        elif isinstance(layer, (Downsample, Upsample)):
            state |= {f"{block}.{resample}.0.conv.{k}": v for k, v in layer.conv.state_dict().items()}
    return state


def unet2d_state_dict(net: UNet) -> dict[str, torch.Tensor]:
    """``net``'s weights under ``UNet2DModel``'s names (for :func:`unet2d_config`'s model)."""
    levels, per_level = len(_mults(net)), _blocks_per_level(net)
    state = {f"conv_in.{k}": v for k, v in net.conv_in.state_dict().items()}
    for i, layer in ((1, net.time_embed[0]), (2, net.time_embed[2])):
        state |= {f"time_embedding.linear_{i}.{k}": v for k, v in layer.state_dict().items()}
    if net.label_embed is not None:
        state["class_embedding.weight"] = net.label_embed.weight
    units = iter(net.down)
    for level in range(levels):
        for i in range(per_level):
            state |= _unit(next(units), f"down_blocks.{level}", i, "downsamplers")
        if level < levels - 1:
            state |= _unit(next(units), f"down_blocks.{level}", 0, "downsamplers")
    state |= _res(net.middle[0], "mid_block.resnets.0") | _attn(net.middle[1], "mid_block.attentions.0")
    state |= _res(net.middle[2], "mid_block.resnets.1")
    units = iter(net.up)
    for block in range(levels):
        for i in range(per_level + 1):
            state |= _unit(next(units), f"up_blocks.{block}", i, "upsamplers")
    state |= {f"conv_norm_out.{k}": v for k, v in net.norm_out.state_dict().items()}
    state |= {f"conv_out.{k}": v for k, v in net.conv_out.state_dict().items()}
    return {k: v.detach().clone() for k, v in state.items()}


def to_unet2d(net: UNet, check: bool = True):
    """A ``UNet2DModel`` equal to lit_gen's ``net``; with ``check``, its output on a random batch is compared
    with ``net``'s (a one-line error if they differ by more than float rounding)."""
    diffusers = require_diffusers("converting lit_gen's UNet to diffusers")
    unet = diffusers.UNet2DModel(**unet2d_config(net))
    unet.load_state_dict(unet2d_state_dict(net))
    unet.eval()
    if check:
        generator = torch.Generator().manual_seed(0)
        x = torch.randn(2, *net.data_shape, generator=generator)
        t = torch.tensor([3.0, 500.0])
        y = torch.tensor([0, net.num_classes]) if net.num_classes else None
        with torch.no_grad():
            ours, theirs = net.eval()(x, t, y), unet(x, t, class_labels=y).sample
        gap = float((ours - theirs).abs().max() / ours.abs().max().clamp(min=1))
        if gap > 1e-4:
            raise ValueError(f"the converted UNet2DModel differs from lit_gen's UNet by {gap:.3g} (relative)")
    return unet
