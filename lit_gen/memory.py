"""``lit-gen memory``: how much memory a config's network needs per device under DDP, ZeRO-1/2/3 (with and
without offload) and FSDP, from the memory model of the notes, plus what the libraries hold beside it, plus
activations from one measured step.

States (Psi parameters, with Adam): weights W, gradients G and optimizer state O bytes each. Data parallel
keeps all three on every rank; over N ranks ZeRO-1 splits O, ZeRO-2 splits G and O, ZeRO-3 and FSDP split all
three (Rajbhandari et al. 2020, Fig. 1: ZeRO-1 2Psi + 2Psi + k Psi / N, ZeRO-2 2Psi + (2 + k) Psi / N, ZeRO-3
(2 + 2 + k) Psi / N with k = 12 for mixed-precision Adam). lit_gen's EMA adds an fp32 copy of the weights,
split like the weights (under DeepSpeed in bf16, a bf16 copy and its fp32 average: 2 + 4).

Beside the states, at the peak (what DeepSpeed 0.19 and torch 2.x allocate; measured in benchmarks/memory.py):
- ZeRO-3 keeps the weights of tensors up to ``stage3_param_persistence_threshold`` elements (default 1e5; many
  of a small UNet's convolutions) whole on every rank once gathered, beside their partitions, which stay on
  the device under offload; the EMA's copies are never gathered in training and stay split;
- gathered weights, forward to backward: ZeRO-3 keeps a layer gathered until its reuse is more than
  ``stage3_max_reuse_distance`` parameters away (default 1e9: every layer of a smaller network stays
  gathered), plus ``stage3_prefetch_bucket_size`` prefetched; FSDP2 keeps its root and about two units (all of
  it without resharding after forward), with their unsharded gradients in backward;
- communication buckets: DeepSpeed's gradient reduction buffers of ``reduce_bucket_size`` elements (two with
  ``overlap_comm``, ZeRO-1/2);
- the optimizer step's temporaries: the gradient partition as one fp32 tensor (ZeRO-3 always copies it;
  ZeRO-1/2 only cast a lower-precision one; ZeRO-1 first frees the gradients of the other ranks' partitions),
  and torch Adam's sqrt(v) / c + eps over what it updates at once (the flat partition under DeepSpeed, one
  tensor at a time under DDP and FSDP, every tensor with ``foreach``, the default on CUDA): one fp32 copy with
  ``foreach``, which divides in place, and two without (sqrt(v), then sqrt(v) / c).
"""

from __future__ import annotations

import sys
import warnings
from dataclasses import dataclass, fields
from pathlib import Path

import torch
import yaml

GiB = 2**30


@dataclass
class Plan:
    """Bytes per device of one strategy: states kept between steps, and what comes and goes within a step."""

    name: str  # what a user picks: the trainer preset
    weights: float
    grads: float
    optimizer: float
    ema: float
    offloaded: float = 0.0  # moved to CPU memory (per rank)
    buffers: float = 0.0  # communication buckets, held throughout
    gathered: float = 0.0  # full weights gathered from forward to backward
    step: float = 0.0  # added by the optimizer step (temporaries less gradients freed before it)

    @property
    def states(self) -> float:
        return self.weights + self.grads + self.optimizer + self.ema

    def peak(self, activations: float) -> float:
        """Peak bytes per device: the states and buffers, plus the larger of forward/backward (gathered
        weights and activations) and the optimizer step."""
        return self.states + self.buffers + max(self.gathered + activations, self.step, 0.0)


@dataclass
class Settings:
    """What beside the parameter count sets the memory: the network's shape, the DeepSpeed and FSDP
    settings."""

    largest_tensor: int = 0  # elements of the largest parameter
    fsdp_root: int | None = None  # parameters outside FSDP units (None: the whole network is one unit)
    fsdp_unit: int = 0  # parameters of the largest FSDP unit
    foreach: bool = True  # torch Adam updates every tensor at once (its default on CUDA)
    reduce_bucket_size: float = 2e8  # Lightning's DeepSpeedStrategy defaults
    overlap_comm: bool = True
    max_reuse_distance: float = 1e9  # DeepSpeed's ZeRO-3 defaults
    prefetch_bucket_size: float = 5e7
    param_persistence_threshold: float = 1e5
    persistent: int = 0  # parameters in tensors of at most that many: ZeRO-3 keeps them whole on every rank


