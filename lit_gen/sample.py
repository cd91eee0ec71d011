"""``lit-gen sample``: draw samples from any lit_gen checkpoint into ``samples.npz`` + ``grid.png``;
``--interpolate N`` decodes an N x N slerp grid of latents, ``--invert FILE`` inverts images to latents
and reconstructs them (deterministic DDIM for diffusion models, exact for flows)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
import yaml
from jsonargparse import ArgumentParser
from tqdm.auto import tqdm

from lit_gen.allowlist import check_file_data
from lit_gen.api import Model, load
from lit_gen.api import device_of as sampling_device
from lit_gen.checkpoints import (
    checkpoint_class,
    load_weights,
    method_class,
    read_checkpoint,
    read_weights_metadata,
)
from lit_gen.diffusion import slerp_grid
from lit_gen.files import check_writable_folder
from lit_gen.methods.generative import GenerativeModule, SampleOutput
from lit_gen.utils import randn, sample_generators
from lit_gen.visual import (
    read_uint8_images,
    save_npz,
)

# the flags every method shares: (flag, type, default, help)
COMMON_FLAGS = [
    ("--ckpt_path", str | None, None, "Checkpoint written by lit-gen fit."),
    ("--weights", str | None, None, "Instead of --ckpt_path: a .safetensors file written by lit-gen "
                                    "export (its metadata holds the config)."),
    ("--config", str | None, None, "With --weights: a run's config.yaml whose model section replaces "
                                   "the hyperparameters in the metadata."),
    ("--num_samples", int | None, None, "How many samples (default 64; with --text or --text_file: "
                                        "how many prompts, default one per prompt)."),
    ("--text", list[str] | str | None, None, 'Prompts of a text-to-image model, cycled over the '
                                             'samples: "a small red circle" or [..., ...].'),
    ("--text_file", str | None, None, "Instead of --text: one prompt per line."),
    ("--seed", int, 0, "Sample i depends only on (seed, i), not on the batch."),
    ("--output", str, "samples", "Output folder."),
    ("--batch_size", int, 64, "Samples per forward pass."),
    ("--labels", list[int] | int | None, None, "Class labels, cycled over the samples: 3 or [3, 5] "
                                               "(conditional or classifier-guided models; default: "
                                               "balanced over the classes)."),
    ("--ema", bool, True, "Use the EMA weights when the checkpoint has them."),
    ("--device", str, "auto", "auto, cpu, cuda, cuda:1, ..."),
    ("--devices", int, 1, "Processes (CPU) or GPUs per node to shard the samples over, by index: the "
                          "same samples as one process."),
    ("--num_nodes", int, 1, "Nodes for --devices (torchrun / SLURM)."),
    ("--png", bool, False, "Also write every sample as OUTPUT/png/<index>.png (for clean-fid / torch-"
                           "fidelity)."),
    ("--interpolate", int | None, None, "Decode an N x N grid of latents slerped between 4 drawn from "
                                        "--seed, deterministically (methods with latents)."),
    ("--invert", str | None, None, "An npz of images (arr_0: uint8 N x H x W x C) to invert to "
                                   "latents and reconstruct (methods with latents)."),
    ("--inpaint", str | None, None, "An npz of images (arr_0: uint8 N x H x W x C), cycled over the "
                                    "samples, to fill in where --mask is 0 (methods that inpaint; the"
                                    " checkpoint's --help lists its samplers)."),
    ("--mask", str | None, None, "An npz (arr_0: H x W, H x W x C, N x H x W or N x H x W x C; "
                                 "nonzero = known pixel) for --inpaint."),
]


def build_parser(method: type | None = None) -> ArgumentParser:
    """The flags every method shares, plus those ``method`` declares in its ``SampleOptions`` dataclass."""
    parser = ArgumentParser(
        prog="lit-gen sample",
        description="Sample from a checkpoint; writes OUTPUT/samples.npz (ADM evaluator format) and "
                    "OUTPUT/grid.png."
        + ("" if method else " The options of the checkpoint's method are listed by --ckpt_path CKPT "
                             "--help."),
        exit_on_error=False,
    )
    for flag, kind, default, description in COMMON_FLAGS:
        parser.add_argument(flag, type=kind, default=default, help=description)
    if method is not None and method.sample_options:
        parser.add_class_arguments(method.SampleOptions, None, as_group=True)
    return parser


def method_of(argv: list[str]) -> tuple[type | None, dict]:
    """The method class and hyperparameters of the checkpoint (``--ckpt_path``) or exported weights
    (``--weights``, or the model section of ``--config``) named in ``argv``; (None, {}) when there is none."""
    pre = argparse.ArgumentParser(add_help=False)
    for flag in ("--ckpt_path", "--weights", "--config"):
        pre.add_argument(flag)
    args = pre.parse_known_args([a for a in argv if a not in ("-h", "--help")])[0]
    if args.ckpt_path and args.weights:
        raise ValueError("give --ckpt_path (a checkpoint) or --weights (an exported .safetensors file), not "
                         "both")
    if args.ckpt_path:
        ckpt = read_checkpoint(args.ckpt_path)
        return checkpoint_class(ckpt), dict(ckpt.get("hyper_parameters") or {})
    if args.weights:
        model = model_config(args.config)
        if model:
            cls = method_class(model["class_path"], f"--config {args.config!r}")
            return cls, model.get("init_args") or {}
        meta = read_weights_metadata(args.weights)
        return method_class(meta["class_path"], repr(args.weights)), meta.get("hyper_parameters") or {}
    return None, {}


def model_config(path: str | None) -> dict | None:
    """The model section (class_path, init_args) of a run's config.yaml, or None without one."""
    if path is None:
        return None
    if not Path(path).is_file():
        raise FileNotFoundError(f"--config file not found: {path!r}")
    model = (yaml.safe_load(Path(path).read_text()) or {}).get("model")
    if not isinstance(model, dict) or "class_path" not in model:
        raise ValueError(f"--config {path!r} has no model section with a class_path "
                         f"(a run's config.yaml has one)")
    check_file_data(model, f"--config {path!r}")  # the classes it names, before anything imports them
    return model


