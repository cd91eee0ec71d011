"""``lit-gen reflow``: (noise, sample) pairs drawn by a teacher's deterministic sampler, the data of a
2-rectified flow (Liu et al. 2023, Algorithm 1): train a FlowMatching student on them with
``data: PairsDataModule`` (``--model.init_args.init_from TEACHER`` starts it from the teacher's weights), or
distil them into one step with ``time_distribution: one_step``."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from jsonargparse import ArgumentParser
from tqdm.auto import tqdm

from lit_gen.checkpoints import checkpoint_class, load_module, read_checkpoint
from lit_gen.data.pairs import write_pairs
from lit_gen.files import check_writable_folder
from lit_gen.methods.noise_process import NoiseProcessMethod
from lit_gen.sample import labels_of, sampling_device
from lit_gen.score.solvers import DETERMINISTIC
from lit_gen.utils import sample_generators

FLAGS = [  # (flag, type, default, help)
    ("--ckpt_path", str, None, "The teacher: a checkpoint of a noise-process method (FlowMatching, DDPM, "
                               "ScoreSDE, ...) written by lit-gen fit."),
    ("--num_pairs", int, 10000, "How many (noise, sample) pairs."),
    ("--output", str, "reflow", "Output folder: the pairs go to OUTPUT/pairs.npz."),
    ("--sampler", str | None, None, "A deterministic sampler of the teacher (default: its own when "
                                    "deterministic, else DDIM (eta 0) on DDPM and RK45 on score models)."),
    ("--steps", int | None, None, "Grid points of the sampler (default: the teacher's)."),
    ("--guidance_scale", float | None, None, "Classifier-free guidance of a class-conditional teacher."),
    ("--labels", list[int] | int | None, None, "Class labels, cycled over the pairs (default: balanced)."),
    ("--seed", int, 0, "Pair i depends only on (seed, i), not on the batch or the devices."),
    ("--batch_size", int, 256, "Pairs per forward pass."),
    ("--ema", bool, True, "Use the teacher's EMA weights when it has them."),
    ("--device", str, "auto", "auto, cpu, cuda, cuda:1, ..."),
    ("--devices", int, 1, "Processes (CPU) or GPUs per node to shard the pairs over, by index."),
    ("--num_nodes", int, 1, "Nodes for --devices (torchrun / SLURM)."),
]


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="lit-gen reflow", exit_on_error=False, description=(
        "Draw (noise, sample) pairs with a teacher's ODE into OUTPUT/pairs.npz, the data (PairsDataModule) "
        "of a 2-rectified flow."))
    for flag, kind, default, description in FLAGS:
        required = flag == "--ckpt_path"
        parser.add_argument(flag, type=kind, default=default, help=description, required=required)
    return parser


def check_teacher(path: str) -> None:
    """One line unless ``path`` is a checkpoint of a model with a probability-flow ODE."""
    method = checkpoint_class(read_checkpoint(path))
    if not issubclass(method, NoiseProcessMethod):
        raise ValueError(f"reflow needs a teacher with a probability-flow ODE (FlowMatching, DDPM, Improved "
                         f"DDPM, ScoreSDE, NCSN); {path!r} is a {method.__name__} checkpoint")


def teacher_options(model: NoiseProcessMethod, cfg) -> dict:
    """The deterministic sampling options of the pairs; one line for a stochastic sampler or a prior that is
    not N(0, I), the noise of a flow-matching student."""
    prior_std = model.noise_model(model.sampling_net).sde.prior_std
    if abs(prior_std - 1) > 1e-3:
        raise ValueError(f"the teacher's prior is N(0, {prior_std:g}^2 I) (a VE process), a flow-matching "
                         "student's noise is N(0, I): reflow a VP, sub-VP, DDPM or flow-matching teacher")
    default = model.noise_model(model.sampling_net).defaults["sampler"]
    options = {"sampler": cfg.sampler or (default if default in DETERMINISTIC else None), "steps": cfg.steps,
               "guidance_scale": cfg.guidance_scale}
    try:
        options = model.deterministic_options({k: v for k, v in options.items() if v is not None})
    except ValueError:
        ddim = "ddim (eta 0) or " if "ddim" in model.noise_model(None).samplers() else ""
        raise ValueError(f"reflow pairs need a deterministic sampler: {ddim}one of {sorted(DETERMINISTIC)}; "
                         f"got --sampler {cfg.sampler!r}") from None
    options.pop("denoise", None)  # the teacher's own final step, deterministic as the rest
    model.check_sample_options(options, torch.tensor(cfg.labels) if cfg.labels else None)
    return options


def description(model: NoiseProcessMethod, cfg, options: dict) -> dict:
    """What the pairs file records of their draw: the teacher and its effective sampler, steps and
    guidance."""
    noise_model = model.noise_model(model.sampling_net)
    adaptive = options["sampler"] in ("ode", "rk45")  # the two end points by default
    steps = options.get("steps") or (2 if adaptive else noise_model.defaults["steps"])
    scale = options.get("guidance_scale")
    return {"num_classes": model.num_classes, "teacher": str(cfg.ckpt_path), "sampler": options["sampler"],
            "steps": steps, "guidance_scale": noise_model.guidance_scale if scale is None else scale}


def draw_pairs(model, cfg, options: dict, indices: list[int], progress: bool = False) -> dict:
    """The pairs of ``indices``: noise i from the generator of (seed, i), and where the teacher takes it."""
    generators = [g for i in indices for g in sample_generators(cfg.seed, i, 1)]
    sde = model.noise_model(model.sampling_net).sde
    noise = sde.prior_sampling((len(indices), *model.data_shape), generators, model.device)
    out = model.sample(len(indices), generators, labels=labels_of(model, cfg, options, indices),
                       latents=noise, progress=progress, **options)
    return {"x": out.x, "noise": noise, "labels": out.labels}


def reflow_main(argv: list[str]) -> Path:
    cfg = build_parser().parse_args(argv)
    if isinstance(cfg.labels, int):
        cfg.labels = [cfg.labels]
    for name in ("num_pairs", "batch_size", "devices", "num_nodes"):
        if cfg[name] < 1:
            raise ValueError(f"--{name} {cfg[name]} must be >= 1")
    check_teacher(cfg.ckpt_path)
    model = load_module(cfg.ckpt_path, sampling_device(cfg.device), ema=cfg.ema)
    if getattr(model, "autoencoder", None) is not None or getattr(model, "text", None) is not None:
        raise ValueError(f"{cfg.ckpt_path} is a latent or text-conditional model: lit-gen reflow pairs noise "
                         "with images of an image-space, unconditional or class-conditional teacher")
    options = teacher_options(model, cfg)
    output = check_writable_folder(cfg.output, "--output")  # before the work, not after it
    if cfg.devices > 1 or cfg.num_nodes > 1:
        from lit_gen.shards import sample_sharded

        accelerator = {"auto": "auto", "cpu": "cpu"}.get(cfg.device, "gpu")
        rows = sample_sharded(model, lambda m, idx: draw_pairs(m, cfg, options, idx), cfg.num_pairs,
                              cfg.batch_size, cfg.devices, cfg.num_nodes, accelerator, output)
        if rows is None:  # not rank 0: rank 0 writes
            return output
    else:
        starts = tqdm(range(0, cfg.num_pairs, cfg.batch_size), desc="pairs", unit="batch")
        parts = [draw_pairs(model, cfg, options, list(range(s, min(s + cfg.batch_size, cfg.num_pairs))))
                 for s in starts]
        rows = {k: None if parts[0][k] is None else torch.cat([p[k].cpu() for p in parts]) for k in parts[0]}
    drawn = description(model, cfg, options)
    write_pairs(output / "pairs.npz", rows["x"], rows["noise"], rows["labels"], **drawn)
    print(f"wrote {cfg.num_pairs} pairs of {cfg.ckpt_path} ({drawn['sampler']}, {drawn['steps']} steps) to "
          f"{output / 'pairs.npz'}", file=sys.stderr)
    return output
