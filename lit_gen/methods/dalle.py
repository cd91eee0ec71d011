"""DALL-E's stage 2 (Ramesh et al. 2021, Sec. 2.2): an autoregressive transformer over [BPE text; dVAE image
codes], sampled with temperature / top-k / top-p, classifier-free guidance on the text, an optional image
prefix and a KV cache, and reranked with a CLIP."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn

from lit_gen.checkpoints import load_frozen, method_hparams
from lit_gen.dalle.codec import DVAECodec
from lit_gen.dalle.generation import candidate_generators, generate_codes
from lit_gen.data.base import dataset_captions
from lit_gen.methods.base import TinyCheckpoint, _adam, eval_mode
from lit_gen.methods.generative import Abilities, GenerativeModule, SampleOutput
from lit_gen.methods.text import Reranking
from lit_gen.nets.transformer import DALLETransformer, MaskKind
from lit_gen.sharding import gathered
from lit_gen.text import BPETokenizer
from lit_gen.utils import sample_generators


class TokenCache:
    """The dVAE codes of each training image, computed once: keyed by a digest of the image's 8-bit pixels (so
    a random flip is a different image), valid as long as the frozen dVAE is."""

    def __init__(self) -> None:
        self.codes: dict[bytes, torch.Tensor] = {}

    def __call__(self, dvae: DVAECodec, x: torch.Tensor) -> torch.Tensor:
        pixels = ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu().numpy()
        keys = [hashlib.blake2b(p.tobytes(), digest_size=16).digest() for p in pixels]
        missing = [i for i, key in enumerate(keys) if key not in self.codes]
        if missing:
            codes = dvae.encode(x[missing]).flatten(1).to(torch.int16).cpu()  # (M, N)
            self.codes.update({keys[i]: c for i, c in zip(missing, codes, strict=True)})
        return torch.stack([self.codes[key] for key in keys]).to(x.device, torch.long)


class DALLE(Reranking, GenerativeModule):
    """Text-to-image transformer on a frozen dVAE (``dvae_ckpt``, a DiscreteVAE checkpoint; its weights are
    kept in this model's checkpoints, so sampling needs only them). Its byte-level BPE is fitted on the
    training captions and saved in the checkpoint. Captions are dropped (replaced by the all-padding null
    caption) with probability ``caption_dropout``, which classifier-free guidance needs.

    The loss is the weighted mean of the text and image cross-entropies (the paper weighs them 1:7). Logged:
    ``train/loss``, ``train/text_loss``, ``train/image_loss`` (nats per token), and the same under ``val/``.

    Args:
        data_shape: (C, H, W); linked from the DataModule by the CLI; must be the dVAE's.
        num_classes: unused; linked from the DataModule.
        dvae_ckpt: the DiscreteVAE checkpoint (file, or a sharded folder) whose codes the transformer models.
        dvae_hparams: filled from ``dvae_ckpt`` when the model is made (leave unset): the dVAE's architecture,
            so a checkpoint of this model rebuilds it without the dVAE file.
        vocab_size: BPE vocabulary to learn from the captions.
        text_len: T, tokens per caption (longer captions are truncated with a warning).
        dim: transformer width.
        depth: transformer layers.
        heads: attention heads.
        attention: attention pattern per layer, cycled: ``full``, ``row``, ``column``, ``conv``.
        final_conv: make the last layer ``conv`` (the paper's layout with attention [row, column, row, row]).
        conv_kernel: window of the ``conv`` pattern.
        dropout: dropout in the transformer.
        gradient_checkpointing: recompute each layer in backward (less activation memory).
        text_loss_weight: weight of the text cross-entropy.
        image_loss_weight: weight of the image cross-entropy.
        caption_dropout: probability of training on the null caption (0 disables classifier-free guidance).
        optimizer: see :class:`~lit_gen.methods.base.LitGenModule`.
        lr_scheduler: see :class:`~lit_gen.methods.base.LitGenModule`.
        ema_decay: see :class:`~lit_gen.methods.base.LitGenModule`.
        seed: see :class:`~lit_gen.methods.base.LitGenModule`.
    """

    abilities = Abilities(prompts=True)

    @dataclass
    class SampleOptions:
        """Sampling options of DALLE; None means the default.

        Args:
            temperature: softmax temperature of the image tokens (default 1; 0: greedy).
            top_k: keep the k most likely codes (DALLE-pytorch's ``filter_thres`` t keeps k = ceil((1 - t) K):
                its 0.5 is k = K / 2); default: all.
            top_p: nucleus sampling: keep the smallest set of codes whose probability reaches p; default: off.
            guidance_scale: classifier-free guidance on the text, logits_null + s (logits_text - logits_null);
                1 (default) is plain conditional sampling. Needs a model trained with caption_dropout > 0.
            num_candidates: images drawn per prompt (candidate j of prompt i depends only on (seed, i, j)).
            keep: best candidates kept per prompt, by CLIP score (needs clip_ckpt when < num_candidates).
            clip_ckpt: a CLIP checkpoint that scores and reranks the candidates.
            prefix_image: an npz (arr_0: uint8 N x H x W x C) of images, cycled over the prompts, whose first
                ``prefix_rows`` rows of codes start every candidate.
            prefix_rows: rows of codes taken from ``prefix_image`` (default 0: none).
            use_cache: keep the keys and values of past positions (default true); false recomputes the whole
                prefix at every step (same logits, slower).
        """

        temperature: float | None = None
        top_k: int | None = None
        top_p: float | None = None
        guidance_scale: float | None = None
        num_candidates: int | None = None
        keep: int | None = None
        clip_ckpt: str | None = None
        prefix_image: str | None = None
        prefix_rows: int | None = None
        use_cache: bool | None = None

    evaluation_args = frozenset({"dvae_ckpt"})

    family = "dalle"

    @classmethod
    def tiny_args(cls, init_args: dict, data_shape: tuple[int, ...]) -> dict:
        dvae = TinyCheckpoint("DiscreteVAE", {"data_shape": tuple(data_shape)})
        tiny = {"dim": 16, "depth": 2, "heads": 2, "dvae_ckpt": dvae}
        return super().tiny_args(init_args, data_shape) | tiny

    def __init__(
        self,
        data_shape: tuple[int, ...] = (3, 32, 32),
        num_classes: int = 0,
        dvae_ckpt: str | None = None,
        dvae_hparams: dict | None = None,
        vocab_size: int = 512,
        text_len: int = 16,
        dim: int = 256,
        depth: int = 4,
        heads: int = 4,
        attention: list[MaskKind] | None = None,
        final_conv: bool = False,
        conv_kernel: int = 3,
        dropout: float = 0.0,
        gradient_checkpointing: bool = False,
        text_loss_weight: float = 1.0,
        image_loss_weight: float = 7.0,
        caption_dropout: float = 0.1,
        optimizer: OptimizerCallable = _adam,
        lr_scheduler: LRSchedulerCallable | None = None,
        ema_decay: float = 0.9999,
        seed: int = 0,
    ) -> None:
        super().__init__(optimizer, lr_scheduler, ema_decay, seed)
        if dvae_hparams is None:
            dvae_hparams = _dvae_hparams(dvae_ckpt)
        self.save_hyperparameters(ignore=["dvae_hparams"])
        self.hparams["dvae_hparams"] = dvae_hparams
        if tuple(dvae_hparams["data_shape"]) != tuple(data_shape):
            raise ValueError(f"the dVAE {dvae_ckpt} was trained on images of shape "
                             f"{tuple(dvae_hparams['data_shape'])}, but the data here have shape "
                             f"{tuple(data_shape)}: use the same data set and image_size")
        if min(text_loss_weight, image_loss_weight) < 0 or text_loss_weight + image_loss_weight <= 0:
            raise ValueError(f"loss weights text={text_loss_weight}, image={image_loss_weight} must be >= 0 "
                             "and not both 0")
        if not 0 <= caption_dropout < 1:
            raise ValueError(f"caption_dropout={caption_dropout} must be in [0, 1)")
        self.data_shape = tuple(data_shape)
        self.tokenizer = BPETokenizer(vocab_size, text_len)
        # its sampling weights (EMA's, if it had one)
        self.dvae = DVAECodec(dvae_hparams).requires_grad_(False)
        self._dvae_loaded = False
        self.token_cache = TokenCache()
        self.preview_captions: list[str] = []

    # --- the frozen dVAE ----------------------------------------------------------------------------------
    def _load_dvae(self) -> None:
        """Its sampling weights from ``dvae_ckpt``, once, when fitting from scratch (a checkpoint of this
        model holds them already)."""
        if self._dvae_loaded or self.hparams.dvae_ckpt is None:
            return
        frozen = load_frozen(self.hparams.dvae_ckpt, "cpu", "DiscreteVAE")
        self.dvae.net.load_state_dict(frozen.sampling_net.state_dict())
        self._dvae_loaded = True

    @property
    def grid(self) -> tuple[int, int]:
        return self.dvae.grid

    def build_net(self) -> nn.Module:
        h, tok = self.hparams, self.tokenizer
        return DALLETransformer(tok.num_tokens, tok.max_length, self.dvae.num_codes, self.grid, h.dim,
                                h.depth,
                                h.heads, h.attention, h.final_conv, h.conv_kernel, h.dropout,
                                h.gradient_checkpointing)

    def setup(self, stage: str) -> None:
        if stage != "fit":
            return
        datamodule = self.trainer.datamodule
        if not self.tokenizer.is_fitted:
            self.tokenizer.fit(dataset_captions(datamodule.train_dataset))
        if self.trainer.ckpt_path is None:
            self._load_dvae()
        self.preview_captions = dataset_captions(datamodule.val_dataset, "the validation set")[:64]

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        self._dvae_loaded = True

    # --- training -----------------------------------------------------------------------------------------
    def _losses(self, net: nn.Module, batch: dict,
                dropout: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        text = self.tokenizer.encode(batch["caption"])  # (B, T)
        if dropout > 0:  # the null caption, for classifier-free guidance (global RNG: seeded per step)
            drop = torch.rand(text.shape[0], device=text.device) < dropout
            text = torch.where(drop[:, None], self.tokenizer.null(text.shape[0]), text)
        with gathered(self.dvae):  # ZeRO-3 partitions the frozen dVAE too
            codes = self.token_cache(self.dvae, batch["x"])  # (B, N)
        text_logits, image_logits = net(text, codes)
        text_loss = F.cross_entropy(text_logits.float().flatten(0, 1), text.flatten())
        image_loss = F.cross_entropy(image_logits.float().flatten(0, 1), codes.flatten())
        w_text, w_image = self.hparams.text_loss_weight, self.hparams.image_loss_weight
        return (w_text * text_loss + w_image * image_loss) / (w_text + w_image), text_loss, image_loss

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss, text_loss, image_loss = self._losses(self.net, batch, self.hparams.caption_dropout)
        self.log("train/loss", loss, prog_bar=True)
        self.log_dict({"train/text_loss": text_loss, "train/image_loss": image_loss})
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        with eval_mode(self.sampling_net) as net:
            loss, text_loss, image_loss = self._losses(net, batch, 0.0)
        self.log("val/loss", loss, prog_bar=True, sync_dist=True)
        self.log_dict({"val/text_loss": text_loss, "val/image_loss": image_loss}, sync_dist=True)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        with eval_mode(self.sampling_net) as net:
            loss, text_loss, image_loss = self._losses(net, batch, 0.0)
        self.log_dict({"test/loss": loss, "test/text_loss": text_loss, "test/image_loss": image_loss},
                      sync_dist=True)

    # --- generation: lit_gen.dalle.generation ------------------------------------------------------------
    def generate(self, text: torch.Tensor, generators: list[torch.Generator], temperature: float = 1.0,
                 top_k: int | None = None, top_p: float | None = None, guidance_scale: float = 1.0,
                 prefix: torch.Tensor | None = None, use_cache: bool = True,
                 progress: bool = False) -> torch.Tensor:
        """Image codes (B, N) for captions (B, T) with the EMA network (see :func:`generate_codes`)."""
        with eval_mode(self.sampling_net) as net, gathered(net):
            return generate_codes(net, self.tokenizer, self.grid[0] * self.grid[1], text, generators,
                                  temperature, top_k, top_p, guidance_scale, prefix, use_cache, progress)

    def check_sample_options(self, options: dict, labels: torch.Tensor | None = None) -> None:
        super().check_sample_options(options, labels)
        if labels is not None:
            raise ValueError("DALLE is conditioned on text, not labels: give --text or --text_file")
        o = self._options(options)
        if o["temperature"] < 0:
            raise ValueError(f"temperature={o['temperature']} must be >= 0")
        if o["top_k"] is not None and not 1 <= o["top_k"] <= self.dvae.num_codes:
            raise ValueError(f"top_k={o['top_k']} must be between 1 and the {self.dvae.num_codes} codes")
        if o["top_p"] is not None and not 0 < o["top_p"] <= 1:
            raise ValueError(f"top_p={o['top_p']} must be in (0, 1]")
        if o["guidance_scale"] != 1.0 and self.hparams.caption_dropout == 0:
            raise ValueError(f"guidance_scale={o['guidance_scale']} needs a model trained with "
                             "caption_dropout > 0 (it never saw the null caption)")
        if not 1 <= o["keep"] <= o["num_candidates"]:
            raise ValueError(f"keep={o['keep']} must be between 1 and num_candidates={o['num_candidates']}")
        if o["keep"] < o["num_candidates"] and o["clip_ckpt"] is None:
            raise ValueError(f"keeping {o['keep']} of {o['num_candidates']} candidates needs a reranker: "
                             f"give clip_ckpt")
        if not 0 <= o["prefix_rows"] <= self.grid[0]:
            raise ValueError(f"prefix_rows={o['prefix_rows']} must be between 0 and the grid's "
                             f"{self.grid[0]} rows")
        if o["prefix_rows"] and o["prefix_image"] is None:
            raise ValueError("prefix_rows needs prefix_image (an npz of images)")

    def _options(self, options: dict) -> dict:
        defaults = {"temperature": 1.0, "top_k": None, "top_p": None, "guidance_scale": 1.0,
                    "num_candidates": 1,
                    "keep": None, "clip_ckpt": None, "prefix_image": None, "prefix_rows": 0,
                    "use_cache": True}
        o = {**defaults, **{k: v for k, v in options.items() if v is not None}}
        if o["keep"] is None:
            o["keep"] = 1 if o["clip_ckpt"] is not None else o["num_candidates"]
        return o

    def _prefix(self, path: str, rows: int, prompts: torch.Tensor) -> torch.Tensor:
        """(P, rows * w) codes of the prefix images, cycled over the prompt indices."""
        from lit_gen.visual import read_uint8_images

        images = read_uint8_images(Path(path), "prefix_image", self.data_shape)
        x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1)
        with gathered(self.dvae):
            codes = self.dvae.encode(x[prompts % len(x)].to(self.device))  # (P, h, w)
        return codes[:, :rows].flatten(1)

    def sample(self, num_samples: int, generators: list[torch.Generator] | None = None, labels=None,
               progress: bool = False, trajectory_points: int = 0, latents=None,
               captions: list[str] | None = None,
               prompt_indices: list[int] | None = None, **options) -> SampleOutput:
        """``keep`` images for each of ``num_samples`` prompts (``captions``; default: validation captions),
        each the best by CLIP of ``num_candidates`` candidates; candidate j of prompt i draws from (the seed
        of ``generators[i]``, j). Returns the images, their captions and (with a CLIP) their scores."""
        self.check_sample_options(options, labels)
        if latents is not None:
            raise ValueError("DALLE has no latents to interpolate or invert")
        o = self._options(options)
        if captions is None:
            if not self.preview_captions:
                raise ValueError("DALLE needs prompts: give --text or --text_file")
            ids = range(num_samples) if prompt_indices is None else prompt_indices  # an FID's sample ids
            captions = [self.preview_captions[i % len(self.preview_captions)] for i in ids]
        if len(captions) != num_samples:
            raise ValueError(f"got {len(captions)} captions for {num_samples} prompts")
        if generators is None:
            generators = sample_generators(self.seed, 0, num_samples)
        n = o["num_candidates"]
        # (P n, T): prompt-major
        text = self.tokenizer.encode(captions).to(self.device).repeat_interleave(n, 0)
        gens = [g for gen in generators for g in candidate_generators(gen, n, self.device)]
        prefix = None
        if o["prefix_rows"]:
            prompts = torch.tensor(prompt_indices if prompt_indices is not None else range(num_samples))
            prefix = self._prefix(o["prefix_image"], o["prefix_rows"], prompts).repeat_interleave(n, 0)
        codes = self.generate(text, gens, o["temperature"], o["top_k"], o["top_p"], o["guidance_scale"],
                              prefix,
                              o["use_cache"], progress)
        with gathered(self.dvae):
            x = self.dvae.decode(codes.view(-1, *self.grid))  # (P n, C, H, W), fp32
        repeated = [c for c in captions for _ in range(n)]
        x, repeated, scores = self.rerank(x, repeated, n, o["keep"], o["clip_ckpt"])
        return SampleOutput(x, captions=repeated, scores=scores)


def _dvae_hparams(path: str | None) -> dict:
    """The DiscreteVAE hyperparameters of the checkpoint at ``path`` (one-line errors for anything else)."""
    if path is None:
        raise ValueError("DALLE needs dvae_ckpt: a DiscreteVAE checkpoint "
                         "(train one with experiments/dalle/dvae_*.yaml)")
    return method_hparams(path, "DiscreteVAE", "dvae_ckpt",
                          "train the dVAE first: lit-gen fit --config experiments/dalle/dvae_shapes.yaml")


__all__ = ["DALLE", "TokenCache"]
