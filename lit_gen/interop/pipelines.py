"""``lit-gen import diffusers SRC --output X.ckpt`` and ``lit-gen export --format diffusers``: diffusers'
DDPM, DDIM and ScoreSdeVe pipelines (a ``UNet2DModel`` and a scheduler) to lit_gen checkpoints and back.

An imported pipeline is a normal lit_gen checkpoint of DDPM, Improved DDPM or a VE ScoreSDE whose network is
:class:`lit_gen.nets.DiffusersUNet` with the pipeline's UNet config and weights (in both the network and its
EMA): every sampler, guidance, ``lit-gen test``, FID and ``init_from`` fine-tuning take it. The scheduler maps
through :mod:`lit_gen.interop.schedulers`, option by option, or is refused in one line before anything is
written."""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from lit_gen.checkpoints import TAG, class_path, load_module, read_checkpoint
from lit_gen.files import atomic_write, check_new_file, check_writable_folder
from lit_gen.interop.schedulers import DISCRETE, method_of, scheduler_of
from lit_gen.interop.unet import to_unet2d
from lit_gen.nets import DiffusersUNet, UNet
from lit_gen.nets.diffusers_unet import require_diffusers
from lit_gen.version import __version__

PIPELINES = {"DDPMPipeline": DISCRETE, "DDIMPipeline": DISCRETE,
             "ScoreSdeVePipeline": ("ScoreSdeVeScheduler",)}
# UNet2DModel config keys that the adapter sets itself, or that are diffusers' bookkeeping
DERIVED = {"sample_size", "in_channels", "out_channels", "num_class_embeds"}


def _json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{str(path)!r} is not a readable JSON file ({type(err).__name__})") from None


def pipeline_folder(src: str) -> tuple[Path, bool]:
    """(the folder, whether it came from the Hub): a local folder written by ``save_pretrained``, or for a Hub
    id the snapshot folder holding its three config files (the weights come after they are checked)."""
    folder = Path(src)
    if folder.is_dir():
        return folder, False
    if folder.exists() or src.count("/") != 1 or src.startswith((".", "/")):
        raise ValueError(f"{src!r} is neither a pipeline folder (save_pretrained's) nor a Hub id "
                         f"(owner/name)")
    return Path(_download(src, CONFIGS)), True


CONFIGS = ["model_index.json", "unet/config.json", "scheduler/scheduler_config.json"]


def _download(src: str, patterns: list[str]) -> str:
    """The snapshot folder of Hub repo ``src`` with the files matching ``patterns``; one line on failure."""
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(src, allow_patterns=patterns)
    except Exception as err:  # noqa: BLE001 - offline, unknown id, gated: one line either way
        reason = str(err).splitlines()[0][:160] if str(err) else ""
        raise ValueError(f"could not download {src!r} from the Hugging Face Hub "
                         f"({type(err).__name__}: {reason})") from None


def read_pipeline(folder: Path) -> tuple[str, dict, dict]:
    """(pipeline class name, UNet config, scheduler config) of a pipeline folder, each checked."""
    index = _json(folder / "model_index.json") if (folder / "model_index.json").is_file() else None
    if index is None:
        raise ValueError(f"{str(folder)!r} has no model_index.json: not a diffusers pipeline folder")
    name = index.get("_class_name")
    if name not in PIPELINES:
        raise ValueError(f"pipeline {name!r} is not supported; choose one of {sorted(PIPELINES)}")
    unet_class = (index.get("unet") or [None, None])[1]
    if unet_class != "UNet2DModel":
        raise ValueError(f"{name}'s unet is a {unet_class}: only UNet2DModel is supported (a UNet "
                         f"conditioned on text is not)")
    unet = _json(folder / "unet" / "config.json")
    scheduler = _json(folder / "scheduler" / "scheduler_config.json")
    if scheduler.get("_class_name") not in PIPELINES[name]:
        raise ValueError(f"{name} with scheduler {scheduler.get('_class_name')!r} is not supported; choose "
                         f"one of {list(PIPELINES[name])}")
    return name, unet, scheduler


