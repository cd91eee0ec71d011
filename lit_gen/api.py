"""lit_gen's Python API, as a diffusers user expects one: ``model = lit_gen.load("X.ckpt")`` (a checkpoint
of ``lit-gen fit``, or a ``.safetensors`` of ``lit-gen export``; EMA weights by default; read as plain data),
then ``model.sample(16, sampler="dpmpp2m", steps=20, seed=0)`` -> uint8 images (N, H, W, C) and
``model.log_likelihood(images)`` where the method has one. Sample i depends only on (seed, i), so the images
are those of ``lit-gen sample --seed`` with the same options."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from lit_gen.checkpoints import load_module, load_weights
from lit_gen.methods.generative import GenerativeModule, SampleOutput
from lit_gen.utils import sample_generators
from lit_gen.visual import to_uint8_nhwc

OUTPUTS = ("numpy", "tensor")


def device_of(name: str | torch.device) -> torch.device:
    """auto (a GPU when there is one), cpu, cuda, cuda:1, ...; one-line errors for a bad name or a GPU this
    machine lacks."""
    if str(name) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device {name!r} is not a device: use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name!r}: this machine has no CUDA GPU (use --device cpu, or auto)")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ValueError(f"--device {name!r}: this machine has {torch.cuda.device_count()} GPU(s)")
    return device


class Model:
    """A loaded generative model: sampling and, where the method has one, its log-likelihood."""

    def __init__(self, module: GenerativeModule) -> None:
        if not isinstance(module, GenerativeModule):
            raise ValueError(f"{type(module).__name__} is not a generative model ({module.usage})")
        self.module = module

    def __repr__(self) -> str:
        return f"lit_gen.Model({type(self.module).__name__}, data_shape={self.data_shape})"

    @property
    def data_shape(self) -> tuple[int, ...]:
        return tuple(self.module.data_shape)

    def labels(self, indices: list[int], labels, options: dict) -> torch.Tensor | None:
        """The label of each sample index: ``labels`` (an int or a sequence) cycled, else balanced."""
        if labels is not None:
            cycle = [int(v) for v in torch.as_tensor(labels).flatten().tolist()]
            return torch.tensor([cycle[i % len(cycle)] for i in indices])
        k = self.module.label_classes(options)
        return torch.tensor([i % k for i in indices]) if k else None

    @torch.no_grad()
    def sample(self, num_samples: int, seed: int = 0, labels=None, x_T: torch.Tensor | None = None,
               batch_size: int = 64, output: str = "numpy", progress: bool = False,
               prompts: list[str] | str | None = None, **options):
        """``num_samples`` samples with the method's sampling options (``sampler``, ``steps``,
        ``guidance_scale``, ...): uint8 images (N, H, W, C) (float32 points for vector data), or with
        ``output="tensor"`` the (N, *data_shape) tensor in data space ([-1, 1] for images). ``x_T``: the
        initial noise (N, *data_shape) of a method with latents; ``labels``: classes, cycled; ``prompts``: the
        captions of a text-to-image model, cycled."""
        if output not in OUTPUTS:
            raise ValueError(f"output={output!r} is not supported; choose one of {list(OUTPUTS)}")
        if num_samples < 1 or batch_size < 1:
            raise ValueError(f"num_samples={num_samples} and batch_size={batch_size} must be >= 1")
        module = self.module
        wanted = (num_samples, *self.data_shape)
        if x_T is not None and (not module.abilities.latents or tuple(x_T.shape) != wanted):
            raise ValueError(f"x_T must be {wanted} noise of a method with latents; got "
                             f"{tuple(x_T.shape)} for {type(module).__name__}")
        prompts = [prompts] if isinstance(prompts, str) else prompts
        module.check_sample_options(options, None if labels is None else self.labels([0], labels, options))
        outs = [self.draw(list(range(start, min(start + batch_size, num_samples))), seed, labels, prompts,
                          latents=x_T, progress=progress, **options)
                for start in range(0, num_samples, batch_size)]
        x = SampleOutput.concat(outs).x
        if output == "tensor":
            return x
        return x.numpy().astype(np.float32) if x.ndim == 2 else to_uint8_nhwc(x)

    def draw(self, indices: list[int], seed: int = 0, labels=None, prompts: list[str] | None = None,
             inpaint: tuple[torch.Tensor, torch.Tensor] | None = None, latents: torch.Tensor | None = None,
             progress: bool = False, **options) -> SampleOutput:
        """The samples of ``indices`` (one batch), sample i from the generator of (seed, i): labels, prompts,
        inpainting images and masks, and given latents (indexed by i) cycled over them. What ``lit-gen
        sample`` draws each batch with."""
        module, extra = self.module, {}
        if module.abilities.prompts:
            if not prompts:
                raise ValueError(f"{type(module).__name__} draws images from prompts: give prompts=[...]")
            extra = {"captions": [prompts[i % len(prompts)] for i in indices], "prompt_indices": indices}
        elif prompts:
            raise ValueError(f"prompts are for a text-to-image model; {type(module).__name__} is not one")
        idx = torch.tensor(indices)
        if inpaint is not None:
            images, mask = inpaint
            extra["inpaint"] = (images[idx % len(images)], mask[idx % len(mask)])
        if latents is not None:
            extra["latents"] = latents[idx].to(module.device)
        generators = [g for i in indices for g in sample_generators(seed, i, 1)]
        return module.sample(len(indices), generators, labels=self.labels(indices, labels, options),
                             progress=progress, **extra, **options)

    @torch.no_grad()
    def log_likelihood(self, images) -> dict:
        """The method's log-likelihood of uint8 images (N, H, W, C) or of data-space tensors (N, *data_shape):
        ``bpd`` for images (``log_p`` for vectors) and the method's other outputs, per sample."""
        module = self.module
        if not hasattr(module, "log_likelihood"):
            raise ValueError(f"{type(module).__name__} has no log-likelihood")
        x = torch.as_tensor(images)
        if x.dtype == torch.uint8:  # (N, H, W, C) -> (N, C, H, W) in [-1, 1]
            x = x.permute(0, 3, 1, 2).float() / 127.5 - 1
        if tuple(x.shape[1:]) != self.data_shape:
            raise ValueError(f"images of shape {tuple(x.shape[1:])} do not fit the model's {self.data_shape}")
        return module.log_likelihood(x.to(module.device))


def load(path: str | Path, device: str | torch.device = "auto", ema: bool = True,
         config: dict | None = None) -> Model:
    """The model of a checkpoint (``.ckpt`` file or sharded folder of ``lit-gen fit``) or of exported
    weights (``.safetensors`` of ``lit-gen export``; ``config``: a model section replacing the one in its
    metadata), on ``device``, with the EMA weights when the run kept them (``ema``)."""
    where = device_of(device)
    if str(path).endswith(".safetensors"):
        return Model(load_weights(path, where, config))
    return Model(load_module(path, where, ema=ema))
