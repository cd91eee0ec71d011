"""Samplers against their cost on digits: Fréchet distance (digits16 features, vs the 1,437 training images)
and seconds per image for EM, PC, the ODE by RK45, Heun and DPM-Solver++(2M) at NFE budgets, on the DDPM
digits checkpoint (through its VP process) and on VP / sub-VP / VE score checkpoints; then bits/dim by the ODE
next to Improved DDPM's bound on the same test digits, and, with --toy, NLL on 2-D data next to the true
density.

    python -m benchmarks.score_digits --ddpm runs/ddpm_digits/checkpoints/last.ckpt \\
        --score runs/sde_vp_digits/checkpoints/last.ckpt runs/sde_subvp_digits/checkpoints/last.ckpt \\
        runs/sde_ve_digits/checkpoints/last.ckpt --iddpm runs/iddpm_digits/checkpoints/last.ckpt \\
        --toy runs/sde_vp_toy2d/checkpoints/last.ckpt

NFE per batch: a grid of K points costs K calls for EM, reverse diffusion, Euler and DPM-Solver++, 2K for PC
(one corrector step), 2K - 1 for Heun (all with the final denoising call); RK45 is run at tolerances and its
measured NFE is printed. DDPM-1000 (ancestral, all 1000 steps) is the reference of the targets.
"""

from __future__ import annotations

import argparse
import time

import torch

from benchmarks.common import print_table
from lit_gen.callbacks.fid import resolve_features
from lit_gen.checkpoints import load_module
from lit_gen.data import DigitsDataModule, Toy2DDataModule
from lit_gen.data.toy2d import TOY2D_LOG_PROBS
from lit_gen.metrics import frechet_distance, load_feature_net
from lit_gen.score import ScoreModel, ode_bits_per_dim
from lit_gen.utils import sample_generators


