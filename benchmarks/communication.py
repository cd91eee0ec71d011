"""Bytes each rank sends per optimizer step under DDP, ZeRO-1/2/3 and FSDP on 2 CPU processes (gloo over
loopback), next to the notes' figures for a ring all-reduce.

    python -m benchmarks.communication            # ~5 minutes on 2 cores
    python -m benchmarks.communication --hidden 2048

The network is the toy2d DDPM with a 4-layer MLP (fp32, Psi parameters, 4 Psi bytes of gradients). The bytes
are the loopback interface's transmitted bytes (/proc/net/dev), counted by the operating system, over the
steps after the first few, per rank and step. The notes' model over N ranks, with K = 4 Psi bytes: a ring
all-reduce sends 2 (N - 1) / N K per rank (DDP; ZeRO-1/2 reduce-scatter the gradients and all-gather the
updated weights, the same 2 (N - 1) / N K); ZeRO-3 and FSDP gather the weights again in backward: 3 (N - 1) /
N K; FSDP without resharding after forward gathers them once: 2 (N - 1) / N K. (The notes write 2 Psi and 3
Psi for large N.)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import lightning.pytorch as L

ROOT = Path(__file__).resolve().parents[1]
STRATEGIES = ["ddp", "deepspeed_zero1", "deepspeed_zero2", "deepspeed_zero3", "fsdp", "fsdp_grad_op"]
MODEL = {"ddp": 2, "deepspeed_zero1": 2, "deepspeed_zero2": 2, "deepspeed_zero3": 3, "fsdp": 3,
         "fsdp_grad_op": 2}


def loopback_bytes() -> int:
    """Bytes transmitted so far on the loopback interface."""
    for line in Path("/proc/net/dev").read_text().splitlines():
        name, _, counters = line.partition(":")
        if name.strip() == "lo":
            return int(counters.split()[8])
    raise RuntimeError("no loopback interface in /proc/net/dev")


class CountBytes(L.Callback):
    """Rank 0 records the loopback bytes sent between the end of step ``skip`` and the end of training (both
    ranks are in lockstep: every step ends in a collective)."""

    def __init__(self, path: str, skip: int = 3) -> None:
        self.path, self.skip, self.start = path, skip, None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.skip and self.start is None:
            trainer.strategy.barrier()
            self.start = loopback_bytes()

    def on_train_end(self, trainer, pl_module) -> None:
        trainer.strategy.barrier()
        if trainer.is_global_zero:
            steps = trainer.global_step - self.skip
            Path(self.path).write_text(json.dumps({"bytes": loopback_bytes() - self.start, "steps": steps}))


def measure(strategy: str, hidden: int, steps: int, out: Path) -> float:
    """Bytes sent per rank and optimizer step."""
    env = {k: v for k, v in os.environ.items() if k not in ("MASTER_ADDR", "MASTER_PORT", "RANK",
                                                            "WORLD_SIZE", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    path = out / f"{strategy}.json"
    args = ["-m", "lit_gen", "fit", "--config", "experiments/ddpm/toy2d.yaml", "--config",
            f"experiments/trainer/{strategy}.yaml", "--trainer.accelerator=cpu", "--trainer.devices=2",
            f"--model.init_args.net.init_args.hidden_dim={hidden}",
            "--model.init_args.net.init_args.num_layers=4",
            "--data.init_args.batch_size=64", f"--trainer.max_steps={steps}", "--trainer.limit_val_batches=0",
            "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
            "--samples.every_n_steps=0",
            "--checkpoint.every_n_train_steps=0", "--checkpoint.save_last=false",
            "--trainer.log_every_n_steps=1000", f"--runs_dir={out}", f"--name={strategy}",
            "--trainer.callbacks+=benchmarks.communication.CountBytes", f"--trainer.callbacks.path={path}"]
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", *args],
                          cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=1800)
    if proc.returncode:
        raise RuntimeError(f"{strategy} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    result = json.loads(path.read_text())
    return result["bytes"] / 2 / result["steps"]  # both ranks' traffic crosses the loopback interface


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, default=1024, help="MLP width (4 layers)")
    parser.add_argument("--steps", type=int, default=13, help="optimizer steps (the first 3 are not counted)")
    parser.add_argument("--strategies", nargs="+", default=STRATEGIES)
    args = parser.parse_args()
    from lit_gen.nets import MLPDenoiser

    psi = sum(p.numel() for p in MLPDenoiser((2,), 0, 2, hidden_dim=args.hidden, num_layers=4).parameters())
    k, n = 4 * psi, 2
    print(f"DDPM toy2d, MLP 4 x {args.hidden}: Psi = {psi / 1e6:.2f} M parameters, K = 4 Psi = "
          f"{k / 2**20:.1f} MiB of fp32 gradients; 2 CPU processes (gloo); bytes sent per rank and optimizer "
          f"step")
    print(f"{'strategy':<18}{'measured':>12}{'/ K':>7}{'notes':>8}{'notes bytes':>14}")
    with tempfile.TemporaryDirectory() as tmp:
        for strategy in args.strategies:
            sent = measure(strategy, args.hidden, args.steps, Path(tmp))
            model = MODEL[strategy] * (n - 1) / n
            print(f"{strategy:<18}{sent / 2**20:>8.1f} "
                  f"MiB{sent / k:>7.2f}{model:>8.2f}{model * k / 2**20:>10.1f} MiB",
                  flush=True)


if __name__ == "__main__":
    main()
