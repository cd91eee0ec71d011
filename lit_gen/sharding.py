"""How ZeRO-3 and FSDP2 store a network's parameters, in plain torch (no Lightning): this rank's shards, the
full tensors gathered on every rank, loading full weights into shards, and the weights gathered for a block.
Networks (the EMA) and methods use these; :mod:`lit_gen.strategies` holds the Lightning strategies."""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn


@contextmanager
def gathered(module: nn.Module):
    """Under ZeRO-3, every weight of ``module`` gathered for the block, for entry points other than forward
    (ZeRO-3 gathers a layer's weights only around its forward; FSDP's are registered, see :meth:`FSDP.shard`).
    Elsewhere it does nothing."""
    params = [p for p in module.parameters() if hasattr(p, "ds_tensor")]
    if not params:
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(params):
        yield



def local_shards(net: nn.Module) -> list[torch.Tensor]:
    """The part of each parameter of ``net`` this rank stores: the whole tensor, the flat ZeRO-3 partition, or
    the local piece of an FSDP2 DTensor. Two networks built alike and sharded alike have matching shards."""
    from torch.distributed.fsdp import FSDPModule

    for module in net.modules():
        if isinstance(module, FSDPModule):
            module.reshard()  # a unit may still hold its gathered weights (reshard_after_forward=False)
    return [_local(p) for p in net.parameters()]


def _local(p: torch.Tensor) -> torch.Tensor:
    if hasattr(p, "ds_tensor"):
        return p.ds_tensor
    if hasattr(p, "to_local"):
        return p.to_local()
    return p.data


@torch.no_grad()
def full_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """``module``'s state dict with full (gathered) tensors on every rank, whatever the sharding."""
    params = list(module.parameters())
    if any(hasattr(p, "ds_tensor") for p in params):
        import deepspeed

        with deepspeed.zero.GatheredParameters(params):
            return {k: v.detach().clone() for k, v in module.state_dict().items()}
    if any(hasattr(p, "to_local") for p in params):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(module, options=StateDictOptions(full_state_dict=True))
    return module.state_dict()


@torch.no_grad()
def load_full_state_dict(module: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load full (unsharded) weights into ``module``, whose parameters may be ZeRO-3 partitions or FSDP2
    DTensors; every rank passes the same ``state``."""
    params = list(module.parameters())
    if any(hasattr(p, "ds_tensor") for p in params):
        import deepspeed

        with deepspeed.zero.GatheredParameters(params, modifier_rank=0):
            module.load_state_dict(state)
    elif any(hasattr(p, "to_local") for p in params):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        set_model_state_dict(module, state, options=StateDictOptions(full_state_dict=True))
    else:
        module.load_state_dict(state)


def end_process_group() -> None:
    """Destroy the default process group, if this process joined one. A process that exits without it may
    abort while the interpreter finalises (gloo's worker threads still hold tensors: "terminate called without
    an active exception", pytorch/pytorch#190489), failing a run that had finished."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
