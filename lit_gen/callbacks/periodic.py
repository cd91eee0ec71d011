"""The schedule the logging callbacks share: every N optimizer steps and/or every N epochs, and once more when
fitting ends."""

from __future__ import annotations

from contextlib import nullcontext

import lightning.pytorch as L
import torch

from lit_gen.methods.generative import GenerativeModule


class EveryNSteps(L.Callback):
    """Calls :meth:`run` every ``every_n_steps`` optimizer steps, at the end of every ``every_n_epochs``-th
    epoch, and when fitting ends (unless that step was just done). Both 0 turn it off. Every rank calls
    :meth:`run` (a sharded model needs all ranks in a forward pass)."""

    def __init__(self, every_n_steps: int, every_n_epochs: int = 0) -> None:
        super().__init__()
        if every_n_steps < 0 or every_n_epochs < 0:
            raise ValueError(f"every_n_steps={every_n_steps} and every_n_epochs={every_n_epochs} must be >= "
                             f"0 (0: off)")
        self.every_n_steps = every_n_steps
        self.every_n_epochs = every_n_epochs
        self._last_step = -1

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if self.every_n_steps > 0 and step > 0 and step % self.every_n_steps == 0 and step != self._last_step:
            self._run(trainer, pl_module)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if (self.every_n_epochs > 0 and (trainer.current_epoch + 1) % self.every_n_epochs == 0
                and trainer.global_step != self._last_step):
            self._run(trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        if (self.every_n_steps > 0 or self.every_n_epochs > 0) and trainer.global_step != self._last_step:
            self._run(trainer, pl_module)

    def _run(self, trainer: L.Trainer, pl_module) -> None:
        self._last_step = trainer.global_step
        if not isinstance(pl_module, GenerativeModule):  # e.g. a noisy classifier: nothing to sample
            return
        from lit_gen.callbacks.checkpoint import preemptible

        with preemptible(trainer), weights_autocast(pl_module):  # a stop signal ends a grid at once
            self.run(trainer, pl_module)

    def run(self, trainer: L.Trainer, pl_module) -> None:
        raise NotImplementedError


def weights_autocast(module: torch.nn.Module):
    """Autocast to the weights' own dtype when they are half precision (DeepSpeed's bf16 and fp16 convert the
    weights themselves), so that float32 noise can meet them outside Lightning's steps; else nothing."""
    dtype = next((p.dtype for p in module.parameters() if p.is_floating_point()), torch.float32)
    if dtype not in (torch.bfloat16, torch.float16):
        return nullcontext()
    device = next(module.parameters()).device.type
    return torch.autocast(device, dtype=dtype)
