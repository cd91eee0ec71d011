"""Sample-quality and likelihood metrics."""

from lit_gen.metrics.fid import (
    ClassifierFeatures,
    frechet_distance,
    inception_frechet_distance,
    load_feature_net,
    train_feature_net,
)

__all__ = ["ClassifierFeatures", "frechet_distance", "inception_frechet_distance", "load_feature_net",
           "train_feature_net"]
