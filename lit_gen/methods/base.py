"""What every lit_gen LightningModule shares, generative or auxiliary (a noisy classifier, a dVAE, a CLIP):
optimizer and LR schedule from config, EMA weights, exact-resume seeding, a method tag in checkpoints. The
sampling contract is :class:`lit_gen.methods.generative.GenerativeModule`'s."""

from __future__ import annotations

import sys
from dataclasses import dataclass

import lightning.pytorch as L
import numpy as np
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn

from lit_gen.checkpoints import (
    TAG,
    CheckpointError,
    check_method,
    class_path,
    consolidate,
    network_weights,
    read_checkpoint,
)
from lit_gen.nets.ema import EMA
from lit_gen.optim import check_factories, follow_trainer
from lit_gen.sharding import load_full_state_dict
from lit_gen.strategies import shard_new, shards_parameters, step_applied
from lit_gen.utils import eval_mode  # noqa: F401  (methods import it from here)
from lit_gen.version import __version__


@dataclass
class TinyCheckpoint:
    """A value in a method's :meth:`~LitGenModule.tiny_args`: an untrained, seeded checkpoint of the tiny
    version of ``method`` (a class or a method name) built with ``init_args``, which the test helpers write
    once (for a method that loads another's checkpoint, as DALL-E loads its dVAE)."""

    method: type | str
    init_args: dict


def _adam(params):
    return torch.optim.Adam(params, lr=2e-4)


