"""``lit-gen sample --devices N [--num_nodes M]``: sampling over several processes or devices, sharded by sample
index through Lightning's predict loop. Rank r draws samples r, r + W, r + 2W, ... (W ranks in all); sample i
depends only on (seed, i), so the result equals a one-process run. Every rank runs the same number of batches
(Lightning's DistributedSampler pads the last ones with repeated indices, which are dropped), so no rank waits in
a collective. Each rank writes its shard; rank 0 puts them in index order."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import lightning.pytorch as L
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from torch.utils.data import DataLoader, Dataset

DrawFn = Callable[[torch.nn.Module, list[int]], tuple[torch.Tensor, torch.Tensor | None]]  # (x, labels)


class SampleIndices(Dataset):
    """The sample indices 0 .. n-1."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return i


class ShardedSampler(L.LightningModule):
    """Wraps the model to sample from: ``predict_step`` draws the samples of a batch of indices with ``draw``."""

    def __init__(self, model: torch.nn.Module, draw: DrawFn) -> None:
        super().__init__()
        self.model, self.draw = model, draw

    def predict_step(self, batch: torch.Tensor, batch_idx: int) -> dict:
        x, labels = self.draw(self.model, batch.tolist())
        return {"index": batch.cpu(), "x": x.cpu(), "labels": None if labels is None else labels.cpu()}


class ShardWriter(BasePredictionWriter):
    """Writes each rank's samples to ``folder/rank<r>.pt`` at the end of prediction."""

    def __init__(self, folder: Path) -> None:
        super().__init__(write_interval="epoch")
        self.folder = folder

    def write_on_epoch_end(self, trainer, pl_module, predictions, batch_indices) -> None:
        shard = {key: [p[key] for p in predictions] for key in ("index", "x", "labels")}
        torch.save(shard, self.folder / f"rank{trainer.global_rank:05d}.pt")


def sample_sharded(model, draw: DrawFn, num_samples: int, batch_size: int, devices: int, num_nodes: int,
                   accelerator: str, output: Path) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """Draw ``num_samples`` over ``devices`` x ``num_nodes`` processes; returns (x, labels) in index order on
    rank 0 and None on the other ranks."""
    folder = output / ".shards"
    trainer = L.Trainer(
        accelerator=accelerator, devices=devices, num_nodes=num_nodes, strategy="ddp", logger=False,
        enable_checkpointing=False, enable_model_summary=False, callbacks=[ShardWriter(folder)],
        inference_mode=False,  # classifier guidance takes gradients inside the sampling loop
    )
    if trainer.is_global_zero:
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
    trainer.strategy.barrier()
    loader = DataLoader(SampleIndices(num_samples), batch_size=batch_size, shuffle=False)
    trainer.predict(ShardedSampler(model, draw), loader, return_predictions=False)
    trainer.strategy.barrier()
    if not trainer.is_global_zero:
        return None
    shards = [torch.load(path, weights_only=True) for path in sorted(folder.glob("rank*.pt"))]
    index = torch.cat([i for s in shards for i in s["index"]])
    x = torch.cat([b for s in shards for b in s["x"]])
    labels = [b for s in shards for b in s["labels"]]
    first = {i: k for k, i in reversed(list(enumerate(index.tolist())))}  # one row per index (padding repeats)
    order = torch.tensor([first[i] for i in range(num_samples)])
    shutil.rmtree(folder)
    return x[order], (torch.cat(labels)[order] if labels and labels[0] is not None else None)
