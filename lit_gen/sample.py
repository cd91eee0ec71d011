"""``lit-gen sample``: draw samples from any lit_gen checkpoint into ``samples.npz`` + ``grid.png``."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import torch
from jsonargparse import ArgumentParser
from tqdm.auto import tqdm

from lit_gen.checkpoints import checkpoint_class, read_checkpoint
from lit_gen.utils import sample_generators
from lit_gen.visual import figure_to_array, image_grid, save_npz, save_png, scatter_figure, to_uint8_nhwc


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="lit-gen sample",
        description="Sample from a checkpoint; writes OUTPUT/samples.npz (ADM evaluator format) and OUTPUT/grid.png.",
        exit_on_error=False,
    )
    parser.add_argument("--ckpt_path", type=str, required=True, help="Checkpoint written by lit-gen fit.")
    parser.add_argument("--num_samples", type=int, default=64, help="How many samples.")
    parser.add_argument("--seed", type=int, default=0, help="Sample i depends only on (seed, i), not on the batch.")
    parser.add_argument("--output", type=str, default="samples", help="Output folder.")
    parser.add_argument("--batch_size", type=int, default=64, help="Samples per forward pass.")
    parser.add_argument("--sampler", type=str | None, default=None, help="Sampler (diffusion: ddpm, ddim).")
    parser.add_argument("--steps", type=int | None, default=None, help="Sampling steps (default: the model's).")
    parser.add_argument("--eta", type=float | None, default=None, help="DDIM noise scale (0: deterministic).")
    parser.add_argument("--spacing", type=str | None, default=None, help="Step spacing: linear or quadratic.")
    parser.add_argument("--labels", type=list[int] | None, default=None, help="Class labels, cycled over samples.")
    parser.add_argument("--ema", type=bool, default=True, help="Use the EMA weights when the checkpoint has them.")
    parser.add_argument("--device", type=str, default="auto", help="auto, cpu, cuda, cuda:1, ...")
    return parser


def sample_main(argv: list[str]) -> Path:
    cfg = build_parser().parse_args(argv)
    if cfg.num_samples < 1 or cfg.batch_size < 1:
        raise ValueError(f"num_samples={cfg.num_samples} and batch_size={cfg.batch_size} must be >= 1")
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device)
    ckpt = read_checkpoint(cfg.ckpt_path)
    model = checkpoint_class(ckpt).load_from_checkpoint(cfg.ckpt_path, map_location=device, weights_only=False)
    model.eval()
    if not cfg.ema:
        model.ema = None
    options = {k: cfg[k] for k in ("sampler", "steps", "eta", "spacing") if cfg[k] is not None}
    model.check_options(options, model.sample_options, type(model).__name__)

    xs, ys = [], []
    for start in tqdm(range(0, cfg.num_samples, cfg.batch_size), desc="batches", unit="batch"):
        n = min(cfg.batch_size, cfg.num_samples - start)
        gens = sample_generators(cfg.seed, start, n)
        labels = None
        if cfg.labels:
            labels = torch.tensor([cfg.labels[(start + i) % len(cfg.labels)] for i in range(n)])
        out = model.sample(n, gens, labels=labels, progress=True, **options)
        xs.append(out.x.cpu())
        if out.labels is not None:
            ys.append(out.labels.cpu())
    x = torch.cat(xs)
    labels_np = torch.cat(ys).numpy().astype(np.int64) if ys else None

    output = Path(cfg.output)
    if x.ndim == 2:  # vectors (2-D toy data): float samples and a scatter plot
        save_npz(output / "samples.npz", x.numpy().astype(np.float32), labels_np)
        save_png(figure_to_array(scatter_figure(x, title=f"{len(x)} samples")), output / "grid.png")
    else:
        save_npz(output / "samples.npz", to_uint8_nhwc(x), labels_np)
        shown = x[: min(len(x), 256)]
        grid = image_grid(shown, nrow=math.ceil(math.sqrt(len(shown))))
        save_png((grid.permute(1, 2, 0) * 255).round().byte().numpy(), output / "grid.png")
    print(f"wrote {len(x)} samples to {output / 'samples.npz'} and {output / 'grid.png'}", file=sys.stderr)
    return output
