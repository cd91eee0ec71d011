"""Samplers of the training timestep t: uniform, or importance sampling by the loss history
(Nichol & Dhariwal 2021, Eq. 17 and Sec. 3.3)."""

from __future__ import annotations

import torch
from torch import nn


class UniformTimesteps(nn.Module):
    """t ~ U{0, ..., T-1} with weight 1."""

    def __init__(self, num_timesteps: int) -> None:
        super().__init__()
        self.num_timesteps = num_timesteps

    def probabilities(self) -> torch.Tensor:
        return torch.full((self.num_timesteps,), 1.0 / self.num_timesteps, dtype=torch.float64)

    def sample(self, batch_size: int, device, generator: torch.Generator | None = None):
        """(t (B,), weights (B,)): the loss at t is multiplied by 1 / (T p_t), so E[w L_t] = mean_t L_t."""
        p = self.probabilities().to(device)
        t = torch.multinomial(p, batch_size, replacement=True, generator=generator)
        return t, (1.0 / (self.num_timesteps * p[t])).float()

    def update(self, t: torch.Tensor, losses: torch.Tensor) -> None:
        """Record per-sample losses L_t (gathered from every rank under DDP). Uniform sampling ignores
        them."""


class LossAwareTimesteps(UniformTimesteps):
    """p_t proportional to sqrt(E[L_t^2]) over the last ``history`` losses at t, uniform until every t has
    ``history`` of them, then mixed with ``uniform_mix`` of the uniform distribution.

    The history is kept in buffers, so it is saved in checkpoints and a resumed run samples exactly as an
    uninterrupted one.
    """

    def __init__(self, num_timesteps: int, history: int = 10, uniform_mix: float = 0.001) -> None:
        super().__init__(num_timesteps)
        self.uniform_mix = uniform_mix
        self.register_buffer("loss_history", torch.zeros(num_timesteps, history, dtype=torch.float64))
        self.register_buffer("loss_counts", torch.zeros(num_timesteps, dtype=torch.long))

    def warmed_up(self) -> bool:
        return bool((self.loss_counts >= self.loss_history.shape[1]).all())

    def probabilities(self) -> torch.Tensor:
        if not self.warmed_up():
            return super().probabilities()
        p = self.loss_history.pow(2).mean(1).sqrt()
        p = p / p.sum()
        return (p * (1 - self.uniform_mix) + self.uniform_mix / self.num_timesteps).cpu()

    @torch.no_grad()
    def update(self, t: torch.Tensor, losses: torch.Tensor) -> None:
        history = self.loss_history.shape[1]
        for step, loss in zip(t.tolist(), losses.detach().double().tolist(), strict=True):
            n = int(self.loss_counts[step])
            if n == history:  # a queue: drop the oldest
                self.loss_history[step, :-1] = self.loss_history[step, 1:].clone()
                self.loss_history[step, -1] = loss
            else:
                self.loss_history[step, n] = loss
                self.loss_counts[step] += 1
