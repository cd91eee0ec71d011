"""The accuracy-diversity trade-off of guidance: for each scale s, classifier-free guidance of a conditional
checkpoint and classifier guidance of an unconditional one (with a noisy classifier), sampled with DDIM, print
the accuracy of the requested class under a classifier that did not guide (the feature net), the Fréchet
distance to the training images in that net's features, and seconds per image; the unguided conditional
(s = 1) and unconditional models at the same steps are the time references.

    python -m benchmarks.guidance --cfg runs/cfg_digits/checkpoints/last.ckpt \\
        --ddpm runs/ddpm_digits/checkpoints/last.ckpt \\
        --classifier runs/classifier_digits/checkpoints/last.ckpt
    python -m benchmarks.guidance --data shapes --image_size 16 --features shapes16 \\
        --cfg ... --ddpm ... --classifier ...

The shapes checkpoints of the README's table are the digits configs run on 16x16 shapes (see the README).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from benchmarks.common import print_table
from lit_gen.callbacks.fid import resolve_features
from lit_gen.checkpoints import load_module
from lit_gen.data import DigitsDataModule, ShapesDataModule
from lit_gen.metrics import frechet_distance, load_feature_net
from lit_gen.utils import sample_generators


def evaluate(model, features, metric, num_samples: int, batch: int, num_classes: int, **options):
    """(accuracy of the requested labels, Fréchet distance, seconds per image) of ``model.sample``."""
    metric.reset()
    labels = torch.arange(num_samples) % num_classes  # balanced
    requested = bool(model.num_classes or options.get("classifier_ckpt"))  # else nothing to ask for
    correct, seconds = 0, 0.0
    for s in range(0, num_samples, batch):
        n = min(batch, num_samples - s)
        start = time.perf_counter()
        x = model.sample(n, sample_generators(0, s, n), labels=labels[s : s + n] if requested else None,
                         **options).x.clamp(-1, 1)
        seconds += time.perf_counter() - start
        with torch.no_grad():
            correct += (features.classifier(x).argmax(-1) == labels[s : s + n]).sum().item()
        metric.update(x, real=False)
    return correct / num_samples, float(metric.compute()), seconds / num_samples


def interleaved_seconds(runs: dict, num_images: int, repeats: int) -> dict[str, float]:
    """Median seconds per image of each ``runs[name]()`` (which draws ``num_images``), the runs taken in turn
    ``repeats`` times so that a change of machine speed hits all of them alike."""
    times = {name: [] for name in runs}
    for _ in range(repeats):
        for name, fn in runs.items():
            start = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - start) / num_images)
    return {name: statistics.median(ts) for name, ts in times.items()}


def real_accuracy(features, data) -> float:
    """The feature net's accuracy on held-out real images: the ceiling of the accuracy column."""
    data.setup("test")
    correct = total = 0
    for b in data.test_dataloader():
        with torch.no_grad():
            correct += (features.classifier(b["x"]).argmax(-1) == b["y"]).sum().item()
        total += len(b["y"])
    return correct / total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cfg", required=True, help="a class-conditional DDPM trained with p_uncond > 0")
    parser.add_argument("--ddpm", required=True, help="an unconditional DDPM of the same noise process")
    parser.add_argument("--classifier", required=True, help="a NoisyClassifier of that process")
    parser.add_argument("--data", choices=["digits", "shapes"], default="digits")
    parser.add_argument("--image_size", type=int, default=16)
    parser.add_argument("--features", default="digits16", help="feature net: a shipped name or a .pt file")
    parser.add_argument("--scales", type=float, nargs="+", default=[0, 1, 2, 3, 5])
    parser.add_argument("--steps", type=int, default=50, help="DDIM steps")
    parser.add_argument("--num_samples", type=int, default=500)
    parser.add_argument("--batch", type=int, default=250)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--time_scale", type=float, default=3.0, help="the s of the timing table")
    parser.add_argument("--time_repeats", type=int, default=3)
    parser.add_argument("--time_only", action="store_true",
                        help="only the timing tables (time depends on the nets, not on how long they "
                             "trained)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = (DigitsDataModule if args.data == "digits" else ShapesDataModule)(image_size=args.image_size,
                                                                             batch_size=500)
    data.setup("fit")
    features = load_feature_net(resolve_features(args.features))
    metric = frechet_distance(features)
    for b in torch.utils.data.DataLoader(data.train_dataset, batch_size=500):
        metric.update(b["x"], real=True)
    cfg, ddpm = load_module(args.cfg), load_module(args.ddpm)
    K = cfg.num_classes
    ddim = {"sampler": "ddim", "steps": args.steps, "eta": 0.0}

    if not args.time_only:
        sweep(args, cfg, ddpm, features, metric, data, K, ddim)
    timing(args, cfg, ddpm, K, ddim)


def sweep(args, cfg, ddpm, features, metric, data, K: int, ddim: dict) -> None:
    """Accuracy, Fréchet distance and time per image at every scale, for both kinds of guidance."""
    def run(model, **o):
        return evaluate(model, features, metric, args.num_samples, args.batch, K, **ddim, **o)

    rows = []
    acc, fd, sec = evaluate(ddpm, features, metric, args.num_samples, args.batch, K, **ddim)
    reference = sec
    rows.append(["unconditional DDPM (no guidance)", "-", "-", f"{fd:.2f}", f"{1000 * sec:.1f}", "1.00"])
    print(rows[-1], flush=True)
    for s in args.scales:
        acc, fd, sec = run(cfg, guidance_scale=s)
        rows.append(["classifier-free", f"{s:g}", f"{acc:.3f}", f"{fd:.2f}", f"{1000 * sec:.1f}",
                     f"{sec / reference:.2f}"])
        print(rows[-1], flush=True)
    for s in args.scales:
        acc, fd, sec = run(ddpm, classifier_ckpt=args.classifier, classifier_scale=s)
        rows.append(["classifier (eps form)", f"{s:g}", f"{acc:.3f}", f"{fd:.2f}", f"{1000 * sec:.1f}",
                     f"{sec / reference:.2f}"])
        print(rows[-1], flush=True)
    print(f"\n{args.data}: DDIM-{args.steps}, {args.num_samples} samples, labels balanced; accuracy of the "
          f"requested class under {features.name} (did not guide; real held-out images: "
          f"{real_accuracy(features, data):.3f}); Fréchet distance in its features vs "
          f"{len(data.train_dataset)} training images; time relative to the unconditional DDPM at the same "
          f"steps")
    print_table(["guidance", "s", "accuracy", f"fid_{features.name}_n{args.num_samples}", "ms / image",
                 "x unguided"], rows)