def method_config(unet: dict, scheduler: dict, null_class: bool) -> tuple[str, dict]:
    """(method class name, hyperparameters) of a pipeline's UNet and scheduler configs."""
    method, hparams = method_of(scheduler)
    if unet.get("class_embed_type") is not None:
        raise ValueError(f"class_embed_type={unet['class_embed_type']!r} is not supported; lit_gen passes "
                         f"labels through num_class_embeds (class_embed_type None)")
    size = unet.get("sample_size")
    size = size if isinstance(size, int) else (size[0] if size and size[0] == size[1] else None)
    if size is None:
        raise ValueError(f"sample_size={unet.get('sample_size')!r}: only square images are supported")
    channels = unet.get("in_channels", 3)
    wanted = 2 * channels if hparams.get("variance") == "learned" else channels
    if unet.get("out_channels", 3) != wanted:
        raise ValueError(f"the UNet has {unet.get('out_channels')} output channels for {channels} input "
                         f"channels; this scheduler needs {wanted}")
    embeds = unet.get("num_class_embeds")
    classes = (embeds - int(null_class)) if embeds else 0
    net_args = {k: v for k, v in unet.items() if not k.startswith("_") and k not in DERIVED}
    import inspect

    from diffusers import UNet2DModel

    unknown = sorted(set(net_args) - set(inspect.signature(UNet2DModel.__init__).parameters))
    if unknown:
        raise ValueError(f"the UNet's config has keys this diffusers version's UNet2DModel does not take: "
                         f"{unknown} (a newer diffusers wrote it: upgrade diffusers)")
    net_args.update(null_class=null_class, unit_range=method == "ScoreSDE")
    hparams.update(data_shape=(channels, size, size), num_classes=classes, class_conditional=bool(classes),
                   net={"class_path": class_path(DiffusersUNet), "init_args": net_args},
                   optimizer={"class_path": "torch.optim.Adam", "init_args": {"lr": 2e-4}})
    if classes:
        hparams["p_uncond"] = 0.1 if null_class else 0.0
    return method, hparams


def build_checkpoint(method: str, hparams: dict, weights: dict[str, torch.Tensor], source: dict) -> dict:
    """A lit_gen checkpoint of ``method`` with the UNet ``weights`` in its network and EMA."""
    from lightning import __version__ as lightning_version
    from lightning.pytorch.cli import instantiate_module

    from lit_gen.checkpoints import method_class

    cls = method_class(method)
    full = {**hparams, "_class_path": class_path(cls),
            "_instantiator": "lightning.pytorch.cli.instantiate_module"}
    model = instantiate_module(cls, {k: v for k, v in full.items() if k != "_instantiator"})
    model.configure_model()
    for net in [model.net] + ([model.ema.module] if model.ema is not None else []):
        try:
            net.unet.load_state_dict(weights)
        except RuntimeError as err:
            detail = " ".join(str(err).split())[:300]
            raise ValueError(f"the pipeline's UNet weights do not fit its own config: {detail}") from None
    return {"epoch": 0, "global_step": 0, "pytorch-lightning_version": lightning_version,
            "state_dict": model.state_dict(), "hparams_name": "kwargs", "hyper_parameters": full,
            TAG: {"class_path": class_path(cls), "version": __version__, "world_size": 1, "imported": source}}


def import_diffusers(src: str, output: str | Path, null_class: bool = False) -> tuple[Path, str]:
    """Convert a DDPM / DDIM / ScoreSdeVe pipeline (folder or Hub id) into the lit_gen checkpoint ``output``.
    Returns (the path, the method's name)."""
    diffusers = require_diffusers("lit-gen import diffusers")
    output = check_new_file(output, "--output", (".ckpt",))
    folder, hub = pipeline_folder(src)
    name, unet_config, scheduler = read_pipeline(folder)
    method, hparams = method_config(unet_config, scheduler, null_class)
    if hub:  # checked: now the weights
        folder = Path(_download(src, [*CONFIGS, "unet/*.safetensors", "unet/*.bin"]))
    unet = diffusers.UNet2DModel.from_pretrained(str(folder), subfolder="unet", low_cpu_mem_usage=False)
    source = {"format": "diffusers", "pipeline": name, "scheduler": scheduler.get("_class_name"),
              "source": src}
    ckpt = build_checkpoint(method, hparams, unet.state_dict(), source)
    atomic_write(output, lambda file: torch.save(ckpt, file))
    return output, method


