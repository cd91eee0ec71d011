"""Plain nn.Module networks (no Lightning). Denoisers are built as ``net(data_shape, num_classes, **hparams)``
and called as ``net(x, t, y=None)``."""

from lit_gen.nets.embeddings import timestep_embedding
from lit_gen.nets.encoder import EncoderUNet
from lit_gen.nets.mlp import MLPDenoiser
from lit_gen.nets.unet import UNet

__all__ = ["EncoderUNet", "MLPDenoiser", "UNet", "timestep_embedding"]
