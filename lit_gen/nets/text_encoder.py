"""Text conditioning of a denoiser: a transformer over a caption's BPE ids whose per-token states the denoiser
cross-attends to (Rombach et al. 2022, Sec. 3.3), trained with the model or taken frozen from a lit_gen CLIP,
and the wrapper that makes ``denoiser(x, t, context=...)`` a net of the noise-process methods, ``net(x, t,
y)``
with y the caption's ids."""

from __future__ import annotations

import torch
from torch import nn

from lit_gen.nets.transformer import _Block


class TextEncoder(nn.Module):
    """Per-token states (B, L, dim) of captions (B, L) of token ids: a bidirectional transformer whose padding
    positions (ids >= ``pad_from``) are masked as keys (each still sees itself, so the all-padding null
    caption has states too). Its layers are named as CLIP's text tower's, whose weights it takes
    (:func:`clip_text_weights`).

    Args:
        num_tokens: ids the embedding holds (the tokenizer's ``num_tokens``, padding ids included).
        max_length: L, tokens per caption.
        pad_from: ids >= this are padding (the tokenizer's ``vocab_size``).
        dim: width of the states.
        depth: transformer layers.
        heads: attention heads.
    """

    def __init__(self, num_tokens: int, max_length: int, pad_from: int, dim: int = 128, depth: int = 2,
                 heads: int = 4) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"text encoder dim={dim} is not divisible by heads={heads}")
        self.pad_from, self.dim = pad_from, dim
        self.token_emb, self.pos_emb = nn.Embedding(num_tokens, dim), nn.Embedding(max_length, dim)
        self.blocks = nn.ModuleList(_Block(dim, heads, 0.0) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        keep = ids < self.pad_from  # (B, L)
        h = self.token_emb(ids) + self.pos_emb(torch.arange(ids.shape[1], device=ids.device))
        eye = torch.eye(ids.shape[1], dtype=torch.bool, device=ids.device)
        mask = keep[:, None, None, :] | eye  # (B, 1, L, L)
        for block in self.blocks:
            h = block(h, mask)
        return self.norm(h)


def clip_text_weights(clip_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A :class:`TextEncoder`'s weights from the state dict of a lit_gen ``CLIPNet`` (its text tower: token
    and position embeddings, blocks, final norm; the pooling projection is CLIP's own)."""
    renamed = {"token_emb.": "token_emb.", "pos_emb.": "pos_emb.", "text_blocks.": "blocks.",
               "text_norm.": "norm."}
    out = {}
    for key, value in clip_state.items():
        for old, new in renamed.items():
            if key.startswith(old):
                out[new + key[len(old):]] = value
    return out


class TextConditionedNet(nn.Module):
    """A denoiser that cross-attends to a text encoder's states: ``forward(x, t, y)`` with y (B, L) the
    captions' token ids (None: the null caption, ``null_ids``), as the noise-process methods call their nets
    (classifier-free guidance swaps y for the null caption's ids).

    Args:
        denoiser: ``denoiser(x, t, None, context=states)`` (lit_gen's UNet or DiT built with ``context_dim``).
        encoder: the :class:`TextEncoder`.
        null_ids: (L,) ids of the empty caption.
        frozen: keep the encoder's weights fixed (a CLIP's text tower).
    """

    def __init__(self, denoiser: nn.Module, encoder: TextEncoder, null_ids: torch.Tensor,
                 frozen: bool = False) -> None:
        super().__init__()
        self.denoiser, self.text = denoiser, encoder.requires_grad_(not frozen)
        self.register_buffer("null_ids", null_ids.clone(), persistent=False)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        ids = self.null_ids.expand(x.shape[0], -1) if y is None else y
        return self.denoiser(x, t, None, context=self.text(ids))

    def fsdp_units(self) -> list[nn.Module]:
        """The denoiser's units and the text encoder."""
        units = self.denoiser.fsdp_units() if hasattr(self.denoiser, "fsdp_units") else []
        return [*units, self.text]
