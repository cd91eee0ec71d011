"""DDPM (Ho et al. 2020): a network trained to predict the noise added by q(x_t | x0), sampled by
ancestral steps (or any sampler of lit_gen.diffusion on the same checkpoint)."""

from __future__ import annotations

from typing import Callable, Literal

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn

from lit_gen.diffusion import GaussianDiffusion, invert_loop, make_sampler, sample_loop
from lit_gen.diffusion.losses import diffusion_loss_terms
from lit_gen.diffusion.timesteps import LossAwareTimesteps, UniformTimesteps
from lit_gen.methods.base import GenerativeModule, SampleOutput, _adam, eval_mode
from lit_gen.nets import UNet
from lit_gen.utils import randn

# A network class whose first three parameters are (data_shape, num_classes, out_channels); YAML gives the rest.
NetFactory = Callable[[tuple[int, ...], int, int], nn.Module]


class DDPM(GenerativeModule):
    """Denoising diffusion probabilistic model trained with L_simple (Ho et al. 2020, Eq. 14), or with the
    hybrid or bound objectives and learned variance of Nichol & Dhariwal 2021 (see :class:`ImprovedDDPM`).

    Args:
        data_shape: shape of one sample, (C, H, W) or (D,); linked from the DataModule by the CLI.
        num_classes: number of labels in the data; linked from the DataModule by the CLI.
        net: the denoiser, built as ``net(data_shape, num_classes, out_channels)`` (``lit_gen.nets.UNet`` or
            ``MLPDenoiser``); out_channels is 2C with a learned variance.
        num_timesteps: diffusion steps T (1000 in the paper).
        beta_schedule: ``linear`` (Ho et al. 2020) or ``cosine`` (Nichol & Dhariwal 2021).
        prediction_type: what the network predicts: ``eps`` (the paper), ``x0`` or ``v``.
        variance: reverse-process variance: ``small`` (beta_tilde) or ``large`` (beta), fixed as in Ho et al.
            2020, or ``learned`` as in Nichol & Dhariwal 2021 (needs ``loss_type`` hybrid or vlb).
        loss_type: ``simple`` (L_simple), ``hybrid`` (L_simple + vlb_weight * L_vlb with the mean frozen in
            L_vlb, Nichol & Dhariwal 2021, Eq. 16) or ``vlb`` (L_vlb alone).
        vlb_weight: lambda of the hybrid loss (0.001 in the paper).
        timestep_sampler: ``uniform``, or ``loss-aware`` importance sampling of t (Nichol & Dhariwal 2021,
            Sec. 3.3; its history is gathered across DDP ranks and saved in checkpoints).
        class_conditional: feed labels ``y`` to the network (needs a labelled dataset).
        clip_denoised: clamp predicted x0 to [-1, 1] while sampling (images; turn off for unbounded data).
        sampler: default sampler for sample grids and ``lit-gen sample``: ``ddpm`` (ancestral) or ``ddim``.
        sampling_steps: default number of sampling steps (None: all T).
        optimizer: see :class:`~lit_gen.methods.base.GenerativeModule`.
        lr_scheduler: see :class:`~lit_gen.methods.base.GenerativeModule`.
        ema_decay: see :class:`~lit_gen.methods.base.GenerativeModule`.
        seed: see :class:`~lit_gen.methods.base.GenerativeModule`.
    """

    sample_options = {"sampler", "steps", "eta", "spacing"}

    def __init__(
        self,
        data_shape: tuple[int, ...] = (1, 16, 16),
        num_classes: int = 0,
        net: NetFactory = UNet,
        num_timesteps: int = 1000,
        beta_schedule: Literal["linear", "cosine"] = "linear",
        prediction_type: Literal["eps", "x0", "v"] = "eps",
        variance: Literal["small", "large", "learned"] = "small",
        loss_type: Literal["simple", "hybrid", "vlb"] = "simple",
        vlb_weight: float = 0.001,
        timestep_sampler: Literal["uniform", "loss-aware"] = "uniform",
        class_conditional: bool = False,
        clip_denoised: bool = True,
        sampler: Literal["ddpm", "ddim"] = "ddpm",
        sampling_steps: int | None = None,
        optimizer: OptimizerCallable = _adam,
        lr_scheduler: LRSchedulerCallable | None = None,
        ema_decay: float = 0.9999,
        seed: int = 0,
    ) -> None:
        super().__init__(optimizer, lr_scheduler, ema_decay, seed)
        self.save_hyperparameters()
        if class_conditional and num_classes < 1:
            raise ValueError("class_conditional=True needs a dataset with labels, but num_classes=0")
        if variance == "learned" and loss_type == "simple":
            raise ValueError("variance='learned' is trained by the bound: use loss_type 'hybrid' or 'vlb', not 'simple'")
        if timestep_sampler not in ("uniform", "loss-aware"):
            raise ValueError(f"timestep_sampler={timestep_sampler!r} is not supported; choose 'loss-aware' or 'uniform'")
        self.data_shape = tuple(data_shape)
        self.num_classes = num_classes if class_conditional else 0
        self.prediction_type = prediction_type
        self.variance = variance
        self.loss_type = loss_type
        out_channels = self.data_shape[0] * (2 if variance == "learned" else 1)
        self.net = net(self.data_shape, self.num_classes, out_channels)
        self.diffusion = GaussianDiffusion(beta_schedule, num_timesteps)
        self.timesteps = (LossAwareTimesteps if timestep_sampler == "loss-aware" else UniformTimesteps)(num_timesteps)
        self.init_ema()

    def loss_terms(self, net: nn.Module, batch: dict, generator: torch.Generator | None = None) -> dict:
        """The terms of :func:`~lit_gen.diffusion.losses.diffusion_loss_terms` at t drawn by the timestep
        sampler (uniformly when a ``generator`` is given, as in validation), ``loss`` weighted by 1 / (T p_t)."""
        x0 = batch["x"]  # (B, *data_shape)
        y = batch.get("y") if self.num_classes else None
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
        terms = self.loss_terms(self.net, batch)
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
        with eval_mode(self.sampling_net) as net:
            loss = self.loss(net, batch, self.eval_generator(batch_idx))
        self.log("val/loss", loss, prog_bar=True, sync_dist=True)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        """test/loss and the negative log-likelihood bound in bits/dim with its parts (T forward passes)."""
        with eval_mode(self.sampling_net) as net:
            generator = self.eval_generator(batch_idx)
            self.log("test/loss", self.loss(net, batch, generator), sync_dist=True)
            y = batch.get("y") if self.num_classes else None
            nll = self.diffusion.nll_bpd(
                lambda x_t, t: net(x_t, t, y), batch["x"], self.prediction_type, self.variance, generator
            )
        for name, value in nll.items():
            self.log("test/bpd" if name == "bpd" else f"test/bpd_{name}", value.mean().float(), sync_dist=True)

    @torch.no_grad()
    def sample(
        self,
        num_samples: int,
        generators: list[torch.Generator] | None = None,
        labels: torch.Tensor | None = None,
        progress: bool = False,
        trajectory_points: int = 0,
        latents: torch.Tensor | None = None,
        **options,
    ) -> SampleOutput:
        """Sample with ``sampler`` (``ddpm``/``ddim``), ``steps``, ``eta`` (DDIM) and ``spacing`` (linear/quadratic),
        from ``latents`` x_T when given (e.g. from :meth:`invert` or an interpolation)."""
        sampler = self.make_sampler(options)
        labels = self._labels(num_samples, labels)
        x_T = randn((num_samples, *self.data_shape), generators, self.device) if latents is None else latents
        with eval_mode(self.sampling_net) as net:
            x, trajectory = sample_loop(
                lambda x_t, t: net(x_t, t, labels), sampler, x_T, generators, progress, trajectory_points
            )
        return SampleOutput(x, labels, trajectory)

    def make_sampler(self, options: dict):
        """The sampler named in ``options`` (default: the config's), with its steps set."""
        self.check_options(options, self.sample_options, type(self).__name__)
        name = options.get("sampler") or self.hparams.sampler
        sampler_args = {"eta": options["eta"]} if options.get("eta") is not None else {}
        if sampler_args and name != "ddim":
            raise ValueError(f"eta={options['eta']} is a DDIM option; the {name!r} sampler does not take it")
        sampler = make_sampler(
            name, self.diffusion, prediction_type=self.prediction_type, clip_denoised=self.hparams.clip_denoised,
            variance=self.variance, **sampler_args,
        )
        sampler.set_timesteps(options.get("steps") or self.hparams.sampling_steps, options.get("spacing") or "linear")
        return sampler

    def deterministic_options(self, options: dict) -> dict:
        """Latent interpolation and inversion use deterministic DDIM (eta = 0)."""
        if options.get("sampler", "ddim") != "ddim" or options.get("eta", 0.0) != 0.0:
            raise ValueError(f"latent interpolation and inversion need --sampler ddim --eta 0, got {options}")
        return {**options, "sampler": "ddim", "eta": 0.0}

    def _labels(self, num_samples: int, labels: torch.Tensor | None) -> torch.Tensor | None:
        if not self.num_classes:
            return None
        if labels is None:
            labels = torch.arange(num_samples) % self.num_classes
        return labels.to(self.device)

    @torch.no_grad()
    def invert(
        self, x0: torch.Tensor, labels: torch.Tensor | None = None, progress: bool = False, **options
    ) -> torch.Tensor:
        """Deterministic DDIM inversion x0 -> x_T with ``steps`` and ``spacing`` from ``options``."""
        sampler = self.make_sampler({**options, "sampler": "ddim", "eta": 0.0})
        labels = self._labels(x0.shape[0], labels)
        with eval_mode(self.sampling_net) as net:
            return invert_loop(lambda x_t, t: net(x_t, t, labels), sampler, x0.to(self.device), progress)
