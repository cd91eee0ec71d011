"""DALL-E on the embedded shapes, measured by held-out evaluators: an attribute classifier (kind, colour,
size, position; trained here on fresh renderings, never seen by the models) reads each generated image, and
its attributes are compared with the prompt's. For P prompts drawn from the captions' grammar, N candidates
each:

- a random pick (candidate 0) and the CLIP-reranked best of N: accuracy of each attribute and of all four, and
  the mean CLIP score;
- the KV cache: seconds per image with and without it (interleaved), and whether the codes are identical;
- optionally dalle-pytorch (a bench extra, installed with --no-deps: see ``import_dalle_pytorch``) trained
  here on the same dVAE codes, captions, steps, width, depth, heads, batch and optimizer, sampled with the
  same top-k and reranked by the same CLIP.

    python -m benchmarks.dalle_shapes --dalle runs/dalle_transformer_shapes/checkpoints/last.ckpt \\
        --clip runs/dalle_clip_shapes/checkpoints/last.ckpt [--dalle_pytorch_steps 2000]
"""

from __future__ import annotations

import argparse
import sys
import time
import types
from dataclasses import fields
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.common import print_table
from lit_gen.checkpoints import load_module
from lit_gen.dalle.generation import candidate_generators
from lit_gen.data.shapes import COLOURS, POSITIONS, SHAPE_KINDS, SIZES, ShapeParams, render_shapes
from lit_gen.optim import WarmupCosineLR
from lit_gen.utils import sample_generators

ATTRIBUTES = {"kind": len(SHAPE_KINDS), "colour": len(COLOURS), "size": len(SIZES),
              "position": len(POSITIONS)}


# --- the held-out evaluator ---------------------------------------------------------------------------------
class AttributeNet(nn.Module):
    """A small CNN with one head per attribute."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(64 * 8 * 8, 256), nn.ReLU())
        self.heads = nn.ModuleDict({name: nn.Linear(256, k) for name, k in ATTRIBUTES.items()})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.body(x)
        return {name: head(h) for name, head in self.heads.items()}


def render(params: ShapeParams) -> torch.Tensor:
    """Images in [-1, 1], quantised to 8 bits as the data set stores them."""
    return (render_shapes(params, 32) * 255).round() / 127.5 - 1


def targets(params: ShapeParams) -> dict[str, torch.Tensor]:
    return {"kind": params.kind, "colour": params.colour, "size": params.size, "position": params.position}


def train_attribute_net(path: Path, steps: int = 1500, seed: int = 99) -> AttributeNet:
    """Train (or load from ``path``) the evaluator on renderings from a seed the data sets never use."""
    net = AttributeNet()
    if path.is_file():
        net.load_state_dict(torch.load(path, weights_only=True))
        return net.eval()
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    torch.set_grad_enabled(True)
    for step in range(steps):
        params = ShapeParams.sample(128, g)
        out = net(render(params))
        loss = sum(F.cross_entropy(out[k], t) for k, t in targets(params).items())
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 500 == 0:
            print(f"evaluator step {step}: loss {loss.item():.3f}", file=sys.stderr)
    torch.set_grad_enabled(False)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), path)
    return net.eval()


@torch.no_grad()
def attribute_hits(net: AttributeNet, x: torch.Tensor, params: ShapeParams) -> dict[str, torch.Tensor]:
    """Per image, whether each attribute (and all four) reads as the prompt's."""
    out = net(x.clamp(-1, 1))
    hits = {k: out[k].argmax(-1) == t for k, t in targets(params).items()}
    hits["all four"] = torch.stack(list(hits.values())).all(0)
    return hits


# --- dalle-pytorch ------------------------------------------------------------------------------------------
def import_dalle_pytorch():
    """``dalle_pytorch`` 1.6.6 without the heavy imports it makes at import time (taming-transformers,
    OmegaConf and pkg_resources, for VAEs and a version lookup the benchmark does not use). Install it with::

        pip install --no-deps dalle-pytorch==1.6.6 einops axial-positional-embedding rotary-embedding-torch
    """
    for name in ("taming", "taming.models", "taming.models.vqgan", "omegaconf", "pkg_resources"):
        sys.modules.setdefault(name, types.ModuleType(name))
    sys.modules["taming.models.vqgan"].VQModel = sys.modules["taming.models.vqgan"].GumbelVQ = object
    sys.modules["omegaconf"].OmegaConf = object
    sys.modules["pkg_resources"].get_distribution = lambda name: None
    import dalle_pytorch

    return dalle_pytorch


