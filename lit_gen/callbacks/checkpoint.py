"""Checkpointing that never loses a completed step: ``last.ckpt`` holds the final state of every fit that ends
with the process still able to clean up (max_steps, max_time, early stopping, Ctrl-C, SIGTERM), every write is
atomic, and a write that fails stops the fit at once with one line naming the file."""

from __future__ import annotations

import signal
from contextlib import contextmanager

import lightning.pytorch as L
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint

from lit_gen.data.images import UnreadableImageError
from lit_gen.files import atomic_write
from lit_gen.preemption import Preempted, stop_signals


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint IO, writing each file through :func:`lit_gen.files.atomic_write` (a temporary
    file in the checkpoint's own folder, fsync, rename): never half-written, also when ``$TMPDIR`` is another
    file system."""

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        import torch

        atomic_write(path, lambda file: torch.save(checkpoint, file))


class Checkpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint (every ``every_n_train_steps`` steps), plus:

    - every file is written atomically (:class:`AtomicCheckpointIO`), and a failed write stops the fit at
      once;
    - when fitting stops after a step (``max_steps``, ``max_time``, a callback setting ``should_stop``, a
      signal), ``last.ckpt`` is written right after that step, as a step checkpoint is: a resume continues the
      same epoch and ends bit-identical to an uninterrupted run; ``EarlyStopping`` at a validation rewrites it
      at the end;
    - SIGINT (Ctrl-C) and SIGTERM: a step in progress is finished; a sample grid, FID pass or validation in
      progress is stopped at once (on several processes, one already running finishes: a rank cannot leave a
      collective alone); ``last.ckpt`` is saved for the last completed step, no end-of-fit grid is drawn, and
      ``lit-gen fit`` exits with 128 + the signal number. A second signal aborts at once (``last.ckpt`` then
      keeps the newest completed checkpoint).

    Args: those of ``lightning.pytorch.callbacks.ModelCheckpoint``.
    """

    _last_written_step = -1
    _start_step = 0

    # --- writing -------------------------------------------------------------------------------------
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        strategy = trainer.strategy
        if type(getattr(strategy, "_checkpoint_io", None) or strategy.checkpoint_io) is TorchCheckpointIO:
            strategy.checkpoint_io = AtomicCheckpointIO()

    def _save_last_checkpoint(self, trainer: L.Trainer, monitor_candidates: dict) -> None:
        super()._save_last_checkpoint(trainer, monitor_candidates)
        if self.save_last:
            self._last_written_step = trainer.global_step

    def save_final(self, trainer: L.Trainer) -> None:
        """Write ``last.ckpt`` unless it already holds this step (or this fit took no step)."""
        if not self.save_last or trainer.fast_dev_run or trainer.global_step in (self._last_written_step,
                                                                                  self._start_step):
            return
        self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    # --- the fit's life ------------------------------------------------------------------------------
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start_step = trainer.global_step
        # here, after Lightning's own handlers (registered once fit has started): they would forward the
        # signal to other ranks and broadcast from inside the handler, racing with the ranks' agreement at the
        # step's end
        stop_signals.install()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args, **kwargs) -> None:
        super().on_train_batch_end(trainer, pl_module, *args, **kwargs)
        # every rank stops at the same step, whichever ranks the signal reached
        received = agree(trainer, stop_signals.received is not None)
        reached = trainer.max_steps >= 0 and trainer.global_step >= trainer.max_steps
        if received or trainer.should_stop or reached:
            # inside the epoch, as a step checkpoint: the resume continues this epoch
            self.save_final(trainer)
        if received:
            raise Preempted(stop_signals.received or signal.SIGTERM)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn == "fit" and not trainer.sanity_checking:
            stop_signals.enter(immediate=trainer.world_size == 1, agree=lambda stop: agree(trainer, stop))

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn == "fit" and not trainer.sanity_checking:
            stop_signals.leave()
        super().on_validation_end(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.save_final(trainer)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        stop_signals.restore()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule,
                     exception: BaseException) -> None:
        stop_signals.restore()
        super().on_exception(trainer, pl_module, exception)
        # the weights are the last completed step's
        if isinstance(exception, (Preempted, UnreadableImageError)):
            self.save_final(trainer)
        if isinstance(exception, Preempted):
            exception.step, exception.saved_to = trainer.global_step, self.last_model_path or None
        # any other error (e.g. a NaN loss) leaves last.ckpt at the newest completed checkpoint, not broken
        # weights


def agree(trainer: L.Trainer, decision: bool) -> bool:
    """True on every rank if ``decision`` is True on any (one collective on several processes)."""
    return trainer.strategy.reduce_boolean_decision(decision,
                                                    all=False) if trainer.world_size > 1 else decision


@contextmanager
def preemptible(trainer: L.Trainer):
    """A block a stop signal interrupts (a sample grid, an FID pass): on one process at once; on several, none
    starts once any rank has a signal (the ranks agree first)."""
    with stop_signals.interruptible(immediate=trainer.world_size == 1,
                                    agree=lambda stop: agree(trainer, stop)):
        yield
