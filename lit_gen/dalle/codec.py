"""A trained dVAE as DALL-E's transformer uses it: images <-> grids of codes (plain torch)."""

from __future__ import annotations

import torch
from torch import nn

from lit_gen.dalle.reconstruction import reconstruction
from lit_gen.nets.dvae import DiscreteVAENet
from lit_gen.utils import eval_mode


def dvae_net(hparams: dict) -> DiscreteVAENet:
    """The network of a DiscreteVAE with these hyperparameters."""
    h = hparams
    return DiscreteVAENet(tuple(h["data_shape"]), h["num_codes"], h["channels"], h["num_downsamples"],
                          h["res_blocks"], h["code_dim"],
                          reconstruction(h["recon_loss"], h["recon_scale"]).channels_per_channel)


class DVAECodec(nn.Module):
    """A trained dVAE's network and decoder distribution: images <-> code grids, always in fp32 (safe inside a
    bf16 run). DALL-E's transformer holds one, frozen.

    Args:
        hparams: the DiscreteVAE's hyperparameters (its checkpoint's ``hyper_parameters``).
    """

    def __init__(self, hparams: dict) -> None:
        super().__init__()
        self.net = dvae_net(hparams)
        self.recon = reconstruction(hparams["recon_loss"], hparams["recon_scale"])

    @property
    def num_codes(self) -> int:
        return self.net.num_codes

    @property
    def grid(self) -> tuple[int, int]:
        return self.net.grid

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The most likely code of each position, (B, h, w), of images (B, C, H, W) in [-1, 1]."""
        with eval_mode(self.net) as net, torch.autocast(x.device.type, enabled=False):
            return net.logits(x.float()).argmax(1)

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) in [-1, 1] of code grids (B, h, w)."""
        with eval_mode(self.net) as net, torch.autocast(codes.device.type, enabled=False):
            return self.recon.mean(net.decode_indices(codes))
