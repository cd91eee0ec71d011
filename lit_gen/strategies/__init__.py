"""Sharded training strategies that also run on CPU processes (gloo), so CI tests what users run on GPUs.

- :class:`DeepSpeed`: Lightning's ``DeepSpeedStrategy`` (ZeRO 1/2/3, CPU offload) on CUDA as before, and on a
  CPU accelerator too (Lightning's refuses one; DeepSpeed's CPU accelerator needs nothing more).
- :class:`FSDP`: PyTorch's FSDP2 (``fully_shard``) over all ranks, through Lightning's
  ``ModelParallelStrategy``; ``reshard_after_forward=False`` keeps the gathered weights from forward to
  backward (ZeRO-2-like "grad-op").

Both shard the networks that :meth:`LitGenModule.configure_model` builds; :mod:`lit_gen.sharding` is the
one place that knows how each stores a parameter (plain torch, no Lightning: networks use it too).
"""

from __future__ import annotations

import argparse
from contextlib import contextmanager
from typing import Any

import torch
from lightning.fabric.utilities.seed import reset_seed
from lightning.pytorch.accelerators import CPUAccelerator
from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy, ModelParallelStrategy
from torch import nn

from lit_gen.sharding import (  # noqa: F401 (their former home: lit_gen.strategies.local_shards, ...)
    end_process_group,
    full_state_dict,
    gathered,
    load_full_state_dict,
    local_shards,
)


