"""Checkpointing that never loses the last steps: ``last.ckpt`` holds the final state of every fit that ends
with the process still able to clean up (max_steps, max_time, early stopping, Ctrl-C, SIGTERM)."""

from __future__ import annotations

import signal
import sys

import lightning.pytorch as L
from lightning.pytorch.callbacks import ModelCheckpoint

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)  # Ctrl-C; SLURM / Kubernetes before preemption


class Checkpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint (every ``every_n_train_steps`` steps, atomic writes), plus:

    - when fitting ends for any reason (``max_steps`` between two intervals, ``max_time``, ``EarlyStopping``
      or another callback setting ``should_stop``), ``last.ckpt`` is rewritten with the final weights, EMA,
      optimizer and step counters (Lightning 2.6 writes it at the end only if no checkpoint was ever written);
    - SIGINT (Ctrl-C) and SIGTERM stop training at the end of the current step on every rank, save that
      final state, and make ``lit-gen fit`` exit with 128 + the signal number. A second signal aborts at once
      (``last.ckpt`` then keeps the newest completed checkpoint: a write never leaves a half-written file).

    Args: those of ``lightning.pytorch.callbacks.ModelCheckpoint``.
    """

    stopped_by: signal.Signals | None = None  # the signal that stopped the last fit, if any
    _received: signal.Signals | None = None
    _previous_handlers: dict = {}  # replaced, never mutated
    _last_written_step = -1
    _start_step = 0

    # --- the final save ------------------------------------------------------------------------------
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

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start_step = trainer.global_step
        self.stopped_by = self._received = None
        self._install_handlers()

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restore_handlers()
        self.save_final(trainer)
        self.stopped_by = self._received
        if self.stopped_by is not None and trainer.is_global_zero:
            print(f"lit-gen: stopped by {self.stopped_by.name} at global step {trainer.global_step}; "
                  f"{self.last_model_path} holds that step (resume with --ckpt_path last)", file=sys.stderr)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        # an error (e.g. a NaN loss) leaves last.ckpt at the newest completed checkpoint, not at broken weights
        self._restore_handlers()
        super().on_exception(trainer, pl_module, exception)

    # --- signals -------------------------------------------------------------------------------------
    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args, **kwargs) -> None:
        super().on_train_batch_end(trainer, pl_module, *args, **kwargs)
        # every rank stops at the same step, whichever ranks the signal reached
        if trainer.strategy.reduce_boolean_decision(self._received is not None, all=False):
            self._received = self._received or signal.SIGTERM
            trainer.should_stop = True

    def _install_handlers(self) -> None:
        try:
            self._previous_handlers = {signum: signal.signal(signum, self._on_signal) for signum in STOP_SIGNALS}
        except ValueError:  # not the main thread: leave the process's handlers alone
            self._previous_handlers = {}

    def _restore_handlers(self) -> None:
        for signum, handler in self._previous_handlers.items():
            signal.signal(signum, handler)
        self._previous_handlers = {}

    def _on_signal(self, signum: int, frame) -> None:
        if self._received is not None:  # the second signal: stop now
            self._restore_handlers()
            raise KeyboardInterrupt
        self._received = signal.Signals(signum)
        print(f"\nlit-gen: {self._received.name} received: saving last.ckpt after this step "
              "(send it again to abort at once)", file=sys.stderr)
