"""Sampling time of ``DDPM.sample`` against steps x one forward pass of the same net at the same batch.
Target: at most 5% over.

    python -m benchmarks.sampling_overhead [--batch 64] [--steps 50 200 1000]
"""

from __future__ import annotations

import argparse

import torch

from benchmarks.common import digits_ddpm, median_time, print_table
from lit_gen.utils import sample_generators


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
    for sampler in ("ddpm", "ddim"):
        for steps in args.steps:
            one = median_time(forward, repeats=max(10, 2000 // steps))
            gens = sample_generators(0, 0, args.batch)
            total = median_time(lambda: model.sample(args.batch, gens, sampler=sampler, steps=steps), repeats=3)
            bound = steps * one
            rows.append([sampler, steps, f"{one * 1000:.2f}", f"{total:.2f}", f"{bound:.2f}",
                         f"{100 * (total - bound) / bound:+.1f}%"])
    print(f"\nSampling, digits UNet 1.1M params, batch {args.batch}, {torch.get_num_threads()} threads")
    print_table(["sampler", "steps", "forward ms", "sample s", "steps x forward s", "overhead"], rows)


if __name__ == "__main__":
    main()
