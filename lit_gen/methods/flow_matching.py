"""Flow matching (Lipman et al. 2023) and rectified flow (Liu et al. 2023): a network regresses the velocity
of a probability path from data (t = 0) to Gaussian noise (t = 1), and samples by integrating that ODE from
noise back to data with any solver of the house. Trained on (noise, data) pairs drawn by a teacher's ODE
(:class:`~lit_gen.data.PairsDataModule`, written by ``lit-gen reflow``) it is a 2-rectified flow, or with
``time_distribution: one_step`` its one-step distillation (Liu et al. 2023, Sec. 2.3)."""

from __future__ import annotations

from typing import Literal

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities import AttributeDict
from torch import nn

from lit_gen.diffusion import GaussianDiffusion
from lit_gen.methods.base import _adam, eval_mode
from lit_gen.methods.noise_process import NoiseProcessMethod, conditions
from lit_gen.methods.text import TextConditioning
from lit_gen.nets import NetFactory, UNet
from lit_gen.process import PATHS, OutputLayout
from lit_gen.process.couplings import couple, sample_times
from lit_gen.process.model import ModelFunction, coefficients, model_time, on_model_time
from lit_gen.process.velocity import straightness
from lit_gen.sampling import NoiseModel, assembly
from lit_gen.utils import randn

STRAIGHTNESS_STEPS = 33  # grid points of test/straightness (32 Euler steps)


