"""The KL-regularised autoencoder of latent diffusion (Rombach et al. 2022, Sec. 3): it compresses images into
a latent grid that a diffusion or flow model then learns (any noise-process method's ``autoencoder_ckpt``)."""

from __future__ import annotations

import math
from typing import Literal

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn

from lit_gen.dalle.reconstruction import reconstruction
from lit_gen.image_logging import log_image
from lit_gen.likelihood import bits_per_dim, dequantize_centred
from lit_gen.methods.base import LitGenModule, _adam, eval_mode
from lit_gen.nets.autoencoder import AutoencoderNet, gaussian_kl, posterior_sample
from lit_gen.nets.perceptual import PerceptualLoss
from lit_gen.visual import image_grid


class Autoencoder(LitGenModule):
    """A Gaussian encoder q(z | x) and a decoder p(x | z) (``recon_loss`` ``l1``: Laplace, LDM's; ``mse``:
    Gaussian, with scale ``recon_scale``), trained on the reconstruction NLL plus ``kl_weight`` times KL(q(z |
    x) || N(0, I)), both per image and divided by the image's dimensions; LDM weighs the KL by 1e-6 so the
    latents keep detail, and the latent model's scale (measured at its fit start) brings them to unit
    variance.

    Logged: ``train/loss``, ``train/recon`` (nats/dim), ``train/kl`` (nats per latent dimension);
    ``val/recon_mse`` and ``val/recon_l1`` of the posterior mean's reconstruction, reconstructions in
    TensorBoard; ``lit-gen test`` reports ``test/recon_mse``, ``test/recon_l1`` and ``test/elbo_bpd`` (-ELBO
    with the KL at weight 1 on dequantised images, an upper bound on -log2 P(8-bit image) / D, through
    ``lit_gen.likelihood``).

    Args:
        data_shape: (C, H, W); linked from the DataModule by the CLI.
        num_classes: unused; linked from the DataModule.
        latent_channels: channels of the latent grid.
        channels: width of the first stage.
        channel_mults: width per stage; the downsampling factor is 2**(len(channel_mults) - 1).
        res_blocks: residual blocks per stage.
        recon_loss: ``l1`` (Laplace) or ``mse`` (Gaussian).
        recon_scale: the decoder's scale on the [-1, 1] image scale.
        kl_weight: weight of the KL (1 is the ELBO, LDM's 1e-6 a light regulariser).
        perceptual_weights: a VGG-16 weights file (torchvision's ``vgg16`` state dict, nothing is downloaded)
            for a perceptual term (LPIPS-like feature distance); None: none.
        perceptual_weight: weight of the perceptual term.
        optimizer: see :class:`~lit_gen.methods.base.LitGenModule`.
        lr_scheduler: see :class:`~lit_gen.methods.base.LitGenModule`.
        ema_decay: see :class:`~lit_gen.methods.base.LitGenModule` (0: none).
        seed: see :class:`~lit_gen.methods.base.LitGenModule`.
    """

    usage = ("it is the latent space of a latent diffusion or flow model: train one with "
             "model.init_args.autoencoder_ckpt and sample that")  # what lit-gen sample says

    family = "diffusion"

    @classmethod
    def tiny_args(cls, init_args: dict, data_shape: tuple[int, ...]) -> dict:
        tiny = {"channels": 8, "channel_mults": [1, 2], "latent_channels": 2}
        return super().tiny_args(init_args, data_shape) | tiny

    def __init__(
        self,
        data_shape: tuple[int, ...] = (3, 32, 32),
        num_classes: int = 0,
        latent_channels: int = 4,
        channels: int = 64,
        channel_mults: tuple[int, ...] = (1, 2, 2),
        res_blocks: int = 1,
        recon_loss: Literal["l1", "mse"] = "l1",
        recon_scale: float = 0.1,
        kl_weight: float = 1e-6,
        perceptual_weights: str | None = None,
        perceptual_weight: float = 1.0,
        optimizer: OptimizerCallable = _adam,
        lr_scheduler: LRSchedulerCallable | None = None,
        ema_decay: float = 0.0,
        seed: int = 0,
    ) -> None:
        super().__init__(optimizer, lr_scheduler, ema_decay, seed)
        self.save_hyperparameters()
        if recon_loss not in ("l1", "mse"):
            raise ValueError(f"recon_loss={recon_loss!r} is not supported; choose 'l1' or 'mse'")
        if not recon_scale > 0 or kl_weight < 0:
            raise ValueError(f"recon_scale={recon_scale} must be > 0 and kl_weight={kl_weight} >= 0")
        self.data_shape = tuple(data_shape)
        self.recon = reconstruction(recon_loss, recon_scale)
        self.num_dims = math.prod(self.data_shape)
        self._shown: torch.Tensor | None = None

    def build_net(self) -> nn.Module:
        h = self.hparams
        return AutoencoderNet(self.data_shape, h.latent_channels, h.channels, h.channel_mults, h.res_blocks)

    def _terms(self, net: nn.Module, x: torch.Tensor, generator=None) -> tuple[torch.Tensor, torch.Tensor,
                                                                                 torch.Tensor]:
        """(-log p(x | z) with z ~ q(z | x), KL, the decoder's output), per image in nats."""
        mean, logvar = net.moments(x)
        out = net.decode(posterior_sample(mean, logvar, generator))
        return self.recon.nll(out, x), gaussian_kl(mean, logvar), out

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        x = batch["x"]
        recon, kl, out = self._terms(self.net, x)
        loss = (recon + self.hparams.kl_weight * kl).mean() / self.num_dims
        if self.hparams.perceptual_weights:
            perceptual = self._perceptual(x.device)(out, x).mean()
            loss = loss + self.hparams.perceptual_weight * perceptual
            self.log("train/perceptual", perceptual)
        latent_dims = kl.new_tensor(float(math.prod(self.net.latent_shape)))
        self.log_dict({"train/recon": recon.mean() / self.num_dims, "train/kl": kl.mean() / latent_dims})
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def _perceptual(self, device: torch.device) -> PerceptualLoss:
        """The frozen VGG of ``perceptual_weights``, loaded at the first training step (it is not part of the
        checkpoint: a trained autoencoder loads without that file)."""
        if "_vgg" not in self.__dict__:
            self.__dict__["_vgg"] = PerceptualLoss(self.hparams.perceptual_weights)
        return self.__dict__["_vgg"].to(device)

    def _reconstruction_errors(self, net: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x_hat = self.recon.mean(net.decode(net.moments(x)[0]))
        return x_hat, torch.stack([(x_hat - x).pow(2).mean(), (x_hat - x).abs().mean()])

    def on_validation_epoch_start(self) -> None:
        self._shown = None

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        x = batch["x"]
        with eval_mode(self.sampling_net) as net:
            x_hat, (mse, l1) = self._reconstruction_errors(net, x)
        self.log("val/recon_mse", mse, prog_bar=True, sync_dist=True)
        self.log("val/recon_l1", l1, sync_dist=True)
        if batch_idx == 0:
            self._shown = torch.cat([x[:8], x_hat[:8]])

    def on_validation_epoch_end(self) -> None:
        if self._shown is not None and self.trainer.is_global_zero and not self.trainer.sanity_checking:
            grid = image_grid(self._shown, nrow=len(self._shown) // 2)
            log_image(self.trainer, "val/reconstructions", grid, self.global_step)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        x, generator = batch["x"], self.eval_generator(batch_idx)
        with eval_mode(self.sampling_net) as net:
            _, (mse, l1) = self._reconstruction_errors(net, x)
            y, bin_width = dequantize_centred(x, generator)
            recon, kl, _ = self._terms(net, y, generator)
        self.log_dict({"test/recon_mse": mse, "test/recon_l1": l1,
                       "test/elbo_bpd": bits_per_dim(recon + kl, self.num_dims, bin_width).mean()},
                      sync_dist=True)
