"""fastgan.metrics: sample statistics and a random-feature Fréchet distance (not FID) for evaluation."""

from .frechet import RandomFeatures, feature_statistics, frechet_distance, frechet_distance_from_statistics
from .stats import histogram, histogram_distance, moments

__all__ = ["RandomFeatures", "feature_statistics", "frechet_distance", "frechet_distance_from_statistics",
           "histogram", "histogram_distance", "moments"]
