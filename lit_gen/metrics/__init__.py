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

__all__ = ["ClassifierFeatures", "InceptionFeatures", "frechet_distance", "inception_features",
           "inception_frechet_distance", "kernel_distance", "load_feature_net", "train_feature_net"]
