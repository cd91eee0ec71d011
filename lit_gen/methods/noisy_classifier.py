"""A noisy classifier p(y | x_t, t) for classifier guidance (Dhariwal & Nichol 2021, Sec. 4.1)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn

from lit_gen.checkpoints import load_frozen
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
        beta_schedule: their beta schedule, ``linear`` or ``cosine``.
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
        beta_schedule: Literal["linear", "cosine"] = "linear",
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
        self.diffusion = GaussianDiffusion(beta_schedule, num_timesteps)

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
            raise ValueError(
                f"classifier {path} was trained for the noise process "
                f"({mine.schedule}, T={mine.num_timesteps}), but the diffusion model uses "
                f"({theirs.schedule}, T={theirs.num_timesteps}); train a classifier with the model's "
                f"beta_schedule and num_timesteps"
            )

class ClassifierGuided:
    """For a generative method that a :class:`NoisyClassifier` can guide: the classifier of
    ``classifier_ckpt`` (loaded once, frozen, checked against :meth:`classifier_process`) and the requested
    labels."""

    num_classes: int = 0

    def classifier_process(self) -> GaussianDiffusion:
        """The discrete noise process a guiding classifier must have been trained for."""
        raise NotImplementedError

    def _classifier(self, options: dict) -> NoisyClassifier | None:
        """The frozen classifier of ``classifier_ckpt``, loaded once, checked against this model."""
        path = options.get("classifier_ckpt")
        if path is None:
            if options.get("classifier_scale") is not None or options.get("classifier_form") not in (None,
                                                                                                     "auto"):
                raise ValueError("classifier_scale and classifier_form need a classifier: give "
                                 "classifier_ckpt")
            return None
        # loaded for guidance, never saved with the model
        cache = self.__dict__.setdefault("_classifiers", {})
        if path not in cache:
            classifier = load_frozen(path, self.device, NoisyClassifier)
            classifier.check_process(self.classifier_process(), path)
            if self.num_classes and classifier.num_classes != self.num_classes:
                raise ValueError(f"classifier {path} has {classifier.num_classes} classes, the model "
                                 f"{self.num_classes}")
            cache[path] = classifier
        return cache[path]

    def label_classes(self, options: dict) -> int:
        """The model's classes, or the guiding classifier's for an unconditional model."""
        classifier = self._classifier(options)
        return self.num_classes or (classifier.num_classes if classifier is not None else 0)

    def _labels(self, num_samples: int, labels: torch.Tensor | None, num_classes: int | None = None):
        """Requested labels (B,) on the device, balanced over the classes by default; None without classes."""
        num_classes = self.num_classes if num_classes is None else num_classes
        if not num_classes:
            if labels is not None:
                raise ValueError(f"labels were given, but this {type(self).__name__} is unconditional; train "
                                 "it with class_conditional: true, or guide it with a classifier "
                                 "(classifier_ckpt)")
            return None
        if labels is None:
            labels = torch.arange(num_samples) % num_classes
        labels = torch.as_tensor(labels, dtype=torch.long)
        bad = labels[(labels < 0) | (labels >= num_classes)]
        if len(bad):
            raise ValueError(f"label {bad[0].item()} is out of range: the model has {num_classes} classes "
                             f"(0 to {num_classes - 1})")
        return labels.to(self.device)
