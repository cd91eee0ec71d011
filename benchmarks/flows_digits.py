"""Flows on digits: bits/dim on the test split, Fréchet distance (shipped digits16 features) at several
temperatures, sampling throughput and the exactness of inversion, for flow checkpoints trained with
``experiments/flows/*_digits.yaml``.

    python -m benchmarks.flows_digits runs/glow_digits/checkpoints/last.ckpt \\
        runs/realnvp_digits/checkpoints/last.ckpt [--num_samples 500 --dequant_samples 4]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from benchmarks.common import print_table
from lit_gen.callbacks.fid import resolve_features
from lit_gen.checkpoints import load_module
from lit_gen.data import DigitsDataModule
from lit_gen.metrics import frechet_distance, load_feature_net
from lit_gen.utils import sample_generators


@torch.no_grad()
def test_bpd(model, data, dequant_samples: int) -> float:
    """Mean bits/dim over the test split, each image scored with ``dequant_samples`` noise draws."""
    values = []
    flow = model.sampling_net.eval()
    for i, batch in enumerate(data.test_dataloader()):
        for k in range(dequant_samples):
            generator = torch.Generator().manual_seed(1000 * i + k)
            values.append(model.nll(flow, batch["x"], generator))
    return torch.cat(values).mean().item()


@torch.no_grad()
def fid_and_rate(model, metric, num_samples: int, batch: int, temperature: float) -> tuple[float, float]:
    metric.reset()
    start = time.perf_counter()
    for s in range(0, num_samples, batch):
        n = min(batch, num_samples - s)
        metric.update(model.sample(n, sample_generators(0, s, n), temperature=temperature).x, real=False)
    return float(metric.compute()), num_samples / (time.perf_counter() - start)


@torch.no_grad()
def inversion_error(model, data) -> float:
    """Largest |x - decode(invert(x))| over a test batch, in 8-bit steps."""
    x = next(iter(data.test_dataloader()))["x"]
    x8 = torch.round((x + 1) * 255 / 2)
    recon = model.sample(len(x), latents=model.invert(x)).x
    return (torch.round((recon + 1) * 255 / 2) - x8).abs().max().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoints", nargs="+")
    parser.add_argument("--num_samples", type=int, default=500)
    parser.add_argument("--batch", type=int, default=250)
    parser.add_argument("--temperatures", type=float, nargs="+", default=[1.0, 0.7, 0.5])
    parser.add_argument("--dequant_samples", type=int, default=4, help="noise draws per test image for "
                                                                       "bits/dim")
    args = parser.parse_args()
    torch.manual_seed(0)
    data = DigitsDataModule(image_size=16, batch_size=128)
    data.setup("fit")
    data.setup("test")
    metric = frechet_distance(load_feature_net(resolve_features("digits16")))
    for batch in torch.utils.data.DataLoader(data.train_dataset, batch_size=500):
        metric.update(batch["x"], real=True)

    bpd_rows, sample_rows = [], []
    for path in args.checkpoints:
        model = load_module(path, torch.device("cpu"))
        name = f"{type(model.net).__name__} ({Path(path).parent.parent.name})"
        params = sum(p.numel() for p in model.net.parameters())
        bpd_rows.append([name, f"{params:,}", f"{test_bpd(model, data, args.dequant_samples):.3f}",
                         f"{inversion_error(model, data):.0f}"])
        print(bpd_rows[-1], flush=True)
        for t in args.temperatures:
            fid, rate = fid_and_rate(model, metric, args.num_samples, args.batch, t)
            sample_rows.append([name, t, f"{fid:.3f}", f"{rate:.0f}"])
            print(sample_rows[-1], flush=True)
    print(f"\nBits/dim on the {len(data.test_dataset)} test digits "
          f"({args.dequant_samples} dequantisation draws each; lower is better) and the largest inversion "
          f"round-trip error in 8-bit steps")
    print_table(["checkpoint", "params", "test bits/dim", "inversion error"], bpd_rows)
    print(f"\nFréchet distance, digits16 features, {args.num_samples} samples vs {len(data.train_dataset)} "
          f"training digits (held-out real digits score about 1.08), and sampling throughput at batch "
          f"{args.batch}")
    print_table(["checkpoint", "temperature", f"fid_digits16_n{args.num_samples}", "samples / s"],
                sample_rows)


if __name__ == "__main__":
    main()
