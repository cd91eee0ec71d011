"""A small CLIP (Radford et al. 2021) trained on a captioned data set, to rerank DALL-E's candidates."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn

from lit_gen.data.base import dataset_captions
from lit_gen.methods.base import LitGenModule, _adam, eval_mode
from lit_gen.nets.clip import CLIPNet
from lit_gen.text import BPETokenizer


def clip_loss(logits: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE of CLIP (Radford et al. 2021, Fig. 3): the mean of the image->text and text->image
    cross-entropies, pair i being the match of row and column i."""
    target = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits.float(), target) + F.cross_entropy(logits.float().T, target)) / 2


class CLIP(LitGenModule):
    """Contrastive text and image encoders; its own byte-level BPE is fitted on the training captions and
    saved in the checkpoint. Used by ``lit-gen sample --clip_ckpt`` to rerank a DALLE's candidates.

    Logged: ``train/loss``, ``train/acc`` (image -> caption retrieval within the batch),
    ``train/logit_scale``; ``val/loss``, ``val/acc``.

    Args:
        data_shape: (C, H, W); linked from the DataModule by the CLI.
        num_classes: unused; linked from the DataModule.
        vocab_size: BPE vocabulary to learn from the captions.
        text_len: tokens per caption (longer captions are truncated with a warning).
        dim: width of the text transformer.
        depth: text transformer layers.
        heads: attention heads.
        channels: width of the image encoder's first stage.
        stages: stride-2 stages of the image encoder.
        embed_dim: size of the joint embedding.
        optimizer: see :class:`~lit_gen.methods.base.LitGenModule`.
        lr_scheduler: see :class:`~lit_gen.methods.base.LitGenModule`.
        ema_decay: see :class:`~lit_gen.methods.base.LitGenModule` (0: none).
        seed: see :class:`~lit_gen.methods.base.LitGenModule`.
    """

    usage = ("it scores image-caption pairs to rerank a DALLE's samples: lit-gen sample --ckpt_path "
             "DALLE.ckpt --clip_ckpt CLIP.ckpt")  # what lit-gen sample says

    family = "dalle"

    @classmethod
    def tiny_args(cls, init_args: dict, data_shape: tuple[int, ...]) -> dict:
        tiny = {"dim": 16, "depth": 1, "heads": 2, "channels": 8, "embed_dim": 8}
        return super().tiny_args(init_args, data_shape) | tiny

    def __init__(
        self,
        data_shape: tuple[int, ...] = (3, 32, 32),
        num_classes: int = 0,
        vocab_size: int = 512,
        text_len: int = 16,
        dim: int = 128,
        depth: int = 2,
        heads: int = 4,
        channels: int = 32,
        stages: int = 3,
        embed_dim: int = 64,
        optimizer: OptimizerCallable = _adam,
        lr_scheduler: LRSchedulerCallable | None = None,
        ema_decay: float = 0.0,
        seed: int = 0,
    ) -> None:
        super().__init__(optimizer, lr_scheduler, ema_decay, seed)
        self.save_hyperparameters()
        self.data_shape = tuple(data_shape)
        self.tokenizer = BPETokenizer(vocab_size, text_len)

    def build_net(self) -> nn.Module:
        h, tok = self.hparams, self.tokenizer
        return CLIPNet(self.data_shape, tok.num_tokens, tok.max_length, tok.vocab_size, h.dim, h.depth,
                       h.heads,
                       h.channels, h.stages, h.embed_dim)

    def setup(self, stage: str) -> None:
        if not self.tokenizer.is_fitted and stage == "fit":
            self.tokenizer.fit(dataset_captions(self.trainer.datamodule.train_dataset))

    def _step(self, batch: dict, net: nn.Module) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        logits, scale = net(batch["x"], self.tokenizer.encode(batch["caption"]))
        accuracy = (logits.argmax(1) == torch.arange(len(logits), device=logits.device)).float().mean()
        return clip_loss(logits), accuracy, scale

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss, accuracy, scale = self._step(batch, self.net)
        self.log("train/loss", loss, prog_bar=True)
        self.log_dict({"train/acc": accuracy, "train/logit_scale": scale})
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        with eval_mode(self.sampling_net) as net:
            loss, accuracy, _ = self._step(batch, net)
        self.log("val/loss", loss, prog_bar=True, sync_dist=True)
        self.log("val/acc", accuracy, prog_bar=True, sync_dist=True)

    @torch.no_grad()
    def score(self, images: torch.Tensor, captions: list[str]) -> torch.Tensor:
        """Cosine similarity (B,) of image i (in [-1, 1], fp32) with caption i."""
        with eval_mode(self.sampling_net) as net, torch.autocast(images.device.type, enabled=False):
            text = net.encode_text(self.tokenizer.encode(captions).to(images.device))
            return (net.encode_image(images.float()) * text).sum(-1)

