"""Peak memory per rank on 2 CPU processes for DDP and DeepSpeed ZeRO-1/2/3, next to ``lit-gen memory``'s
model, on a network where the optimizer state dominates (the toy2d DDPM with a 4 x 4096-wide MLP, 218 M
parameters, fp32 Adam, EMA on); then what activation checkpointing saves on the digits and CIFAR-10 UNets, and
what it costs per step.

    python -m benchmarks.memory                 # ~10 minutes on 2 cores, ~12 GB of RAM at its peak
    python -m benchmarks.memory --hidden 2048   # 55 M parameters, faster

Peak memory of a rank = its peak resident set (VmHWM) minus its resident set before the network is built
(Python, torch, Lightning and DeepSpeed themselves): in the steady state (steps 3-5, the peak reset after step
2) and over the first steps, which hold one-time costs (DDP rebuilds its gradient buckets at step 2 while the
old ones still exist; DeepSpeed's first optimizer step creates the Adam state). Model = lit_gen.memory's peak
for the run's settings: states (weights + gradients + optimizer state + EMA) + DeepSpeed's gradient buckets +
the larger of forward/backward (ZeRO-3's gathered weights + activations) and the optimizer step's temporaries.
DDP runs with ``gradient_as_bucket_view`` (the ddp preset), so its buckets are the gradients. The last row
lowers ZeRO-3's ``max_reuse_distance`` so that layers are released after their forward.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lightning.pytorch as L
import torch

ROOT = Path(__file__).resolve().parents[1]
STRATEGIES = ["ddp", "deepspeed_zero1", "deepspeed_zero2", "deepspeed_zero3", "deepspeed_zero3+reuse", "fsdp",
              "fsdp_grad_op"]


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def high_water_mark() -> int:
    """This process's peak resident set since start or since :func:`reset_high_water_mark` (VmHWM), bytes."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))


def reset_high_water_mark() -> None:
    with open("/proc/self/clear_refs", "w") as f:  # Linux: "5" resets VmHWM to the current resident set
        f.write("5")


class PeakMemory(L.Callback):
    """Writes each rank's peak resident memory above its memory when the callback was made: over the whole
    fit, and in the steady state (from the third step on, after one-time costs such as DDP's bucket rebuild at
    the second step and DeepSpeed's first optimizer step, which creates the optimizer state)."""

    def __init__(self, path: str) -> None:
        self.path, self.base, self.first = path, rss(), 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == 2 and not self.first:
            self.first = high_water_mark()
            reset_high_water_mark()

    def on_train_end(self, trainer, pl_module) -> None:
        steady = high_water_mark()
        with open(f"{self.path}.rank{trainer.global_rank}", "w") as f:
            json.dump({"peak": max(self.first, steady) - self.base, "steady": steady - self.base}, f)


BUCKET = 20_000_000  # DeepSpeed's gradient buckets (Lightning's default 2e8 is 0.8 GB each in fp32)
REUSE = 20_000_000  # the second ZeRO-3 row: stage3_max_reuse_distance lowered from its default 1e9


def fit_args(strategy: str, hidden: int, out: Path) -> list[str]:
    preset, _, variant = strategy.partition("+")
    args = ["-m", "lit_gen", "fit", "--config", "experiments/ddpm/toy2d.yaml",
            "--config", f"experiments/trainer/{preset}.yaml", "--trainer.accelerator=cpu",
            "--trainer.devices=2",
            f"--model.init_args.net.init_args.hidden_dim={hidden}",
            "--model.init_args.net.init_args.num_layers=4",
            "--model.init_args.optimizer=torch.optim.Adam", "--model.init_args.lr_scheduler=null",
            "--data.init_args.batch_size=64", "--trainer.max_steps=5", "--trainer.limit_val_batches=0",
            "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
            "--samples.every_n_steps=0",
            "--checkpoint.every_n_train_steps=0", "--checkpoint.save_last=false",
            f"--runs_dir={out}", f"--name={strategy}", "--trainer.callbacks+=benchmarks.memory.PeakMemory",
            f"--trainer.callbacks.path={out / strategy}"]
    if preset.startswith("deepspeed"):
        args += [f"--trainer.strategy.init_args.allgather_bucket_size={BUCKET}",
                 f"--trainer.strategy.init_args.reduce_bucket_size={BUCKET}"]
    if variant == "reuse":
        args += [f"--trainer.strategy.init_args.max_reuse_distance={REUSE}"]
    return args