def grid_for(sampler: str, nfe: int) -> dict | None:
    """The options that spend about ``nfe`` network calls per batch (None: the budget is too small)."""
    steps = {"em": nfe, "dpmpp2m": nfe, "pc": nfe // 2, "heun": (nfe + 1) // 2}[sampler]
    return None if steps < 2 else {"sampler": sampler, "steps": steps,
                                   **({"n_corrector": 1} if sampler == "pc" else {})}


ODE_TOLERANCES = [3e-2, 1e-2, 1e-3, 1e-4, 1e-5]


def quality(model, features, metric, num_samples: int, batch: int, **options) -> tuple[float, float, int]:
    """(Fréchet distance, seconds per image, NFE per batch) of ``model.sample(**options)``."""
    metric.reset()
    seconds, nfe = 0.0, 0
    for s in range(0, num_samples, batch):
        n = min(batch, num_samples - s)
        start = time.perf_counter()
        out = model.sample(n, sample_generators(0, s, n), **options)
        seconds += time.perf_counter() - start
        nfe = out.nfe or nfe
        metric.update(out.x.clamp(-1, 1), real=False)
    return float(metric.compute()), seconds / num_samples, nfe


def ode_bpd(model, x: torch.Tensor, **options) -> tuple[float, float]:
    """Mean ODE bits/dim of the test images x and the NFE per batch, for a score or DDPM checkpoint."""
    if hasattr(model, "log_likelihood"):
        out = model.log_likelihood(x, torch.Generator().manual_seed(0))
        return float(out["bpd"].mean()), out["nfe"]
    sde = model.diffusion.sde
    sde.t_min = 1.0 / sde.N  # the first DDPM step
    net = model.sampling_net
    score = ScoreModel(lambda y, s: net(y, s), sde, model.prediction_type, model.variance == "learned")
    out = ode_bits_per_dim(score, x, torch.Generator().manual_seed(0), **options)
    return float(out["bpd"].mean()), out["nfe"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ddpm", required=True, help="the DDPM digits checkpoint "
                                                      "(experiments/ddpm/digits.yaml)")
    parser.add_argument("--score", nargs="*", default=[], help="ScoreSDE digits checkpoints "
                                                               "(experiments/sde/*_digits)")
    parser.add_argument("--iddpm", default=None, help="an Improved DDPM digits checkpoint, for its bound in "
                                                      "bits/dim")
    parser.add_argument("--toy", nargs="*", default=[], help="ScoreSDE toy2d checkpoints, for NLL vs the "
                                                             "true density")
    parser.add_argument("--nfe", type=int, nargs="+", default=[10, 20, 50, 100, 1000])
    parser.add_argument("--samplers", nargs="+", default=["em", "pc", "ode", "heun", "dpmpp2m"])
    parser.add_argument("--num_samples", type=int, default=500)
    parser.add_argument("--batch", type=int, default=250)
    parser.add_argument("--bpd_images", type=int, default=200, help="test digits for the likelihood table")
    args = parser.parse_args()
    torch.manual_seed(0)

    data = DigitsDataModule(image_size=16, batch_size=500)
    data.setup("fit")
    features = load_feature_net(resolve_features("digits16"))
    metric = frechet_distance(features)
    for b in torch.utils.data.DataLoader(data.train_dataset, batch_size=500):
        metric.update(b["x"], real=True)
    run = lambda model, **o: quality(model, features, metric, args.num_samples, args.batch, **o)  # noqa: E731

    ddpm = load_module(args.ddpm, "cpu")
    T = ddpm.diffusion.num_timesteps
    ref_fd, ref_sec, _ = run(ddpm, sampler="ddpm", steps=T)
    print(f"DDPM-{T} (ancestral, {T} NFE): Fréchet distance {ref_fd:.3f}, {ref_sec * 1e3:.1f} ms per image\n")

    rows = []
    for path in [args.ddpm, *args.score]:
        model = ddpm if path == args.ddpm else load_module(path, "cpu")
        label = "DDPM (VP)" if path == args.ddpm else model.settings.sde
        for sampler in args.samplers:
            budgets = ([{"sampler": "ode", "rtol": tol,
                         "atol": tol} for tol in ODE_TOLERANCES] if sampler == "ode"
                       else [o for o in (grid_for(sampler, n) for n in args.nfe) if o is not None])
            for options in budgets:
                fd, sec, nfe = run(model, **options)
                rows.append([label, sampler, nfe, f"{fd:.3f}", f"{fd / ref_fd:.2f}x", f"{sec * 1e3:.1f}",
                             options.get("rtol", "")])
                print(" | ".join(map(str, rows[-1])), flush=True)
    print()
    print_table(["model", "sampler", "NFE", "FD", "FD / DDPM-1000", "ms / image", "rtol"], rows)

    # likelihood on the same test digits
    data.setup("test")
    x = torch.cat([b["x"] for b in data.test_dataloader()])[: args.bpd_images]
    rows = []
    for path in [args.ddpm, *args.score]:
        model = ddpm if path == args.ddpm else load_module(path, "cpu")
        bpd, nfe = ode_bpd(model, x)
        rows.append(["DDPM (VP ODE)" if path == args.ddpm else f"{model.settings.sde} ODE", f"{bpd:.3f}",
                     nfe])
    if args.iddpm:
        iddpm = load_module(args.iddpm, "cpu")
        net = iddpm.sampling_net
        with torch.no_grad():
            bound = iddpm.diffusion.nll_bpd(lambda y, t: net(y, t), x, iddpm.prediction_type, iddpm.variance,
                                            torch.Generator().manual_seed(0))["bpd"]
        rows.append(["Improved DDPM bound (T steps)", f"{float(bound.mean()):.3f}",
                     iddpm.diffusion.num_timesteps])
    print(f"\nbits/dim on {len(x)} test digits (uniform dequantisation, lit_gen.likelihood)")
    print_table(["model", "bits/dim", "NFE"], rows)

    if args.toy:
        rows = []
        for path in args.toy:
            model = load_module(path, "cpu")
            toy = Toy2DDataModule(name="8gaussians", batch_size=1000)
            toy.setup("test")
            pts = torch.cat([b["x"] for b in toy.test_dataloader()])[:1000]
            out = model.log_likelihood(pts)
            true = -TOY2D_LOG_PROBS["8gaussians"](pts).mean()
            rows.append([model.settings.sde, f"{float(-out['log_p'].mean()):.3f}", f"{float(true):.3f}",
                         out["nfe"]])
        print("\nNLL (nats) on 1,000 test points of 8gaussians: model by the ODE (exact trace) vs the true "
              "density")
        print_table(["sde", "model NLL", "true NLL", "NFE"], rows)


if __name__ == "__main__":
    main()
