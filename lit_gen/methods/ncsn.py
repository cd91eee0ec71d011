"""NCSN (Song & Ermon 2019, "Generative Modeling by Estimating Gradients of the Data Distribution"): a noise-
conditional score network trained by denoising score matching at L geometric noise levels and sampled by
annealed Langevin dynamics, with NCSNv2's output scaling and data-driven sigma_1 (Song & Ermon 2020)."""

from __future__ import annotations

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities import rank_zero_info

from lit_gen.methods.base import _adam
from lit_gen.methods.score_sde import ScoreSDE
from lit_gen.methods.text import TextConditioning
from lit_gen.nets import NetFactory, UNet
from lit_gen.process.sde import sigma_max_from_data


class NCSN(ScoreSDE):
    """The noise levels sigma_1 > ... > sigma_L are the VE SDE's on a grid of L times, t_i = (L - i) / (L -
    1), so an NCSN checkpoint also runs every VE sampler of ``lit_gen.score`` (between the levels the network
    sees fractional level indices). The network sees the level index (L - 1) t and predicts the noise: s(x,
    sigma) = -net(x, sigma) / sigma (NCSNv2's output scaling), and DSM with lambda = sigma^2 is ||net(x +
    sigma z) - z||^2.

    Args:
        data_shape: shape of one sample; linked from the DataModule by the CLI.
        num_classes: linked from the DataModule; the network is unconditional, or conditioned on ``text``.
        net: the network, built as ``net(data_shape, 0, C)`` (with ``text``, with ``context_dim`` too; with
            ``autoencoder_ckpt``, data_shape is the latent shape).
        sigma_begin: sigma_1 (1 in the paper); None sets it to the largest distance between two training
            points (scaled posterior samples of their latents, with ``autoencoder_ckpt``) at the start of
            fitting (NCSNv2, Technique 1), saved with the checkpoint.
        sigma_end: sigma_L (0.01 in the paper).
        num_scales: L, the number of noise levels (10 in the paper).
        clip_denoised: clamp the final denoised sample to [-1, 1] (images; never on latents).
        sampler: default sampler: ``langevin`` (annealed Langevin, Algorithm 1), or any VE sampler.
        sampling_steps: grid points (default L, one per level).
        step_lr: epsilon of annealed Langevin (2e-5 in the paper).
        n_steps_each: T, Langevin steps per level (100 in the paper).
        text: condition on captions (see :class:`~lit_gen.methods.DDPM`).
        p_uncond: with ``text``, the probability of training on the empty caption (for classifier-free
            guidance).
        guidance_scale: with ``text``, the default classifier-free guidance scale.
        autoencoder_ckpt: learn an Autoencoder's latents (see :class:`~lit_gen.methods.DDPM`).
        autoencoder_hparams: filled from ``autoencoder_ckpt`` when the model is made (leave unset).
        latent_cache: a file of the training images' latents kept across runs (see :class:`DDPM`).
        optimizer: see :class:`~lit_gen.methods.base.LitGenModule`.
        lr_scheduler: see :class:`~lit_gen.methods.base.LitGenModule`.
        ema_decay: see :class:`~lit_gen.methods.base.LitGenModule`.
        seed: see :class:`~lit_gen.methods.base.LitGenModule`.
    """

    @classmethod
    def tiny_args(cls, init_args: dict, data_shape: tuple[int, ...]) -> dict:
        # not ScoreSDE's: its configured levels, and no ODE tolerances to loosen; 2 Langevin steps per level
        return super(ScoreSDE, cls).tiny_args(init_args, data_shape) | {"n_steps_each": 2}

    def __init__(
        self,
        data_shape: tuple[int, ...] = (1, 16, 16),
        num_classes: int = 0,
        net: NetFactory = UNet,
        sigma_begin: float | None = 1.0,
        sigma_end: float = 0.01,
        num_scales: int = 10,
        clip_denoised: bool = True,
        sampler: str = "langevin",
        sampling_steps: int | None = None,
        step_lr: float = 2e-5,
        n_steps_each: int = 100,
        text: TextConditioning | None = None,
        p_uncond: float = 0.1,
        guidance_scale: float = 1.0,
        autoencoder_ckpt: str | None = None,
        autoencoder_hparams: dict | None = None,
        latent_cache: str | None = None,
        optimizer: OptimizerCallable = _adam,
        lr_scheduler: LRSchedulerCallable | None = None,
        ema_decay: float = 0.9999,
        seed: int = 0,
    ) -> None:
        if sigma_begin is not None and not sigma_begin > sigma_end > 0:
            raise ValueError(f"NCSN needs sigma_begin > sigma_end > 0, got sigma_begin={sigma_begin}, "
                             f"sigma_end={sigma_end}")
        if step_lr <= 0 or n_steps_each < 1:
            raise ValueError(f"step_lr={step_lr} must be > 0 and n_steps_each={n_steps_each} >= 1")
        super().__init__(
            data_shape, num_classes, net, sde="ve", sigma_min=sigma_end,
            sigma_max=sigma_begin if sigma_begin is not None else 2 * sigma_end, num_scales=num_scales,
            t_eps=1e-5,
            sampling_eps=0.0, clip_denoised=clip_denoised, sampler=sampler, sampling_steps=sampling_steps,
            p_uncond=p_uncond, guidance_scale=guidance_scale, text=text, autoencoder_ckpt=autoencoder_ckpt,
            autoencoder_hparams=autoencoder_hparams, latent_cache=latent_cache, optimizer=optimizer,
            lr_scheduler=lr_scheduler, ema_decay=ema_decay, seed=seed,
        )
        self._sigma_begin = sigma_begin  # None until fitting measures it on the data

    def on_fit_start(self) -> None:
        super().on_fit_start()
        if self._sigma_begin is None:
            sigma = torch.tensor(sigma_max_from_data(self._training_points()), device=self.device)
            # rank 0's: every rank must build the same SDE (a random flip may differ between ranks)
            self.set_sigma_begin(float(self.trainer.strategy.broadcast(sigma, src=0)))

    def _training_points(self, limit: int = 2000) -> torch.Tensor:
        """Up to ``limit`` training points drawn with the run's seed, the same in every run of the config: of
        a latent model, scaled posterior samples of their latents (drawn with the seed too)."""
        dataset = self.trainer.datamodule.train_dataset
        order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(self.seed))[:limit]
        generator = torch.Generator(device=self.device).manual_seed(self.seed)
        return self.training_points(dataset, order, generator)

    def set_sigma_begin(self, sigma: float) -> None:
        """Set sigma_1 (and rebuild the SDE); saved in the hyperparameters, so a checkpoint rebuilds it."""
        if not sigma > self.hparams.sigma_end:
            raise ValueError(f"sigma_1={sigma} from the data must exceed sigma_end={self.hparams.sigma_end}")
        self._sigma_begin = self.hparams.sigma_begin = self.settings.sigma_max = sigma
        self.build_sde()
        rank_zero_info(f"NCSN: sigma_1 = {sigma:.4g}, the largest distance between two training points")

    def sample_time(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """A noise level per sample, uniform over the L levels: t_i = i / (L - 1)."""
        L = self.settings.num_scales
        i = torch.randint(0, L, (n,), generator=generator,
                          device=None if generator is None else generator.device)
        return (i.double() / (L - 1)).to(self.device)

    def sampling_defaults(self) -> dict:
        h = self.hparams
        return {**super().sampling_defaults(), "step_lr": h.step_lr, "n_steps_each": h.n_steps_each}