def load_model(cfg, device: torch.device):
    """The module to sample from: a checkpoint (``--ckpt_path``) or exported weights (``--weights``)."""
    if cfg.ckpt_path:
        if cfg.config is not None:
            raise ValueError("--config goes with --weights; a checkpoint (--ckpt_path) carries its own "
                             "config")
        return load(cfg.ckpt_path, device, ema=cfg.ema).module
    if cfg.weights:
        return load_weights(cfg.weights, device, model_config(cfg.config))
    raise ValueError("lit-gen sample needs --ckpt_path CKPT (written by lit-gen fit) or --weights FILE "
                     "(lit-gen export)")


def sample_main(argv: list[str]) -> Path:
    method, hparams = method_of(argv)
    if method is not None and not issubclass(method, GenerativeModule):
        raise ValueError(f"{method.__name__} is not a generative model; lit-gen sample needs a checkpoint of "
                         f"one ({method.usage})")
    cfg = build_parser(method).parse_args(argv)
    if isinstance(cfg.labels, int):
        cfg.labels = [cfg.labels]
    cfg.text = read_prompts(cfg)
    if cfg.num_samples is None:
        cfg.num_samples = len(cfg.text) if cfg.text else 64
    check_flags(cfg, method, method.abilities_of(hparams) if method is not None else None)
    device = sampling_device(cfg.device)
    model = load_model(cfg, device)
    options = {k: cfg[k] for k in sorted(model.sample_options) if cfg[k] is not None}
    model.check_sample_options(options, torch.tensor(cfg.labels) if cfg.labels else None)
    known = read_inpainting(model, cfg) if cfg.inpaint is not None else None
    output = check_writable_folder(cfg.output, "--output")  # before the work, not after it
    nrow = None
    if cfg.interpolate is not None:
        out, nrow = SampleOutput(interpolate(model, cfg, options)), cfg.interpolate
    elif cfg.invert is not None:
        out = SampleOutput(invert_and_reconstruct(model, cfg, options, output))
    elif cfg.devices > 1 or cfg.num_nodes > 1:
        out = draw_sharded(model, cfg, options, output)
        if out is None:  # not rank 0: rank 0 writes
            return output
    else:
        out = draw(model, cfg, options, known)
    out.write(output, cfg.png, nrow)
    print(f"wrote {len(out.x)} samples to {output / 'samples.npz'} and {output / 'grid.png'}",
          file=sys.stderr)
    return output


