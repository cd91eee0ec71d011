"""Text-to-image diffusion on the embedded shapes against lit_gen's DALL-E, by the held-out attribute
evaluator of ``benchmarks.dalle_shapes`` (a CNN trained on fresh renderings reads kind, colour, size and
position).

    python -m benchmarks.t2i_shapes --runs runs_bench/t2i [--dalle D.ckpt --clip C.ckpt] \
        | tee benchmarks/results_t2i_shapes.txt

The latent UNet (``t2i/ldm_shapes.yaml``, DDPM v-prediction), the latent DiT (``t2i/dit_shapes.yaml``,
rectified flow) and the latent score SDE (``t2i/sde_shapes.yaml``, the UNet on the VP SDE) are fitted with
``lit-gen fit`` from their shipped configs on one autoencoder (``t2i/autoencoder_shapes.yaml``) unless their
checkpoints are in ``--runs``; each draws one image per prompt (no reranking) for 100 prompts at several
classifier-free guidance scales, with its default sampler. DALL-E's rows (candidate 0, and the best of 32 by
CLIP) come from ``--dalle`` and ``--clip`` when given. Time per image is the sampling time over the images
kept.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

from benchmarks.common import print_table
from benchmarks.dalle_shapes import ATTRIBUTES, attribute_hits, evaluate, render, train_attribute_net
from lit_gen.checkpoints import load_module, read_checkpoint
from lit_gen.data.shapes import ShapeParams
from lit_gen.utils import sample_generators

ROOT = Path(__file__).resolve().parents[1]
MODELS = {"ldm": ("t2i/ldm_shapes.yaml", "latent UNet, DDPM-v"),
          "dit": ("t2i/dit_shapes.yaml", "latent DiT, rectified flow"),
          "sde": ("t2i/sde_shapes.yaml", "latent UNet, VP score SDE")}


def fit(runs: Path, config: str, name: str, *extra: str) -> str:
    """The last checkpoint of ``config`` fitted as run ``name`` (fitted now, alone, unless it is there); its
    fit time is kept in ``runs/times.json``."""
    ckpt, times = runs / name / "checkpoints" / "last.ckpt", runs / "times.json"
    if not ckpt.exists():
        print(f"fitting {config} as {name}", file=sys.stderr, flush=True)
        start = time.perf_counter()
        with open(runs / f"{name}.log", "w") as log:
            command = [sys.executable, "-m", "lit_gen", "fit", "--config", f"experiments/{config}",
                       "--runs_dir", str(runs), "--name", name, "--trainer.enable_progress_bar", "false",
                       *extra]
            code = subprocess.run(command, cwd=ROOT, stdout=log, stderr=log).returncode
        if code:
            sys.exit(f"lit-gen fit {config} failed ({code}): see {runs / f'{name}.log'}")
        recorded = json.loads(times.read_text()) if times.exists() else {}
        times.write_text(json.dumps({**recorded, name: time.perf_counter() - start}))
    return str(ckpt)


def fit_seconds(runs: Path, name: str) -> float | None:
    """A fit's wall-clock seconds, from ``times.json`` or the ``times.txt`` of a shell driver."""
    if (runs / "times.json").exists():
        return json.loads((runs / "times.json").read_text()).get(name)
    if (runs / "times.txt").exists():
        for line in (runs / "times.txt").read_text().splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[0] == name:
                return float(parts[1])
    return None


def diffusion_rows(name: str, model, evaluator, clip, params: ShapeParams, captions: list[str],
                   scales: list[float], steps: list[int | None], batch: int,
                   sampler: str | None = None) -> list[list]:
    """One image per prompt at each guidance scale and number of sampling steps (None: the model's own), with
    ``sampler`` (None: the model's own): attribute accuracies, CLIP score, seconds per image."""
    options = {"sampler": sampler} if sampler else {}
    rows = []
    for n_steps in steps:
        for scale in scales:
            images, seconds = [], 0.0
            for s in range(0, len(captions), batch):
                chunk = captions[s : s + batch]
                start = time.perf_counter()
                images.append(model.sample(len(chunk), sample_generators(0, s, len(chunk)), captions=chunk,
                                           guidance_scale=scale, steps=n_steps, **options).x)
                seconds += time.perf_counter() - start
            x = torch.cat(images)
            hits = attribute_hits(evaluator, x, params)
            score = f"{clip.score(x, captions).mean():.3f}" if clip is not None else ""
            pick = (f"one sample, CFG {scale:g}" + (f", {sampler}" if sampler else "")
                    + (f", {n_steps} steps" if n_steps else ""))
            rows.append([name, pick, *(f"{hits[k].float().mean():.3f}" for k in [*ATTRIBUTES, "all four"]),
                         score, f"{seconds / len(captions):.4f}"])
    return rows