def bytes_per_parameter(precision: str, deepspeed: bool) -> tuple[int, int, int]:
    """(weights, gradients, optimizer state) bytes per parameter for Adam.

    torch (DDP, FSDP): fp32 weights and gradients, Adam's m and v (16); bf16-mixed autocasts inside the ops
    and keeps the same. DeepSpeed keeps an fp32 master copy beside m and v (k = 12) and, in bf16, bf16 weights
    and gradients: the notes' 2 + 2 + 12 = 16; in fp32, 4 + 4 + 12 = 20."""
    if deepspeed:
        return (2, 2, 12) if precision.startswith("bf16") or precision.startswith("16") else (4, 4, 12)
    return 4, 4, 8


def plans(world: int, precision: str, ema: bool, psi: int, settings: Settings | None = None) -> list[Plan]:
    """The memory per device of each strategy over ``world`` ranks for a network of ``psi`` parameters, in the
    order ``--memory_per_device`` prefers them (less communication first)."""
    s, n = settings or Settings(), world
    W, G, O = (b * psi for b in bytes_per_parameter(precision, deepspeed=False))  # noqa: E741 (the paper's O)
    w, g, o = (b * psi for b in bytes_per_parameter(precision, deepspeed=True))
    e = 4.0 * psi if ema else 0.0
    # DeepSpeed casts it; half: an fp32 average beside
    e_ds = (w + 4.0 * psi if w < 4 * psi else w) if ema else 0.0

    # torch Adam's temporaries for sqrt(v) / c + eps over what it updates at once:
    def adam(numel: float) -> float:
        # foreach divides its sqrt in place; one tensor at a time does not
        return (4.0 if s.foreach else 8.0) * numel

    at_once = psi if s.foreach else s.largest_tensor  # what torch Adam updates at once under DDP
    ds_step = adam(psi / n)  # DeepSpeed hands Adam the flat fp32 partition
    # ZeRO-1/2 step on the flat partition itself if it is fp32
    fp32_copy = 4.0 * psi / n if g < 4 * psi else 0.0
    reduce = (2 if s.overlap_comm else 1) * s.reduce_bucket_size  # elements of DeepSpeed's gradient buckets
    # ZeRO-3's share of weights whole beside their partitions
    kept = min(1.0, s.persistent / psi) if psi else 0.0
    zero3_gathered = w * min(1.0 - kept,
                             (s.max_reuse_distance + s.prefetch_bucket_size + s.largest_tensor) / psi)
    # FSDP2 gathers a unit's weights and, in its backward, holds its unsharded gradients until the
    # reduce-scatter
    fsdp_units = 1.0 if s.fsdp_root is None else min(1.0, (s.fsdp_root + 2 * s.fsdp_unit) / psi)
    return [
        Plan("ddp", W, G, O, e, step=adam(at_once)),
        # ZeRO-1 frees the gradients of the other ranks' partitions before its step
        Plan("deepspeed_zero1", w, g, o / n, e_ds, buffers=g / psi * reduce,
             step=fp32_copy + ds_step - (g - g / n)),
        Plan("deepspeed_zero2", w, g / n, o / n, e_ds, buffers=g / psi * reduce, step=fp32_copy + ds_step),
        Plan("deepspeed_zero3", w * (kept + 1 / n), g / n, o / n, e_ds / n,
             buffers=g / psi * s.reduce_bucket_size,
             # ZeRO-3 always flattens into a new tensor
             gathered=zero3_gathered, step=4.0 * psi / n + ds_step),
        Plan("fsdp_grad_op", W / n, G / n, O / n, e / n, gathered=W + G * fsdp_units, step=adam(at_once / n)),
        Plan("fsdp", W / n, G / n, O / n, e / n, gathered=(W + G) * fsdp_units, step=adam(at_once / n)),
        # offloaded: gradients leave as they are reduced and the step runs on the CPU (DeepSpeed's CPU Adam)
        Plan("deepspeed_zero2_offload", w, 0, 0, e_ds, offloaded=(g + o) / n, buffers=g / psi * reduce),
        # their partitions stay
        Plan("deepspeed_zero3_offload", w * kept * (1 + 1 / n), 0, 0, e_ds * kept / n,
             offloaded=((w + e_ds) * (1 - kept) + g + o) / n,
             buffers=g / psi * s.reduce_bucket_size, gathered=zero3_gathered),
    ]


