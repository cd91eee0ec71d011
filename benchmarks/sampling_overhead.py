"""Sampling time of ``DDPM.sample`` against steps x one forward pass of the same net at the same batch.
Target: at most 5% over.

Two baselines: the forward passes timed inside the very sampling run (``in-loop``: robust to the machine's
drift, it isolates what the sampler adds), and steps x the median of isolated forward passes.

    python -m benchmarks.sampling_overhead [--batch 64] [--steps 50 200 1000]
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from benchmarks.common import digits_ddpm, median_time, print_table
from lit_gen.utils import sample_generators


class TimedNet(nn.Module):
    """Wraps the net and sums the wall time of its forward passes."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net, self.seconds = net, 0.0

    def forward(self, *args):
        start = time.perf_counter()
        out = self.net(*args)
        self.seconds += time.perf_counter() - start
        return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, nargs="+", default=[50, 200, 1000])
    args = parser.parse_args()
    torch.manual_seed(0)
    model, _ = digits_ddpm()
    model.eval()
    net = model.sampling_net
    x = torch.randn(args.batch, *model.data_shape)
    t = torch.full((args.batch,), 500)

    @torch.no_grad()
    def forward():
        net(x, t)

    for _ in range(5):
        forward()
    rows = []
    timed = TimedNet(model.ema.module)
    model.ema.module = timed
    for sampler in ("ddpm", "ddim"):
        for steps in args.steps:
            one = median_time(forward, repeats=max(10, 2000 // steps))
            gens = sample_generators(0, 0, args.batch)
            timed.seconds = 0.0
            start = time.perf_counter()
            model.sample(args.batch, gens, sampler=sampler, steps=steps)
            total = time.perf_counter() - start
            bound = steps * one
            rows.append([sampler, steps, f"{one * 1000:.2f}", f"{total:.2f}", f"{timed.seconds:.2f}",
                         f"{100 * (total - timed.seconds) / timed.seconds:+.1f}%", f"{bound:.2f}",
                         f"{100 * (total - bound) / bound:+.1f}%"])
    print(f"\nSampling, digits UNet 1.1M params, batch {args.batch}, {torch.get_num_threads()} threads")
    print_table(["sampler", "steps", "forward ms", "sample s", "in-loop forwards s", "overhead (in-loop)",
                 "steps x forward s", "overhead (isolated)"], rows)


if __name__ == "__main__":
    main()
