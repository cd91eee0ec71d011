"""Normalizing flows (NICE, RealNVP, Glow, planar/radial stacks) trained by maximum likelihood: exact
log-density, bits/dim on 8-bit images, sampling at a temperature."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable

from lit_gen.flows import Flow, Glow, bits_per_dim, postprocess, preprocess
from lit_gen.flows.layers import ActNorm
from lit_gen.methods.base import _adam, eval_mode
from lit_gen.methods.generative import Abilities, GenerativeModule, SampleOutput
from lit_gen.sharding import full_state_dict, gathered, load_full_state_dict
from lit_gen.strategies import shards_parameters

# A Flow class whose first parameter is data_shape; YAML gives the rest (see lit_gen.flows).
FlowFactory = Callable[[tuple[int, ...]], Flow]


class NormalizingFlow(GenerativeModule):
    """A normalizing flow fitted by maximum likelihood, log p(x) = log p_Z(f(x)) + log|det df/dx|.

    On 8-bit images (``dequantize``) the flow models uniformly dequantised data, optionally logit-transformed,
    and every metric is in bits/dim of the 8-bit image (``lit_gen.flows.preprocess``; the same convention as
    the diffusion models' bound): ``train/bpd``, ``val/bpd``, ``test/bpd``. On continuous data (2-D toy
    sets) the metrics are the negative log-density in nats, ``*/nll``.

    Args:
        data_shape: shape of one sample, (C, H, W) or (D,); linked from the DataModule by the CLI.
        num_classes: linked from the DataModule; the flows here are unconditional and ignore labels.
        flow: the flow, built as ``flow(data_shape)``: ``lit_gen.flows.Glow``, ``RealNVP``, ``NICE``,
            ``MLPFlow``, ``PlanarFlow`` or ``RadialFlow`` with its own arguments in ``init_args``.
        dequantize: treat the data as 8-bit (uniform dequantisation, bits/dim); None: for images only.
        logit_alpha: after dequantising, map [-1, 1) to logits with this margin (RealNVP uses 0.05 on
            CIFAR-10); None keeps the [-1, 1) scale (Glow).
        temperature: default sampling temperature (scale of the prior's spread) for grids and
            ``lit-gen sample``; 1 samples the model's density.
        init_batch_size: data-dependent initialisation (ActNorm) runs on this many training examples
            (summed over ranks) before the first step; Glow's released code uses 512 on CIFAR-10.
        optimizer: see :class:`~lit_gen.methods.base.LitGenModule`.
        lr_scheduler: see :class:`~lit_gen.methods.base.LitGenModule`.
        ema_decay: see :class:`~lit_gen.methods.base.LitGenModule` (0: off, as in the flow papers).
        seed: see :class:`~lit_gen.methods.base.LitGenModule`.
    """

    abilities = Abilities(latents=True)  # exact inversion; latents decode deterministically

    @dataclass
    class SampleOptions:
        """Sampling options of a normalizing flow.

        Args:
            temperature: scale of the prior's spread (default: the model's; 1 samples its density, 0 its
                mode).
        """

        temperature: float | None = None

    family = "flow"

    @classmethod
    def tiny_args(cls, init_args: dict, data_shape: tuple[int, ...]) -> dict:
        return super().tiny_args(init_args, data_shape) | {"init_batch_size": 8}

    def __init__(
        self,
        data_shape: tuple[int, ...] = (1, 16, 16),
        num_classes: int = 0,
        flow: FlowFactory = Glow,
        dequantize: bool | None = None,
        logit_alpha: float | None = None,
        temperature: float = 1.0,
        init_batch_size: int = 512,
        optimizer: OptimizerCallable = _adam,
        lr_scheduler: LRSchedulerCallable | None = None,
        ema_decay: float = 0.0,
        seed: int = 0,
    ) -> None:
        super().__init__(optimizer, lr_scheduler, ema_decay, seed)
        self.save_hyperparameters()
        self.data_shape = tuple(data_shape)
        self.dequantize = len(self.data_shape) == 3 if dequantize is None else dequantize
        if logit_alpha is not None and not self.dequantize:
            raise ValueError(f"logit_alpha={logit_alpha} maps 8-bit data to logits; it needs dequantize=True")
        if logit_alpha is not None and not 0.0 < logit_alpha < 0.5:
            raise ValueError(f"logit_alpha={logit_alpha} must lie in (0, 0.5)")
        self.check_temperature(temperature)
        if init_batch_size < 1:
            raise ValueError(f"init_batch_size={init_batch_size} must be >= 1")
        self.logit_alpha = logit_alpha
        self.metric = "bpd" if self.dequantize else "nll"
        self.flow_factory = flow

    def build_net(self) -> Flow:
        net = self.flow_factory(self.data_shape)
        if not isinstance(net, Flow):
            raise ValueError(f"flow must build a lit_gen.flows.Flow, got {type(net).__name__}")
        return net

    # --- likelihood ----------------------------------------------------------------------------------
    def nll(self, flow: Flow, x: torch.Tensor, generator=None, offset: float | None = None) -> torch.Tensor:
        """Per-sample negative log-likelihood (B,): bits/dim of the 8-bit data when dequantising (noise from
        ``generator``, or the fixed position ``offset`` in each bin), else -log p(x) in nats."""
        if not self.dequantize:
            return -flow.log_prob(x)
        s, log_det = preprocess(x, self.logit_alpha, generator, offset)
        return bits_per_dim(-(flow.log_prob(s) + log_det), flow.num_dims)

    @torch.no_grad()
    def log_density(self, x: torch.Tensor) -> torch.Tensor:
        """log p(x) (B,) in nats of continuous data under the sampling weights (for density plots)."""
        if self.dequantize:
            raise ValueError("log_density is for continuous data; 8-bit data is scored in bits/dim by nll")
        with eval_mode(self.sampling_net) as flow:
            return flow.log_prob(x.to(self.device))

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = self.nll(self.net, batch["x"]).mean()
        self.log("train/loss", loss, prog_bar=True)
        self.log(f"train/{self.metric}", loss)
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        with eval_mode(self.sampling_net) as flow:
            value = self.nll(flow, batch["x"], self.eval_generator(batch_idx)).mean()
        self.log(f"val/{self.metric}", value, prog_bar=True, sync_dist=True)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        with eval_mode(self.sampling_net) as flow:
            value = self.nll(flow, batch["x"], self.eval_generator(batch_idx)).mean()
        self.log(f"test/{self.metric}", value, sync_dist=True)

    # --- data-dependent initialisation ---------------------------------------------------------------
    def on_fit_start(self) -> None:
        """Initialise ActNorm layers on a batch of training data on every rank together (their statistics
        are pooled across ranks), before the sanity check could initialise them on validation data. A
        restored checkpoint is already initialised and skips this."""
        if all(bool(m.initialized) for m in self.net.modules() if isinstance(m, ActNorm)):
            return
        datamodule = self.trainer.datamodule
        if datamodule is None:  # plain dataloaders: ActNorm initialises itself on the first batch it sees
            return
        per_rank = max(1, self.hparams.init_batch_size // self.trainer.world_size)
        xs, count = [], 0
        for batch in datamodule.train_dataloader():
            xs.append(batch["x"])
            count += len(batch["x"])
            if count >= per_rank:
                break
        x = torch.cat(xs)[:per_rank].to(self.device)
        generator = torch.Generator(device=self.device).manual_seed(self.seed + self.global_rank)
        # under ZeRO-3 / FSDP a layer's weights are gathered copies in forward: initialise a whole copy
        # instead
        sharded = shards_parameters(self.trainer.strategy)
        net = self.build_net().to(self.device) if sharded else self.net
        if sharded:
            net.load_state_dict(full_state_dict(self.net))
        with torch.no_grad():
            self.nll(net, x, generator)
        if sharded:
            load_full_state_dict(self.net, net.state_dict())
        if self.ema is not None:
            self.ema.copy_from(self.net)

    # --- sampling ------------------------------------------------------------------------------------
    @staticmethod
    def check_temperature(temperature: float) -> None:
        if not temperature >= 0:
            raise ValueError(f"temperature={temperature} must be >= 0 (1 samples the model's density)")

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
        """Sample at ``temperature`` (default: the config's), or decode ``latents``: standard normal noise
        (B, *data_shape), e.g. from :meth:`invert` or an interpolation."""
        self.check_options(options, self.sample_options, type(self).__name__)
        temperature = options.get("temperature")
        temperature = self.hparams.temperature if temperature is None else temperature
        self.check_temperature(temperature)
        noise = None if latents is None else latents.to(self.device)
        # sampling runs the layers' inverse, not forward
        with eval_mode(self.sampling_net) as flow, gathered(flow):
            s = flow.sample(num_samples, generators, temperature, noise=noise)
        x = postprocess(s, self.logit_alpha) if self.dequantize else s
        return SampleOutput(x)

    @torch.no_grad()
    def invert(self, x0: torch.Tensor, labels: torch.Tensor | None = None, progress: bool = False, **options):
        """Exact inversion x -> standard normal noise (B, *data_shape) that :meth:`sample` decodes back to x
        (8-bit data is taken at the centre of its bin)."""
        x0 = x0.to(self.device)
        s = preprocess(x0, self.logit_alpha, offset=0.5)[0] if self.dequantize else x0
        with eval_mode(self.sampling_net) as flow, gathered(flow):
            return flow.to_noise(s).view(x0.shape)