class LitGenModule(L.LightningModule):
    """Base class of every lit_gen module. Subclasses implement :meth:`build_net`, ``training_step`` and
    ``validation_step``.

    The networks (``self.net`` and its EMA ``self.ema``) are built in :meth:`configure_model`, which the
    Trainer calls inside the strategy's context, so FSDP shards them as they are made (ZeRO-3 when DeepSpeed
    wraps the model: see :class:`lit_gen.strategies.DeepSpeed`). A module made outside a Trainer (a notebook,
    a test) builds them on first use of ``net`` or ``ema``.

    Args:
        optimizer: optimizer factory, ``class_path`` + ``init_args`` without ``params`` in YAML.
        lr_scheduler: optional LR schedule factory, stepped every optimizer step
            (e.g. ``lit_gen.optim.WarmupCosineLR``).
        ema_decay: decay of the EMA of the weights used for validation and sampling; 0 disables it.
        seed: base of the per-step seeds that make a resumed run identical to an uninterrupted one.
    """

    # init arguments that only change evaluation: given with --ckpt_path, they override the checkpoint's
    # values
    evaluation_args: frozenset[str] = frozenset()
    family = ""  # diffusion, score, flow, dalle or classifier: what the README and the CI sweep group by
    usage = ""  # an auxiliary module (not a GenerativeModule): how it is used, for lit-gen sample's error
    init_from: str | None = None  # a method's checkpoint whose weights a fresh fit starts from (init_args)

    def __init__(
        self,
        optimizer: OptimizerCallable = _adam,
        lr_scheduler: LRSchedulerCallable | None = None,
        ema_decay: float = 0.9999,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if not 0 <= ema_decay < 1:
            raise ValueError(f"ema_decay={ema_decay} must be in [0, 1) (0: no EMA)")
        check_factories(optimizer, lr_scheduler)
        self.optimizer_factory = optimizer
        self.lr_scheduler_factory = lr_scheduler
        self.ema_decay = ema_decay
        self.seed = seed
        self.init_weights: str | None = None  # a consolidated checkpoint to start from (set by lit-gen fit)

    @classmethod
    def tiny_args(cls, init_args: dict, data_shape: tuple[int, ...]) -> dict:
        """init_args that shrink this method for a seconds-long CPU run of any of its configs (tests, smoke
        runs), given the config's own ``init_args`` and the data's shape; each network class brings its own
        as a ``tiny_args`` attribute. Subclasses add theirs to these."""
        return {"sampling_steps": 5} if "sampling_steps" in init_args else {}

    # --- networks ------------------------------------------------------------------------------------
    def build_net(self) -> nn.Module:
        """A new network of this method (called once for ``net`` and, when sharded, once for its EMA)."""
        raise NotImplementedError

    def configure_model(self) -> None:
        if "net" not in self._modules:  # not built already (by load_from_checkpoint, or by a first use)
            strategy = self._trainer.strategy if self._trainer is not None else None
            sharded = shards_parameters(strategy)
            self.net = self.build_net()
            # sharded: a second network made (and so sharded) like net holds the average of each rank's shard
            self.ema = EMA(self.net, self.ema_decay,
                           average=self.build_net() if sharded else None) if self.ema_decay > 0 else None
            for net in [self.net] + ([self.ema.module] if self.ema is not None else []):
                shard_new(strategy, net)
        # before the strategy wraps the model (ZeRO-1/2 copy the weights then)
        if self.init_weights is not None:
            load_full_state_dict(self, consolidate(self.init_weights)["state_dict"])
            self.init_weights = None
        elif self.init_from is not None and self._fitting_afresh():
            self._start_from(self.init_from)

    def _start_from(self, path: str) -> None:
        """Both networks start from the sampling weights (EMA where kept) of a checkpoint of this method at
        ``path``; once (a second fit of this module continues its own weights)."""
        check_method(read_checkpoint(path), type(self), f"init_from {path}")
        weights = network_weights(path)
        try:
            for net in [self.net] + ([self.ema.module] if self.ema is not None else []):
                load_full_state_dict(net, weights)
        except RuntimeError as err:  # strict loading: another network
            detail = " ".join(str(err).split())[:300]
            raise CheckpointError(f"init_from {path}: its network does not fit this model's (another net "
                                  f"config?): {detail}") from None
        self.init_from = None
        if self.global_rank == 0:
            print(f"lit-gen: the weights start from the sampling weights of {path}; the optimizer, LR "
                  "schedule and step count start afresh", file=sys.stderr)

    def _fitting_afresh(self) -> bool:
        """In a fit (a test or a loaded module keeps its own weights and never reads ``init_from``; ``lit-gen
        fit`` clears ``init_from`` when it resumes)."""
        trainer = self._trainer
        return trainer is not None and trainer.state.fn == "fit"

    def __getattr__(self, name: str):
        if name in ("net", "ema") and "net" not in self.__dict__.get("_modules", {"net": None}):
            self.configure_model()  # first use outside a Trainer
            return getattr(self, name)
        return super().__getattr__(name)

    @property
    def sampling_net(self) -> nn.Module:
        """The EMA network when there is one, else the trained network."""
        return self.ema.module if self.ema is not None else self.net

    def optimizer_step(self, *args, **kwargs) -> None:
        super().optimizer_step(*args, **kwargs)
        if self.ema is not None and step_applied(self.trainer.strategy):
            self.ema.update(self.net)

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(self.net.parameters())
        if self.lr_scheduler_factory is None:
            return optimizer
        scheduler = self.lr_scheduler_factory(optimizer)
        follow_trainer(scheduler, int(self.trainer.estimated_stepping_batches))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # --- randomness ----------------------------------------------------------------------------------
    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        # Seed the global RNG (noise, timesteps, dropout) from (seed, epoch, batch, rank): a run resumed
        # from a checkpoint then draws exactly what an uninterrupted run draws.
        state = np.random.SeedSequence([self.seed, self.current_epoch, batch_idx, self.global_rank])
        torch.manual_seed(int(state.generate_state(1, dtype=np.uint64)[0] >> 1))
        self._batch_idx = batch_idx
        self._batch_size = len(batch["x"])

    # --- logging -------------------------------------------------------------------------------------
    def on_validation_batch_start(self, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._batch_size = len(batch["x"])

    def on_test_batch_start(self, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._batch_size = len(batch["x"])

    def log(self, name: str, value, *args, **kwargs) -> None:
        # every batch is a dict with images "x": its size weights the epoch means (Lightning would guess it
        # from the dict, with a warning on every run)
        if kwargs.get("batch_size") is None and self.__dict__.get("_batch_size"):
            kwargs["batch_size"] = self._batch_size
        super().log(name, value, *args, **kwargs)

    def on_before_backward(self, loss: torch.Tensor) -> None:
        # Stop at the first non-finite loss on any rank (all ranks stop together, none waits in a collective),
        # naming the step, instead of training on NaN weights for hours.
        bad = self.trainer.strategy.reduce_boolean_decision(not bool(torch.isfinite(loss)), all=False)
        if bad:
            raise FloatingPointError(
                f"non-finite training loss ({loss.item()} on rank {self.global_rank}) at global step "
                f"{self.global_step} (epoch {self.current_epoch}, batch {getattr(self, '_batch_idx', '?')}); "
                "lower the learning rate, clip gradients (trainer.gradient_clip_val) or check the data"
            )

    def eval_generator(self, batch_idx: int) -> torch.Generator:
        """A fixed generator per validation/test batch, so val/test losses compare across epochs."""
        seed = self.seed + 7919 * batch_idx + self.global_rank
        return torch.Generator(device=self.device).manual_seed(seed)

    # --- checkpoints ---------------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        world = self._trainer.world_size if self._trainer is not None else 1
        checkpoint[TAG] = {"class_path": class_path(self), "version": __version__, "world_size": world}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if TAG in checkpoint:
            check_method(checkpoint, type(self))