def check_flags(cfg, method: type | None, abilities=None) -> None:
    """One-line errors for flags that do not go together, or that the checkpoint's method cannot take (the
    ``abilities`` of its hyperparameters), before anything is loaded."""
    if cfg.num_samples < 1 or cfg.batch_size < 1:
        raise ValueError(f"num_samples={cfg.num_samples} and batch_size={cfg.batch_size} must be >= 1")
    if cfg.interpolate is not None and cfg.invert is not None:
        raise ValueError("--interpolate and --invert are separate jobs; give one of them")
    if (cfg.inpaint is None) != (cfg.mask is None):
        raise ValueError("--inpaint and --mask go together: give both files")
    if cfg.inpaint is not None and (cfg.interpolate is not None or cfg.invert is not None):
        raise ValueError("--inpaint is a job of its own; give it without --interpolate or --invert")
    if cfg.devices < 1 or cfg.num_nodes < 1:
        raise ValueError(f"devices={cfg.devices} and num_nodes={cfg.num_nodes} must be >= 1")
    takes_text = abilities is not None and abilities.prompts
    if cfg.text and not takes_text:
        raise ValueError(f"--text / --text_file prompt a text-to-image model; "
                         f"{method.__name__ if method else 'this'} checkpoint is not one "
                         f"(experiments/dalle/ and experiments/t2i/ train them)")
    if takes_text and not cfg.text:
        raise ValueError(f"{method.__name__} draws images from prompts: give --text \"a caption\" or "
                         f"--text_file FILE")
    if takes_text and (cfg.interpolate is not None or cfg.invert or cfg.inpaint):
        raise ValueError("a text-to-image model draws from prompts only, without --interpolate, --invert or "
                         "--inpaint")
    if cfg.num_samples < cfg.devices * cfg.num_nodes:
        raise ValueError(f"num_samples={cfg.num_samples} is fewer than the {cfg.devices * cfg.num_nodes} "
                         "ranks of --devices x --num_nodes: every rank draws at least one sample")
    if (cfg.devices > 1 or cfg.num_nodes > 1) and (cfg.inpaint or cfg.interpolate is not None or cfg.invert):
        raise ValueError("--devices / --num_nodes shard plain sampling; run --inpaint, --interpolate and "
                         "--invert on one device")
    if abilities is not None and not abilities.latents and (cfg.interpolate is not None or cfg.invert):
        raise ValueError(f"{method.__name__} has no latents to interpolate or invert")


