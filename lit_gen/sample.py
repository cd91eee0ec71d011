"""``lit-gen sample``: draw samples from any lit_gen checkpoint into ``samples.npz`` + ``grid.png``;
``--interpolate N`` decodes an N x N slerp grid of latents, ``--invert FILE`` inverts images to latents
and reconstructs them (deterministic DDIM for diffusion models, exact for flows)."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import torch
from jsonargparse import ArgumentParser
from tqdm.auto import tqdm

from lit_gen.checkpoints import checkpoint_class, read_checkpoint
from lit_gen.diffusion import slerp_grid
from lit_gen.utils import randn, sample_generators
from lit_gen.visual import figure_to_array, image_grid, save_npz, save_png, scatter_figure, to_uint8_nhwc

SAMPLER_OPTIONS = ("sampler", "steps", "eta", "spacing", "temperature")


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
    parser.add_argument(
        "--temperature", type=float | None, default=None,
        help="Flows: scale of the prior's spread (default: the model's; 1 samples its density).",
    )
    parser.add_argument("--labels", type=list[int] | None, default=None, help="Class labels, cycled over samples.")
    parser.add_argument("--ema", type=bool, default=True, help="Use the EMA weights when the checkpoint has them.")
    parser.add_argument("--device", type=str, default="auto", help="auto, cpu, cuda, cuda:1, ...")
    parser.add_argument(
        "--interpolate", type=int | None, default=None,
        help="Decode an N x N grid of latents slerped between 4 drawn from --seed (diffusion: deterministic DDIM).",
    )
    parser.add_argument(
        "--invert", type=str | None, default=None,
        help="An npz of images (arr_0: uint8 N x H x W x C) to invert to latents (DDIM or the flow) and reconstruct.",
    )
    return parser


def load_model(ckpt_path: str, device: torch.device, ema: bool = True):
    """The LightningModule of any lit_gen checkpoint, in eval mode on ``device``."""
    ckpt = read_checkpoint(ckpt_path)
    model = checkpoint_class(ckpt).load_from_checkpoint(ckpt_path, map_location=device, weights_only=False)
    model.eval()
    if not ema:
        model.ema = None
    return model


def sample_main(argv: list[str]) -> Path:
    cfg = build_parser().parse_args(argv)
    if cfg.num_samples < 1 or cfg.batch_size < 1:
        raise ValueError(f"num_samples={cfg.num_samples} and batch_size={cfg.batch_size} must be >= 1")
    if cfg.interpolate is not None and cfg.invert is not None:
        raise ValueError("--interpolate and --invert are separate jobs; give one of them")
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device)
    model = load_model(cfg.ckpt_path, device, cfg.ema)
    options = {k: cfg[k] for k in SAMPLER_OPTIONS if cfg[k] is not None}
    model.check_options(options, model.sample_options, type(model).__name__)
    output = Path(cfg.output)
    if cfg.interpolate is not None:
        x, labels, nrow = interpolate(model, cfg, options), None, cfg.interpolate
    elif cfg.invert is not None:
        x, labels, nrow = invert_and_reconstruct(model, cfg, options, output), None, None
    else:
        x, labels = draw(model, cfg, options)
        nrow = None
    write_samples(output, x, labels, nrow)
    print(f"wrote {len(x)} samples to {output / 'samples.npz'} and {output / 'grid.png'}", file=sys.stderr)
    return output


def _labels(cfg, start: int, n: int) -> torch.Tensor | None:
    if not cfg.labels:
        return None
    return torch.tensor([cfg.labels[(start + i) % len(cfg.labels)] for i in range(n)])


def draw(model, cfg, options: dict) -> tuple[torch.Tensor, np.ndarray | None]:
    xs, ys = [], []
    for start in tqdm(range(0, cfg.num_samples, cfg.batch_size), desc="batches", unit="batch"):
        n = min(cfg.batch_size, cfg.num_samples - start)
        out = model.sample(n, sample_generators(cfg.seed, start, n), labels=_labels(cfg, start, n), progress=True,
                           **options)
        xs.append(out.x.cpu())
        if out.labels is not None:
            ys.append(out.labels.cpu())
    return torch.cat(xs), (torch.cat(ys).numpy().astype(np.int64) if ys else None)


def _decode(model, latents: torch.Tensor, cfg, options: dict) -> torch.Tensor:
    xs = []
    for start in tqdm(range(0, len(latents), cfg.batch_size), desc="decoding", unit="batch"):
        chunk = latents[start : start + cfg.batch_size].to(model.device)
        out = model.sample(len(chunk), labels=_labels(cfg, 0, len(chunk)), latents=chunk, progress=True, **options)
        xs.append(out.x.cpu())
    return torch.cat(xs)


def interpolate(model, cfg, options: dict) -> torch.Tensor:
    """An N x N grid decoded from latents slerped between four corners drawn from ``--seed``."""
    n = cfg.interpolate
    if n < 2:
        raise ValueError(f"--interpolate {n}: the grid needs at least 2 x 2 latents")
    corners = randn((4, *model.data_shape), sample_generators(cfg.seed, 0, 4), "cpu")
    return _decode(model, slerp_grid(corners, n), cfg, model.deterministic_options(options))


def invert_and_reconstruct(model, cfg, options: dict, output: Path) -> torch.Tensor:
    """Invert the images of ``--invert`` to latents (written to latents.npz) and decode them again;
    returns originals and reconstructions interleaved row by row."""
    if not hasattr(model, "invert"):
        raise ValueError(f"{type(model).__name__} has no deterministic inversion; --invert needs a diffusion model or a flow")
    path = Path(cfg.invert)
    if not path.is_file():
        raise FileNotFoundError(f"--invert file not found: {str(path)!r}")
    images = np.load(path)["arr_0"]
    expected = (*model.data_shape[1:], model.data_shape[0])
    if images.dtype != np.uint8 or images.shape[1:] != expected:
        raise ValueError(f"--invert expects uint8 images of shape N x {expected}, got {images.dtype} {images.shape}")
    x0 = torch.from_numpy(images[: cfg.num_samples]).permute(0, 3, 1, 2).float() / 127.5 - 1  # (N, C, H, W)
    options = model.deterministic_options(options)
    latents = torch.cat([
        model.invert(x0[s : s + cfg.batch_size], labels=_labels(cfg, 0, len(x0[s : s + cfg.batch_size])),
                     progress=True, **{k: v for k, v in options.items() if k in ("steps", "spacing")}).cpu()
        for s in range(0, len(x0), cfg.batch_size)
    ])
    save_npz(output / "latents.npz", latents.numpy().astype(np.float32))
    recon = _decode(model, latents, cfg, options)
    mse = ((recon.clamp(-1, 1) - x0) ** 2).mean().item()
    print(f"reconstruction MSE {mse:.5f} (images in [-1, 1]) over {len(x0)} images", file=sys.stderr)
    return recon


def write_samples(output: Path, x: torch.Tensor, labels: np.ndarray | None, nrow: int | None = None) -> None:
    if x.ndim == 2:  # vectors (2-D toy data): float samples and a scatter plot
        save_npz(output / "samples.npz", x.numpy().astype(np.float32), labels)
        save_png(figure_to_array(scatter_figure(x, title=f"{len(x)} samples")), output / "grid.png")
        return
    save_npz(output / "samples.npz", to_uint8_nhwc(x), labels)
    shown = x[: min(len(x), 256)]
    grid = image_grid(shown, nrow=nrow or math.ceil(math.sqrt(len(shown))))
    save_png((grid.permute(1, 2, 0) * 255).round().byte().numpy(), output / "grid.png")
