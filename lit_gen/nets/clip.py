"""A small CLIP (Radford et al. 2021): a transformer text encoder and a conv image encoder projected to one
embedding space, with a learnable temperature."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from lit_gen.nets.transformer import _Block

MAX_LOGIT_SCALE = math.log(100.0)  # CLIP clamps the learned logit scale at 100 (Sec. 2.5)


class CLIPNet(nn.Module):
    """Unit-norm embeddings of captions (B, T) of token ids and images (B, C, H, W), and the scaled cosine
    similarities between them.

    Args:
        data_shape: (C, H, W) of the images.
        num_text_tokens: Text ids (the tokenizer's ``num_tokens``).
        text_len: T, tokens per caption.
        pad_from: Ids >= this are padding (the tokenizer's ``vocab_size``); the text encoder ignores them.
        dim: Width of the text transformer.
        depth: Text transformer layers.
        heads: Attention heads.
        channels: Width of the image encoder (doubled at each of its stride-2 stages).
        stages: Stride-2 stages of the image encoder.
        embed_dim: Size of the joint embedding.
    """

    def __init__(self, data_shape: tuple[int, ...], num_text_tokens: int, text_len: int, pad_from: int,
                 dim: int = 128,
                 depth: int = 2, heads: int = 4, channels: int = 32, stages: int = 3,
                 embed_dim: int = 64) -> None:
        super().__init__()
        self.pad_from = pad_from
        self.token_emb, self.pos_emb = nn.Embedding(num_text_tokens, dim), nn.Embedding(text_len, dim)
        self.text_blocks = nn.ModuleList(_Block(dim, heads, 0.0) for _ in range(depth))
        self.text_norm, self.text_proj = nn.LayerNorm(dim), nn.Linear(dim, embed_dim)
        layers: list[nn.Module] = [nn.Conv2d(data_shape[0], channels, 3, padding=1), nn.GELU()]
        width = channels
        for _ in range(stages):
            layers += [nn.Conv2d(width, 2 * width, 3, 2, 1), nn.GroupNorm(8, 2 * width), nn.GELU(),
                       nn.Conv2d(2 * width, 2 * width, 3, padding=1), nn.GroupNorm(8, 2 * width), nn.GELU()]
            width *= 2
        self.image_encoder = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                           nn.Linear(width, embed_dim))
        # shape (1,), not (): DeepSpeed ZeRO-3 cannot partition a 0-dim parameter
        self.log_logit_scale = nn.Parameter(torch.full((1,), math.log(1 / 0.07)))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        key = prefix + "log_logit_scale"
        if key in state_dict and state_dict[key].dim() == 0:  # older checkpoints: a 0-dim scale
            state_dict[key] = state_dict[key].view(1)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # reranking's entry points: FSDP gathers the weights for them
    fsdp_methods = ("encode_text", "encode_image")

    def encode_text(self, ids: torch.Tensor) -> torch.Tensor:
        """(B, E) unit vectors of captions (B, T): the mean of the non-padding tokens' final states."""
        return self._text(ids)

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        """(B, E) unit vectors of images (B, C, H, W)."""
        return self._image(x)

    # the bodies of the entry points (forward calls these, not the entry points: one FSDP gather per call)
    def _text(self, ids: torch.Tensor) -> torch.Tensor:
        keep = ids < self.pad_from  # (B, T)
        h = self.token_emb(ids) + self.pos_emb(torch.arange(ids.shape[1], device=ids.device))
        # (B, 1, T, T)
        mask = keep[:, None, None, :] | torch.eye(ids.shape[1], dtype=torch.bool, device=ids.device)
        for block in self.text_blocks:
            h = block(h, mask)
        h = self.text_norm(h)
        pooled = (h * keep[..., None]).sum(1) / keep.sum(1, keepdim=True).clamp(min=1)
        return F.normalize(self.text_proj(pooled), dim=-1)

    def _image(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.image_encoder(x), dim=-1)

    def forward(self, x: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits (B_images, B_texts): scaled cosine similarity of every image with every caption; and the
        scale (returned here, where ZeRO-3 and FSDP have gathered it)."""
        scale = self.log_logit_scale.clamp(max=MAX_LOGIT_SCALE).exp()  # (1,)
        return scale * self._image(x) @ self._text(ids).T, scale.detach().squeeze(0)
