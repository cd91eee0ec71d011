"""``lit-gen memory``: how much memory a config's network needs per device under DDP, ZeRO-1/2/3 (with and
without offload) and FSDP, from the memory model of the notes, plus activations from one measured step.

Per parameter (Psi of them), with Adam: weights W, gradients G and optimizer state O bytes. Data parallel keeps
all three on every rank; over N ranks ZeRO-1 splits O, ZeRO-2 splits G and O, ZeRO-3 and FSDP split all three
(Rajbhandari et al. 2020, Fig. 1: ZeRO-1 2Psi + 2Psi + k Psi / N, ZeRO-2 2Psi + (2 + k) Psi / N,
ZeRO-3 (2 + 2 + k) Psi / N with k = 12 for mixed-precision Adam). lit_gen's EMA adds an fp32 copy of the
weights, split like the weights.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

GiB = 2**30


@dataclass
class Plan:
    name: str  # what a user picks: the trainer preset
    weights: float  # bytes per parameter on each device
    grads: float
    optimizer: float
    ema: float
    offloaded: float  # bytes per parameter moved to CPU memory (per rank)

    @property
    def device(self) -> float:
        return self.weights + self.grads + self.optimizer + self.ema


def bytes_per_parameter(precision: str, deepspeed: bool) -> tuple[int, int, int]:
    """(weights, gradients, optimizer state) bytes per parameter for Adam.

    torch (DDP, FSDP): fp32 weights and gradients, Adam's m and v (16); bf16-mixed autocasts inside the ops and
    keeps the same. DeepSpeed keeps an fp32 master copy beside m and v (k = 12) and, in bf16, bf16 weights and
    gradients: the notes' 2 + 2 + 12 = 16; in fp32, 4 + 4 + 12 = 20."""
    if deepspeed:
        return (2, 2, 12) if precision.startswith("bf16") or precision.startswith("16") else (4, 4, 12)
    return 4, 4, 8


def plans(world: int, precision: str, ema: bool) -> list[Plan]:
    """The memory per device of each strategy over ``world`` ranks, bytes per parameter."""
    n, e = world, 4.0 if ema else 0.0
    W, G, O = bytes_per_parameter(precision, deepspeed=False)
    w, g, o = bytes_per_parameter(precision, deepspeed=True)
    return [
        Plan("ddp", W, G, O, e, 0),
        Plan("deepspeed_zero1", w, g, o / n, e, 0),
        Plan("deepspeed_zero2", w, g / n, o / n, e, 0),
        Plan("deepspeed_zero3", w / n, g / n, o / n, e / n, 0),
        Plan("fsdp", W / n, G / n, O / n, e / n, 0),
        Plan("deepspeed_zero2_offload", w, 0, 0, e, (g + o) / n),  # gradients leave as they are reduced
        Plan("deepspeed_zero3_offload", 0, 0, 0, 0, (w + g + o + e) / n),  # one layer at a time on the device
    ]


def activation_bytes(model, batch_size: int, precision: str) -> int:
    """Bytes of the tensors autograd saves for backward in one training step at ``batch_size`` (measured)."""
    data_shape = tuple(model.data_shape)
    batch = {"x": torch.randn(batch_size, *data_shape).clamp(-1, 1)}
    if getattr(model, "num_classes", 0):
        batch["y"] = torch.randint(0, model.num_classes, (batch_size,))
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor):
        storage = t.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()  # each storage once (views share it)
        return t

    model.train()
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision.startswith("bf16"))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), autocast:
        loss = model.training_step(batch, 0)
    loss.backward()
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    return sum(n for ptr, n in seen.items() if ptr not in params)


def trainer_settings(configs: list[str]) -> dict:
    """The trainer section of the configs, merged in order (later files win)."""
    merged: dict = {}
    for config in configs:
        merged.update((yaml.safe_load(Path(config).read_text()) or {}).get("trainer") or {})
    return merged


