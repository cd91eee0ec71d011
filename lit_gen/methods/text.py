"""Text conditioning for the noise-process methods: captions become BPE ids (a tokenizer fitted on the
training captions and kept in the checkpoint, or a frozen CLIP's), a text encoder turns them into states that
the denoiser cross-attends to, and the empty caption is the null condition of classifier-free guidance."""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from torch import nn

from lit_gen.checkpoints import check_method, load_frozen, network_weights, read_checkpoint
from lit_gen.dalle.generation import best_candidates
from lit_gen.data.base import dataset_captions
from lit_gen.nets.text_encoder import TextConditionedNet, TextEncoder, clip_text_weights
from lit_gen.sharding import load_full_state_dict
from lit_gen.text import BPETokenizer

PREVIEW_CAPTIONS = 64  # validation captions that sample grids draw from
PER_PROMPT = 4  # images per caption in a sample grid
RERANKING = ("num_candidates", "keep", "clip_ckpt")  # the sampling options of DALL-E's reranking


def reranking(options: dict) -> tuple[int, int, str | None]:
    """(candidates per prompt, kept per prompt, the CLIP) of ``options``, with one-line errors."""
    n, clip = options.get("num_candidates") or 1, options.get("clip_ckpt")
    keep = options.get("keep") or (1 if clip is not None else n)
    if n < 1 or not 1 <= keep <= n:
        raise ValueError(f"num_candidates={n} and keep={keep} must satisfy 1 <= keep <= num_candidates")
    if keep < n and clip is None:
        raise ValueError(f"keeping {keep} of {n} candidates needs a reranker: give clip_ckpt")
    return n, keep, clip


