"""Fréchet distance of samples during fit, logged as ``val/fid_<features>_n<num_samples>``."""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import DataLoader, Subset

from lit_gen.callbacks.periodic import EveryNSteps
from lit_gen.metrics.fid import frechet_distance, load_feature_net
from lit_gen.utils import sample_generators

SHIPPED = Path(__file__).resolve().parents[1] / "metrics" / "weights"


def resolve_features(features: str) -> Path:
    """A feature-net file path, or the name of one shipped with lit_gen (``digits16``)."""
    path = Path(features)
    if path.suffix != ".pt":
        path = SHIPPED / f"{features}.pt"
    return path


class FIDMonitor(EveryNSteps):
    """Every ``every_n_steps`` optimizer steps and when fitting ends, draw ``num_samples`` fixed-seed samples and
    log their Fréchet distance to the training images in the feature space of ``features``. Under DDP each rank
    draws and embeds its share; torchmetrics sums the statistics across ranks.

    Args:
        features: a feature-network file (``python -m lit_gen.metrics train``) or a shipped name: ``digits16``.
        num_samples: generated images per evaluation (the metric's name carries it).
        every_n_steps: interval in optimizer steps; 0: only when fitting ends.
        batch_size: samples per forward pass.
        seed: seed of the per-sample generators.
        sample_options: options of ``pl_module.sample`` (e.g. ``{"sampler": "ddim", "steps": 50}``).
    """

    run_at_end_when_off = True

    def __init__(
        self,
        features: str = "digits16",
        num_samples: int = 500,
        every_n_steps: int = 0,
        batch_size: int = 250,
        seed: int = 0,
        sample_options: dict | None = None,
    ) -> None:
        super().__init__(every_n_steps)
        self.features_path = resolve_features(features)
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.seed = seed
        self.sample_options = sample_options or {}
        self.metric = None

    @property
    def name(self) -> str:
        return f"val/fid_{self.features_path.stem}_n{self.num_samples}"

    def setup(self, trainer, pl_module, stage: str) -> None:
        if self.metric is None:
            self.metric = frechet_distance(load_feature_net(self.features_path))

    @torch.no_grad()
    def run(self, trainer, pl_module) -> float:
        metric = self.metric.to(pl_module.device)
        rank, world = trainer.global_rank, trainer.world_size
        if metric.real_features_num_samples == 0:  # real statistics once, sharded over ranks
            dataset = trainer.datamodule.train_dataset
            shard = Subset(dataset, range(rank, len(dataset), world))
            for batch in DataLoader(shard, batch_size=self.batch_size):
                metric.update(batch["x"].to(pl_module.device), real=True)
        mine = list(range(rank, self.num_samples, world))
        for start in range(0, len(mine), self.batch_size):
            ids = mine[start : start + self.batch_size]
            gens = [g for i in ids for g in sample_generators(self.seed, i, 1)]
            out = pl_module.sample(len(ids), gens, **self.sample_options)
            metric.update(out.x.clamp(-1, 1), real=False)
        value = float(metric.compute())
        metric.reset()  # keeps the real statistics
        if trainer.logger is not None and trainer.is_global_zero:
            trainer.logger.log_metrics({self.name: value}, step=trainer.global_step)
        return value
