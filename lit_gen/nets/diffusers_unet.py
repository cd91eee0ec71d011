"""diffusers' ``UNet2DModel`` as a lit_gen denoiser: ``net(x, t, y)`` for every method whose network takes
(x, model time[, labels]). Needs the ``diffusers`` extra (``pip install 'lit_gen[diffusers]'``)."""

from __future__ import annotations

import torch
from torch import nn

EXTRA = "pip install 'lit_gen[diffusers]'"


def require_diffusers(what: str = "lit_gen.nets.DiffusersUNet"):
    """The diffusers package, or a one-line error naming the extra that installs it."""
    try:
        import diffusers
    except ImportError as err:
        raise ValueError(f"{what} needs the diffusers package, which is not installed: {EXTRA}") from err
    return diffusers


class DiffusersUNet(nn.Module):
    """A ``diffusers.UNet2DModel`` with lit_gen's denoiser signature. Its timestep input is the method's model
    time (DDPM's integer step; (N - 1) t of a score SDE, or sigma(t) with ``time_input: sigma``, as NCSN++
    with a ``fourier`` embedding takes it).

    The keyword arguments are ``UNet2DModel``'s own config keys (``block_out_channels``,
    ``layers_per_block``, ``down_block_types``, ...); ``sample_size``, ``in_channels`` and ``out_channels``
    follow ``data_shape`` and the method (values given for them are replaced), and a class-conditional
    method's labels go through ``num_class_embeds``: ``num_classes + 1`` with the null label ``num_classes``
    (lit_gen's convention), ``num_classes`` with ``null_class: false``.

    Args:
        data_shape: (C, H, W) of one sample.
        num_classes: classes of a conditional method (0: unconditional).
        out_channels: what the method predicts (2C with a learned variance).
        null_class: a conditional UNet has one more class embedding, the null label ``num_classes`` of
            classifier-free guidance (lit_gen's convention); False for an imported UNet trained without one
            (it then samples conditionally only).
        unit_range: the UNet takes images in [0, 1] and noise levels on that scale, and returns the score
            there (score_sde's VE models, diffusers' ScoreSdeVe pipelines): with ``time_input: sigma`` and
            ``prediction_type: score``, it is called at ((x + 1) / 2, sigma / 2) and its score halved.
        gradient_checkpointing: recompute the UNet's blocks in backward (diffusers' own checkpointing).
        **config: ``UNet2DModel``'s config keys.
    """

    # a seconds-long CPU version, for tests and smoke runs
    tiny_args = {"block_out_channels": [16, 32], "layers_per_block": 1, "norm_num_groups": 8,
                 "down_block_types": ["DownBlock2D", "AttnDownBlock2D"],
                 "up_block_types": ["AttnUpBlock2D", "UpBlock2D"], "attention_head_dim": 8}

    def __init__(self, data_shape: tuple[int, ...] = (3, 32, 32), num_classes: int = 0, out_channels: int = 3,
                 null_class: bool = True, unit_range: bool = False, gradient_checkpointing: bool = False,
                 **config) -> None:
        super().__init__()
        require_diffusers()
        from diffusers import UNet2DModel  # here, so that jsonargparse reads **config as UNet2DModel's keys
        if len(data_shape) != 3:
            raise ValueError(f"DiffusersUNet takes images (C, H, W), got data_shape={tuple(data_shape)}")
        size = data_shape[1] if data_shape[1] == data_shape[2] else tuple(data_shape[1:])
        given = {"in_channels": data_shape[0], "sample_size": size}  # they replace any given
        embeds = num_classes + int(null_class) if num_classes else None
        if config.get("num_class_embeds") not in (None, embeds):
            raise ValueError(f"DiffusersUNet num_class_embeds={config['num_class_embeds']} does not fit "
                             f"{num_classes} classes (null_class={null_class}): leave it out")
        config = {**config, **given, "out_channels": out_channels, "num_class_embeds": embeds}
        self.unet = UNet2DModel(**config)
        self.num_classes, self.null_class, self.unit_range = num_classes, null_class, unit_range
        if gradient_checkpointing:
            self.unet.enable_gradient_checkpointing()

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        t = t.expand(x.shape[0]) if t.ndim == 0 else t
        labels = y if self.num_classes else None
        if self.num_classes and labels is None:  # an unconditional call of a conditional net: the null label
            labels = torch.full((x.shape[0],), self.num_classes, device=x.device, dtype=torch.long)
        if labels is not None and not self.null_class and bool((labels >= self.num_classes).any()):
            raise ValueError("this UNet has no null class, so it runs conditionally only: classifier-free "
                             "guidance (guidance_scale other than 1), unconditional samples and the ODE "
                             "likelihood need one (import with --null_class true if it was trained with one)")
        if self.unit_range:  # x = 2 u - 1: sigma_u = sigma / 2 and the score in x is half the score in u
            return self.unet((x + 1) / 2, t.float() / 2, class_labels=labels).sample / 2
        return self.unet(x, t.float(), class_labels=labels).sample  # float32: integer steps stay exact

    def fsdp_units(self) -> list[nn.Module]:
        """The UNet's down, middle and up blocks: FSDP's and ZeRO-3's units of sharding."""
        unet = self.unet
        return [*unet.down_blocks, *([unet.mid_block] if unet.mid_block is not None else []), *unet.up_blocks]