def dalle_pytorch_model(dp, lit, dim: int, depth: int, heads: int):
    """dalle-pytorch's DALLE on lit_gen's dVAE: its DiscreteVAE subclassed to hand out lit_gen's codes and
    decodings, so both transformers model the same tokens."""
    codec = lit.dvae

    class Codes(dp.DiscreteVAE):
        def get_codebook_indices(self, images):
            return codec.encode(images * 2 - 1).flatten(1)  # dalle-pytorch passes images in [0, 1]

        def decode(self, img_seq):
            return (codec.decode(img_seq.view(-1, *codec.grid)) + 1) / 2

    vae = Codes(image_size=32, num_tokens=codec.num_codes, codebook_dim=16, num_layers=2, hidden_dim=8)
    vae.requires_grad_(False)
    model = dp.DALLE(dim=dim, vae=vae, num_text_tokens=lit.tokenizer.vocab_size + 1,
                     text_seq_len=lit.tokenizer.max_length,
                     depth=depth, heads=heads, dim_head=dim // heads, loss_img_weight=7)
    return model


def dp_text(lit, captions: list[str]) -> torch.Tensor:
    """lit_gen's BPE ids shifted by one, with 0 for padding (dalle-pytorch's convention)."""
    ids = lit.tokenizer.encode(captions)
    return torch.where(ids < lit.tokenizer.vocab_size, ids + 1, torch.zeros_like(ids))


def train_dalle_pytorch(dp, lit, steps: int, batch: int, lr: float, path: Path):
    h = lit.hparams
    model = dalle_pytorch_model(dp, lit, h.dim, h.depth, h.heads)
    if path.is_file():
        model.load_state_dict(torch.load(path, weights_only=True))
        return model.eval()
    from lit_gen.data import ShapesDataModule

    data = ShapesDataModule(image_size=32, batch_size=batch)
    data.setup()
    loader = torch.utils.data.DataLoader(data.train_dataset, batch_size=batch, shuffle=True, drop_last=True,
                                         generator=torch.Generator().manual_seed(0))
    # lit_gen's transformer_shapes.yaml optimizer and schedule, so the two differ only in their models
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, betas=(0.9, 0.96),
                            weight_decay=0.01)
    schedule = WarmupCosineLR(opt, warmup_steps=160, total_steps=steps, min_lr_ratio=0.1)
    step, start = 0, time.perf_counter()
    while step < steps:
        for item in loader:
            codes = lit.token_cache(lit.dvae, item["x"])
            loss = model(dp_text(lit, item["caption"]), codes, return_loss=True)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            schedule.step()
            step += 1
            if step % 500 == 0:
                print(f"dalle-pytorch step {step}: loss {loss.item():.3f} "
                      f"({time.perf_counter() - start:.0f} s)",
                      file=sys.stderr)
            if step >= steps:
                break
    seconds = time.perf_counter() - start
    print(f"dalle-pytorch training: {steps} steps in {seconds:.0f} s ({seconds / steps:.3f} s/step), last "
          f"loss {loss.item():.3f}")
    torch.save(model.state_dict(), path)
    return model.eval()