def settings_for(net: torch.nn.Module, trainer: dict) -> Settings:
    """The :class:`Settings` of ``net`` under a merged trainer section (its DeepSpeed preset's buckets and
    ZeRO-3 limits, if any; Lightning's and DeepSpeed's defaults otherwise)."""
    params = list(net.parameters())
    units = net.fsdp_units() if hasattr(net, "fsdp_units") else []
    unit_sizes = [sum(p.numel() for p in u.parameters()) for u in units]
    s = Settings(largest_tensor=max((p.numel() for p in params), default=0),
                 fsdp_root=sum(p.numel() for p in params) - sum(unit_sizes) if units else None,
                 fsdp_unit=max(unit_sizes, default=0),
                 foreach=str(trainer.get("accelerator", "auto")) != "cpu")
    strategy = trainer.get("strategy")
    if isinstance(strategy, dict) and "DeepSpeed" in str(strategy.get("class_path", "")):
        known = {f.name for f in fields(Settings)}
        for key, value in (strategy.get("init_args") or {}).items():
            if key in known and value is not None:
                setattr(s, key, value)
    s.persistent = sum(p.numel() for p in params if p.numel() <= s.param_persistence_threshold)
    return s


def activation_bytes(model, batch_size: int, precision: str, example: dict | None = None) -> int:
    """Bytes of the tensors autograd saves for backward in one training step at ``batch_size`` (measured), on
    ``example`` (a batch of the config's data, repeated or cut to ``batch_size``) or on random images and
    labels."""
    if example is not None:
        n = len(example["x"])
        index = torch.arange(batch_size) % n
        batch = {k: v[index] if isinstance(v, torch.Tensor) else [v[i] for i in index.tolist()]
                 for k, v in example.items()}
    else:
        shape = getattr(model, "image_shape", model.data_shape)  # a latent model's batches hold images
        batch = {"x": torch.randn(batch_size, *tuple(shape)).clamp(-1, 1)}
        if getattr(model, "num_classes", 0):
            batch["y"] = torch.randint(0, model.num_classes, (batch_size,))
        if getattr(model, "text", None) is not None:  # a text-conditional model (captions are padded)
            batch["caption"] = ["a shape"] * batch_size
            if not model.tokenizer.is_fitted:
                model.tokenizer.fit(batch["caption"])
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor):
        storage = t.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()  # each storage once (views share it)
        return t

    model.train()
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision.startswith("bf16"))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), autocast, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*self.log.*")  # no Trainer here: logging is a no-op
        try:
            loss = model.training_step(batch, 0)
        except KeyError as missing:  # e.g. captions: random images cannot stand in for them
            raise ValueError(f"{type(model).__name__} trains on {missing} from its data, which could not be "
                             "read; put the config's data in place to measure its activations") from None
    loss.backward()
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    return sum(n for ptr, n in seen.items() if ptr not in params)


def example_batch(datamodule) -> dict | None:
    """One training batch of the config's data (captions and labels as the method expects them), or None when
    the data is not there (the activations are then measured on random images and labels)."""
    if datamodule is None:
        return None
    try:  # no prepare_data: nothing is downloaded to measure memory
        datamodule.setup("fit")
        return next(iter(datamodule.train_dataloader()))
    except Exception as error:  # noqa: BLE001 (any reason the data cannot be read: say it, measure without)
        reason = (str(error).splitlines() or [type(error).__name__])[0]
        print(f"lit-gen memory: no batch of the data ({reason}); activations measured on random images",
              file=sys.stderr)
        return None


def trainer_settings(configs: list[str]) -> dict:
    """The trainer section of the configs, merged in order (later files win)."""
    merged: dict = {}
    for config in configs:
        _merge(merged, (yaml.safe_load(Path(config).read_text()) or {}).get("trainer") or {})
    return merged


def _merge(into: dict, later: dict) -> None:
    """Nested sections merge key by key, as the CLI merges configs; another class_path replaces the
    section."""
    for key, value in later.items():
        before = into.get(key)
        if (isinstance(value, dict) and isinstance(before, dict)
                and value.get("class_path", before.get("class_path")) == before.get("class_path")):
            _merge(before, value)
        else:
            into[key] = value


