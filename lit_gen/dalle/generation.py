"""Sampling the next token: temperature, top-k and top-p filtering, one generator per sequence (a candidate
depends only on its own generator, not on the batch it was drawn in)."""

from __future__ import annotations

import math

import numpy as np
import torch

from lit_gen.utils import rand


def top_k_from_threshold(threshold: float, vocab_size: int) -> int:
    """DALLE-pytorch's ``filter_thres`` keeps the top (1 - threshold) fraction of the logits: k = ceil((1 - t)
    V) (its default 0.5 over an 8192-code image vocabulary keeps k = 4096)."""
    return max(1, math.ceil((1 - threshold) * vocab_size))


def filter_logits(logits: torch.Tensor, top_k: int | None = None, top_p: float | None = None) -> torch.Tensor:
    """``logits`` (B, V) with all but the top ``top_k`` set to -inf, then all but the smallest set whose
    probability reaches ``top_p`` (nucleus sampling, Holtzman et al. 2020); the most likely token always
    survives."""
    if top_k is not None and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        # the mass before this token already reaches top_p
        drop = cumulative - sorted_logits.softmax(-1) >= top_p
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return logits


def sample_next(logits: torch.Tensor, generators: list[torch.Generator], temperature: float = 1.0,
                top_k: int | None = None, top_p: float | None = None) -> torch.Tensor:
    """One token per row of ``logits`` (B, V), row i drawn with ``generators[i]`` (Gumbel-max on the filtered,
    tempered logits); temperature 0 takes the argmax."""
    logits = filter_logits(logits.float(), top_k, top_p)
    if temperature == 0:
        return logits.argmax(-1)
    u = rand(logits.shape, generators, logits.device).clamp(1e-12, 1 - 1e-7)
    return (logits / temperature - torch.log(-torch.log(u))).argmax(-1)


def candidate_generators(generator: torch.Generator, count: int,
                         device: torch.device | str = "cpu") -> list[torch.Generator]:
    """``count`` generators for the candidates of one prompt, candidate j seeded from (the prompt's seed,
    j)."""
    seed = generator.initial_seed()
    return [torch.Generator(device=device).manual_seed(int(np.random.SeedSequence([seed, j]).generate_state(
        1, dtype=np.uint64)[0] >> 1)) for j in range(count)]
