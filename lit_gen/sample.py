"""``lit-gen sample``: draw samples from any lit_gen checkpoint into ``samples.npz`` + ``grid.png``;
``--interpolate N`` decodes an N x N slerp grid of latents, ``--invert FILE`` inverts images to latents
and reconstructs them (deterministic DDIM for diffusion models, exact for flows)."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
import torch
from jsonargparse import ArgumentParser
from tqdm.auto import tqdm

from lit_gen.checkpoints import checkpoint_class, load_module, read_checkpoint
from lit_gen.diffusion import slerp_grid
from lit_gen.utils import randn, sample_generators
from lit_gen.visual import figure_to_array, image_grid, save_npz, save_png, scatter_figure, to_uint8_nhwc

def build_parser(method: type | None = None) -> ArgumentParser:
    """The flags every method shares, plus those ``method`` declares in its ``SampleOptions`` dataclass."""
    parser = ArgumentParser(
        prog="lit-gen sample",
        description="Sample from a checkpoint; writes OUTPUT/samples.npz (ADM evaluator format) and OUTPUT/grid.png."
        + ("" if method else " The options of the checkpoint's method are listed by --ckpt_path CKPT --help."),
        exit_on_error=False,
    )
    parser.add_argument("--ckpt_path", type=str, required=True, help="Checkpoint written by lit-gen fit.")
    parser.add_argument("--num_samples", type=int, default=64, help="How many samples.")
    parser.add_argument("--seed", type=int, default=0, help="Sample i depends only on (seed, i), not on the batch.")
    parser.add_argument("--output", type=str, default="samples", help="Output folder.")
    parser.add_argument("--batch_size", type=int, default=64, help="Samples per forward pass.")
    parser.add_argument(
        "--labels", type=list[int] | None, default=None,
        help="Class labels, cycled over the samples (conditional or classifier-guided models; default: balanced).",
    )
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
    if method is not None and method.sample_options:
        parser.add_class_arguments(method.SampleOptions, None, as_group=True)
    return parser


def method_of(argv: list[str]) -> type | None:
    """The method class of the checkpoint named by ``--ckpt_path`` in ``argv`` (None when there is none)."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--ckpt_path")
    path = pre.parse_known_args([a for a in argv if a not in ("-h", "--help")])[0].ckpt_path
    return checkpoint_class(read_checkpoint(path)) if path else None


def sample_main(argv: list[str]) -> Path:
    method = method_of(argv)
    if method is not None and not method.generates:
        raise ValueError(f"{method.__name__} is not a generative model; lit-gen sample needs a checkpoint of one "
                         "(a NoisyClassifier guides a diffusion model through --classifier_ckpt)")
    cfg = build_parser(method).parse_args(argv)
    if cfg.num_samples < 1 or cfg.batch_size < 1:
        raise ValueError(f"num_samples={cfg.num_samples} and batch_size={cfg.batch_size} must be >= 1")
    if cfg.interpolate is not None and cfg.invert is not None:
        raise ValueError("--interpolate and --invert are separate jobs; give one of them")
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device)
    model = load_module(cfg.ckpt_path, device, ema=cfg.ema)
    options = {k: cfg[k] for k in sorted(model.sample_options) if cfg[k] is not None}
    model.check_sample_options(options, torch.tensor(cfg.labels) if cfg.labels else None)
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
