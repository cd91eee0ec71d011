"""Learning-rate schedules configurable from YAML (``model.init_args.lr_scheduler``)."""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler


class WarmupCosineLR(LRScheduler):
    """Linear warm-up for ``warmup_steps`` optimizer steps, then cosine decay to ``min_lr_ratio`` * lr.

    Args:
        optimizer: wrapped optimizer.
        warmup_steps: steps of linear warm-up from 0 (500 in the notes' anime-faces script).
        total_steps: length of the schedule in optimizer steps; None follows the trainer's estimate
            (``trainer.estimated_stepping_batches``), also when a resumed run changes max_steps.
        min_lr_ratio: final learning rate as a fraction of the peak; 1.0 gives warm-up then constant.
    """

    def __init__(
        self, optimizer: Optimizer, warmup_steps: int = 0, total_steps: int | None = None,
        min_lr_ratio: float = 0.0
    ) -> None:
        if warmup_steps < 0 or (total_steps is not None and total_steps < 1):
            raise ValueError(f"warmup_steps={warmup_steps} must be >= 0 and total_steps={total_steps} >= 1")
        self.warmup_steps = warmup_steps
        self.total_steps = total_steps
        self.follows_trainer = total_steps is None
        self.min_lr_ratio = min_lr_ratio
        super().__init__(optimizer)

    def load_state_dict(self, state_dict: dict) -> None:
        total_steps = self.total_steps
        super().load_state_dict(state_dict)
        if self.follows_trainer:  # the current trainer's length wins over the checkpoint's
            self.total_steps = total_steps

    def get_lr(self) -> list[float]:
        factor = self._factor(self.last_epoch)
        return [base_lr * factor for base_lr in self.base_lrs]

    def _factor(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.total_steps is None or self.total_steps <= self.warmup_steps:
            return 1.0
        progress = min(1.0, (step - self.warmup_steps) / (self.total_steps - self.warmup_steps))
        return self.min_lr_ratio + (1 - self.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def follow_trainer(scheduler, total_steps: int) -> None:
    """Give a schedule that follows the trainer's length (``total_steps`` None) the trainer's estimate."""
    if getattr(scheduler, "follows_trainer", False):
        scheduler.total_steps = total_steps


def check_factories(optimizer, lr_scheduler=None) -> None:
    """Build the optimizer (and LR schedule) once on a stand-in parameter, so a bad setting (``lr: -1``) is a
    one-line ValueError when the method is made, before a fit writes anything, not after its set-up."""
    import torch

    try:
        built = optimizer([torch.nn.Parameter(torch.zeros(1))])
        if lr_scheduler is not None:
            lr_scheduler(built)
    except (ValueError, TypeError) as err:
        raise ValueError(f"model.optimizer / model.lr_scheduler: {err}") from None
