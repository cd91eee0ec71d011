"""Flow matching and reflow on digits against DDPM at equal training budgets: Fréchet distance and improved
precision / recall (k = 3) in the shipped digits16 features (vs the 1,437 training digits) of 500 samples at
NFE 1, 2, 4, 8, 16, 32 for DDPM + DPM-Solver++(2M) (DDPM-1000 ancestral as the reference), flow matching with
independent and minibatch-OT couplings under Euler, Heun and DPM-Solver++, the 2-rectified flow of the
independent model (pairs drawn by its 32-step Euler ODE) and its one-step distillation; the straightness of
teacher and students; bits/dim by the ODE on the test digits (the sub-VP score model measured 1.686 in
results_score_digits.txt); NLL on 8gaussians against the true density.

    python -m benchmarks.flow_matching [--runs runs_bench] | tee benchmarks/results_flow_matching.txt

Every model is fitted with ``lit-gen fit`` from its shipped config into ``--runs``, one after another, and
reused when its last checkpoint is there: ddpm/digits.yaml, flow_matching/digits.yaml and digits_ot.yaml
(2,000 steps, one net), flow_matching/digits_reflow.yaml, flow_matching/toy2d.yaml. NFE per batch is measured:
K grid points cost K - 1 calls for Euler and DPM-Solver++ (no final denoising call), about 2 (K - 1) for Heun.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import torch

from benchmarks.common import print_table
from lit_gen.callbacks.fid import resolve_features
from lit_gen.checkpoints import load_module, read_checkpoint
from lit_gen.data import DigitsDataModule, Toy2DDataModule
from lit_gen.data.toy2d import TOY2D_LOG_PROBS
from lit_gen.metrics import frechet_distance, load_feature_net, precision_recall
from lit_gen.utils import randn, sample_generators

ROOT = Path(__file__).resolve().parents[1]
NFES = (1, 2, 4, 8, 16, 32)
MAX_STEPS: int | None = None  # --max_steps: every fit this short (a smoke run of this script)


def lit_gen(*args: str, log: Path) -> None:
    """``lit-gen ARGS`` in a subprocess (alone on the machine), its output in ``log``; stops on failure."""
    start = time.perf_counter()
    with open(log, "w") as out:
        code = subprocess.run([sys.executable, "-m", "lit_gen", *args], cwd=ROOT, stdout=out,
                              stderr=out).returncode
    if code:
        sys.exit(f"lit-gen {args[0]} failed ({code}): see {log}")
    print(f"  lit-gen {args[0]}: {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)


def fit(runs: Path, config: str, name: str, *extra: str) -> str:
    """The last checkpoint of ``config`` fitted as run ``name`` (fitted now unless it is there)."""
    ckpt = runs / name / "checkpoints" / "last.ckpt"
    if MAX_STEPS is not None:
        extra = (*extra, "--trainer.max_steps", str(MAX_STEPS))
    if not ckpt.exists():
        print(f"fitting {config} as {name} {' '.join(extra)}", file=sys.stderr, flush=True)
        lit_gen("fit", "--config", f"experiments/{config}", "--runs_dir", str(runs), "--name", name,
                "--trainer.enable_progress_bar", "false", "--samples.every_n_steps", "0", *extra,
                log=runs / f"{name}.log")
    return str(ckpt)


def grid(sampler: str, nfe: int) -> dict | None:
    """The options that spend ``nfe`` calls per batch (about, for Heun; None when the budget is too small)."""
    steps = (nfe + 2) // 2 if sampler == "heun" else nfe + 1
    if sampler == "heun" and nfe < 2 or sampler == "ddpm":
        return None
    return {"sampler": sampler, "steps": steps, "denoise": False}


class Evaluator:
    """Fréchet distance and precision / recall of samples against the training digits (digits16 features)."""

    def __init__(self, data: DigitsDataModule, num_samples: int, batch: int) -> None:
        self.features = load_feature_net(resolve_features("digits16"))
        self.metric = frechet_distance(self.features)
        real = torch.cat([b["x"] for b in torch.utils.data.DataLoader(data.train_dataset, batch_size=500)])
        self.metric.update(real, real=True)
        with torch.no_grad():
            self.real = self.features(real)
        self.num_samples, self.batch = num_samples, batch

    def __call__(self, model, **options) -> dict:
        self.metric.reset()
        seconds, nfe, feats = 0.0, 0, []
        for s in range(0, self.num_samples, self.batch):
            n = min(self.batch, self.num_samples - s)
            start = time.perf_counter()
            out = model.sample(n, sample_generators(0, s, n), **options)
            seconds += time.perf_counter() - start
            x = out.x.clamp(-1, 1)
            nfe = out.nfe or nfe
            self.metric.update(x, real=False)
            with torch.no_grad():
                feats.append(self.features(x))
        precision, recall = precision_recall(self.real, torch.cat(feats))
        return {"fd": float(self.metric.compute()), "precision": precision, "recall": recall, "nfe": nfe,
                "ms": 1e3 * seconds / self.num_samples}


def quality_rows(models: dict, evaluate: Evaluator, nfes) -> tuple[list[list], dict]:
    """One row per (model, sampler, NFE budget); also the results by (model, sampler, budget)."""
    rows, results = [], {}
    for label, (model, samplers) in models.items():
        for sampler in samplers:
            for budget in nfes:
                options = grid(sampler, budget)
                if options is None:
                    continue
                r = evaluate(model, **options)
                results[label, sampler, budget] = r
                rows.append([label, sampler, r["nfe"], f"{r['fd']:.3f}", f"{r['precision']:.3f}",
                             f"{r['recall']:.3f}", f"{r['ms']:.1f}"])
                print(" | ".join(map(str, rows[-1])), file=sys.stderr, flush=True)
    return rows, results


def fit_models(args, runs: Path) -> dict[str, str]:
    """Every model's last checkpoint, each fitted from its shipped config unless it is there."""
    ckpt = {"ddpm": fit(runs, "ddpm/digits.yaml", "ddpm"),
            "fm": fit(runs, "flow_matching/digits.yaml", "fm"),
            "fm_ot": fit(runs, "flow_matching/digits_ot.yaml", "fm_ot")}
    pairs = runs / "pairs" / "pairs.npz"
    if not pairs.exists():
        lit_gen("reflow", "--ckpt_path", ckpt["fm"], "--num_pairs", str(args.num_pairs), "--steps", "33",
                "--output", str(pairs.parent), log=runs / "reflow.log")
    data = f"--data.init_args.path={pairs}"
    ckpt["rf2"] = fit(runs, "flow_matching/digits_reflow.yaml", "rf2", data,
                      f"--model.init_args.init_from={ckpt['fm']}")
    ckpt["distill"] = fit(runs, "flow_matching/digits_reflow.yaml", "distill", data,
                          f"--model.init_args.init_from={ckpt['rf2']}", "--model.init_args.time_distribution",
                          "one_step", "--trainer.max_steps", str(args.distill_steps))
    ckpt["toy"] = fit(runs, "flow_matching/toy2d.yaml", "toy")
    for name, path in ckpt.items():
        print(f"{name}: {path} (step {read_checkpoint(path)['global_step']})", file=sys.stderr)
    return ckpt


