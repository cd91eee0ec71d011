"""Sample-quality and likelihood metrics."""

from lit_gen.metrics.fid import (
    ClassifierFeatures,
    InceptionFeatures,
    frechet_distance,
    inception_features,
    inception_frechet_distance,
    kernel_distance,
    load_feature_net,
    train_feature_net,
)
from lit_gen.metrics.precision_recall import precision_recall

__all__ = ["ClassifierFeatures", "InceptionFeatures", "frechet_distance", "inception_features",
           "inception_frechet_distance", "kernel_distance", "load_feature_net", "precision_recall",
           "train_feature_net"]
