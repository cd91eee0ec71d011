"""The discrete VAE's latent: a categorical over K codes per grid position, relaxed with Gumbel-softmax, its
KL to the uniform prior, the annealing schedules of DALL-E (Ramesh et al. 2021, Sec. 2.1 and App. A.2), and
codebook usage."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from lit_gen.utils import Generator, rand


def gumbel_softmax(logits: torch.Tensor, tau: float, generator: Generator = None,
                   dim: int = 1) -> torch.Tensor:
    """A relaxed one-hot sample softmax((logits + g) / tau), g ~ Gumbel(0, 1) (Jang et al. 2017, Eq. 1;
    Maddison et al. 2017). As tau -> 0 it tends to the one-hot of argmax(logits + g), a sample of
    softmax(logits)."""
    u = rand(logits.shape, generator, logits.device, torch.float32).clamp(1e-12, 1 - 1e-7)
    g = -torch.log(-torch.log(u)).to(logits.dtype)
    return F.softmax((logits + g) / tau, dim=dim)


def categorical_sample(logits: torch.Tensor, generator: Generator = None, dim: int = 1) -> torch.Tensor:
    """Code indices drawn from softmax(logits) along ``dim`` by the Gumbel-max trick (``dim`` removed)."""
    u = rand(logits.shape, generator, logits.device, torch.float32).clamp(1e-12, 1 - 1e-7)
    return (logits.float() - torch.log(-torch.log(u))).argmax(dim)


def kl_to_uniform(logits: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """KL(q || uniform over K) = sum_k q_k log q_k + log K = log K - H(q), per position (``dim`` removed)."""
    log_q = F.log_softmax(logits.float(), dim=dim)
    return (log_q.exp() * log_q).sum(dim) + math.log(logits.shape[dim])


def marginal_kl_to_uniform(logits: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """KL(q_bar || uniform) = log K - H(q_bar) of the code distribution q_bar averaged over a batch and its
    grid positions: zero only when the batch uses every code equally (a penalty against codebook collapse,
    which the per-position KL cannot see: each position may be certain while all choose the same few
    codes)."""
    q_bar = F.softmax(logits.float(), dim=dim).movedim(dim, -1).reshape(-1, logits.shape[dim]).mean(0)
    return math.log(logits.shape[dim]) + (q_bar * torch.log(q_bar.clamp(min=1e-12))).sum()


def exponential_anneal(step: int, start: float, end: float, steps: int) -> float:
    """``start`` decayed geometrically to ``end`` over ``steps`` steps, then held (the paper's temperature
    goes from 1 to 1/16 in the first 150,000 updates)."""
    if steps <= 0:
        return end
    return start * (end / start) ** min(step / steps, 1.0)


def linear_ramp(step: int, end: float, steps: int, start: float = 0.0) -> float:
    """``start`` increased linearly to ``end`` over ``steps`` steps, then held (the paper's KL weight goes
    from 0 to 6.6 in the first 5,000 updates)."""
    if steps <= 0:
        return end
    return start + (end - start) * min(step / steps, 1.0)


def codebook_usage(counts: torch.Tensor) -> tuple[float, int]:
    """(perplexity, dead codes) of code counts (K,): exp of the entropy of the empirical code distribution (K
    when every code is used equally, 1 when one code is used), and how many codes were never chosen."""
    total = counts.sum()
    if total == 0:
        return 0.0, int(counts.numel())
    p = counts.double() / total
    entropy = -(p[p > 0] * p[p > 0].log()).sum()
    return float(entropy.exp()), int((counts == 0).sum())