def quality_tables(m: dict, evaluate: Evaluator, num_train: int) -> None:
    """The sample-quality table and its targets."""
    ref = evaluate(m["ddpm"], sampler="ddpm", steps=1000)
    print(f"DDPM-1000 (ancestral, 1000 NFE): Fréchet distance {ref['fd']:.3f}, precision "
          f"{ref['precision']:.3f}, recall {ref['recall']:.3f}, {ref['ms']:.1f} ms per image\n")
    models = {"DDPM": (m["ddpm"], ["dpmpp2m"]),
              "FM": (m["fm"], ["euler", "heun", "dpmpp2m"]),
              "FM-OT": (m["fm_ot"], ["euler", "heun", "dpmpp2m"]),
              "2-RF": (m["rf2"], ["euler", "dpmpp2m"])}
    rows, results = quality_rows(models, evaluate, NFES)
    more, distilled = quality_rows({"2-RF distilled": (m["distill"], ["euler"])}, evaluate, (1, 2, 4))
    print(f"\nFréchet distance (FD), precision and recall (k = 3) in digits16 features, "
          f"{evaluate.num_samples} samples vs {num_train} training digits; DDPM-1000's FD {ref['fd']:.3f}")
    print_table(["model", "sampler", "NFE", "FD", "precision", "recall", "ms / image"], rows + more)

    best8 = {k: min(r["fd"] for (label, _, b), r in results.items() if label == k and b == 8)
             for k in ("DDPM", "FM", "FM-OT")}
    teacher = results["FM", "euler", 32]["fd"]
    one_step = {"2-RF": results["2-RF", "euler", 1]["fd"],
                "2-RF distilled": distilled["2-RF distilled", "euler", 1]["fd"]}
    print("\nTargets")
    print_table(["target", "measured", "met"], [
        ["FM at 8 NFE (best sampler) < DDPM + DPM-Solver++ at 8 NFE",
         f"FM {best8['FM']:.3f}, FM-OT {best8['FM-OT']:.3f} vs DDPM {best8['DDPM']:.3f}",
         min(best8["FM"], best8["FM-OT"]) < best8["DDPM"]],
        *[[f"{k} at 1 NFE <= 2 x the teacher's 32-NFE Euler FD ({teacher:.3f})",
           f"{v:.3f} ({v / teacher:.2f}x)", v <= 2 * teacher] for k, v in one_step.items()]])


