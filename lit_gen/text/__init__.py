"""Text tokenizers, kept inside checkpoints (as module state), so sampling needs no extra file."""

from lit_gen.text.bpe import BPETokenizer

__all__ = ["BPETokenizer"]
