"""Plain nn.Module networks (no Lightning). Denoisers are built as ``net(data_shape, num_classes, **hparams)``
and called as ``net(x, t, y=None)``."""

from collections.abc import Callable

from torch import nn

from lit_gen.nets.diffusers_unet import DiffusersUNet
from lit_gen.nets.dit import DiT
from lit_gen.nets.embeddings import timestep_embedding
from lit_gen.nets.encoder import EncoderUNet
from lit_gen.nets.mlp import MLPDenoiser
from lit_gen.nets.text_encoder import TextConditionedNet, TextEncoder
from lit_gen.nets.unet import UNet

# A denoiser class whose first three parameters are (data_shape, num_classes, out_channels); YAML gives the
# rest.
NetFactory = Callable[[tuple[int, ...], int, int], nn.Module]

__all__ = ["DiT", "DiffusersUNet", "EncoderUNet", "MLPDenoiser", "NetFactory", "TextConditionedNet",
           "TextEncoder", "UNet", "timestep_embedding"]