def read_inpainting(model, cfg) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_known (N, C, H, W) in [-1, 1], mask (N or 1, C, H, W) of 0/1) from --inpaint and --mask."""
    if not model.abilities.inpainting:
        raise ValueError(f"{type(model).__name__} cannot inpaint; --inpaint needs a diffusion or score model")
    c, h, w = model.data_shape
    images = read_uint8_images(Path(cfg.inpaint), "--inpaint", model.data_shape)
    known = torch.from_numpy(images).permute(0, 3, 1, 2)
    path = Path(cfg.mask)
    if not path.is_file():
        raise FileNotFoundError(f"--mask file not found: {str(path)!r}")
    mask = np.load(path)["arr_0"]
    shapes = {(h, w): (1, h, w, 1), (h, w, c): (1, h, w, c)}
    if mask.shape in shapes:
        mask = mask.reshape(shapes[mask.shape])
    elif mask.ndim == 3 and mask.shape[1:] == (h, w):
        mask = mask[..., None]
    if mask.ndim != 4 or mask.shape[1:3] != (h, w) or mask.shape[3] not in (1, c):
        raise ValueError(f"--mask must have shape H x W, H x W x C, N x H x W or N x H x W x C with H, W, C "
                         f"= {h, w, c}, got {mask.shape}")
    mask = torch.from_numpy(mask != 0).permute(0, 3, 1, 2).float().expand(-1, c, -1, -1)
    return known.float() / 127.5 - 1, mask


def read_prompts(cfg) -> list[str] | None:
    """The prompts of ``--text`` or ``--text_file`` (one per non-empty line), or None."""
    if cfg.text is not None and cfg.text_file is not None:
        raise ValueError("give --text or --text_file, not both")
    if cfg.text_file is not None:
        path = Path(cfg.text_file)
        if not path.is_file():
            raise FileNotFoundError(f"--text_file not found: {str(path)!r}")
        prompts = [line.strip() for line in path.read_text().splitlines() if line.strip()]
        if not prompts:
            raise ValueError(f"--text_file {str(path)!r} holds no prompt (one per line)")
        return prompts
    if cfg.text is None:
        return None
    prompts = [cfg.text] if isinstance(cfg.text, str) else list(cfg.text)
    blank = [p for p in prompts if not p.strip()]
    if blank or not prompts:
        raise ValueError("empty prompt: --text needs at least one non-blank character per prompt")
    return prompts


def labels_of(model, cfg, options: dict, indices: list[int]) -> torch.Tensor | None:
    """The requested label of each sample index: ``--labels`` cycled, else balanced over the classes (i mod
    K)."""
    return Model(model).labels(indices, cfg.labels or None, options)


def draw_indices(model, cfg, options: dict, indices: list[int], known=None, progress: bool = True):
    """The samples of ``indices`` (one batch), drawn through :meth:`lit_gen.api.Model.draw`."""
    return Model(model).draw(indices, cfg.seed, cfg.labels or None, cfg.text, known, progress=progress,
                             **options)


def draw(model, cfg, options: dict, known=None) -> SampleOutput:
    """The samples of ``--num_samples``, batch by batch."""
    starts = tqdm(range(0, cfg.num_samples, cfg.batch_size), desc="batches", unit="batch")
    outs = [draw_indices(model, cfg, options, list(range(s, min(s + cfg.batch_size, cfg.num_samples))), known)
            for s in starts]
    nfe = [o.nfe for o in outs if o.nfe is not None]
    if nfe:
        upper = f" to {max(nfe)}" if max(nfe) != nfe[0] else ""
        print(f"NFE (network evaluations per batch): {nfe[0]}{upper}", file=sys.stderr)
    return SampleOutput.concat(outs)


def draw_sharded(model, cfg, options: dict, output: Path) -> SampleOutput | None:
    """:func:`draw` over ``--devices`` x ``--num_nodes`` processes (None on every rank but 0)."""
    from lit_gen.shards import sample_sharded

    def draw_batch(net, indices):
        out = draw_indices(net, cfg, options, indices, progress=False)
        return {"x": out.x, "labels": out.labels, "captions": out.captions, "scores": out.scores}

    accelerator = {"auto": "auto", "cpu": "cpu"}.get(cfg.device, "gpu")
    rows = sample_sharded(model, draw_batch, cfg.num_samples, cfg.batch_size, cfg.devices, cfg.num_nodes,
                          accelerator, output)
    if rows is None:
        return None
    return SampleOutput(rows["x"], rows["labels"], captions=rows["captions"] or None, scores=rows["scores"])


def _decode(model, latents: torch.Tensor, cfg, options: dict) -> torch.Tensor:
    xs = []
    for start in tqdm(range(0, len(latents), cfg.batch_size), desc="decoding", unit="batch"):
        chunk = latents[start : start + cfg.batch_size].to(model.device)
        labels = labels_of(model, cfg, options, list(range(start, start + len(chunk))))
        out = model.sample(len(chunk), labels=labels, latents=chunk, progress=True, **options)
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
    images = read_uint8_images(Path(cfg.invert), "--invert", getattr(model, "image_shape", model.data_shape))
    x0 = torch.from_numpy(images[: cfg.num_samples]).permute(0, 3, 1, 2).float() / 127.5 - 1  # (N, C, H, W)
    options = model.deterministic_options(options)
    latents = torch.cat([
        model.invert(chunk, labels=labels_of(model, cfg, options, list(range(s, s + len(chunk)))),
                     progress=True,
                     **options).cpu()
        for s in range(0, len(x0), cfg.batch_size) if len(chunk := x0[s : s + cfg.batch_size])
    ])
    save_npz(output / "latents.npz", latents.numpy().astype(np.float32))
    recon = _decode(model, latents, cfg, options)
    mse = ((recon.clamp(-1, 1) - x0) ** 2).mean().item()
    print(f"reconstruction MSE {mse:.6g} (images in [-1, 1]) over {len(x0)} images", file=sys.stderr)
    return recon
