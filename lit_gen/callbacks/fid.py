"""Sample quality during fit: Fréchet distance and KID of fixed-seed samples, logged from a validation-time
hook with ``pl_module.log``, so ``ModelCheckpoint(monitor=...)`` and ``EarlyStopping`` can use them."""

from __future__ import annotations

import math
from pathlib import Path

import lightning.pytorch as L
import torch
from torch.utils.data import DataLoader, Subset
from tqdm.auto import tqdm

from lit_gen.methods.generative import GenerativeModule
from lit_gen.metrics.fid import frechet_distance, inception_features, kernel_distance, load_feature_net
from lit_gen.utils import sample_generators

SHIPPED = Path(__file__).resolve().parents[1] / "metrics" / "weights"


def resolve_features(features: str) -> Path:
    """A feature-net file path, or the name of one shipped with lit_gen (``digits16``)."""
    path = Path(features)
    if path.suffix != ".pt":
        path = SHIPPED / f"{features}.pt"
    return path


class FIDMonitor(L.Callback):
    """At the end of every ``every_n_validations``-th validation (so at ``trainer.val_check_interval``), draw
    ``num_samples`` fixed-seed samples and log, with ``pl_module.log``, their Fréchet distance
    ``val/fid_<features>_n<N>`` and kernel distance ``val/kid_<features>_n<N>`` (KID, unbiased even at small
    N; Bińkowski et al. 2018) to the training images. Monitor either with ``ModelCheckpoint`` /
    ``EarlyStopping`` (see ``experiments/trainer/fid_best3.yaml``). Every rank draws an equal share (the same
    number of forwards, so no rank waits in a collective); torchmetrics gathers the statistics.

    Args:
        features: a feature-network file (``python -m lit_gen.metrics train``), a shipped name (``digits16``),
            or ``inception``: Inception-v3 pool features (2048, the standard FID; needs ``weights_path``).
        weights_path: with ``features: inception``, torch-fidelity's ``pt_inception-2015-12-05`` weights file.
        num_samples: generated images per evaluation (the metrics' names carry it).
        batch_size: samples per forward pass.
        real_batch_size: training images per feature pass (their statistics are computed once).
        seed: seed of the per-sample generators: sample i is the same image at every evaluation.
        sample_options: options of ``pl_module.sample`` (e.g. ``{"sampler": "ddim", "steps": 50}``).
        kid_subset_size: samples per KID subset (default: min(1000, num_samples)).
        every_n_validations: evaluate at every n-th validation (1: each one).
        progress: a progress bar over the sample batches (rank 0).
    """

    def __init__(
        self,
        features: str = "digits16",
        weights_path: str | None = None,
        num_samples: int = 500,
        batch_size: int = 250,
        real_batch_size: int = 500,
        seed: int = 0,
        sample_options: dict | None = None,
        kid_subset_size: int | None = None,
        every_n_validations: int = 1,
        progress: bool = True,
    ) -> None:
        super().__init__()
        if num_samples < 2 or batch_size < 1 or every_n_validations < 1:
            raise ValueError(f"FIDMonitor needs num_samples >= 2, batch_size >= 1 and every_n_validations >= "
                             f"1; got {num_samples}, {batch_size}, {every_n_validations}")
        if features == "inception" and weights_path is None:
            raise ValueError("features='inception' needs weights_path: the pt_inception-2015-12-05 weights "
                             "file")
        self.features = features
        self.weights_path = weights_path
        self.stem = "inception" if features == "inception" else resolve_features(features).stem
        self.num_samples, self.batch_size, self.seed = num_samples, batch_size, seed
        self.real_batch_size = real_batch_size
        self.sample_options = sample_options or {}
        self.kid_subset_size = min(1000, num_samples) if kid_subset_size is None else kid_subset_size
        self.every_n_validations, self.progress = every_n_validations, progress
        self.fid = self.kid = None
        self._validations = 0

    @property
    def name(self) -> str:
        return f"val/fid_{self.stem}_n{self.num_samples}"

    @property
    def kid_name(self) -> str:
        return f"val/kid_{self.stem}_n{self.num_samples}"

    def setup(self, trainer, pl_module, stage: str) -> None:
        if self.fid is None:
            net = (inception_features(self.weights_path) if self.features == "inception"
                   else load_feature_net(resolve_features(self.features)))
            self.fid, self.kid = frechet_distance(net), kernel_distance(net, self.kid_subset_size)

    def on_fit_start(self, trainer, pl_module) -> None:
        """The options are checked now, not at the first measurement."""
        if isinstance(pl_module, GenerativeModule):
            pl_module.check_sample_options(self.sample_options)

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or not isinstance(pl_module, GenerativeModule):
            return
        self._validations += 1
        if self._validations % self.every_n_validations:
            return
        fid, kid = self.evaluate(trainer, pl_module)
        # the same value on every rank (torchmetrics synced it)
        pl_module.log(self.name, fid, sync_dist=False)
        pl_module.log(self.kid_name, kid, sync_dist=False)

    @torch.no_grad()
    def evaluate(self, trainer, pl_module) -> tuple[float, float]:
        """(FID, KID) of ``num_samples`` fixed-seed samples against the training images."""
        fid, kid = self.fid.to(pl_module.device), self.kid.to(pl_module.device)
        rank, world = trainer.global_rank, trainer.world_size
        bar = lambda it, n, desc: tqdm(it, total=n, desc=desc, leave=False,  # noqa: E731
                                       disable=not (self.progress and trainer.is_global_zero))
        if fid.real_features_num_samples == 0:  # real statistics once, sharded over ranks
            dataset = trainer.datamodule.train_dataset
            loader = DataLoader(Subset(dataset, range(rank, len(dataset), world)),
                                batch_size=self.real_batch_size)
            for batch in bar(loader, len(loader), f"{self.stem} features of the training images"):
                x = batch["x"].to(pl_module.device)
                fid.update(x, real=True)
                kid.update(x, real=True)
            # torchmetrics gathers list states element by element: every rank makes as many updates (empty
            # ones where its share ran out), or the ranks disagree on the gathered sizes
            most = math.ceil(math.ceil(len(dataset) / world) / self.real_batch_size)
            for _ in range(most - len(loader)):
                kid.update(x[:0], real=True)
        per_rank = math.ceil(self.num_samples / world)  # equal shares: ranks past num_samples draw and drop
        mine = [rank + world * k for k in range(per_rank)]
        batches = range(0, per_rank, self.batch_size)
        for start in bar(batches, len(batches), f"samples for {self.name}"):
            ids = mine[start : start + self.batch_size]
            gens = [g for i in ids for g in sample_generators(self.seed, i, 1)]
            extra = {"prompt_indices": ids} if pl_module.abilities.prompts else {}  # captions by sample id
            x = pl_module.sample(len(ids), gens, **extra, **self.sample_options).x.clamp(-1, 1)
            keep = torch.tensor([i < self.num_samples for i in ids], device=x.device)
            fid.update(x[keep], real=False)  # possibly empty: the same number of updates on every rank
            kid.update(x[keep], real=False)
        value, (kid_mean, _) = float(fid.compute()), kid.compute()
        fid.reset()  # both keep the real statistics
        kid.reset()
        return value, float(kid_mean)
