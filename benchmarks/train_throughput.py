"""Training throughput (images/s) of the DDPM step under Lightning vs a plain PyTorch loop doing the same work
(same net, data, loss, AdamW, gradient clipping and EMA update). Target: Lightning's overhead at most 3%.

    python -m benchmarks.train_throughput [--steps 60] [--warmup 10]
"""

from __future__ import annotations

import argparse
import time

import lightning.pytorch as L
import torch

from benchmarks.common import digits_ddpm, print_table


class StepTimer(L.Callback):
    """Wall time from the start of step ``warmup`` to the end of the last step."""

    def __init__(self, warmup: int) -> None:
        self.warmup, self.start, self.end = warmup, None, None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.warmup and self.start is None:
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.end = time.perf_counter()


def lightning_run(steps: int, warmup: int) -> float:
    torch.manual_seed(0)
    model, data = digits_ddpm()
    timer = StepTimer(warmup)
    trainer = L.Trainer(
        accelerator="cpu", devices=1, max_steps=steps, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0, gradient_clip_val=1.0,
        callbacks=[timer],
    )
    trainer.fit(model, data)
    return (steps - warmup) * data.batch_size / (timer.end - timer.start)


def plain_run(steps: int, warmup: int) -> float:
    torch.manual_seed(0)
    model, data = digits_ddpm()
    data.setup("fit")
    optimizer = model.configure_optimizers()
    step = 0
    while True:
        for batch in data.train_dataloader():
            if step == warmup:
                start = time.perf_counter()
            loss = model.loss(model.net, batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.net.parameters(), 1.0)
            optimizer.step()
            model.ema.update(model.net)
            loss.item()  # Lightning reads the loss for logging; do the same sync here
            step += 1
            if step == steps:
                return (steps - warmup) * data.batch_size / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    rows = []
    for r in range(args.repeats):  # interleave so drift of the machine hits both alike
        plain = plain_run(args.steps, args.warmup)
        lit = lightning_run(args.steps, args.warmup)
        rows.append([r, f"{plain:.1f}", f"{lit:.1f}", f"{100 * (plain - lit) / plain:+.2f}%"])
    print(f"\nDDPM training step, digits 16x16, batch 128, UNet 1.1M params, {torch.get_num_threads()} "
          f"threads, {args.steps - args.warmup} timed steps")
    print_table(["repeat", "plain PyTorch img/s", "Lightning img/s", "Lightning overhead"], rows)


if __name__ == "__main__":
    main()
