"""Score SDEs (Song et al. 2021): a noise-predicting network trained by continuous-time denoising score
matching on a VP, sub-VP or VE SDE, sampled by any solver of ``lit_gen.score`` and evaluated by the exact ODE
likelihood."""

from __future__ import annotations

import copy
from typing import Literal

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities import AttributeDict
from torch import nn

from lit_gen.diffusion import GaussianDiffusion
from lit_gen.methods.base import _adam, eval_mode
from lit_gen.methods.noise_process import NoiseProcessMethod, conditions, ode_likelihood
from lit_gen.methods.text import TextConditioning
from lit_gen.nets import NetFactory, UNet
from lit_gen.process import OutputLayout
from lit_gen.sampling import NoiseModel
from lit_gen.score import ImportanceTime, ScoreModel, dsm_loss, make_sde
from lit_gen.score.solvers import make_solver
from lit_gen.utils import append_dims, randn
from lit_gen.visual import figure_to_array, quiver_figure


class ScoreSDE(NoiseProcessMethod):
    """A score model on a forward SDE, trained with the weighted DSM loss of ``lit_gen.score.losses``.

    The network predicts the noise, eps(x_t, (N - 1) t), and the score is -eps / sigma(t) (NCSNv2's output
    scaling); the sampler assembly (``lit_gen.sampling``) turns it into whatever a sampler needs.

    Args:
        data_shape: shape of one sample, (C, H, W) or (D,); linked from the DataModule by the CLI.
        num_classes: linked from the DataModule; used with ``class_conditional``.
        net: the network, built as ``net(data_shape, num_classes, C)`` (``lit_gen.nets.UNet`` or
            ``MLPDenoiser``).
        sde: ``vp``, ``subvp`` or ``ve`` (Song et al. 2021, Sec. 3.4).
        beta_min: beta(0) of VP and sub-VP (0.1 in the paper).
        beta_max: beta(1) of VP and sub-VP (20 in the paper).
        sigma_min: smallest noise level of VE (0.01 in the paper).
        sigma_max: largest noise level of VE: about the largest distance between two training points
            (50 for CIFAR-10; NCSNv2, Technique 1).
        num_scales: N, the discretisation of the SDE (the network sees (N - 1) t).
        time_input: the network's time input: ``scaled``, (N - 1) t, or ``sigma``, the noise level sigma(t)
            (an NCSN++ UNet imported from a diffusers ScoreSdeVe pipeline).
        prediction_type: what the network predicts: ``eps`` (lit_gen's nets) or the ``score`` (NCSN++ with
            its output divided by sigma, as diffusers' UNet2DModel with a Fourier time embedding does).
        t_eps: the small-t cutoff of training and of the likelihood integral (1e-5 in the paper).
        sampling_eps: the small-t cutoff of sampling (default 1e-3 for VP / sub-VP, 1e-5 for VE, as in the
            paper).
        weighting: ``paper`` (lambda = sigma^2) or ``likelihood`` (lambda = g^2).
        importance_sampling: with ``likelihood``, draw t ~ g^2 / sigma^2 instead of uniformly.
        clip_denoised: clamp predicted x0 to [-1, 1] where a sampler uses it (images; off for 2-D data;
            never on latents).
        sampler: default sampler of sample grids and ``lit-gen sample`` (see
            :class:`~lit_gen.sampling.NoiseSampleOptions`).
        sampling_steps: default grid points (default N).
        predictor: default predictor of ``pc``.
        snr: default signal-to-noise ratio of the Langevin corrector (0.16 for VE, 0.01 for VP in the paper).
        n_corrector: default corrector steps per grid point of ``pc``.
        likelihood_trace: divergence of the test-time ODE likelihood: ``rademacher``, ``gaussian`` or
            ``exact``.
        n_probes: Hutchinson probes averaged per divergence.
        ode_rtol: RK45 relative tolerance of the likelihood.
        ode_atol: RK45 absolute tolerance of the likelihood.
        class_conditional: feed labels ``y`` to the network (needs a labelled dataset); label ``num_classes``
            is the learned null label, "unconditional" (the likelihood is the unconditional model's).
        p_uncond: with ``class_conditional`` or ``text``, the probability of replacing a training label by the
            null label, or a caption by the empty caption (condition dropout for classifier-free guidance,
            Ho & Salimans 2022).
        guidance_scale: default classifier-free guidance scale s for sample grids and ``lit-gen sample``.
        init_from: a checkpoint of this method (lit_gen's, or a diffusers pipeline imported by ``lit-gen
            import diffusers``) whose sampling weights a fresh fit starts from: fine-tuning, with a fresh
            optimizer.
        text: condition on captions (see :class:`~lit_gen.methods.DDPM`); ``p_uncond`` drops them for
            classifier-free guidance.
        autoencoder_ckpt: learn an Autoencoder's latents (see :class:`~lit_gen.methods.DDPM`).
        autoencoder_hparams: filled from ``autoencoder_ckpt`` when the model is made (leave unset).
        latent_cache: a file of the training images' latents kept across runs (see :class:`DDPM`).
        optimizer: see :class:`~lit_gen.methods.base.LitGenModule`.
        lr_scheduler: see :class:`~lit_gen.methods.base.LitGenModule`.
        ema_decay: see :class:`~lit_gen.methods.base.LitGenModule`.
        seed: see :class:`~lit_gen.methods.base.LitGenModule`.
    """

    family = "score"

    @classmethod
    def tiny_args(cls, init_args: dict, data_shape: tuple[int, ...]) -> dict:
        tiny = {"num_scales": 10, "ode_rtol": 1e-2, "ode_atol": 1e-2}
        return super().tiny_args(init_args, data_shape) | tiny

    def __init__(
        self,
        data_shape: tuple[int, ...] = (1, 16, 16),
        num_classes: int = 0,
        net: NetFactory = UNet,
        sde: Literal["vp", "subvp", "ve"] = "vp",
        beta_min: float = 0.1,
        beta_max: float = 20.0,
        sigma_min: float = 0.01,
        sigma_max: float = 50.0,
        num_scales: int = 1000,
        time_input: Literal["scaled", "sigma"] = "scaled",
        prediction_type: Literal["eps", "score"] = "eps",
        t_eps: float = 1e-5,
        sampling_eps: float | None = None,
        weighting: Literal["paper", "likelihood"] = "paper",
        importance_sampling: bool = False,
        clip_denoised: bool = True,
        sampler: str = "pc",
        sampling_steps: int | None = None,
        predictor: Literal["reverse_diffusion", "ancestral", "euler_maruyama"] = "reverse_diffusion",
        snr: float = 0.16,
        n_corrector: int = 1,
        likelihood_trace: Literal["rademacher", "gaussian", "exact"] = "rademacher",
        n_probes: int = 1,
        ode_rtol: float = 1e-5,
        ode_atol: float = 1e-5,
        class_conditional: bool = False,
        p_uncond: float = 0.1,
        guidance_scale: float = 1.0,
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
        # the settings below, also when a subclass (NCSN) saves its own hyperparameters instead
        self.settings = AttributeDict(
            sde=sde, beta_min=beta_min, beta_max=beta_max, sigma_min=sigma_min, sigma_max=sigma_max,
            num_scales=num_scales, time_input=time_input, prediction_type=prediction_type, t_eps=t_eps,
            sampling_eps=sampling_eps, weighting=weighting, importance_sampling=importance_sampling,
            clip_denoised=clip_denoised, sampler=sampler,
            sampling_steps=sampling_steps, predictor=predictor, snr=snr, n_corrector=n_corrector,
            likelihood_trace=likelihood_trace, n_probes=n_probes, ode_rtol=ode_rtol, ode_atol=ode_atol,
            p_uncond=p_uncond, guidance_scale=guidance_scale,
        )
        text = conditions(class_conditional, text, num_classes, p_uncond, guidance_scale)
        check_weighting(weighting, importance_sampling)
        self.data_shape = self.init_conditions(text, autoencoder_ckpt, autoencoder_hparams, tuple(data_shape),
                                               latent_cache)
        self.num_classes = num_classes if class_conditional else 0
        self.init_from, self.net_factory = init_from, net
        self.build_sde()
        make_solver(sampler)  # a bad default sampler fails at construction, not at the first sample grid

    def build_net(self) -> nn.Module:
        return self.denoiser(self.net_factory, self.data_shape, self.num_classes, self.data_shape[0])

    def build_sde(self) -> None:
        """The SDE of the settings, for sampling (t_min = sampling_eps) and for training and the
        likelihood (t_min = t_eps)."""
        h = self.settings
        self.sde = make_sde(h.sde, h.num_scales, h.sampling_eps, h.beta_min, h.beta_max, h.sigma_min,
                            h.sigma_max, h.time_input)
        self.layout = OutputLayout(h.prediction_type)
        self.likelihood_sde = copy.copy(self.sde)
        if not 0 < h.t_eps < self.sde.T:
            raise ValueError(f"t_eps={h.t_eps} must lie in (0, {self.sde.T})")
        self.likelihood_sde.t_min = h.t_eps
        self.importance = ImportanceTime(self.sde, h.t_eps) if h.importance_sampling else None

    # --- training ------------------------------------------------------------------------------------
    def sample_time(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """t (B,) float64 on [t_eps, T]: uniform, or importance-sampled for the likelihood weighting."""
        if self.importance is not None:
            return self.importance.sample(n, self.device, generator)
        u = torch.rand(n, dtype=torch.float64, generator=generator,
                       device=None if generator is None else generator.device)
        return (self.settings.t_eps + (self.sde.T - self.settings.t_eps) * u).to(self.device)

    def loss(self, net: nn.Module, x0: torch.Tensor, generator: torch.Generator | None = None,
             y: torch.Tensor | None = None) -> torch.Tensor:
        t = self.sample_time(x0.shape[0], generator)
        z = randn(x0.shape, generator, x0.device, x0.dtype)
        mean, std = self.sde.marginal_prob(x0, t)
        x_t = mean + append_dims(std, x0.ndim) * z
        out = net(x_t, self.sde.model_time(t).to(x0.dtype), y)
        alpha, sigma = (append_dims(c(t).to(x0.dtype), x0.ndim) for c in (self.sde.alpha, self.sde.sigma))
        eps = self.layout.prediction.to_eps_x0(out, x_t, alpha, sigma)[0]
        weight = self.importance.weight if self.importance is not None else None
        return dsm_loss(eps, z, self.sde, t, self.settings.weighting, weight).mean()

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        batch = self.latent_batch(batch, sample=True)
        # dropped conditions are drawn from the per-step seed: resume stays exact
        loss = self.loss(self.net, batch["x"], y=self.condition_of(batch, self.settings.p_uncond))
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        batch = self.latent_batch(batch, sample=False)
        with eval_mode(self.sampling_net) as net:
            loss = self.loss(net, batch["x"], self.eval_generator(batch_idx), self.condition_of(batch))
        self.log("val/loss", loss, prog_bar=True, sync_dist=True)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        """test/loss, and the exact likelihood by the probability-flow ODE: test/bpd on 8-bit images
        (dequantised), test/nll in nats on continuous vectors, and test/nfe of the solve. A latent model
        reports test/loss only (its likelihood would be of latents, not of images)."""
        generator = self.eval_generator(batch_idx)
        batch = self.latent_batch(batch, sample=False)
        with eval_mode(self.sampling_net) as net:
            loss = self.loss(net, batch["x"], generator, self.condition_of(batch))
            self.log("test/loss", loss, sync_dist=True)
            if self.autoencoder is not None:
                return
            out = self.log_likelihood(batch["x"], generator, net)
        self.log_likelihood_metrics(out)

    def score_model(self, net: nn.Module, sde=None) -> ScoreModel:
        """The model function of ``net`` (the null label of a conditional model: its unconditional part)."""
        return ScoreModel(lambda x, s: net(x, s), sde or self.sde, self.settings.prediction_type,
                          clip_denoised=self.clip_denoised)

    def classifier_process(self) -> GaussianDiffusion:
        """A VP model's N-step discretisation (DDPM's betas): the process a guiding classifier must know. The
        classifier sees the model time (N - 1) t, where alpha(t)^2 is within 2% of DDPM's alpha_bar."""
        if self.settings.sde != "vp":
            raise ValueError(f"classifier guidance needs a VP score model "
                             f"(a NoisyClassifier knows DDPM's process); this one is "
                             f"sde={self.settings.sde!r}")
        return GaussianDiffusion(betas=self.sde.discrete_betas)

    def log_likelihood(self, x: torch.Tensor, generator=None, net: nn.Module | None = None) -> dict:
        """The ODE likelihood of x (B, ...): ``bpd`` for 8-bit images, ``log_p`` (nats) for vectors, and
        ``nfe``."""
        h = self.settings
        self.check_image_likelihood()
        model = self.score_model(net or self.sampling_net, self.likelihood_sde)
        return ode_likelihood(model, x, generator, trace=h.likelihood_trace, n_probes=h.n_probes,
                              rtol=h.ode_rtol, atol=h.ode_atol)

    # --- sampling: the shared assembly on this model's SDE ----------------------------------------------
    def sampling_defaults(self) -> dict:
        h = self.settings
        return {"sampler": h.sampler, "steps": h.sampling_steps or h.num_scales, "denoise": True,
                "predictor": h.predictor, "snr": h.snr, "n_corrector": h.n_corrector}

    def noise_model(self, net: nn.Module) -> NoiseModel:
        return NoiseModel(type(self).__name__, net, self.sde, self.layout, self.clip_denoised,
                          self.sampling_defaults(), num_classes=self.num_classes,
                          guidance_scale=self.settings.guidance_scale, null_text=self.null_text)

    @torch.no_grad()
    def score_field(self, x: torch.Tensor, t: float | None = None) -> tuple[torch.Tensor, float]:
        """The EMA network's score at points x (N, *data_shape) and time t (default: 0.1 of the way up from
        t_min, where the field still shows every mode), and t."""
        t = self.sde.t_min + 0.1 * (self.sde.T - self.sde.t_min) if t is None else t
        with eval_mode(self.sampling_net) as net:
            tb = torch.full((x.shape[0],), float(t), dtype=torch.float64, device=x.device)
            return self.score_model(net).score(x, tb), t

    def sample_plots(self, x: torch.Tensor, reference: torch.Tensor | None, step: int) -> dict:
        """On 2-D data, the score field at small t over the sample grid's scatter plot."""
        if x.ndim != 2:
            return {}
        grid = torch.linspace(-4.5, 4.5, 21, device=self.device)
        points = torch.cartesian_prod(grid, grid)  # (441, 2)
        vectors, t = self.score_field(points)
        figure = quiver_figure(points, vectors, reference, title=f"score at t = {t:.3g}, step {step}")
        return {"samples/score_field": figure_to_array(figure)}


def check_weighting(weighting: str, importance_sampling: bool) -> None:
    """One-line errors for a DSM weighting that is not one, and importance sampling without its weighting."""
    if weighting not in ("paper", "likelihood"):
        raise ValueError(f"weighting={weighting!r} is not supported; choose one of ['likelihood', 'paper']")
    if importance_sampling and weighting != "likelihood":
        raise ValueError("importance_sampling=True samples t for the likelihood weighting: set "
                         "weighting='likelihood'")
