"""DDPM (Ho et al. 2020): a network trained to predict the noise added by q(x_t | x0), sampled by
ancestral steps (or any sampler of lit_gen.diffusion on the same checkpoint)."""

from __future__ import annotations

from typing import Literal

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn

from lit_gen.diffusion import GaussianDiffusion
from lit_gen.diffusion.losses import diffusion_loss_terms
from lit_gen.diffusion.timesteps import LossAwareTimesteps, UniformTimesteps
from lit_gen.methods.base import _adam, eval_mode
from lit_gen.methods.noise_process import NoiseProcessMethod, conditions
from lit_gen.methods.text import TextConditioning
from lit_gen.nets import NetFactory, UNet
from lit_gen.process import OutputLayout
from lit_gen.sampling import NoiseModel
from lit_gen.utils import randn


class DDPM(NoiseProcessMethod):
    """Denoising diffusion probabilistic model trained with L_simple (Ho et al. 2020, Eq. 14), or with the
    hybrid or bound objectives and learned variance of Nichol & Dhariwal 2021 (see :class:`ImprovedDDPM`).

    Args:
        data_shape: shape of one sample, (C, H, W) or (D,); linked from the DataModule by the CLI.
        num_classes: number of labels in the data; linked from the DataModule by the CLI.
        net: the denoiser, built as ``net(data_shape, num_classes, out_channels)`` (``lit_gen.nets.UNet`` or
            ``MLPDenoiser``); out_channels is 2C with a learned variance.
        num_timesteps: diffusion steps T (1000 in the paper).
        beta_schedule: ``linear`` (Ho et al. 2020), ``cosine`` (Nichol & Dhariwal 2021) or ``scaled_linear``
            (sqrt(beta) linear, Stable Diffusion's).
        beta_start: beta_1 of the linear schedules (1e-4 in Ho et al. 2020).
        beta_end: beta_T of the linear schedules (0.02 in Ho et al. 2020).
        prediction_type: what the network predicts: ``eps`` (the paper), ``x0`` or ``v``.
        variance: reverse-process variance: ``small`` (beta_tilde) or ``large`` (beta), fixed as in Ho et al.
            2020, or ``learned`` as in Nichol & Dhariwal 2021 (needs ``loss_type`` hybrid or vlb).
        loss_type: ``simple`` (L_simple), ``hybrid`` (L_simple + vlb_weight * L_vlb with the mean frozen in
            L_vlb, Nichol & Dhariwal 2021, Eq. 16) or ``vlb`` (L_vlb alone).
        vlb_weight: lambda of the hybrid loss (0.001 in the paper).
        timestep_sampler: ``uniform``, or ``loss-aware`` importance sampling of t (Nichol & Dhariwal 2021,
            Sec. 3.3; its history is gathered across DDP ranks and saved in checkpoints).
        class_conditional: feed labels ``y`` to the network (needs a labelled dataset); label ``num_classes``
            is the learned null label, "unconditional".
        p_uncond: with ``class_conditional``, the probability of replacing a training label by the null label
            (condition dropout for classifier-free guidance, Ho & Salimans 2022; 0.1 to 0.2 in the paper).
        guidance_scale: default classifier-free guidance scale s for sample grids and ``lit-gen sample``:
            0 unconditional, 1 conditional, > 1 stronger (the paper's w is s - 1).
        clip_denoised: clamp predicted x0 to [-1, 1] while sampling (images; turn off for unbounded data;
            never on latents).
        sampler: default sampler for sample grids and ``lit-gen sample``: ``ddpm`` (ancestral) or ``ddim``.
        sampling_steps: default number of sampling steps (None: all T).
        spacing: default spacing of the ``ddpm`` and ``ddim`` samplers' steps: ``linear``, ``quadratic``, or
            diffusers' ``leading`` and ``trailing`` (an imported pipeline's ``timestep_spacing``).
        bound_timesteps: what ``lit-gen test`` reports as test/bpd: None the full bound over all T steps (T
            passes per batch: the figure to report); K >= 2 its unbiased estimate from K random steps per
            image (K + 1 passes), with test/bpd_se, the standard error of that estimate over the draw of t.
        ode_bpd: ``lit-gen test`` also reports test/ode_bpd (test/ode_nll in nats for vectors), the
            likelihood of the probability-flow ODE on the model's process (DPM-Solver's continuous extension
            of its steps), with test/ode_nfe.
        init_from: a checkpoint of this method (lit_gen's, or a diffusers pipeline imported by ``lit-gen
            import diffusers``) whose sampling weights a fresh fit starts from: fine-tuning, with a fresh
            optimizer.
        text: condition on captions (:class:`~lit_gen.methods.text.TextConditioning`: a text encoder whose
            states a ``context_dim`` net cross-attends to); ``p_uncond`` drops them for classifier-free
            guidance. None: no text.
        autoencoder_ckpt: an :class:`~lit_gen.methods.Autoencoder` checkpoint: the model learns its latents
            (scaled to unit variance on the training data at fit start) and decodes its samples (latent
            diffusion, Rombach et al. 2022).
        autoencoder_hparams: filled from ``autoencoder_ckpt`` when the model is made (leave unset).
        latent_cache: a file the training images' posterior moments are kept in across runs (every model on
            the same autoencoder can share it): read at fit start when the same autoencoder made it, written
            at the end of each training epoch. None: kept in memory for the run.
        optimizer: see :class:`~lit_gen.methods.base.LitGenModule`.
        lr_scheduler: see :class:`~lit_gen.methods.base.LitGenModule`.
        ema_decay: see :class:`~lit_gen.methods.base.LitGenModule`.
        seed: see :class:`~lit_gen.methods.base.LitGenModule`.
    """

    evaluation_args = frozenset({"bound_timesteps", "ode_bpd"})

    family = "diffusion"

    @classmethod
    def tiny_args(cls, init_args: dict, data_shape: tuple[int, ...]) -> dict:
        return super().tiny_args(init_args, data_shape) | {"num_timesteps": 10}

    def __init__(
        self,
        data_shape: tuple[int, ...] = (1, 16, 16),
        num_classes: int = 0,
        net: NetFactory = UNet,
        num_timesteps: int = 1000,
        beta_schedule: Literal["linear", "cosine", "scaled_linear"] = "linear",
        beta_start: float = 1e-4,
        beta_end: float = 0.02,
        prediction_type: Literal["eps", "x0", "v"] = "eps",
        variance: Literal["small", "large", "learned"] = "small",
        loss_type: Literal["simple", "hybrid", "vlb"] = "simple",
        vlb_weight: float = 0.001,
        timestep_sampler: Literal["uniform", "loss-aware"] = "uniform",
        class_conditional: bool = False,
        p_uncond: float = 0.1,
        guidance_scale: float = 1.0,
        clip_denoised: bool = True,
        sampler: Literal["ddpm", "ddim"] = "ddpm",
        sampling_steps: int | None = None,
        spacing: Literal["linear", "quadratic", "leading", "trailing"] = "linear",
        bound_timesteps: int | None = None,
        ode_bpd: bool = False,
        init_from: str | None = None,
        text: TextConditioning | None = None,
        autoencoder_ckpt: str | None = None,
        autoencoder_hparams: dict | None = None,
        latent_cache: str | None = None,
        optimizer: OptimizerCallable = _adam,
        lr_scheduler: LRSchedulerCallable | None = None,
        ema_decay: float = 0.9999,
        seed: int = 0,
    ) -> None:
        super().__init__(optimizer, lr_scheduler, ema_decay, seed)
        self.save_hyperparameters(ignore=["autoencoder_hparams"])
        text = conditions(class_conditional, text, num_classes, p_uncond, guidance_scale)
        if variance == "learned" and loss_type == "simple":
            raise ValueError("variance='learned' is trained by the bound: use loss_type 'hybrid' or 'vlb', "
                             "not 'simple'")
        if bound_timesteps is not None and bound_timesteps < 2:
            raise ValueError(f"bound_timesteps={bound_timesteps}: use None (the full bound) or K >= 2 random "
                             f"steps")
        if timestep_sampler not in ("uniform", "loss-aware"):
            raise ValueError(f"timestep_sampler={timestep_sampler!r} is not supported; choose 'loss-aware' "
                             f"or 'uniform'")
        self.data_shape = self.init_conditions(text, autoencoder_ckpt, autoencoder_hparams, tuple(data_shape),
                                               latent_cache)
        self.num_classes = num_classes if class_conditional else 0
        self.init_from = init_from
        self.prediction_type = prediction_type
        self.variance = variance
        self.loss_type = loss_type
        out_channels = self.data_shape[0] * (2 if variance == "learned" else 1)
        self.net_factory, self.out_channels = net, out_channels
        self.diffusion = GaussianDiffusion(beta_schedule, num_timesteps, beta_start=beta_start,
                                           beta_end=beta_end)
        sampler_class = LossAwareTimesteps if timestep_sampler == "loss-aware" else UniformTimesteps
        self.timesteps = sampler_class(num_timesteps)

    def build_net(self) -> nn.Module:
        return self.denoiser(self.net_factory, self.data_shape, self.num_classes, self.out_channels)

    def loss_terms(self, net: nn.Module, batch: dict, generator: torch.Generator | None = None,
                   y: torch.Tensor | None = None) -> dict:
        """The terms of :func:`~lit_gen.diffusion.losses.diffusion_loss_terms` at t drawn by the timestep
        sampler (uniformly when a ``generator`` is given, as in validation), ``loss`` weighted by 1 / (T
        p_t); ``y``: the condition (default: the batch's, none dropped)."""
        x0 = batch["x"]  # (B, *data_shape)
        y = self.condition_of(batch) if y is None else y
        if generator is None:
            t, weights = self.timesteps.sample(x0.shape[0], x0.device)
        else:
            t, weights = self.diffusion.sample_timesteps(x0.shape[0], x0.device, generator), None
        eps = randn(x0.shape, generator, x0.device, x0.dtype)
        terms = diffusion_loss_terms(
            self.diffusion, lambda x_t, t_: net(x_t, t_, y), x0, t, eps, self.prediction_type, self.variance,
            self.loss_type, self.hparams.vlb_weight,
        )
        terms["t"] = t
        if weights is not None:
            terms["loss"] = terms["loss"] * weights
        return terms

    def loss(self, net: nn.Module, batch: dict, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.loss_terms(net, batch, generator)["loss"].mean()

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        batch = self.latent_batch(batch, sample=True)
        # dropped conditions are drawn from the per-step seed: resume stays exact
        terms = self.loss_terms(self.net, batch, y=self.condition_of(batch, self.hparams.p_uncond))
        loss = terms["loss"].mean()
        if isinstance(self.timesteps, LossAwareTimesteps):
            # every rank records every rank's (t, L_t), so the histories stay identical
            signal = terms.get("vlb", terms["mse"]).detach()
            self.timesteps.update(self.all_gather(terms["t"]).flatten(), self.all_gather(signal).flatten())
        self.log("train/loss", loss, prog_bar=True)
        if "vlb" in terms:
            self.log("train/mse", terms["mse"].mean())
            self.log("train/vlb", terms["vlb"].mean())
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        batch = self.latent_batch(batch, sample=False)
        with eval_mode(self.sampling_net) as net:
            loss = self.loss(net, batch, self.eval_generator(batch_idx))
        self.log("val/loss", loss, prog_bar=True, sync_dist=True)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        """test/loss and the negative log-likelihood bound in bits/dim with its parts: all T terms, or the
        unbiased estimate of ``bound_timesteps``, whose variance over t is summed for test/bpd_se; with
        ``ode_bpd``, the ODE likelihood too. A latent model reports test/loss only (its bounds would be of
        latents, not of images)."""
        batch = self.latent_batch(batch, sample=False)
        with eval_mode(self.sampling_net) as net:
            generator = self.eval_generator(batch_idx)
            self.log("test/loss", self.loss(net, batch, generator), sync_dist=True)
            if self.autoencoder is not None:
                return
            y = self.condition_of(batch)
            nll = self.diffusion.nll_bpd(
                lambda x_t, t: net(x_t, t, y), batch["x"], self.prediction_type, self.variance, generator,
                self.hparams.get("bound_timesteps"), progress=self._show_progress(),
            )
            if self.hparams.get("ode_bpd"):  # bits/dim of images, the NLL in nats of vectors
                ode = self.log_likelihood(batch["x"], generator, net)
                name, value = ("ode_bpd", ode["bpd"]) if "bpd" in ode else ("ode_nll", -ode["log_p"])
                self.log(f"test/{name}", value.mean().float(), sync_dist=True, prog_bar=True)
                self.log("test/ode_nfe", float(ode["nfe"]), sync_dist=True)
        if "var" in nll:
            var = nll.pop("var")  # (B,) float64: each image's estimate's variance over t
            self._bound_var += torch.stack([var.sum(), var.new_tensor(float(var.numel()))])
        for name, value in nll.items():
            self.log("test/bpd" if name == "bpd" else f"test/bpd_{name}", value.mean().float(),
                     sync_dist=True)

    def on_test_epoch_start(self) -> None:
        # (sum of variances, images)
        self._bound_var = torch.zeros(2, dtype=torch.float64, device=self.device)

    def on_test_epoch_end(self) -> None:
        if self.hparams.get("bound_timesteps"):
            var_sum, n = self.trainer.strategy.reduce(self._bound_var, reduce_op="sum")
            self.log("test/bpd_se", (var_sum.sqrt() / n).float(), rank_zero_only=True)

    def _show_progress(self) -> bool:
        """A bar for long inner loops: on rank 0, when the trainer shows one."""
        trainer = self._trainer
        return trainer is not None and trainer.is_global_zero and trainer.progress_bar_callback is not None

    # --- sampling: the shared assembly on this model's process ------------------------------------------
    def noise_model(self, net: nn.Module) -> NoiseModel:
        h = self.hparams
        steps = h.sampling_steps or self.diffusion.num_timesteps
        return NoiseModel(
            type(self).__name__, net, self.diffusion.sde, OutputLayout(self.prediction_type,
                                                                            self.variance == "learned"),
            self.clip_denoised,
            {"sampler": h.sampler, "steps": steps, "denoise": True, "spacing": h.get("spacing") or "linear"},
            self.diffusion,
            self.variance, self.num_classes, h.guidance_scale, self.null_text,
        )

    def classifier_process(self) -> GaussianDiffusion:
        return self.diffusion