# --- the measurement ----------------------------------------------------------------------------------------
def evaluate(name: str, draw, clip, evaluator, params: ShapeParams, captions: list[str], n: int,
             batch: int) -> list:
    """Rows for ``draw(captions, start) -> (len * n) images`` (prompt-major): every candidate (the model's own
    accuracy, over P * n images), a random pick (candidate 0) and the reranked best."""
    alls, picks, bests, clip_all, clip_best, seconds = [], [], [], [], [], 0.0
    for s in range(0, len(captions), batch):
        chunk = captions[s : s + batch]
        t0 = time.perf_counter()
        x = draw(chunk, s)  # (len(chunk) * n, C, H, W)
        seconds += time.perf_counter() - t0
        scores = clip.score(x, [c for c in chunk for _ in range(n)]).view(len(chunk), n)
        best = scores.argmax(1)
        alls.append(x)
        x = x.view(len(chunk), n, *x.shape[1:])
        picks.append(x[:, 0])
        bests.append(x[torch.arange(len(chunk)), best])
        clip_all.append(scores)
        clip_best.append(scores.max(1).values)
    every = ShapeParams(**{f.name: getattr(params, f.name).repeat_interleave(n, 0) for f in fields(params)})
    rows = []
    for label, images, clip_scores, truth in (
            (f"all {n} candidates", alls, clip_all, every),
            ("random pick", picks, [c[:, 0] for c in clip_all], params),
            (f"best of {n} by CLIP", bests, clip_best, params)):
        hits = attribute_hits(evaluator, torch.cat(images), truth)
        rows.append([name, label, *(f"{hits[k].float().mean():.3f}" for k in [*ATTRIBUTES, "all four"]),
                     f"{torch.cat([c.flatten() for c in clip_scores]).mean():.3f}",
                     f"{seconds / (len(captions) * n):.4f}"])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dalle", required=True, help="a DALLE checkpoint trained on shapes")
    parser.add_argument("--clip", required=True, help="a CLIP checkpoint trained on shapes")
    parser.add_argument("--prompts", type=int, default=100)
    parser.add_argument("--candidates", type=int, default=32)
    parser.add_argument("--batch", type=int, default=4, help="prompts per generation call")
    parser.add_argument("--top_k", type=int, default=None, help="top-k of both models (default: all codes)")
    parser.add_argument("--evaluator", default="runs/bench/shapes_attributes.pt")
    parser.add_argument("--dalle_pytorch_steps", type=int, default=0, help="train dalle-pytorch this long "
                                                                           "(0: skip)")
    parser.add_argument("--dalle_pytorch_path", default="runs/bench/dalle_pytorch_shapes.pt")
    parser.add_argument("--cache_prompts", type=int, default=32, help="prompts of the KV-cache timing")
    args = parser.parse_args()
    torch.set_grad_enabled(False)

    evaluator = train_attribute_net(Path(args.evaluator))
    held_out = ShapeParams.sample(2000, torch.Generator().manual_seed(4242))
    hits = attribute_hits(evaluator, render(held_out), held_out)
    scores = ", ".join(f"{k} {v.float().mean():.3f}" for k, v in hits.items())
    print(f"evaluator on fresh renderings: {scores}")

    lit, clip = load_module(args.dalle), load_module(args.clip)
    params = ShapeParams.sample(args.prompts, torch.Generator().manual_seed(2024))
    captions = params.captions()
    n = args.candidates

    def lit_draw(chunk, start):
        return lit.sample(len(chunk), sample_generators(0, start, len(chunk)), captions=chunk,
                          num_candidates=n,
                          top_k=args.top_k).x

    rows = evaluate("lit_gen", lit_draw, clip, evaluator, params, captions, n, args.batch)

    if args.dalle_pytorch_steps:
        dp = import_dalle_pytorch()
        torch.set_grad_enabled(True)
        model = train_dalle_pytorch(dp, lit, args.dalle_pytorch_steps, 64, 5e-4,
                                    Path(args.dalle_pytorch_path))
        torch.set_grad_enabled(False)
        thres = 0.0 if args.top_k is None else 1 - args.top_k / lit.dvae.num_codes

        def dp_draw(chunk, start):
            torch.manual_seed(start)  # dalle-pytorch draws from the global RNG
            text = dp_text(lit, chunk).repeat_interleave(n, 0)
            return model.generate_images(text, filter_thres=thres, use_cache=True) * 2 - 1

        rows += evaluate("dalle-pytorch 1.6.6", dp_draw, clip, evaluator, params, captions, n, args.batch)
    print_table(["model", "pick", *ATTRIBUTES, "all four", "CLIP score", "s / image"], rows)

    # the KV cache: the same codes, and the time per image with and without it (interleaved, 3 rounds)
    text = lit.tokenizer.encode(captions[: args.cache_prompts])
    times = {True: [], False: []}
    codes = {}
    for _ in range(3):
        for use_cache in (True, False):
            gens = [g for gen in sample_generators(0, 0, len(text)) for g in candidate_generators(gen, 1)]
            t0 = time.perf_counter()
            codes[use_cache] = lit.generate(text, gens, use_cache=use_cache)
            times[use_cache].append((time.perf_counter() - t0) / len(text))
    cached, plain = sorted(times[True])[1], sorted(times[False])[1]
    print_table(["generation", "s / image (median of 3)", "speed-up", "same codes"],
                [["KV cache", f"{cached:.4f}", f"{plain / cached:.2f}x",
                  str(bool(codes[True].equal(codes[False])))],
                 ["recompute", f"{plain:.4f}", "1.00x", ""]])


if __name__ == "__main__":
    main()
