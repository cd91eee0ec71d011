"""Exponential moving average of a network's weights (used for validation and sampling)."""

from __future__ import annotations

import copy

import torch
from torch import nn

from lit_gen.sharding import local_shards


class EMA(nn.Module):
    """Keeps ``module``, a frozen copy of a network, as theta_ema <- d * theta_ema + (1 - d) * theta.

    With ``warmup``, d = min(decay, (1 + n) / (10 + n)) after n updates, so early averages are not
    dominated by the random initialisation. Its state (weights and ``num_updates``) is part of the
    owner's state_dict, so checkpoints resume it exactly.

    Args:
        net: the network to average.
        decay: the target decay rate, e.g. 0.9999 (Ho et al. 2020).
        warmup: ramp the decay up as above.
        average: a network built like ``net`` to hold the average (its values are overwritten with ``net``'s);
            default: a deep copy of ``net``. Under ZeRO-3 and FSDP both are sharded alike, and every rank
            averages only the shard it stores (:func:`~lit_gen.strategies.local_shards`): no communication,
            and the gathered average is the average of the gathered weights.

    Half-precision weights (DeepSpeed in bf16 or fp16 casts the average's too) are averaged in an fp32 copy
    beside them, and the module holds the rounded average.
    """

    def __init__(self, net: nn.Module, decay: float = 0.9999, warmup: bool = True,
                 average: nn.Module | None = None):
        super().__init__()
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"ema_decay={decay} must be in [0, 1)")
        self.module = (copy.deepcopy(net) if average is None else average).requires_grad_(False).eval()
        if average is not None:
            self.copy_from(net)
        self.decay = decay
        self.warmup = warmup
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))
        self._master: list[torch.Tensor] | None = None  # fp32 average of half-precision weights (see update)

    @torch.no_grad()
    def copy_from(self, net: nn.Module) -> None:
        """Set the average to ``net``'s current weights and buffers."""
        self._master = None
        for e, p in zip(local_shards(self.module), local_shards(net), strict=True):
            e.copy_(p)
        for b_ema, b in zip(self.module.buffers(), net.buffers(), strict=True):
            b_ema.copy_(b)

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        # made again from the loaded average at the next update (one rounding, not one a step)
        self._master = None

    def current_decay(self) -> float:
        n = int(self.num_updates)
        return min(self.decay, (1 + n) / (10 + n)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, net: nn.Module) -> None:
        decay = self.current_decay()
        ema_params = local_shards(self.module)
        if self._master is None and any(e.dtype in (torch.float16, torch.bfloat16) for e in ema_params):
            # DeepSpeed in bf16/fp16 casts every parameter, the average's too: in bf16 a step of (1 - d) =
            # 1e-4 of the difference rounds away. Average in fp32 beside it; the module gets the rounded
            # average.
            self._master = [e.float() for e in ema_params]
        if self._master is None:
            torch._foreach_lerp_(ema_params, local_shards(net), 1.0 - decay)
        else:  # one tensor at a time: an fp32 copy of the largest tensor at most, not of every weight
            for a, e, p in zip(self._master, ema_params, local_shards(net), strict=True):
                a.lerp_(p.float(), 1.0 - decay)
                e.copy_(a)
        for b_ema, b in zip(self.module.buffers(), net.buffers(), strict=True):
            b_ema.copy_(b)
        self.num_updates += 1

    def train(self, mode: bool = True) -> EMA:
        super().train(mode)
        self.module.eval()  # the average is never in training mode (no dropout)
        return self

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)