class Reranking:
    """DALL-E's reranking of a prompt's candidates by a CLIP (``clip_ckpt``), for every text-to-image
    method."""

    def load_clip(self, path: str):
        """The frozen CLIP of ``path`` on this model's device, loaded once (never saved with the model),
        checked against the images the model makes."""
        cache = self.__dict__.setdefault("_clips", {})
        if path not in cache:
            clip = load_frozen(path, self.device, "CLIP")
            shape = tuple(getattr(self, "image_shape", self.data_shape))
            if tuple(clip.data_shape) != shape:
                raise ValueError(f"CLIP {path} was trained on images of shape {tuple(clip.data_shape)}, this "
                                 f"model makes {shape}")
            cache[path] = clip
        return cache[path]

    def rerank(self, x: torch.Tensor, captions: list[str], n: int, keep: int,
               clip: str | None) -> tuple[torch.Tensor, list[str], torch.Tensor | None]:
        """The ``keep`` best of each prompt's ``n`` candidates (prompt-major) by CLIP score, best first, with
        their captions and scores; all of them unscored without a CLIP."""
        if clip is None:
            return x, captions, None
        scores = self.load_clip(clip).score(x, captions).view(len(captions) // n, n)
        rows, scores = best_candidates(scores, keep)
        return x[rows], [captions[i] for i in rows.tolist()], scores


@dataclass
class TextConditioning:
    """Conditioning on captions (a captioned data set: shapes, captioned image folders).

    Args:
        vocab_size: BPE vocabulary learned from the training captions.
        max_length: tokens per caption (longer captions are cut, with a warning).
        dim: width of the text encoder's states (the denoiser's ``context_dim``).
        depth: text transformer layers.
        heads: attention heads of the text encoder.
        clip_ckpt: a lit_gen CLIP checkpoint whose text tower (frozen) and tokenizer replace the ones above
            (its vocab_size, max_length, dim, depth and heads are taken from it).
    """

    vocab_size: int = 512
    max_length: int = 16
    dim: int = 128
    depth: int = 2
    heads: int = 4
    clip_ckpt: str | None = None


def text_settings(text: TextConditioning | dict | None) -> dict | None:
    """The settings as plain data (for the checkpoint's hyperparameters); with a ``clip_ckpt`` that exists,
    its CLIP's architecture (a checkpoint of the model keeps them, so it loads without that file)."""
    if text is None:
        return None
    settings = asdict(text) if isinstance(text, TextConditioning) else dict(text)
    unknown = sorted(set(settings) - {f.name for f in fields(TextConditioning)})
    if unknown:
        names = [f.name for f in fields(TextConditioning)]
        raise ValueError(f"text has no setting(s) {unknown}; it takes {names}")
    settings = {**asdict(TextConditioning()), **settings}
    path = settings["clip_ckpt"]
    if path is not None and Path(path).exists():
        ckpt = read_checkpoint(path)
        check_method(ckpt, "CLIP", f"text.clip_ckpt {path}")
        h = ckpt["hyper_parameters"]
        settings.update(vocab_size=h["vocab_size"], max_length=h["text_len"], dim=h["dim"], depth=h["depth"],
                        heads=h["heads"])
    return settings


class TextConditional(Reranking):
    """What a noise-process method needs for text: its tokenizer, its text net, the condition of a batch, the
    tokenizer fitted and the preview captions read at fit start, a CLIP's text weights loaded once."""

    def init_text(self, text: dict | None) -> None:
        self.text = text
        self.tokenizer = None if text is None else BPETokenizer(text["vocab_size"], text["max_length"])
        self.preview_captions: list[str] = []

    @property
    def null_text(self) -> torch.Tensor | None:
        """(L,) ids of the empty caption, the null condition; None without text."""
        return None if self.tokenizer is None else self.tokenizer.null(1)[0]

    def text_net(self, factory, data_shape: tuple[int, ...], out_channels: int) -> nn.Module:
        """The denoiser of ``factory`` built with ``context_dim`` and wrapped with its text encoder."""
        t, tok = self.text, self.tokenizer
        try:
            denoiser = factory(data_shape, 0, out_channels, context_dim=t["dim"])
        except TypeError as err:  # only a net without the argument; any other error stays as it is
            if "context_dim" not in str(err):
                raise
            raise ValueError(f"text conditioning needs a net that cross-attends: lit_gen.nets.UNet or DiT "
                             f"(they take context_dim): {err}") from None
        encoder = TextEncoder(tok.num_tokens, tok.max_length, tok.vocab_size, t["dim"], t["depth"],
                              t["heads"])
        return TextConditionedNet(denoiser, encoder, tok.null(1)[0], frozen=t["clip_ckpt"] is not None)

    def caption_ids(self, captions: list[str]) -> torch.Tensor:
        return self.tokenizer.encode(list(captions)).to(self.device)

    def setup_text(self, trainer) -> None:
        """At fit start: the tokenizer fitted on the training captions (or a CLIP's taken) and the preview
        captions of the sample grids."""
        if self.text is None:
            return
        datamodule = trainer.datamodule
        if not self.tokenizer.is_fitted:
            path = self.text["clip_ckpt"]
            if path is not None:
                state = read_checkpoint(path)["state_dict"]
                self.tokenizer.load_state_dict({"json": state["tokenizer.json"]})
            else:
                self.tokenizer.fit(dataset_captions(datamodule.train_dataset))
        captions = dataset_captions(datamodule.val_dataset, "the validation set")
        self.preview_captions = captions[:PREVIEW_CAPTIONS]

    def load_clip_text(self) -> None:
        """A fresh fit's text encoder (and its EMA) takes the frozen CLIP's text tower, once."""
        path = self.text["clip_ckpt"] if self.text else None
        if path is None or getattr(self, "_clip_text_loaded", False):
            return
        if not Path(path).exists():
            raise FileNotFoundError(f"text.clip_ckpt not found: {path!r} (train one with "
                                    "experiments/dalle/clip_shapes.yaml)")
        weights = clip_text_weights(network_weights(path))
        for net in [self.net] + ([self.ema.module] if self.ema is not None else []):
            load_full_state_dict(net.text, weights)
        self._clip_text_loaded = True
        if self.global_rank == 0:
            print(f"lit-gen: the text encoder is the frozen text tower of {path}", file=sys.stderr)

    def candidates(self, options: dict) -> tuple[tuple[int, int, str | None], dict]:
        """((candidates per prompt, kept, CLIP), the other options); reranking options need text."""
        given = sorted(k for k in RERANKING if options.get(k) is not None)
        rest = {k: v for k, v in options.items() if k not in RERANKING}
        if self.text is None:
            if given:
                raise ValueError(f"{given[0]} reranks the candidates of a prompt: this {type(self).__name__} "
                                 "is not text-conditional")
            return (1, 1, None), rest
        return reranking(options), rest

    def default_captions(self, num_samples: int, indices: list[int] | None = None) -> list[str]:
        if not self.preview_captions:
            raise ValueError(f"{type(self).__name__} is text-conditional: give captions (lit-gen sample "
                             "--text or --text_file)")
        # sample i's (``indices``, e.g. an FID's sample ids), or in a grid a row of PER_PROMPT images per
        # validation caption (each prompt's diversity)
        per = PER_PROMPT if indices is None and num_samples >= 2 * PER_PROMPT else 1
        ids = range(num_samples) if indices is None else indices
        return [self.preview_captions[(i // per) % len(self.preview_captions)] for i in ids]