class FlowMatching(NoiseProcessMethod):
    """Conditional flow matching with a velocity network: for t from ``time_distribution``, x0 from the data
    and eps ~ N(0, I) paired by ``coupling`` (or the batch's own ``noise``: reflow pairs), x_t = alpha_t x0 +
    sigma_t eps and the loss is ||net(x_t, t) - (d_alpha_t x0 + d_sigma_t eps)||^2 (eps - x0 on the linear
    path). ``lit-gen test`` reports test/straightness, Liu et al.'s S of the model's Euler paths (0:
    straight).

    Args:
        data_shape: shape of one sample; linked from the DataModule by the CLI.
        num_classes: linked from the DataModule; used with ``class_conditional``.
        net: the velocity network, built as ``net(data_shape, num_classes, C)``.
        path: ``linear`` (rectified flow) or ``cosine``.
        time_distribution: ``uniform`` or ``logit_normal`` (SD3's) times for training; ``one_step`` (t = 1
            only, linear path) distils reflow pairs into one Euler step (sample it with ``steps`` 2).
        logit_loc: location m of the logit-normal.
        logit_scale: scale s of the logit-normal.
        coupling: ``independent`` or ``ot`` (minibatch optimal transport); pairs that come with their noise
            are kept as they are.
        shift: SD3's shift of the sampling grid towards the noise (1: none).
        num_scales: N; the network sees (N - 1) t, as the score models' networks do.
        class_conditional: feed labels to the network; label ``num_classes`` is the null label.
        p_uncond: with ``class_conditional``, the probability of training on the null label (for CFG).
        guidance_scale: default classifier-free guidance scale of grids and ``lit-gen sample`` (in velocity
            space: v_u + s (v_c - v_u)).
        clip_denoised: clamp predicted x0 to [-1, 1] where a solver uses it (DPM-Solver++).
        sampler: default sampler (``euler``; any solver of ``lit_gen.score``).
        sampling_steps: default grid points of the sampler.
        likelihood_trace: divergence of the test-time ODE likelihood: ``rademacher``, ``gaussian`` or
            ``exact``.
        n_probes: Hutchinson probes averaged per divergence.
        ode_rtol: RK45 relative tolerance of the likelihood.
        ode_atol: RK45 absolute tolerance of the likelihood.
        init_from: a checkpoint (a reflow teacher's) whose weights a fresh fit starts from.
        text: condition on captions (see :class:`~lit_gen.methods.DDPM`); None: no text.
        autoencoder_ckpt: learn an Autoencoder's latents (see :class:`~lit_gen.methods.DDPM`).
        autoencoder_hparams: filled from ``autoencoder_ckpt`` when the model is made (leave unset).
        latent_cache: a file of the training images' latents kept across runs (see :class:`DDPM`).
        optimizer: see :class:`~lit_gen.methods.base.LitGenModule`.
        lr_scheduler: see :class:`~lit_gen.methods.base.LitGenModule`.
        ema_decay: see :class:`~lit_gen.methods.base.LitGenModule`.
        seed: see :class:`~lit_gen.methods.base.LitGenModule`.
    """

    family = "flow_matching"

    @classmethod
    def tiny_args(cls, init_args: dict, data_shape: tuple[int, ...]) -> dict:
        return super().tiny_args(init_args, data_shape) | {"ode_rtol": 1e-2, "ode_atol": 1e-2}

    def __init__(
        self,
        data_shape: tuple[int, ...] = (1, 16, 16),
        num_classes: int = 0,
        net: NetFactory = UNet,
        path: Literal["linear", "cosine"] = "linear",
        time_distribution: Literal["uniform", "logit_normal", "one_step"] = "uniform",
        logit_loc: float = 0.0,
        logit_scale: float = 1.0,
        coupling: Literal["independent", "ot"] = "independent",
        shift: float = 1.0,
        num_scales: int = 1000,
        class_conditional: bool = False,
        p_uncond: float = 0.1,
        guidance_scale: float = 1.0,
        clip_denoised: bool = False,
        sampler: str = "euler",
        sampling_steps: int = 50,
        likelihood_trace: Literal["rademacher", "gaussian", "exact"] = "rademacher",
        n_probes: int = 1,
        ode_rtol: float = 1e-5,
        ode_atol: float = 1e-5,
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
        if path not in PATHS:
            raise ValueError(f"path={path!r} is not supported; choose one of {sorted(PATHS)}")
        if not logit_scale > 0:
            raise ValueError(f"logit_scale={logit_scale} must be > 0")
        sample_times(1, time_distribution, torch.Generator())  # a bad one fails here, not at the first step
        if time_distribution == "one_step" and path != "linear":
            raise ValueError(f"time_distribution='one_step' distils into one Euler step, which lands on x0 "
                             f"only on the linear path; path={path!r} (use path: linear)")
        couple(torch.zeros(1, 1), torch.zeros(1, 1), coupling)  # likewise a bad coupling
        self.data_shape = self.init_conditions(text, autoencoder_ckpt, autoencoder_hparams, tuple(data_shape),
                                               latent_cache)
        self.settings = AttributeDict(self.hparams)
        self.num_classes = num_classes if class_conditional else 0
        self.net_factory = net
        self.path = PATHS[path](num_scales, 0.0, shift)
        self.layout = OutputLayout("velocity")
        self.init_from = init_from
        assembly.check(self.noise_model(None), {})  # the default sampler and steps, checked now

    def build_net(self) -> nn.Module:
        return self.denoiser(self.net_factory, self.data_shape, self.num_classes, self.data_shape[0])

    # --- training ------------------------------------------------------------------------------------
    def loss(self, net: nn.Module, x0: torch.Tensor, generator: torch.Generator | None = None,
             y: torch.Tensor | None = None, noise: torch.Tensor | None = None) -> torch.Tensor:
        """The velocity loss at x0 (B, ...); ``noise`` (B, ...): the eps paired with each x0 (reflow)."""
        h = self.settings
        t = sample_times(x0.shape[0], h.time_distribution, generator, x0.device, h.logit_loc, h.logit_scale)
        if noise is None:
            eps = couple(x0, randn(x0.shape, generator, x0.device, x0.dtype), h.coupling)
        else:
            eps = noise.to(x0.dtype)
        c = coefficients(self.path, t, x0)
        x_t = c.alpha * x0 + c.sigma * eps
        target = self.layout.prediction.target(x0, eps, *c)
        return (net(x_t, model_time(self.path, t, x0), y) - target).pow(2).flatten(1).mean(1).mean()

    def _noise_of(self, batch: dict, training: bool = False) -> torch.Tensor | None:
        """The batch's paired noise (reflow), or None; in training, one-line errors for settings that cannot
        use it."""
        noise = batch.get("noise")
        if not training:
            return noise
        if noise is None and self.settings.time_distribution == "one_step":
            raise ValueError("time_distribution='one_step' distils (noise, data) pairs of a teacher: train "
                             "on the pairs of lit-gen reflow (data: PairsDataModule)")
        if noise is not None and self.settings.coupling != "independent":
            raise ValueError(f"coupling={self.settings.coupling!r} re-pairs noise and data, but these reflow "
                             "pairs come paired: use coupling: independent")
        return noise

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        batch = self.latent_batch(batch, sample=True)
        # dropped conditions are drawn from the per-step seed: resume stays exact
        y = self.condition_of(batch, self.settings.p_uncond)
        loss = self.loss(self.net, batch["x"], y=y, noise=self._noise_of(batch, training=True))
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        batch = self.latent_batch(batch, sample=False)
        with eval_mode(self.sampling_net) as net:
            loss = self.loss(net, batch["x"], self.eval_generator(batch_idx), self.condition_of(batch),
                             self._noise_of(batch))
        self.log("val/loss", loss, prog_bar=True, sync_dist=True)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        """test/loss; the likelihood by the ODE from the data to the prior: test/bpd on 8-bit images
        (dequantised), test/nll in nats on vectors, and test/nfe (the unconditional model's); then
        test/straightness of the Euler paths (32 steps) from noise. A latent model has no likelihood of
        images to report."""
        generator = self.eval_generator(batch_idx)
        batch = self.latent_batch(batch, sample=False)
        with eval_mode(self.sampling_net) as net:
            x, y = batch["x"], self.condition_of(batch)
            self.log("test/loss", self.loss(net, x, generator, y, self._noise_of(batch)), sync_dist=True)
            if self.autoencoder is None:
                self.log_likelihood_metrics(self.log_likelihood(x, generator, net))
            straightness = self.straightness(randn(x.shape, generator, x.device), y, net)
            self.log("test/straightness", straightness.mean(), sync_dist=True, prog_bar=True)

    def straightness(self, x1: torch.Tensor, labels: torch.Tensor | None = None,
                     net: nn.Module | None = None, steps: int | None = None) -> torch.Tensor:
        """Liu et al.'s straightness S (B,) of the paths from x1 (B, ...) by Euler on ``steps`` grid points
        (default 33: 32 steps, fine enough to see the curvature whatever the sampler), conditional on
        ``labels`` for a class-conditional model."""
        net = net or self.sampling_net
        function = ModelFunction(on_model_time(lambda x_, s: net(x_, s, labels), self.path), self.path,
                                 self.layout)
        times = self.path.time_grid(steps or STRAIGHTNESS_STEPS).to(x1.device)
        return straightness(function.ode_drift, x1, times)[0]

    def log_likelihood(self, x: torch.Tensor, generator=None, net: nn.Module | None = None) -> dict:
        """The ODE likelihood of x (B, ...) (see :func:`~lit_gen.methods.noise_process.ode_likelihood`)."""
        h = self.settings
        return super().log_likelihood(x, generator, net, trace=h.likelihood_trace, n_probes=h.n_probes,
                                      rtol=h.ode_rtol, atol=h.ode_atol)

    # --- sampling: the shared assembly on this model's path -----------------------------------------------
    def noise_model(self, net: nn.Module) -> NoiseModel:
        h = self.settings
        defaults = {"sampler": h.sampler, "steps": h.sampling_steps, "denoise": False}
        return NoiseModel(type(self).__name__, net, self.path, self.layout, self.clip_denoised, defaults,
                          num_classes=self.num_classes, guidance_scale=h.guidance_scale,
                          null_text=self.null_text)

    def classifier_process(self) -> GaussianDiffusion:
        raise ValueError("classifier guidance needs a DDPM or VP score model (a NoisyClassifier knows DDPM's "
                         "process); guide a flow-matching model with class_conditional and guidance_scale")