def measure(strategy: str, hidden: int, out: Path) -> list[int]:
    env = {k: v for k, v in os.environ.items() if k not in ("MASTER_ADDR", "MASTER_PORT", "RANK",
                                                            "WORLD_SIZE", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           *fit_args(strategy, hidden, out)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    if proc.returncode:
        raise RuntimeError(f"{strategy} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return [json.loads(Path(f"{out / strategy}.rank{r}").read_text()) for r in range(2)]


def network(hidden: int):
    """(parameters of the MLP, activation bytes of one training step at the per-rank micro-batch 32, and the
    memory model's settings for it as these runs configure them, read as ``lit-gen memory`` reads a
    preset)."""
    from lit_gen.memory import activation_bytes, settings_for
    from lit_gen.methods import DDPM
    from lit_gen.nets import MLPDenoiser

    model = DDPM(data_shape=(2,),
                 net=lambda shape, k, c: MLPDenoiser(shape, k, c, hidden_dim=hidden, num_layers=4))
    trainer = {"accelerator": "cpu", "strategy": {"class_path": "lit_gen.strategies.DeepSpeed",
                                                  "init_args": {"reduce_bucket_size": BUCKET}}}
    psi = sum(p.numel() for p in model.net.parameters())
    return psi, activation_bytes(model, 32, "32-true"), settings_for(model.net, trainer)


def checkpointing_table() -> list[str]:
    """Activation memory (saved tensors, measured) and step time with and without the UNet's checkpointing."""
    from lit_gen.memory import activation_bytes
    from lit_gen.methods import DDPM
    from lit_gen.nets import UNet

    rows = [f"{'UNet':<30}{'batch':>6}{'activations':>13}{'checkpointed':>14}{'saved':>8}{'step time':>11}"]
    for label, shape, kwargs, batch in [
        ("digits 16x16 (ddpm/digits)", (1, 16, 16),
         dict(base_channels=32, channel_mults=(1, 2), num_res_blocks=2,
                                                          attention_resolutions=(8,)), 64),
        ("CIFAR-10 32x32 (35.7 M)", (3, 32, 32),
         dict(base_channels=128, channel_mults=(1, 2, 2, 2), num_res_blocks=2,
                                                       attention_resolutions=(16,), dropout=0.1), 8)]:
        results = {}
        for ckpt in (False, True):
            def net(s, k, c, ckpt=ckpt, kwargs=kwargs):
                return UNet(s, k, c, gradient_checkpointing=ckpt, **kwargs)

            model = DDPM(data_shape=shape, net=net)
            act = activation_bytes(model, batch, "32-true")
            x = {"x": torch.randn(batch, *shape).clamp(-1, 1)}
            times = []
            for _ in range(4):  # forward + backward; the first is warm-up
                t0 = time.perf_counter()
                model.training_step(x, 0).backward()
                times.append(time.perf_counter() - t0)
            results[ckpt] = (act, min(times[1:]))
        (a0, t0), (a1, t1) = results[False], results[True]
        rows.append(f"{label:<30}{batch:>6}{a0 / 2**20:>10.1f} MB{a1 / 2**20:>11.1f} "
                    f"MB{100 * (1 - a1 / a0):>7.0f}%{t1 / t0:>10.2f}x")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, default=4096, help="MLP width (4 layers: 218 M parameters at "
                                                                 "4096)")
    parser.add_argument("--strategies", nargs="+", default=STRATEGIES)
    parser.add_argument("--skip_checkpointing", action="store_true")
    args = parser.parse_args()
    print(f"DDPM toy2d, MLP 4 x {args.hidden}, fp32 Adam, EMA on, 2 CPU processes (gloo); GiB per rank")
    print(f"{'strategy':<22}{'states':>7}{'model':>8}{'steady r0':>11}{'steady r1':>11}{'steady / model':>16}"
          f"{'first steps':>13}{'first / model':>15}")
    from lit_gen.memory import plans

    psi, act, settings = network(args.hidden)  # on CPU: torch Adam one tensor at a time (no foreach)
    model = {p.name: p for p in plans(2, "32-true", True, psi, settings)}
    settings.max_reuse_distance = REUSE
    model.update({f"{p.name}+reuse": p for p in plans(2, "32-true", True, psi, settings)})
    print(f"{psi / 1e6:.1f} M parameters; activations {act / 2**20:.1f} MB per rank (measured)")
    with tempfile.TemporaryDirectory() as tmp:
        for strategy in args.strategies:
            plan = model[strategy]
            ranks = measure(strategy, args.hidden, Path(tmp))
            steady, peak = [r["steady"] for r in ranks], max(r["peak"] for r in ranks)
            print(f"{strategy:<22}{plan.states / 2**30:>7.2f}{plan.peak(act) / 2**30:>8.2f}"
                  f"{steady[0] / 2**30:>11.2f}{steady[1] / 2**30:>11.2f}"
                  f"{max(steady) / plan.peak(act):>15.2f}x{peak / 2**30:>13.2f}"
                  f"{peak / plan.peak(act):>14.2f}x", flush=True)
    if not args.skip_checkpointing:
        print("\nactivation checkpointing (use_reentrant=False): saved-tensor memory of one training step, "
              "and the step time (forward + backward) relative to no checkpointing, one process")
        print("\n".join(checkpointing_table()))


if __name__ == "__main__":
    main()