class DeepSpeed(DeepSpeedStrategy):
    """``DeepSpeedStrategy`` that accepts a CPU accelerator (processes talk over gloo), for tests and CPU-only
    machines; on CUDA it is Lightning's strategy unchanged. Takes the same arguments (``stage``,
    ``offload_optimizer``, ``offload_parameters``, ``config``, ...), and ZeRO-3's limits on gathered weights,
    which Lightning does not pass (None keeps DeepSpeed's default):

    Args:
        max_live_parameters: ``stage3_max_live_parameters``, parameters gathered at once (default 1e9).
        max_reuse_distance: ``stage3_max_reuse_distance``: a layer's weights stay gathered after its forward
            if it runs again (backward) within this many parameters (default 1e9, so a smaller network stays
            gathered from forward to backward; lower it to trade memory for a second gather in backward).
        prefetch_bucket_size: ``stage3_prefetch_bucket_size``, parameters gathered ahead (default 5e7).
        param_persistence_threshold: ``stage3_param_persistence_threshold``: smaller parameters are never
            partitioned (default 1e5).
    """

    strategy_name = "lit_gen_deepspeed"

    def __init__(self, *, max_live_parameters: int | None = None, max_reuse_distance: int | None = None,
                 prefetch_bucket_size: int | None = None, param_persistence_threshold: int | None = None,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        stage3 = {"stage3_max_live_parameters": max_live_parameters,
                  "stage3_max_reuse_distance": max_reuse_distance,
                  "stage3_prefetch_bucket_size": prefetch_bucket_size,
                  "stage3_param_persistence_threshold": param_persistence_threshold}
        for key, value in stage3.items():
            if value is not None and value < 0:
                raise ValueError(f"{key.removeprefix('stage3_')}={value}: must be a number of parameters "
                                 ">= 0")
        if "gradient_accumulation_steps" in self.config:  # else refused by Lightning only after the launch
            raise ValueError("the DeepSpeed config sets gradient_accumulation_steps: use "
                             "--trainer.accumulate_grad_batches instead (Lightning sets DeepSpeed's from it)")
        zero = self.config.setdefault("zero_optimization", {})
        zero.update({k: int(v) for k, v in stage3.items() if v is not None})

    def setup_environment(self) -> None:
        if isinstance(self.accelerator, CPUAccelerator):
            DDPStrategy.setup_environment(self)  # skip the CUDA-only check, keep the rest
        else:
            super().setup_environment()

    def setup_distributed(self) -> None:
        if not isinstance(self.accelerator, CPUAccelerator):
            return super().setup_distributed()
        reset_seed()  # the parent's, less its check of CUDA device indices (CPU devices have none)
        self.set_world_ranks()
        self._init_deepspeed_distributed()

    @contextmanager
    def model_sharded_context(self):
        """Nets are built whole and partitioned by ``deepspeed.initialize``, not layer by layer as they are
        built (ZeRO-3's ``zero.Init``): a net that sets a layer's weights in its own ``__init__``
        (zero-initialised output layers, adaLN-Zero) would set an empty partition, and start from another
        init than under DDP."""
        yield

    def _get_process_group_backend(self) -> str:
        return "gloo" if isinstance(self.accelerator,
                                    CPUAccelerator) else super()._get_process_group_backend()

    def setup(self, trainer) -> None:
        super().setup(trainer)
        # ZeRO-3 leaves the module where it was built and moves only the parameters it partitions: a buffer
        # (the noise schedule's tables) would stay on the CPU beside CUDA parameters
        for module in self.lightning_module.modules():
            for name, buffer in module._buffers.items():
                if buffer is not None and buffer.device != self.root_device:
                    module._buffers[name] = buffer.to(self.root_device)

    def _setup_model_and_optimizer(self, model, optimizer, lr_scheduler=None):
        offload = self.config.get("zero_optimization", {}).get("offload_optimizer",
                                                               {}).get("device") not in (None, "none")
        if offload and type(optimizer) in (torch.optim.Adam, torch.optim.AdamW):
            # the offloaded step runs on the CPU: DeepSpeed's vectorised Adam
            optimizer = _cpu_adam(optimizer)
            if lr_scheduler is not None:
                lr_scheduler.optimizer = optimizer
        self.config.setdefault("zero_force_ds_cpu_optimizer", False)  # other optimizers run offloaded too
        with self._local_device_rank():
            return super()._setup_model_and_optimizer(model, optimizer, lr_scheduler)

    def load_checkpoint(self, checkpoint_path, *args, **kwargs):
        from lit_gen.checkpoints import plain_data_loads

        with plain_data_loads(checkpoint_path):  # DeepSpeed unpickles its files in full otherwise
            return super().load_checkpoint(checkpoint_path, *args, **kwargs)

    def _initialize_deepspeed_inference(self, model: nn.Module) -> None:
        with self._local_device_rank():
            super()._initialize_deepspeed_inference(model)

    @contextmanager
    def _local_device_rank(self):
        """Lightning gives ``deepspeed.initialize`` the root device's index as ``device_rank``: None for a
        CPU, which DeepSpeed reads as "not distributed" (world size 1). On CPU, give it the local rank."""
        if not isinstance(self.accelerator, CPUAccelerator):
            yield
            return
        import deepspeed

        initialize = deepspeed.initialize
        deepspeed.initialize = lambda *a, args=None, **k: initialize(  # noqa: E731
            *a, args=argparse.Namespace(device_rank=self.local_rank), **k)
        try:
            yield
        finally:
            deepspeed.initialize = initialize


def _cpu_adam(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """DeepSpeed's CPU Adam with the param groups and hyperparameters of a torch Adam / AdamW (same
    update)."""
    from deepspeed.ops.adam import DeepSpeedCPUAdam

    d = optimizer.defaults
    if d.get("amsgrad"):
        return optimizer
    return DeepSpeedCPUAdam(optimizer.param_groups, lr=d["lr"], betas=d["betas"], eps=d["eps"],
                            weight_decay=d["weight_decay"],
                            adamw_mode=isinstance(optimizer, torch.optim.AdamW))


class FSDP(ModelParallelStrategy):
    """Fully sharded data parallel (FSDP2) over every rank: weights, gradients and optimizer state are split
    across ranks and gathered one unit at a time in forward and backward.

    Args:
        reshard_after_forward: free the gathered weights after each unit's forward and gather them again in
            backward (full shard, least memory); ``False`` keeps them until backward (less communication).
        save_distributed_checkpoint: each rank writes its shard into a checkpoint folder (``False``: rank 0
            gathers one file).
    """

    strategy_name = "lit_gen_fsdp"

    def __init__(self, reshard_after_forward: bool = True, save_distributed_checkpoint: bool = True,
                 **kwargs: Any):
        super().__init__(save_distributed_checkpoint=save_distributed_checkpoint, **kwargs)
        self.reshard_after_forward = reshard_after_forward

    def setup_environment(self) -> None:
        # pure data parallelism: one data-parallel group of all ranks (the parent's "auto" means tensor
        # parallel)
        if self._data_parallel_size == "auto":
            self._data_parallel_size = self.num_nodes * self.num_processes
        if self._tensor_parallel_size == "auto":
            self._tensor_parallel_size = 1
        super().setup_environment()

    def shard(self, net: nn.Module) -> nn.Module:
        """Apply ``fully_shard`` to ``net``'s units (``net.fsdp_units()``, e.g. a UNet's blocks), then to
        ``net``; methods other than ``forward`` that the methods call (``net.fsdp_methods``) gather the
        weights too."""
        from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

        mesh = self.device_mesh["data_parallel"]
        units = net.fsdp_units() if hasattr(net, "fsdp_units") else []
        for unit in units:
            fully_shard(unit, mesh=mesh, reshard_after_forward=self.reshard_after_forward)
        fully_shard(net, mesh=mesh, reshard_after_forward=self.reshard_after_forward)
        for name in getattr(net, "fsdp_methods", ()):
            register_fsdp_forward_method(net, name)
        return net


def step_applied(strategy) -> bool:
    """Whether the optimizer step just taken changed the weights: DeepSpeed accumulates gradients itself, so
    Lightning calls its step on every micro-batch and only the last of each group (without overflow)
    updates."""
    if isinstance(strategy, DeepSpeedStrategy):
        return strategy.deepspeed_engine.was_step_applied()
    return True


def shard_new(strategy, net: nn.Module) -> nn.Module:
    """A network made after the strategy set up, sharded as the strategy shards (FSDP wraps it; ZeRO-3 shards
    inside its own init context, the others keep it whole)."""
    return strategy.shard(net) if isinstance(strategy, FSDP) else net


def shards_parameters(strategy) -> bool:
    """Whether ``strategy`` splits the parameters themselves across ranks (ZeRO-3, FSDP)."""
    return isinstance(strategy, FSDP) or (isinstance(strategy, DeepSpeedStrategy) and strategy.zero_stage_3)
