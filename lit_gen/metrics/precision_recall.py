"""Improved precision and recall of generative models (Kynkäänniemi et al. 2019): each set's manifold is the
union of balls around its feature vectors, each reaching that vector's k-th nearest neighbour in the set
(k = 3 in the paper); precision is the share of generated vectors inside the real manifold (fidelity), recall
the share of real vectors inside the generated one (coverage)."""

from __future__ import annotations

import torch


def knn_radii(features: torch.Tensor, k: int = 3, chunk: int = 1024) -> torch.Tensor:
    """The distance (N,) from each row of ``features`` (N, D) to its k-th nearest other row."""
    if not 1 <= k < len(features):
        raise ValueError(f"k={k} must be in [1, {len(features) - 1}] for {len(features)} feature vectors")
    radii = [torch.cdist(part, features).kthvalue(k + 1, dim=1).values  # the 1st is the row itself (0)
             for part in features.split(chunk)]
    return torch.cat(radii)


def in_manifold(queries: torch.Tensor, support: torch.Tensor, radii: torch.Tensor,
                chunk: int = 1024) -> torch.Tensor:
    """Whether each query (Q, D) lies within radii[j] of some support row j (a bool (Q,))."""
    return torch.cat([(torch.cdist(part, support) <= radii[None]).any(1) for part in queries.split(chunk)])


def precision_recall(real: torch.Tensor, fake: torch.Tensor, k: int = 3) -> tuple[float, float]:
    """(precision, recall) of generated features ``fake`` (M, D) against real features ``real`` (N, D),
    computed in float64."""
    real, fake = real.double().flatten(1), fake.double().flatten(1)
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"real features have {real.shape[1]} dimensions, generated {fake.shape[1]}")
    precision = in_manifold(fake, real, knn_radii(real, k)).double().mean().item()
    recall = in_manifold(real, fake, knn_radii(fake, k)).double().mean().item()
    return precision, recall
