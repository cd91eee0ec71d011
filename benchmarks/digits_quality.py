"""Sample quality and likelihood on digits: Fréchet distance (shipped digits16 features, against the training
digits) and wall-clock per sample for DDPM-1000, DDIM-{10, 20, 50, 100} on a DDPM checkpoint and respaced
ancestral sampling {25, 50, 100} on an Improved DDPM checkpoint; bits/dim of both on the test split.
Targets: DDIM-20 within 1.3x of DDPM-1000's distance; Improved DDPM's bits/dim below DDPM's.

    python -m benchmarks.digits_quality --ddpm runs/ddpm_digits/checkpoints/last.ckpt \\
        --iddpm runs/iddpm_digits/checkpoints/last.ckpt [--num_samples 500]
"""

from __future__ import annotations

import argparse
import time

import torch

from benchmarks.common import print_table
from lit_gen.callbacks.fid import resolve_features
from lit_gen.checkpoints import load_module
from lit_gen.data import DigitsDataModule
from lit_gen.metrics import frechet_distance, load_feature_net
from lit_gen.utils import sample_generators


def fid_of(model, metric, num_samples: int, batch: int, **options) -> tuple[float, float]:
    metric.reset()
    start = time.perf_counter()
    for s in range(0, num_samples, batch):
        n = min(batch, num_samples - s)
        metric.update(model.sample(n, sample_generators(0, s, n), **options).x.clamp(-1, 1), real=False)
    seconds = (time.perf_counter() - start) / num_samples
    return float(metric.compute()), seconds


def bpd_of(model, data, max_batches: int) -> float:
    values = []
    for i, batch in enumerate(data.test_dataloader()):
        if i == max_batches:
            break
        nll = model.diffusion.nll_bpd(lambda x, t: model.sampling_net(x, t), batch["x"],
                                      model.prediction_type,
                                      model.variance, torch.Generator().manual_seed(i))
        values.append(nll["bpd"])
    return torch.cat(values).mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ddpm", required=True)
    parser.add_argument("--iddpm", required=True)
    parser.add_argument("--num_samples", type=int, default=500)
    parser.add_argument("--batch", type=int, default=250)
    parser.add_argument("--bpd_batches", type=int, default=2, help="test batches of 128 for bits/dim")
    parser.add_argument("--skip_ddpm_1000", action="store_true")
    args = parser.parse_args()
    torch.manual_seed(0)
    data = DigitsDataModule(image_size=16, batch_size=128)
    data.setup("fit")
    metric = frechet_distance(load_feature_net(resolve_features("digits16")))
    for batch in torch.utils.data.DataLoader(data.train_dataset, batch_size=500):
        metric.update(batch["x"], real=True)

    runs = []
    ddpm = load_module(args.ddpm, torch.device("cpu"))
    if not args.skip_ddpm_1000:
        runs.append(("DDPM", "ddpm", 1000, ddpm, {"sampler": "ddpm", "steps": 1000}))
    for k in (10, 20, 50, 100):
        runs.append(("DDPM", "ddim", k, ddpm, {"sampler": "ddim", "steps": k, "eta": 0.0}))
    iddpm = load_module(args.iddpm, torch.device("cpu"))
    for k in (25, 50, 100):
        runs.append(("Improved DDPM", "ddpm (respaced)", k, iddpm, {"sampler": "ddpm", "steps": k}))
    rows = []
    for name, sampler, steps, model, options in runs:
        fid, sec = fid_of(model, metric, args.num_samples, args.batch, **options)
        rows.append([name, sampler, steps, f"{fid:.3f}", f"{1000 * sec:.1f}"])
        print(rows[-1], flush=True)
    print(f"\nFréchet distance, digits16 classifier features, {args.num_samples} samples vs "
          f"{len(data.train_dataset)} training digits (lower is better)")
    print_table(["checkpoint", "sampler", "steps", f"fid_digits16_n{args.num_samples}", "ms / sample"], rows)
    print(f"\nBits/dim on {args.bpd_batches * 128} test digits (full bound, T = 1000 steps, lower is better)")
    print_table(["checkpoint", "bits/dim"], [["DDPM", f"{bpd_of(ddpm, data, args.bpd_batches):.3f}"],
                                             ["Improved DDPM",
                                              f"{bpd_of(iddpm, data, args.bpd_batches):.3f}"]])


if __name__ == "__main__":
    main()
