"""lit_gen against diffusers on the same imported pipeline: time per image of DDIM sampling and the largest
difference between the two libraries' images.

    python -m benchmarks.diffusers_interop [--steps 50] [--batches 64 256] [--device auto]

A DDIMPipeline of google/ddpm-cifar10-32's UNet2DModel config (35.7 M parameters, random weights: time
does not depend on them) and its scheduler is saved, imported with ``lit-gen import diffusers``, and
sampled by both libraries from the same x_T with DDIM (eta 0, "leading" timesteps, eps recomputed from the
clipped x0 in both: diffusers' ``use_clipped_model_output=True``). Both libraries sample a small batch once
to warm up, then each batch is timed once; the two run one after the other on the same machine, never side
by side.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

# google/ddpm-cifar10-32's UNet2DModel config (Ho et al. 2020's CIFAR-10 network)
CIFAR10_UNET = dict(sample_size=32, in_channels=3, out_channels=3, block_out_channels=(128, 256, 256, 256),
                    layers_per_block=2, down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D",
                                                          "DownBlock2D"),
                    up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
                    attention_head_dim=None, downsample_padding=0, flip_sin_to_cos=False, freq_shift=1,
                    norm_eps=1e-6)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device) -> tuple[torch.Tensor, float]:
    synchronize(device)
    start = time.perf_counter()
    out = fn()
    synchronize(device)
    return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--batches", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()

    import diffusers

    from lit_gen.api import device_of, load
    from lit_gen.interop.pipelines import import_diffusers

    device = device_of(args.device)
    torch.manual_seed(0)
    folder = Path(tempfile.mkdtemp())
    unet = diffusers.UNet2DModel(**CIFAR10_UNET)
    scheduler = diffusers.DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", clip_sample=True)
    diffusers.DDIMPipeline(unet=unet, scheduler=scheduler).save_pretrained(str(folder / "pipe"))
    import_diffusers(str(folder / "pipe"), folder / "model.ckpt")
    pipe = diffusers.DDIMPipeline.from_pretrained(str(folder / "pipe")).to(device)
    pipe.set_progress_bar_config(disable=True)
    model = load(folder / "model.ckpt", device=str(device))
    params = sum(p.numel() for p in pipe.unet.parameters()) / 1e6
    print(f"DDIM-{args.steps} (eta 0) on {device}, {params:.1f} M-parameter UNet2DModel, float32; "
          f"diffusers {diffusers.__version__}, torch {torch.__version__}")
    print("| batch | diffusers s/image | lit_gen s/image | lit_gen / diffusers | largest difference |")
    print("|---|---|---|---|---|")
    compare(pipe, model, 2, 2, device)  # warm both up
    for batch in args.batches:
        (a, ta), (b, tb) = compare(pipe, model, batch, args.steps, device)
        gap = float((torch.as_tensor(a) - b.float().cpu()).abs().max())
        print(f"| {batch} | {ta / batch:.4f} | {tb / batch:.4f} | {tb / ta:.3f} | {gap:.2e} |")


def compare(pipe, model, batch: int, steps: int, device: torch.device):
    """((diffusers' images, seconds), (lit_gen's images, seconds)) from the same x_T: the pipeline draws it
    from a CPU generator on the CPU, as this does."""
    x_T = torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(batch)).to(device)

    def theirs():
        with torch.no_grad():
            return pipe(batch_size=batch, num_inference_steps=steps, use_clipped_model_output=True,
                        output_type="np", generator=torch.Generator().manual_seed(batch)).images

    def ours():
        x = model.sample(batch, x_T=x_T, sampler="ddim", steps=steps, spacing="leading", batch_size=batch,
                         output="tensor")
        return (x / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1)

    return timed(theirs, device), timed(ours, device)

if __name__ == "__main__":
    main()