def timing(args, cfg, ddpm, K: int, ddim: dict) -> None:
    """Time per image, side by side: unguided and guided sampling of one batch, taken in turn; then
    diffusers."""
    n, s = args.batch, args.time_scale
    labels = torch.arange(n) % K
    draw = lambda model, **o: lambda: model.sample(n, sample_generators(0, 0, n), **ddim, **o)  # noqa: E731
    seconds = interleaved_seconds({
        "unconditional DDPM": draw(ddpm),
        "conditional, s = 1 (one pass)": draw(cfg, labels=labels, guidance_scale=1.0),
        f"classifier-free, s = {s:g}, two passes of B (split: the CPU default)": draw(
            cfg, labels=labels, guidance_scale=s, guidance_batching="split"),
        f"classifier-free, s = {s:g}, one pass of 2B (joint: the CUDA default)": draw(
            cfg, labels=labels, guidance_scale=s, guidance_batching="joint"),
        f"classifier, s = {s:g}": draw(ddpm, labels=labels, classifier_ckpt=args.classifier,
                                       classifier_scale=s),
    }, n, args.time_repeats)
    base = seconds["unconditional DDPM"]
    print(f"\nTime per image, DDIM-{args.steps}, batch {n}, median of {args.time_repeats} interleaved runs "
          "(targets: classifier-free <= 2.2x, classifier <= 3x unguided)")
    print_table(["sampling", "ms / image", "x unguided"],
                [[name, f"{1000 * sec:.1f}", f"{sec / base:.2f}"] for name, sec in seconds.items()])
    side_by_side_with_diffusers(cfg, n, s, args.steps, args.time_repeats)


def side_by_side_with_diffusers(cfg, n: int, s: float, steps: int, repeats: int) -> None:
    """The same conditional net, x_T and timesteps, classifier-free guided DDIM (eta 0) two ways: lit_gen's
    guided output function + DDIMSampler, and diffusers' DDIMScheduler with the guidance loop its pipelines
    write (one 2B pass per step). Prints the largest difference of the images and the time per image of
    each. x0 is not clipped in either: with clipping, diffusers keeps the raw eps for the direction term while
    lit_gen (as ADM) recomputes eps from the clipped x0, a difference of convention, not of guidance."""
    from diffusers import DDIMScheduler

    from lit_gen.diffusion import DDIMSampler, sample_loop
    from lit_gen.process import at_steps
    from lit_gen.sampling.assembly import guided
    from lit_gen.utils import randn

    net, K = cfg.sampling_net, cfg.num_classes
    labels, null = torch.arange(n) % K, torch.full((n,), K)
    scheduler = DDIMScheduler(num_train_timesteps=cfg.diffusion.num_timesteps, beta_schedule="linear",
                              clip_sample=False, set_alpha_to_one=True)
    scheduler.set_timesteps(steps)  # "leading": 980, 960, ..., 0 for 50 of 1000
    x_T = randn((n, *cfg.data_shape), sample_generators(0, 0, n), "cpu")

    def theirs() -> torch.Tensor:
        x = x_T.clone()
        for t in scheduler.timesteps:
            tt = torch.full((n,), int(t))
            eps_c, eps_u = net(torch.cat([x, x]), torch.cat([tt, tt]), torch.cat([labels, null])).chunk(2)
            x = scheduler.step(eps_u + s * (eps_c - eps_u), t, x, eta=0.0).prev_sample
        return x

    def ours(batching: str) -> torch.Tensor:
        sampler = DDIMSampler(cfg.diffusion, clip_denoised=False, eta=0.0)
        sampler.set_timesteps(timesteps=scheduler.timesteps.tolist())
        model = cfg.noise_model(net)
        fn, _ = guided(model, {"guidance_scale": s, "guidance_batching": batching}, labels, None, sampler)
        return sample_loop(at_steps(fn, model.sde), sampler, x_T.clone(), sample_generators(0, 0, n))[0]

    with torch.no_grad():
        diff = (ours("joint") - theirs()).abs().max().item()
        seconds = interleaved_seconds({"diffusers DDIMScheduler + CFG loop (one pass of 2B)": theirs,
                                       "lit_gen, joint (one pass of 2B)": lambda: ours("joint"),
                                       "lit_gen, split (two passes of B)": lambda: ours("split")}, n, repeats)
    base = seconds["diffusers DDIMScheduler + CFG loop (one pass of 2B)"]
    print(f"\nSide by side with diffusers 0.{__import__('diffusers').__version__.split('.')[1]}: CFG s = "
          f"{s:g}, DDIM-{steps} (diffusers' leading timesteps), batch {n}; largest image difference "
          f"{diff:.2e} (images in [-1, 1])")
    print_table(["sampler", "ms / image", "x diffusers"],
                [[name, f"{1000 * sec:.1f}", f"{sec / base:.2f}"] for name, sec in seconds.items()])


if __name__ == "__main__":
    main()
