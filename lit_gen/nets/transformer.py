"""DALL-E's decoder-only transformer over [text; image] tokens (Ramesh et al. 2021, Sec. 2.2, App. B.1),
scaled down, with the paper's attention patterns as boolean masks for ``scaled_dot_product_attention`` (no
special install) and a KV cache that every pattern supports.

The input sequence is ``[bos, t_1 .. t_T, i_0 .. i_{N-2}]`` (S = T + N positions); position p predicts target
p of ``[t_1 .. t_T, i_0 .. i_{N-1}]``. Text and image tokens have their own embeddings; text positions are
1-D, image positions a row plus a column embedding of an h x w grid."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

MaskKind = Literal["full", "row", "column", "conv"]
MASK_KINDS = ("full", "row", "column", "conv")


def attention_mask(kind: str, text_len: int, grid: tuple[int, int], kernel: int = 3) -> torch.Tensor:
    """(S, S) booleans, True where query position q may attend to key position k; S = text_len + h * w.

    Every position attends to itself; text positions (the first ``text_len + 1``, bos included) attend
    causally to text; the query at position p >= text_len predicts image token j = p - text_len at (row_j,
    col_j) and attends to all text and, among the image tokens b < j already given, to:

    - ``full``: all of them;
    - ``row``: the previous w (a row's width: the strided "row" pattern of Child et al. 2019, which holds the
      token above j and those to its left);
    - ``column``: those in j's column, and the previous token;
    - ``conv``: those within ``kernel // 2`` rows above and ``kernel // 2`` columns either side of j (a causal
      k x k window), and the previous token.
    """
    if kind not in MASK_KINDS:
        raise ValueError(f"attention pattern {kind!r} is not one of {list(MASK_KINDS)}")
    h, w = grid
    size = text_len + h * w
    q = torch.arange(size)[:, None]
    k = torch.arange(size)[None, :]
    j, b = q - text_len, k - text_len - 1  # image token predicted by q; image token input at k
    image_key = b >= 0
    if kind == "full":
        pattern = torch.ones(size, size, dtype=torch.bool)
    elif kind == "row":
        pattern = j - b <= w
    elif kind == "column":
        pattern = (b % w == j % w) | (b == j - 1)
    else:
        r = kernel // 2
        pattern = ((j // w - b // w) <= r) & ((b % w - j % w).abs() <= r) | (b == j - 1)
    return (k <= q) & (~image_key | (j >= 0) & pattern)


@dataclass
class KVCache:
    """Keys and values of the positions seen so far, one (B, heads, S_seen, head_dim) pair per layer."""

    keys: list[torch.Tensor] = field(default_factory=list)
    values: list[torch.Tensor] = field(default_factory=list)

    @property
    def length(self) -> int:
        return self.keys[0].shape[2] if self.keys else 0

    def select(self, index: torch.Tensor) -> KVCache:
        """The cache of the batch rows ``index`` (e.g. repeated for candidates)."""
        return KVCache([k[index] for k in self.keys], [v[index] for v in self.values])


class _Block(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim),
                                 nn.Dropout(dropout))

    def forward(self, h: torch.Tensor, mask: torch.Tensor, cache: KVCache | None = None, layer: int = 0):
        B, L, D = h.shape  # L new positions; mask (L, S_seen + L)
        q, k, v = self.qkv(self.norm1(h)).view(B, L, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        if cache is not None:
            if len(cache.keys) > layer:
                k = torch.cat([cache.keys[layer], k], dim=2)
                v = torch.cat([cache.values[layer], v], dim=2)
                cache.keys[layer], cache.values[layer] = k, v
            else:
                cache.keys.append(k)
                cache.values.append(v)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                           dropout_p=self.dropout if self.training else 0.0)
        h = h + self.proj(a.transpose(1, 2).reshape(B, L, D))
        return h + self.mlp(self.norm2(h))


class DALLETransformer(nn.Module):
    """Logits over text tokens and image codes for [text; image] sequences.

    Args:
        num_text_tokens: Text ids (the tokenizer's ``num_tokens``, padding ids included).
        text_len: T, text tokens per caption.
        num_image_tokens: K, the dVAE's codebook size.
        grid: (h, w) of the dVAE's code grid (N = h * w image tokens).
        dim: Width of the residual stream.
        depth: Transformer layers.
        heads: Attention heads (``dim`` divisible by it).
        attention: Attention pattern of each layer, cycled over the layers (``full``, ``row``, ``column``,
            ``conv``; the paper cycles row, column, row, row and ends in conv: see ``final_conv``).
        final_conv: Make the last layer ``conv``, as in the paper.
        conv_kernel: Window of the ``conv`` pattern.
        dropout: Dropout in attention and the MLPs.
        gradient_checkpointing: Recompute each layer's activations in backward during training.
    """

    def __init__(self, num_text_tokens: int, text_len: int, num_image_tokens: int, grid: tuple[int, int],
                 dim: int = 256, depth: int = 4, heads: int = 4, attention: list[MaskKind] | None = None,
                 final_conv: bool = False, conv_kernel: int = 3, dropout: float = 0.0,
                 gradient_checkpointing: bool = False) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim={dim} is not divisible by heads={heads}")
        kinds = list(attention or ["full"])
        for kind in kinds:
            if kind not in MASK_KINDS:
                raise ValueError(f"attention pattern {kind!r} is not one of {list(MASK_KINDS)}")
        self.layer_kinds = [kinds[i % len(kinds)] for i in range(depth)]
        if final_conv:
            self.layer_kinds[-1] = "conv"
        self.num_text_tokens, self.text_len = num_text_tokens, text_len
        self.num_image_tokens = num_image_tokens
        self.grid = tuple(grid)
        self.seq_len = text_len + grid[0] * grid[1]
        self.gradient_checkpointing = gradient_checkpointing
        self.bos = nn.Parameter(torch.zeros(dim))
        self.text_emb, self.text_pos = nn.Embedding(num_text_tokens, dim), nn.Embedding(text_len + 1, dim)
        self.image_emb = nn.Embedding(num_image_tokens, dim)
        self.row_emb, self.col_emb = nn.Embedding(grid[0], dim), nn.Embedding(grid[1], dim)
        self.blocks = nn.ModuleList(_Block(dim, heads, dropout) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        # one logit space: text, then image codes
        self.head = nn.Linear(dim, num_text_tokens + num_image_tokens)
        # in first-use order: a set's order follows PYTHONHASHSEED, which differs between processes, and DDP
        # copies buffers from rank 0 by position (same-shaped masks would land under another name on the other
        # ranks)
        for kind in dict.fromkeys(self.layer_kinds):
            self.register_buffer(f"mask_{kind}", attention_mask(kind, text_len, self.grid, conv_kernel),
                                 persistent=False)
        nn.init.normal_(self.bos, std=0.02)

    # generation's entry point besides forward: FSDP gathers weights for it
    fsdp_methods = ("forward_positions",)

    def fsdp_units(self) -> list[nn.Module]:
        return list(self.blocks)

    def embed(self, ids: torch.Tensor, start: int) -> torch.Tensor:
        """Embeddings (B, L, dim) of input ids (B, L) at sequence positions start .. start + L - 1 (text ids
        at positions 1..T, image codes after; the id at position 0 is ignored: bos)."""
        pos = torch.arange(start, start + ids.shape[1], device=ids.device)
        text = self.text_emb(ids.clamp(max=self.num_text_tokens - 1))
        text = text + self.text_pos(pos.clamp(max=self.text_len))
        b = (pos - self.text_len - 1).clamp(min=0)
        image = (self.image_emb(ids.clamp(max=self.num_image_tokens - 1)) + self.row_emb(b // self.grid[1])
                 + self.col_emb(b % self.grid[1]))
        out = torch.where((pos <= self.text_len)[None, :, None], text, image)
        return torch.where((pos == 0)[None, :, None], self.bos.to(out.dtype), out)

    def forward_positions(self, ids: torch.Tensor, start: int = 0,
                          cache: KVCache | None = None) -> torch.Tensor:
        """Logits (B, L, V_text + K) at positions start .. start + L - 1 given the ids there; with ``cache``,
        the keys and values of positions < start come from it (and these positions' are added)."""
        return self._positions(ids, start, cache)

    def _positions(self, ids: torch.Tensor, start: int = 0, cache: KVCache | None = None) -> torch.Tensor:
        # forward's and forward_positions' body: each entry point (gathering FSDP weights) calls it, not the
        # other
        return self.transform(self.embed(ids, start), start, cache)

    def transform(self, h: torch.Tensor, start: int = 0, cache: KVCache | None = None) -> torch.Tensor:
        """Logits (B, L, V_text + K) of input embeddings ``h`` (B, L, dim) at positions start .. start + L -
        1."""
        if cache is not None and cache.length != start:
            raise ValueError(f"the cache holds {cache.length} positions, but the input starts at {start}")
        end = start + h.shape[1]
        use_ckpt = self.gradient_checkpointing and self.training and torch.is_grad_enabled() and cache is None
        for layer, (block, kind) in enumerate(zip(self.blocks, self.layer_kinds, strict=True)):
            mask = getattr(self, f"mask_{kind}")[start:end, :end]
            if use_ckpt:
                h = checkpoint(block, h, mask, use_reentrant=False)
            else:
                h = block(h, mask, cache, layer)
        return self.head(self.norm(h))

    def input_ids(self, text: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """[bos, text, image[:, :-1]] as one (B, S) id tensor (0 stands for bos)."""
        return torch.cat([text.new_zeros(text.shape[0], 1), text, image[:, :-1]], dim=1)

    def forward(self, text: torch.Tensor, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(text logits (B, T, V_text), image logits (B, N, K)) for text (B, T) and image codes (B, N)."""
        logits = self._positions(self.input_ids(text, image))
        T = self.text_len
        return logits[:, :T, : self.num_text_tokens], logits[:, T:, self.num_text_tokens :]