def report(configs: list[str], devices: int, memory_per_device: float | None, batch_size: int | None) -> str:
    from lit_gen.cli import LitGenCLI

    args = [a for c in configs for a in ("--config", c)]
    args += ["--trainer.accelerator=cpu", "--trainer.devices=1", "--trainer.strategy=auto",
             "--trainer.logger=false",
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
    example = example_batch(cli.datamodule)
    # the method's own fit setup (CLIP and DALL-E fit their tokenizer on the captions)
    if example is not None:
        cli.trainer._data_connector.attach_datamodule(model, datamodule=cli.datamodule)
        model.trainer = cli.trainer
        model.setup("fit")
        model.trainer = None  # measured without a running Trainer (self.log is a no-op)
    act = activation_bytes(model, micro, precision, example)
    ema = model.ema is not None
    lines = [f"network: {psi / 1e6:.2f} M parameters ({type(model.net).__name__}); precision {precision}; "
             f"{devices} rank(s); EMA {'on' if ema else 'off'}",
             f"activations at micro-batch {micro} (measured, one training step): {act / GiB:.3f} GiB per "
             "rank", "",
             f"{'strategy':<26}{'weights':>9}{'grads':>9}{'optim':>9}{'EMA':>9}{'states':>9}{'buffers':>9}"
             f"{'gathered':>10}{'step':>9}{'peak':>9}{'CPU':>9}   (GiB per device)"]
    table = plans(devices, precision, ema, psi, settings_for(model.net, trainer))
    for plan in table:
        gib = [x / GiB for x in (plan.weights, plan.grads, plan.optimizer, plan.ema, plan.states,
                                 plan.buffers,
                                 plan.gathered, plan.step, plan.peak(act), plan.offloaded)]
        cells = "".join(f"{v:>{10 if i == 6 else 9}.3f}" for i, v in enumerate(gib))
        lines.append(f"{plan.name:<26}{cells}")
    lines.append("peak = states + buffers + the larger of (gathered weights + activations) in "
                 "forward/backward and the optimizer step's temporaries (less the gradients it frees)")
    lines.append("bytes per parameter: " + ", ".join(
        f"{name} {'+'.join(f'{b:g}' for b in bytes_per_parameter(precision, ds))} = "
        f"{sum(bytes_per_parameter(precision, ds))}"
        for name, ds in (("torch Adam", False), ("DeepSpeed", True))))
    if memory_per_device is not None:
        budget = memory_per_device * GiB * 0.9  # keep 10% for the allocator, buffers and the CUDA context
        fits = [p for p in table if p.peak(act) <= budget]
        if fits:
            lines.append(f"recommended for {memory_per_device:g} GiB per device: {fits[0].name} "
                         f"(--config experiments/trainer/{fits[0].name}.yaml)")
        else:
            lines.append(f"nothing fits in {memory_per_device:g} GiB per device at micro-batch {micro}: "
                         "lower data.batch_size (with trainer.accumulate_grad_batches), turn on "
                         "gradient_checkpointing, or add devices")
    return "\n".join(lines)


def memory_main(argv: list[str]) -> None:
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(prog="lit-gen memory", exit_on_error=False, description=(
        "Memory per device of a config's network under DDP, DeepSpeed ZeRO-1/2/3 (and offload) and FSDP: "
        "weights, gradients, Adam state and EMA from the parameter count; communication buckets, gathered "
        "weights and the optimizer step's temporaries from the preset's settings; activations from one "
        "measured training step."))
    parser.add_argument("--config", type=str, action="append", required=True,
                        help="Method config, then optionally a trainer preset (its precision is used).")
    parser.add_argument("--devices", type=int, default=1, help="Data-parallel ranks N (devices x nodes).")
    parser.add_argument("--memory_per_device", type=float, default=None,
                        help="GiB per device: recommend a strategy.")
    parser.add_argument("--batch_size", type=int, default=None, help="Global batch (default: the config's).")
    cfg = parser.parse_args(argv)
    if cfg.devices < 1:
        raise ValueError(f"--devices {cfg.devices}: need at least 1")
    print(report(cfg.config, cfg.devices, cfg.memory_per_device, cfg.batch_size), file=sys.stdout)
