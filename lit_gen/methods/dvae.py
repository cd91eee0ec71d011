"""DALL-E's stage 1: a discrete VAE (Ramesh et al. 2021, Sec. 2.1) that turns an image into a grid of
codes."""

from __future__ import annotations

import math
from typing import Literal

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn

from lit_gen.dalle.codec import dvae_net
from lit_gen.dalle.reconstruction import reconstruction
from lit_gen.dalle.relaxation import (
    categorical_sample,
    codebook_usage,
    exponential_anneal,
    gumbel_softmax,
    kl_to_uniform,
    linear_ramp,
    marginal_kl_to_uniform,
)
from lit_gen.image_logging import log_image
from lit_gen.likelihood import bits_per_dim, dequantize_centred
from lit_gen.methods.base import LitGenModule, _adam, eval_mode
from lit_gen.visual import image_grid


class DiscreteVAE(LitGenModule):
    """Encoder logits over ``num_codes`` codes per grid position, relaxed with Gumbel-softmax at a temperature
    annealed from ``tau_start`` to ``tau_end``; the loss is -ELBO with the KL to the uniform prior weighted by
    a ramp to ``kl_weight`` (the paper: tau 1 -> 1/16, KL weight 0 -> 6.6), per image dimension.

    Logged: ``train/loss``, ``train/recon`` (nats/dim), ``train/kl`` (nats per code position), ``train/tau``,
    ``train/kl_weight``; ``val/recon_mse`` of the hard (argmax) codes, ``val/elbo_bpd``, and over the whole
    validation epoch ``val/perplexity`` (of the argmax codes; ``num_codes`` when all are used equally) and
    ``val/dead_codes``; reconstructions (originals above, reconstructions below) in TensorBoard.
    ``lit-gen test`` reports ``test/elbo_bpd``: -ELBO in bits/dim with a hard code sample and centred
    dequantisation, an upper bound on -log2 P(8-bit image) / D (``lit_gen.likelihood``).

    Args:
        data_shape: (C, H, W); linked from the DataModule by the CLI.
        num_classes: unused (the dVAE ignores labels); linked from the DataModule.
        num_codes: K, the codebook size.
        channels: width of the encoder and decoder.
        num_downsamples: the grid side is the image side / 2**num_downsamples.
        res_blocks: residual blocks per stage.
        code_dim: size of a code's embedding.
        recon_loss: ``logit_laplace`` (the paper's), ``mse`` (Gaussian) or ``l1`` (Laplace).
        recon_scale: standard deviation (mse) or scale (l1) of the decoder on the [-1, 1] scale.
        tau_start: Gumbel-softmax temperature at step 0.
        tau_end: temperature after ``tau_steps``.
        tau_steps: optimizer steps of the geometric temperature decay.
        kl_weight: weight of the KL term after ``kl_steps``.
        kl_steps: optimizer steps of the linear KL-weight ramp from 0.
        usage_weight: weight of KL(q averaged over the batch || uniform), in nats, added to the per-dimension
            loss (0: the paper's objective). It spreads the batch over the codebook, which the per-position KL
            does not (codebook collapse).
        optimizer: see :class:`~lit_gen.methods.base.LitGenModule`.
        lr_scheduler: see :class:`~lit_gen.methods.base.LitGenModule`.
        ema_decay: see :class:`~lit_gen.methods.base.LitGenModule` (0: none).
        seed: see :class:`~lit_gen.methods.base.LitGenModule`.
    """

    usage = ("it is DALL-E's image tokenizer: train a DALLE transformer on it "
             "(model.init_args.dvae_ckpt) and sample that")  # what lit-gen sample says

    family = "dalle"

    @classmethod
    def tiny_args(cls, init_args: dict, data_shape: tuple[int, ...]) -> dict:
        tiny = {"num_codes": 16, "channels": 8, "code_dim": 8, "tau_steps": 2, "kl_steps": 2}
        return super().tiny_args(init_args, data_shape) | tiny

    def __init__(
        self,
        data_shape: tuple[int, ...] = (3, 32, 32),
        num_classes: int = 0,
        num_codes: int = 512,
        channels: int = 64,
        num_downsamples: int = 2,
        res_blocks: int = 1,
        code_dim: int = 64,
        recon_loss: Literal["logit_laplace", "mse", "l1"] = "logit_laplace",
        recon_scale: float = 0.1,
        tau_start: float = 1.0,
        tau_end: float = 1 / 16,
        tau_steps: int = 5000,
        kl_weight: float = 6.6,
        kl_steps: int = 1000,
        usage_weight: float = 0.0,
        optimizer: OptimizerCallable = _adam,
        lr_scheduler: LRSchedulerCallable | None = None,
        ema_decay: float = 0.0,
        seed: int = 0,
    ) -> None:
        super().__init__(optimizer, lr_scheduler, ema_decay, seed)
        self.save_hyperparameters()
        if num_codes < 2:
            raise ValueError(f"num_codes={num_codes} must be >= 2")
        if not 0 < tau_end <= tau_start:
            raise ValueError(f"tau_start={tau_start} and tau_end={tau_end} must satisfy 0 < tau_end <= "
                             f"tau_start")
        if kl_weight < 0:
            raise ValueError(f"kl_weight={kl_weight} must be >= 0")
        self.data_shape = tuple(data_shape)
        self.recon = reconstruction(recon_loss, recon_scale)
        self.num_dims = math.prod(self.data_shape)
        self.register_buffer("code_counts", torch.zeros(num_codes, dtype=torch.long), persistent=False)
        self._shown: torch.Tensor | None = None

    def build_net(self) -> nn.Module:
        return dvae_net(self.hparams)

    @property
    def num_codes(self) -> int:
        return self.hparams.num_codes

    # --- schedules ------------------------------------------------------------------------------------
    def tau(self) -> float:
        h = self.hparams
        return exponential_anneal(self.global_step, h.tau_start, h.tau_end, h.tau_steps)

    def kl_weight(self) -> float:
        return linear_ramp(self.global_step, self.hparams.kl_weight, self.hparams.kl_steps)

    # --- training -------------------------------------------------------------------------------------
    def _elbo_terms(self, net: nn.Module, x: torch.Tensor, z: torch.Tensor, logits: torch.Tensor):
        """(-log p(x | z), KL(q(z | x) || uniform)), each (B,) in nats."""
        return self.recon.nll(net.decode(z), x), kl_to_uniform(logits).flatten(1).sum(1)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        x = batch["x"]
        logits = self.net.logits(x)  # (B, K, h, w)
        tau, beta = self.tau(), self.kl_weight()
        recon, kl = self._elbo_terms(self.net, x, gumbel_softmax(logits, tau), logits)
        usage = marginal_kl_to_uniform(logits)
        loss = (recon + beta * kl).mean() / self.num_dims + self.hparams.usage_weight * usage
        positions = logits.shape[2] * logits.shape[3]
        self.log_dict({"train/recon": recon.mean() / self.num_dims, "train/kl": kl.mean() / positions,
                       "train/usage_kl": usage, "train/tau": tau, "train/kl_weight": beta})
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def _elbo_bpd(self, net: nn.Module, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """-ELBO in bits/dim per image with one hard code sample z ~ q(z | x) on dequantised data."""
        y, _ = dequantize_centred(x, generator)
        logits = net.logits(y)
        z = nn.functional.one_hot(categorical_sample(logits, generator), self.num_codes).permute(0, 3, 1,
                                                                                                 2).float()
        recon, kl = self._elbo_terms(net, y, z, logits)
        return bits_per_dim(recon + kl, self.num_dims, self.recon.bin_width)

    def on_validation_epoch_start(self) -> None:
        self.code_counts.zero_()
        self._shown = None

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        x = batch["x"]
        with eval_mode(self.sampling_net) as net:
            codes = net.logits(x).argmax(1)  # (B, h, w)
            x_hat = self.recon.mean(net.decode_indices(codes))
            bpd = self._elbo_bpd(net, x, self.eval_generator(batch_idx))
        self.code_counts += torch.bincount(codes.flatten(), minlength=self.num_codes)
        self.log("val/recon_mse", ((x_hat - x) ** 2).mean(), prog_bar=True, sync_dist=True)
        self.log("val/elbo_bpd", bpd.mean(), sync_dist=True)
        if batch_idx == 0:
            self._shown = torch.cat([x[:8], x_hat[:8]])

    def on_validation_epoch_end(self) -> None:
        # over every rank's data
        counts = self.trainer.strategy.reduce(self.code_counts.clone(), reduce_op="sum")
        perplexity, dead = codebook_usage(counts)
        self.log_dict({"val/perplexity": perplexity, "val/dead_codes": float(dead)}, sync_dist=False)
        if self._shown is not None and self.trainer.is_global_zero and not self.trainer.sanity_checking:
            log_image(self.trainer, "val/reconstructions",
                      image_grid(self._shown, nrow=len(self._shown) // 2),
                      self.global_step)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        with eval_mode(self.sampling_net) as net:
            bpd = self._elbo_bpd(net, batch["x"], self.eval_generator(batch_idx))
        self.log("test/elbo_bpd", bpd.mean(), sync_dist=True)

