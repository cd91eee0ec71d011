"""A byte-level BPE (HF ``tokenizers``) trained on a data set's captions, stored in its module's state dict (a
uint8 buffer holding the tokenizer's JSON), so it travels in every checkpoint, export and sharded folder.

Token ids: ``0 .. vocab_size - 1`` for BPE tokens, and ``vocab_size + i`` for padding at position i (DALL-E
pads each position with its own token, Ramesh et al. 2021, App. B.2), so
``num_tokens = vocab_size + max_length``."""

from __future__ import annotations

import warnings
from collections.abc import Iterable

import torch
from torch import nn


class BPETokenizer(nn.Module):
    """Byte-level BPE with lower-casing, trained by :meth:`fit`; :meth:`encode` pads or truncates to
    ``max_length``.

    Args:
        vocab_size: Size of the BPE vocabulary to learn (an upper bound: a small corpus may need fewer).
        max_length: Tokens per caption after padding or truncation.
        truncate: What :meth:`encode` does with a caption longer than ``max_length``: ``warn`` (truncate and
            say so) or ``error`` (a one-line ValueError).
    """

    def __init__(self, vocab_size: int = 512, max_length: int = 16, truncate: str = "warn") -> None:
        super().__init__()
        if vocab_size < 257:
            raise ValueError(f"vocab_size={vocab_size} must be at least 257 (256 bytes and one merge)")
        if max_length < 1:
            raise ValueError(f"max_length={max_length} must be >= 1")
        if truncate not in ("warn", "error"):
            raise ValueError(f"truncate={truncate!r} is not one of ['warn', 'error']")
        self.vocab_size, self.max_length, self.truncate = vocab_size, max_length, truncate
        self.register_buffer("json", torch.zeros(0, dtype=torch.uint8))
        self._tokenizer = None

    @property
    def num_tokens(self) -> int:
        """Ids the embedding must hold: the BPE vocabulary plus one padding id per position."""
        return self.vocab_size + self.max_length

    @property
    def is_fitted(self) -> bool:
        return self.json.numel() > 0

    def fit(self, texts: Iterable[str]) -> BPETokenizer:
        """Learn the merges from ``texts`` (deterministic: every rank learns the same tokenizer)."""
        from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

        tokenizer = Tokenizer(models.BPE())
        tokenizer.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=self.vocab_size,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                      show_progress=False)
        tokenizer.train_from_iterator(list(texts), trainer)
        self._set(tokenizer.to_str())
        return self

    def _set(self, text: str) -> None:
        self.json = torch.tensor(list(text.encode()), dtype=torch.uint8, device=self.json.device)
        self._tokenizer = None

    @property
    def tokenizer(self):
        if not self.is_fitted:
            raise RuntimeError("the tokenizer has not been fitted (BPETokenizer.fit on the training "
                               "captions)")
        if self._tokenizer is None:
            from tokenizers import Tokenizer

            self._tokenizer = Tokenizer.from_str(bytes(self.json.tolist()).decode())
        return self._tokenizer

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        key = prefix + "json"
        if key in state_dict:  # take the stored tokenizer's size, not the empty buffer's
            self.json = self.json.new_empty(state_dict[key].shape)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._tokenizer = None

    def encode(self, texts: list[str]) -> torch.Tensor:
        """(B, max_length) token ids; a caption shorter than ``max_length`` is padded with position-wise ids,
        a longer one truncated (with a warning) or refused, by ``truncate``. An empty caption is refused."""
        ids = torch.empty(len(texts), self.max_length, dtype=torch.long)
        encodings = self.tokenizer.encode_batch(list(texts))
        for row, (text, encoding) in enumerate(zip(texts, encodings, strict=True)):
            if not text.strip():
                raise ValueError("empty caption: a prompt needs at least one non-blank character")
            tokens = encoding.ids
            if len(tokens) > self.max_length:
                kept = self.tokenizer.decode(tokens[: self.max_length])
                message = (f"caption {text!r} is {len(tokens)} tokens long, more than "
                           f"max_length={self.max_length}; it would be cut to {kept!r}")
                if self.truncate == "error":
                    raise ValueError(message)
                warnings.warn(message + " (truncated)", stacklevel=2)
                tokens = tokens[: self.max_length]
            ids[row, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
            ids[row, len(tokens):] = self.vocab_size + torch.arange(len(tokens), self.max_length)
        return ids.to(self.json.device)

    def null(self, batch: int) -> torch.Tensor:
        """(B, max_length) ids of the empty caption (all padding): the null condition of classifier-free
        guidance."""
        return (self.vocab_size + torch.arange(self.max_length, device=self.json.device)).expand(batch,
                                                                                                 -1).clone()

    def decode(self, ids: torch.Tensor) -> list[str]:
        """Captions of (B, L) ids, padding dropped."""
        return [self.tokenizer.decode([i for i in row if i < self.vocab_size]) for row in ids.tolist()]

    def extra_repr(self) -> str:
        return f"vocab_size={self.vocab_size}, max_length={self.max_length}, fitted={self.is_fitted}"
