"""A noisy classifier p(y | x_t, t) for classifier guidance (Dhariwal & Nichol 2021, Sec. 4.1)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn

from lit_gen.diffusion import GaussianDiffusion
from lit_gen.methods.base import LitGenModule, _adam, eval_mode
from lit_gen.nets import EncoderUNet
from lit_gen.utils import randn

# A network class whose first two parameters are (data_shape, num_classes); called as net(x_t, t) -> logits.
ClassifierFactory = Callable[[tuple[int, ...], int], nn.Module]


class NoisyClassifier(LitGenModule):
    """Classifier of noisy images x_t ~ q(x_t | x0) at every step t, trained by cross-entropy with t uniform.
    Its checkpoint records the noise process (``beta_schedule``, ``num_timesteps``); a diffusion model of
    another process refuses it. Use it with ``lit-gen sample --ckpt_path DIFFUSION --classifier_ckpt THIS``.

    Logged: ``train/loss``, ``train/acc``; ``val/loss``, ``val/acc`` and ``val/acc_t<lo>-<hi>`` for each of
    ``t_buckets`` equal ranges of t (every validation image is classified once per range).

    Args:
        data_shape: (C, H, W); linked from the DataModule by the CLI.
        num_classes: number of labels; linked from the DataModule by the CLI.
        net: the classifier, built as ``net(data_shape, num_classes)`` (``lit_gen.nets.EncoderUNet``).
        num_timesteps: T of the diffusion models it will guide.
        beta_schedule: their beta schedule, ``linear``, ``cosine`` or ``scaled_linear``.
        beta_start: their beta_1 (linear schedules).
        beta_end: their beta_T (linear schedules).
        t_buckets: how many ranges of t validation accuracy is reported for.
        optimizer: see :class:`~lit_gen.methods.base.LitGenModule`.
        lr_scheduler: see :class:`~lit_gen.methods.base.LitGenModule`.
        ema_decay: see :class:`~lit_gen.methods.base.LitGenModule` (ADM's classifiers use none: 0).
        seed: see :class:`~lit_gen.methods.base.LitGenModule`.
    """

    usage = ("guide a diffusion model with it: lit-gen sample --ckpt_path DIFFUSION.ckpt "
             "--classifier_ckpt CLASSIFIER.ckpt")  # what lit-gen sample says

    family = "classifier"

    @classmethod
    def tiny_args(cls, init_args: dict, data_shape: tuple[int, ...]) -> dict:
        return super().tiny_args(init_args, data_shape) | {"num_timesteps": 10}

    def __init__(
        self,
        data_shape: tuple[int, ...] = (1, 16, 16),
        num_classes: int = 10,
        net: ClassifierFactory = EncoderUNet,
        num_timesteps: int = 1000,
        beta_schedule: Literal["linear", "cosine", "scaled_linear"] = "linear",
        beta_start: float = 1e-4,
        beta_end: float = 0.02,
        t_buckets: int = 4,
        optimizer: OptimizerCallable = _adam,
        lr_scheduler: LRSchedulerCallable | None = None,
        ema_decay: float = 0.0,
        seed: int = 0,
    ) -> None:
        super().__init__(optimizer, lr_scheduler, ema_decay, seed)
        self.save_hyperparameters()
        if num_classes < 1:
            raise ValueError(f"a classifier needs a labelled dataset, but num_classes={num_classes}")
        if not 1 <= t_buckets <= num_timesteps:
            raise ValueError(f"t_buckets={t_buckets} must be between 1 and num_timesteps={num_timesteps}")
        self.data_shape = tuple(data_shape)
        self.num_classes = num_classes
        self.net_factory = net
        self.diffusion = GaussianDiffusion(beta_schedule, num_timesteps, beta_start=beta_start,
                                           beta_end=beta_end)

    def build_net(self) -> nn.Module:
        return self.net_factory(self.data_shape, self.num_classes)

    def logits(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """log p(y | x_t, t) up to a constant, (B, K), with the EMA weights when there are any."""
        return self.sampling_net(x_t, t)

    def _noisy(self, x0: torch.Tensor, t: torch.Tensor,
               generator: torch.Generator | None = None) -> torch.Tensor:
        return self.diffusion.q_sample(x0, t, randn(x0.shape, generator, x0.device, x0.dtype))

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        x0, y = batch["x"], batch["y"]
        t = self.diffusion.sample_timesteps(x0.shape[0], x0.device)
        logits = self.net(self._noisy(x0, t), t)  # (B, K)
        loss = F.cross_entropy(logits, y)
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/acc", (logits.argmax(-1) == y).float().mean())
        return loss

    def buckets(self) -> list[tuple[int, int]]:
        """The ``t_buckets`` ranges [lo, hi] of t that validation reports, covering 0 .. T - 1."""
        T, n = self.diffusion.num_timesteps, self.hparams.t_buckets
        edges = [i * T // n for i in range(n + 1)]
        return [(lo, hi - 1) for lo, hi in zip(edges[:-1], edges[1:], strict=True)]

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        x0, y = batch["x"], batch["y"]
        generator = self.eval_generator(batch_idx)
        losses, accs = [], []
        with eval_mode(self.sampling_net) as net:
            for lo, hi in self.buckets():
                t = torch.randint(lo, hi + 1, (x0.shape[0],), generator=generator,
                                  device=generator.device).to(x0.device)
                logits = net(self._noisy(x0, t, generator), t)
                losses.append(F.cross_entropy(logits, y))
                accs.append((logits.argmax(-1) == y).float().mean())
                self.log(f"val/acc_t{lo}-{hi}", accs[-1], sync_dist=True)
        self.log("val/loss", torch.stack(losses).mean(), prog_bar=True, sync_dist=True)
        self.log("val/acc", torch.stack(accs).mean(), prog_bar=True, sync_dist=True)

    def check_process(self, diffusion: GaussianDiffusion, path: str = "the classifier") -> None:
        """Raise unless this classifier was trained for ``diffusion``'s noise process."""
        mine, theirs = self.diffusion, diffusion
        same = mine.num_timesteps == theirs.num_timesteps and torch.allclose(
            mine.alpha_bar.cpu(), theirs.alpha_bar.cpu(), rtol=1e-9, atol=0
        )
        if not same:
            gap = ""
            if mine.num_timesteps == theirs.num_timesteps:
                gap = (mine.alpha_bar.cpu() - theirs.alpha_bar.cpu()).abs().max()
                gap = f": alpha_bar differs by up to {gap:.3g}"
            raise ValueError(
                f"classifier {path} was trained for the noise process "
                f"({mine.schedule}, T={mine.num_timesteps}), but the model uses another "
                f"(T={theirs.num_timesteps}{gap}); train a classifier with the model's beta_schedule, "
                f"beta_start, beta_end and num_timesteps (a VP score model's are linear betas from "
                f"beta_min / N to beta_max / N)"
            )