def export_diffusers(ckpt_path: str | Path, output: str | Path) -> tuple[Path, str]:
    """Write the pipeline folder of a lit_gen checkpoint whose network is a :class:`DiffusersUNet` or
    lit_gen's UNet (converted to the equal ``UNet2DModel``): its sampling (EMA) weights and the scheduler of
    its process, loadable by ``from_pretrained``. Returns (the folder, the pipeline's name)."""
    diffusers = require_diffusers("lit-gen export --format diffusers")
    output = Path(output)
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise ValueError(f"--output {str(output)!r} exists and is not an empty folder")
    check_writable_folder(output, "--output")
    hparams = dict(read_checkpoint(ckpt_path).get("hyper_parameters") or {})
    model = load_module(ckpt_path)
    if getattr(model, "autoencoder", None) is not None:
        raise ValueError(f"{ckpt_path} models an autoencoder's latents: the unconditional diffusers "
                         "pipelines lit_gen exports have no VAE to decode them")
    scheduler_name, scheduler_config = scheduler_of(type(model).__name__, hparams)
    unet = exported_unet(model.sampling_net, scheduler_name, ckpt_path)
    pipeline_name = {"DDIMScheduler": "DDIMPipeline", "DDPMScheduler": "DDPMPipeline",
                     "ScoreSdeVeScheduler": "ScoreSdeVePipeline"}[scheduler_name]
    scheduler = getattr(diffusers, scheduler_name).from_config(scheduler_config)
    pipeline = getattr(diffusers, pipeline_name)(unet=unet, scheduler=scheduler)
    with tempfile.TemporaryDirectory(dir=output.parent if output.parent.exists() else None) as tmp:
        pipeline.save_pretrained(tmp)
        output.mkdir(parents=True, exist_ok=True)
        for item in Path(tmp).iterdir():
            shutil.move(str(item), output / item.name)
    return output, pipeline_name


def exported_unet(net, scheduler: str, ckpt_path):
    """The ``UNet2DModel`` of a model's sampling network, or one line on why the pipeline could not run it:
    the pipelines sample unconditionally, and ScoreSdeVePipeline feeds 3-channel [0, 1] images and sigma to an
    NCSN++ that returns the score."""
    if getattr(net, "num_classes", 0):
        raise ValueError(f"{ckpt_path} is class-conditional; diffusers' {scheduler.replace('Scheduler', '')} "
                         f"pipeline calls its UNet without class labels, so it could not sample it")
    if isinstance(net, UNet):
        unet = to_unet2d(net)  # checked against net's output
    elif isinstance(net, DiffusersUNet):
        unet = net.unet
    else:
        raise ValueError(f"{ckpt_path}'s network is a {type(net).__name__}, which has no UNet2DModel "
                         f"counterpart (lit_gen's UNet and DiffusersUNet export)")
    ncsnpp = isinstance(net, DiffusersUNet) and net.unit_range and unet.config.in_channels == 3 and (
        unet.config.time_embedding_type == "fourier")
    if scheduler == "ScoreSdeVeScheduler" and not ncsnpp:
        raise ValueError(f"{ckpt_path}: a ScoreSdeVePipeline runs a 3-channel DiffusersUNet with unit_range "
                         f"and a fourier time embedding (an imported NCSN++); this network is not one")
    return unet


def import_main(argv: list[str]) -> None:
    """``lit-gen import diffusers SRC --output X.ckpt [--null_class]``."""
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(prog="lit-gen import", exit_on_error=False, description=(
        "Convert a diffusers pipeline (a folder written by save_pretrained, or a Hub id) into a lit_gen "
        "checkpoint: DDPMPipeline / DDIMPipeline -> DDPM or Improved DDPM, ScoreSdeVePipeline -> a VE "
        "ScoreSDE; the network is lit_gen.nets.DiffusersUNet with the pipeline's UNet."))
    parser.add_argument("format", type=str, help="The source format: diffusers.")
    parser.add_argument("src", type=str, help="The pipeline: a local folder or a Hub id (owner/name).")
    parser.add_argument("--output", type=str, required=True, help="The lit_gen .ckpt file to write.")
    parser.add_argument("--null_class", type=bool, default=False, help=(
        "A class-conditional UNet's last class embedding is the null label (trained with condition dropout): "
        "classifier-free guidance then works. Otherwise it samples conditionally only."))
    cfg = parser.parse_args(argv)
    if cfg.format != "diffusers":
        raise ValueError(f"lit-gen import {cfg.format!r}: the supported format is 'diffusers'")
    path, method = import_diffusers(cfg.src, cfg.output, cfg.null_class)
    print(f"wrote {path}: a {method} checkpoint of {cfg.src} (sample it with lit-gen sample --ckpt_path "
          f"{path}, or lit_gen.load)", file=sys.stderr)