def report(configs: list[str], devices: int, memory_per_device: float | None, batch_size: int | None) -> str:
    from lit_gen.cli import LitGenCLI

    args = [a for c in configs for a in ("--config", c)]
    args += ["--trainer.accelerator=cpu", "--trainer.devices=1", "--trainer.strategy=auto", "--trainer.logger=false",
             "--trainer.precision=32-true"]
    argv, sys.argv = sys.argv, sys.argv[:1]  # the CLI reads only args
    try:
        cli = LitGenCLI(args=args, run=False)
    finally:
        sys.argv = argv
    model, trainer = cli.model, trainer_settings(configs)
    precision = str(trainer.get("precision", "32-true"))
    model.configure_model()
    psi = sum(p.numel() for p in model.net.parameters())
    global_batch = batch_size or getattr(cli.datamodule, "batch_size", 1)
    micro = max(1, global_batch // devices)
    act = activation_bytes(model, micro, precision)
    ema = model.ema is not None
    lines = [f"network: {psi / 1e6:.2f} M parameters ({type(model.net).__name__}); precision {precision}; "
             f"{devices} rank(s); EMA {'on' if ema else 'off'}",
             f"activations at micro-batch {micro} (measured, one training step): {act / GiB:.3f} GiB per rank", "",
             f"{'strategy':<26}{'weights':>9}{'grads':>9}{'optim':>9}{'EMA':>9}{'states':>10}{'+activ.':>10}"
             f"{'CPU':>9}   (GiB per device)"]
    table = plans(devices, precision, ema)
    for plan in table:
        gib = [x * psi / GiB for x in (plan.weights, plan.grads, plan.optimizer, plan.ema, plan.device)]
        lines.append(f"{plan.name:<26}" + "".join(f"{v:>9.3f}" for v in gib[:4]) + f"{gib[4]:>10.3f}"
                     f"{gib[4] + act / GiB:>10.3f}{plan.offloaded * psi / GiB:>9.3f}")
    lines.append("bytes per parameter: " + ", ".join(
        f"{name} {'+'.join(f'{b:g}' for b in bytes_per_parameter(precision, ds))} = {sum(bytes_per_parameter(precision, ds))}"
        for name, ds in (("torch Adam", False), ("DeepSpeed", True))))
    if memory_per_device is not None:
        budget = memory_per_device * GiB * 0.9  # keep 10% for the allocator, buffers and the CUDA context
        fits = [p for p in table if p.device * psi + act <= budget]
        if fits:
            lines.append(f"recommended for {memory_per_device:g} GiB per device: {fits[0].name} "
                         f"(--config experiments/trainer/{fits[0].name}.yaml)")
        else:
            lines.append(f"nothing fits in {memory_per_device:g} GiB per device at micro-batch {micro}: lower "
                         "data.batch_size (with trainer.accumulate_grad_batches), turn on gradient_checkpointing, "
                         "or add devices")
    return "\n".join(lines)


def memory_main(argv: list[str]) -> None:
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(prog="lit-gen memory", exit_on_error=False, description=(
        "Memory per device of a config's network under DDP, DeepSpeed ZeRO-1/2/3 (and offload) and FSDP: weights, "
        "gradients, Adam state and EMA from the parameter count, activations from one measured training step."))
    parser.add_argument("--config", type=str, action="append", required=True,
                        help="Method config, then optionally a trainer preset (its precision is used).")
    parser.add_argument("--devices", type=int, default=1, help="Data-parallel ranks N (devices x nodes).")
    parser.add_argument("--memory_per_device", type=float, default=None, help="GiB per device: recommend a strategy.")
    parser.add_argument("--batch_size", type=int, default=None, help="Global batch (default: the config's).")
    cfg = parser.parse_args(argv)
    if cfg.devices < 1:
        raise ValueError(f"--devices {cfg.devices}: need at least 1")
    print(report(cfg.config, cfg.devices, cfg.memory_per_device, cfg.batch_size), file=sys.stdout)