def ceiling_row(autoencoder, evaluator, clip, params: ShapeParams, captions: list[str]) -> list:
    """The autoencoder's reconstructions (posterior mean) of the prompts' own renderings: what a latent model
    on it can reach at best."""
    x = render(params)
    rec = autoencoder.net.decode(autoencoder.net.moments(x)[0]).clamp(-1, 1)
    hits = attribute_hits(evaluator, rec, params)
    score = f"{clip.score(rec, captions).mean():.3f}" if clip is not None else ""
    return ["autoencoder (ceiling)", "reconstruction", *(f"{hits[k].float().mean():.3f}" for k in
                                                          [*ATTRIBUTES, "all four"]), score, ""]


def dalle_rows(dalle, clip, evaluator, params: ShapeParams, captions: list[str], n: int,
               timing_only: bool) -> list[list]:
    """DALL-E's candidate 0 and best of ``n`` by CLIP, with the sampling time per kept image; ``timing_only``:
    the times alone, with and without CLIP scoring (they do not depend on the weights: a short fit's do)."""
    def draw(chunk, start):
        return dalle.sample(len(chunk), sample_generators(0, start, len(chunk)), captions=chunk,
                            num_candidates=n).x

    if timing_only:  # sampling, then sampling and CLIP scoring
        drawing = scoring = 0.0
        for s in range(0, len(captions), 4):
            chunk, start = captions[s : s + 4], time.perf_counter()
            x = draw(chunk, s)
            drawing += time.perf_counter() - start
            clip.score(x, [c for c in chunk for _ in range(n)])
            scoring += time.perf_counter() - start
        return [["DALL-E (timing)", f"best of {n}: sampling", *[""] * 6, f"{drawing / len(captions):.4f}"],
                ["DALL-E (timing)", f"best of {n}: + CLIP", *[""] * 6, f"{scoring / len(captions):.4f}"]]
    rows = [r for r in evaluate("DALL-E", draw, clip, evaluator, params, captions, n, 4)
            if not r[1].startswith("all ")]
    rows[1][-1] = f"{float(rows[1][-1]) * n:.4f}"  # n candidates per kept image (CLIP scoring not timed)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", default="runs_bench/t2i")
    parser.add_argument("--dalle", help="a DALLE checkpoint trained on shapes (rows: candidate 0, best "
                                        "of 32)")
    parser.add_argument("--clip", help="a CLIP checkpoint trained on shapes (DALL-E's reranker; CLIP scores)")
    parser.add_argument("--dalle_timing_only", action="store_true", help="DALL-E's time per kept image only "
                        "(checkpoints of a short fit: accuracies are then results_dalle_shapes.txt's)")
    parser.add_argument("--models", nargs="*", choices=list(MODELS), default=list(MODELS))
    parser.add_argument("--prompts", type=int, default=100)
    parser.add_argument("--candidates", type=int, default=32)
    parser.add_argument("--scales", type=float, nargs="+", default=[1.0, 2.0, 3.0, 5.0])
    parser.add_argument("--steps", type=int, nargs="+", help="sampling steps (default: each config's)")
    parser.add_argument("--sampler", help="the sampler of every model (default: each config's)")
    parser.add_argument("--batch", type=int, default=50, help="prompts per sampling call")
    parser.add_argument("--evaluator", default="runs/bench/shapes_attributes.pt")
    args = parser.parse_args()
    runs = Path(args.runs)
    runs.mkdir(parents=True, exist_ok=True)
    autoencoder = fit(runs, "t2i/autoencoder_shapes.yaml", "autoencoder")
    checkpoints = {name: fit(runs, MODELS[name][0], name, "--model.init_args.autoencoder_ckpt", autoencoder)
                   for name in args.models}
    torch.set_grad_enabled(False)
    evaluator = train_attribute_net(Path(args.evaluator))
    held_out = ShapeParams.sample(2000, torch.Generator().manual_seed(4242))
    hits = attribute_hits(evaluator, render(held_out), held_out)
    print("evaluator on fresh renderings: "
          + ", ".join(f"{k} {v.float().mean():.3f}" for k, v in hits.items()))
    params = ShapeParams.sample(args.prompts, torch.Generator().manual_seed(2024))  # dalle_shapes' prompts
    captions = params.captions()
    clip = load_module(args.clip) if args.clip else None
    ae = fit_seconds(runs, "autoencoder")
    budget = []
    rows = [ceiling_row(load_module(autoencoder), evaluator, clip, params, captions)]
    for name in args.models:
        label, model = MODELS[name][1], load_module(checkpoints[name])
        rows += diffusion_rows(label, model, evaluator, clip, params, captions, args.scales,
                               args.steps or [None], args.batch, args.sampler)
        own = fit_seconds(runs, name)
        budget.append([label, str(read_checkpoint(checkpoints[name])["global_step"]),
                       f"{ae:.0f}" if ae else "", f"{own:.0f}" if own else "",
                       f"{ae + own:.0f}" if ae and own else ""])
    if args.dalle and clip is not None:
        rows += dalle_rows(load_module(args.dalle), clip, evaluator, params, captions, args.candidates,
                           args.dalle_timing_only)
    print_table(["model", "pick", *ATTRIBUTES, "all four", "CLIP score", "s / image"], rows)
    print_table(["model", "steps", "autoencoder fit (s)", "own fit (s)", "total (s)"], budget)


if __name__ == "__main__":
    main()
