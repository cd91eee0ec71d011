"""DALL-E's generation (plain torch): the token loop over a transformer with a KV cache and classifier-free
guidance on the text; sampling the next token with temperature, top-k and top-p filtering, one generator per
sequence (a candidate depends only on its own generator, not on the batch it was drawn in); and keeping the
best candidates of each prompt by a reranker's scores."""

from __future__ import annotations

import math

import numpy as np
import torch
from tqdm.auto import tqdm

from lit_gen.nets.transformer import KVCache
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


@torch.no_grad()
def generate_codes(net, tokenizer, num_codes: int, text: torch.Tensor, generators: list[torch.Generator],
                   temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                   guidance_scale: float = 1.0, prefix: torch.Tensor | None = None, use_cache: bool = True,
                   progress: bool = False) -> torch.Tensor:
    """Image codes (B, N = ``num_codes``) for captions (B, T) from the transformer ``net`` over [bos, text,
    image codes], token by token; row i draws with ``generators[i]``; ``prefix`` (B, n) codes start every
    row."""
    B, T, N = text.shape[0], tokenizer.max_length, num_codes
    guided = guidance_scale != 1.0
    V_text = tokenizer.num_tokens
    ids = torch.cat([text.new_zeros(B, 1), text], 1)  # [bos, text]
    if guided:  # the null caption's rows follow
        ids = torch.cat([ids, torch.cat([text.new_zeros(B, 1), tokenizer.null(B)], 1)])
    codes = text.new_zeros(B, N)
    cache = KVCache() if use_cache else None
    logits = net.forward_positions(ids, 0, cache)[:, -1, V_text:]  # (B or 2B, K)
    for j in tqdm(range(N), desc="tokens", unit="tok", leave=False, disable=not progress):
        if prefix is not None and j < prefix.shape[1]:
            token = prefix[:, j]
        else:
            cond = logits[:B].float()
            if guided:  # classifier-free guidance on the text (Ho & Salimans 2022, in logit space)
                cond = logits[B:].float() + guidance_scale * (cond - logits[B:].float())
            token = sample_next(cond, generators, temperature, top_k, top_p)
        codes[:, j] = token
        if j == N - 1:
            break
        step = token.repeat(2) if guided else token
        if use_cache:
            logits = net.forward_positions(step[:, None], T + 1 + j, cache)[:, -1, V_text:]
        else:
            ids = torch.cat([ids, step[:, None]], 1)
            logits = net.forward_positions(ids)[:, -1, V_text:]
    return codes


def best_candidates(scores: torch.Tensor, keep: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``keep`` best of each prompt's candidates by ``scores`` (P, n), candidates prompt-major: their rows
    in the (P n) candidates, best first within each prompt, and their scores (P keep,)."""
    P, n = scores.shape
    best = scores.topk(keep, dim=1).indices  # (P, keep), best first
    rows = (best + torch.arange(P, device=best.device)[:, None] * n).flatten()
    return rows, scores.gather(1, best).flatten()
