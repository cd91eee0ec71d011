"""Test NLL of RealNVP on 2-D toy densities with a closed-form density: lit_gen's ``MLPFlow`` (the flow of
experiments/flows/realnvp_toy2d.yaml) against the true density's cross-entropy (the floor) and against a
``normflows`` RealNVP of the same size built as in normflows' README. Target: lit_gen at or below normflows.

Both models are trained by the same plain PyTorch loop: same steps, batch 512 of fresh samples per step from
the same seeded stream, Adam lr 1e-3 with the config's warm-up + cosine decay, grad-norm clip 10.

    python -m benchmarks.flows_toy2d [--steps 5000] [--datasets 8gaussians checkerboard] [--seeds 0 1 2]
        [--threads 1]

Seeds differ by 0.01-0.02 nats, so the table gives the mean and spread over ``--seeds``. ``--models
realnvp normflows spline`` adds lit_gen's neural spline flow (experiments/flows/nsf_toy2d.yaml).

Needs the ``bench`` extra (``pip install -e .[bench]``) for normflows.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
import yaml
from torch import nn

from benchmarks.common import median_time, print_table
from lit_gen.data.toy2d import TOY2D_LOG_PROBS, TOY2D_SAMPLERS
from lit_gen.flows import MLPFlow
from lit_gen.optim import WarmupCosineLR

CONFIGS = Path(__file__).resolve().parents[1] / "experiments" / "flows"


def flow_args(config: str) -> dict:
    """The flow's init_args in a shipped config, so the benchmark measures exactly what users run."""
    return yaml.safe_load((CONFIGS / f"{config}.yaml").read_text())["model"]["init_args"]["flow"]["init_args"]

BATCH_SIZE, LR, WARMUP_STEPS, MIN_LR_RATIO, CLIP = 512, 1e-3, 100, 0.01, 10.0
NUM_TEST, TEST_SEED_OFFSET, NUM_SAMPLES = 50_000, 10_000, 100_000


class LitGenModel(nn.Module):
    """lit_gen's MLPFlow of ``config`` behind the two calls the loop needs."""

    name = "lit_gen RealNVP"
    config = "realnvp_toy2d"

    def __init__(self) -> None:
        super().__init__()
        self.flow = MLPFlow(data_shape=(2,), **flow_args(self.config))

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        return self.flow.log_prob(x)

    def sample(self, n: int) -> torch.Tensor:
        return self.flow.sample(n)


class LitGenSplineModel(LitGenModel):
    name = "lit_gen neural spline"
    config = "nsf_toy2d"


class NormflowsModel(nn.Module):
    """normflows' README RealNVP: ``AffineCouplingBlock(MLP([1, 128, 128, 2], init_zeros=True))`` (exp scale)
    followed by a swap of the two coordinates, 8 times, on a fixed standard normal base."""

    name = "normflows RealNVP"

    def __init__(self, num_layers: int = 8, hidden: int = 128) -> None:
        super().__init__()
        import normflows as nf

        flows = []
        for _ in range(num_layers):
            param_map = nf.nets.MLP([1, hidden, hidden, 2], init_zeros=True)
            flows += [nf.flows.AffineCouplingBlock(param_map), nf.flows.Permute(2, mode="swap")]
        self.flow = nf.NormalizingFlow(nf.distributions.DiagGaussian(2, trainable=False), flows)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        return self.flow.log_prob(x)

    def sample(self, n: int) -> torch.Tensor:
        return self.flow.sample(n)[0]


def num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def train(model: nn.Module, dataset: str, steps: int, seed: int) -> tuple[float, int]:
    """Maximum likelihood on fresh batches; returns (seconds, number of skipped non-finite steps)."""
    sampler = TOY2D_SAMPLERS[dataset]
    data_gen = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    scheduler = WarmupCosineLR(
        optimizer, warmup_steps=WARMUP_STEPS, total_steps=steps, min_lr_ratio=MIN_LR_RATIO
    )
    model.train()
    skipped = 0
    start = time.perf_counter()
    for _ in range(steps):
        x = sampler(BATCH_SIZE, data_gen)
        loss = -model.log_prob(x).mean()  # the first call initialises ActNorm (lit_gen) on this batch
        optimizer.zero_grad(set_to_none=True)
        if torch.isfinite(loss):
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
            optimizer.step()
        else:
            skipped += 1
        scheduler.step()
    return time.perf_counter() - start, skipped


@torch.no_grad()
def test_nll(model: nn.Module, x: torch.Tensor, chunk: int = 10_000) -> float:
    model.eval()
    return -torch.cat([model.log_prob(part) for part in x.split(chunk)]).double().mean().item()


@torch.no_grad()
def sampling_rate(model: nn.Module, n: int = NUM_SAMPLES) -> float:
    model.eval()
    model.sample(1000)  # warm-up
    return n / median_time(lambda: model.sample(n), repeats=3)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=5000)
    parser.add_argument(
        "--datasets", nargs="+", default=["8gaussians", "checkerboard"], choices=sorted(TOY2D_LOG_PROBS)
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--models", nargs="+", default=["realnvp", "normflows"], choices=sorted(MODELS))
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    def spread(values: list[float]) -> str:
        return f"{statistics.mean(values):.4f} ± {statistics.pstdev(values):.4f}"

    rows, notes = [], []
    for dataset in args.datasets:
        x_test = TOY2D_SAMPLERS[dataset](NUM_TEST, torch.Generator().manual_seed(TEST_SEED_OFFSET))
        true_nll = -TOY2D_LOG_PROBS[dataset](x_test).double().mean().item()
        rows.append([dataset, "true density", "-", f"{true_nll:.4f}", "0", "-", "-"])
        for cls in (MODELS[name] for name in args.models):
            nlls, times, rates = [], [], []
            for seed in args.seeds:
                torch.manual_seed(seed)
                model = cls()
                seconds, skipped = train(model, dataset, args.steps, seed)
                nlls.append(test_nll(model, x_test))
                times.append(seconds)
                rates.append(sampling_rate(model))
                if skipped:
                    notes.append(f"{dataset} / {cls.name} / seed {seed}: {skipped} non-finite steps skipped")
                print(f"done {dataset} / {cls.name} / seed {seed}: NLL {nlls[-1]:.4f}", flush=True)
            gaps = [nll - true_nll for nll in nlls]
            rows.append([
                dataset, cls.name, f"{num_params(model):,}", spread(nlls), spread(gaps),
                f"{statistics.mean(times):.1f}", f"{statistics.mean(rates):,.0f}",
            ])

    print(f"\nToy 2-D flows ({', '.join(f'{m}: {flow_args(m)}' for m in ('realnvp_toy2d', 'nsf_toy2d'))}), "
          f"{args.steps} steps x batch {BATCH_SIZE}, Adam {LR} + cosine, clip {CLIP}; mean ± std over seeds "
          f"{args.seeds}; {NUM_TEST:,} test points; {torch.get_num_threads()} threads; samples/s: "
          f"{NUM_SAMPLES:,} samples, no grad")
    header = ["dataset", "model", "params", "test NLL (nats)", "gap to true", "train s", "samples/s"]
    print_table(header, rows)
    for note in notes:
        print(note)


MODELS = {"realnvp": LitGenModel, "normflows": NormflowsModel, "spline": LitGenSplineModel}

if __name__ == "__main__":
    main()
