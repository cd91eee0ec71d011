"""``lit-gen sample --devices N [--num_nodes M]``: sampling over several processes or devices, sharded by
sample index through Lightning's predict loop. Rank r draws samples r, r + W, r + 2W, ... (W ranks in all,
each with at least one sample); sample i depends only on (seed, i), so the result equals a one-process run.
Prediction does not pad (a rank may run one batch fewer; the model is whole on every rank and no collective
runs between batches). Each rank writes its shard; rank 0 puts them in index order, keeping each sample once.

A draw returns rows of fields ("x", and "labels", "captions", "scores" where the model gives them): one row
per sample, or several (a text-to-image model keeps its best candidates for each prompt), those of a sample
together."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import lightning.pytorch as L
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from torch.utils.data import DataLoader, Dataset

Rows = dict[str, torch.Tensor | list | None]  # field -> one entry per row (tensors, lists of str) or None
DrawFn = Callable[[torch.nn.Module, list[int]], Rows]


class SampleIndices(Dataset):
    """The sample indices 0 .. n-1."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return i


class ShardedSampler(L.LightningModule):
    """Wraps the model to sample from: ``predict_step`` draws the samples of a batch of indices with
    ``draw``."""

    def __init__(self, model: torch.nn.Module, draw: DrawFn) -> None:
        super().__init__()
        self.model, self.draw = model, draw

    def predict_step(self, batch: torch.Tensor, batch_idx: int) -> Rows:
        rows = self.draw(self.model, batch.tolist())
        per_sample = len(rows["x"]) // len(batch)
        rows = {k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in rows.items()}
        return {"index": batch.cpu().repeat_interleave(per_sample), **rows}


class ShardWriter(BasePredictionWriter):
    """Writes each rank's samples to ``folder/rank<r>.pt`` at the end of prediction."""

    def __init__(self, folder: Path) -> None:
        super().__init__(write_interval="epoch")
        self.folder = folder

    def write_on_epoch_end(self, trainer, pl_module, predictions, batch_indices) -> None:
        torch.save(list(predictions), self.folder / f"rank{trainer.global_rank:05d}.pt")


def in_index_order(batches: list[Rows], num_samples: int) -> Rows:
    """The rows of ``batches`` for samples 0 .. num_samples - 1 in index order, each sample's rows once
    (should a sampler pad with a sample another batch drew, the first batch's rows are kept)."""
    kept: list[tuple[int, int, int]] = []  # (sample index, batch, row)
    seen: set[int] = set()
    for b, batch in enumerate(batches):
        index = batch["index"].tolist()
        kept += [(i, b, r) for r, i in enumerate(index) if i not in seen]
        seen.update(index)
    if seen != set(range(num_samples)):
        raise RuntimeError(f"sharded sampling drew {len(seen)} of {num_samples} samples")
    kept.sort(key=lambda t: t[0])  # stable: a sample's rows keep their order
    out: Rows = {"index": torch.tensor([i for i, _, _ in kept])}
    for key in batches[0].keys() - {"index"}:
        if batches[0][key] is None:  # a field this model does not give
            out[key] = None
            continue
        values = [batches[b][key][r] for _, b, r in kept]
        out[key] = torch.stack(values) if isinstance(values[0], torch.Tensor) else values
    return out


def sample_sharded(model, draw: DrawFn, num_samples: int, batch_size: int, devices: int, num_nodes: int,
                   accelerator: str, output: Path) -> Rows | None:
    """Draw ``num_samples`` over ``devices`` x ``num_nodes`` processes; returns the rows in index order on
    rank 0 (:func:`in_index_order`) and None on the other ranks."""
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
    batches = [b for path in sorted(folder.glob("rank*.pt")) for b in torch.load(path, weights_only=True)]
    shutil.rmtree(folder)
    return in_index_order(batches, num_samples)
