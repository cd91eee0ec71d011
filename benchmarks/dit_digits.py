"""DiT against the UNet on digits: flow matching with each network at (nearly) equal parameters and the same
2,000 training steps, Fréchet distance and precision / recall (k = 3) in the digits16 features of 500
samples against the 1,437 training digits, with Euler and DPM-Solver++(2M) at 8, 16 and 32 NFE, and the time
of a training step of each, measured one after the other on the same batch.

    python -m benchmarks.dit_digits [--runs runs_bench] | tee benchmarks/results_dit_digits.txt

Both are fitted with ``lit-gen fit`` from their shipped configs (flow_matching/digits.yaml and
dit_digits.yaml) into ``--runs``, one after the other, and reused when their last checkpoint is there (the
UNet run is the one of ``benchmarks.flow_matching``).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from benchmarks import flow_matching as fm
from benchmarks.common import print_table
from lit_gen.checkpoints import load_module
from lit_gen.data import DigitsDataModule

NFES = (8, 16, 32)
RUNS = {"UNet": ("flow_matching/digits.yaml", "fm"), "DiT": ("flow_matching/dit_digits.yaml", "fm_dit")}


def train_step_seconds(model, x, repeats: int = 10) -> float:
    """Seconds of one training step (loss, backward, Adam) of ``model`` on the batch x, after one warm-up."""
    optimizer = torch.optim.Adam(model.net.parameters(), lr=1e-4)
    model.net.train()
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        optimizer.zero_grad()
        model.loss(model.net, x).backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    model.net.eval()
    return sum(times[1:]) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default="runs_bench")
    parser.add_argument("--num_samples", type=int, default=500)
    parser.add_argument("--batch", type=int, default=250)
    args = parser.parse_args()
    runs = Path(args.runs)
    runs.mkdir(parents=True, exist_ok=True)
    ckpts = {label: fm.fit(runs, config, name) for label, (config, name) in RUNS.items()}
    data = DigitsDataModule(image_size=16, batch_size=500)
    data.setup("fit")
    evaluate = fm.Evaluator(data, args.num_samples, args.batch)
    models = {label: (load_module(path), ("euler", "dpmpp2m")) for label, path in ckpts.items()}
    rows, _ = fm.quality_rows(models, evaluate, NFES)
    print_table(["network", "sampler", "NFE", "FD", "precision", "recall", "ms / sample"], rows)
    x = next(iter(torch.utils.data.DataLoader(data.train_dataset, batch_size=128)))["x"]
    sizes = []
    for label, (model, _) in models.items():  # one after the other, on the same batch
        params = sum(p.numel() for p in model.net.parameters()) / 1e6
        sizes.append([label, f"{params:.2f} M", f"{train_step_seconds(model, x):.3f}"])
    print_table(["network", "parameters", "s / training step (batch 128)"], sizes)


if __name__ == "__main__":
    main()