def likelihood_tables(m: dict, toy_path: str, digits: DigitsDataModule, bpd_images: int) -> None:
    """Bits/dim by the ODE on test digits; NLL on 8gaussians against the true density."""
    digits.setup("test")
    x = torch.cat([b["x"] for b in digits.test_dataloader()])[:bpd_images]
    rows = []
    for k in ("fm", "fm_ot"):
        out = m[k].log_likelihood(x, torch.Generator().manual_seed(0))
        rows.append([k, f"{float(out['bpd'].mean()):.3f}", out["nfe"]])
    print(f"\nbits/dim by the ODE on {len(x)} test digits (uniform dequantisation, Hutchinson trace, RK45 at "
          f"1e-5); the sub-VP score model: 1.686 (results_score_digits.txt)")
    print_table(["model", "bits/dim", "NFE"], rows)
    toy = Toy2DDataModule(name="8gaussians", batch_size=1000)
    toy.setup("test")
    pts = torch.cat([b["x"] for b in toy.test_dataloader()])[:1000]
    out = load_module(toy_path, "cpu").log_likelihood(pts)
    true = -TOY2D_LOG_PROBS["8gaussians"](pts).mean()
    print("\nNLL (nats) on 1,000 test points of 8gaussians: flow matching by the ODE (exact trace) vs the "
          "true density (the VP score model measured 2.840 vs 2.823)")
    print_table(["model NLL", "true NLL", "NFE"],
                [[f"{float(-out['log_p'].mean()):.3f}", f"{float(true):.3f}", out["nfe"]]])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", default="runs_bench", help="where the runs are fitted (and reused)")
    parser.add_argument("--num_samples", type=int, default=500)
    parser.add_argument("--batch", type=int, default=250)
    parser.add_argument("--num_pairs", type=int, default=10000, help="reflow pairs drawn by the teacher")
    parser.add_argument("--distill_steps", type=int, default=1000)
    parser.add_argument("--bpd_images", type=int, default=200, help="test digits for bits/dim")
    parser.add_argument("--max_steps", type=int, default=None, help="every fit this short (a smoke run)")
    args = parser.parse_args()
    global MAX_STEPS
    MAX_STEPS = args.max_steps
    runs = Path(args.runs).resolve()
    runs.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    ckpt = fit_models(args, runs)
    digits = DigitsDataModule(image_size=16, batch_size=500)
    digits.setup("fit")
    m = {k: load_module(v, "cpu") for k, v in ckpt.items() if k != "toy"}
    quality_tables(m, Evaluator(digits, args.num_samples, args.batch), len(digits.train_dataset))
    x1 = randn((args.num_samples, *m["fm"].data_shape), sample_generators(0, 0, args.num_samples), "cpu")
    print("\nStraightness S (Liu et al. 2023) of the Euler paths (32 steps), same noise (0: straight)")
    print_table(["model", "S"], [[k, f"{float(m[k].straightness(x1, steps=33).mean()):.4g}"]
                                 for k in ("fm", "fm_ot", "rf2", "distill")])
    likelihood_tables(m, ckpt["toy"], digits, args.bpd_images)


if __name__ == "__main__":
    main()
