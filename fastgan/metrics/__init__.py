"""fastgan.metrics: evaluation of generators and translators with torch-fidelity (the ``fastgan[metrics]``
extra): FID, KID, Inception Score and precision/recall in two feature spaces, Inception-v3 from a weights
file the user has, or a fastgan-trained classifier of an MNIST-family dataset (FID-FMNIST); plus cheap
sample statistics (moments, value histograms) for tests.

Nothing here downloads anything; torch-fidelity is imported only when a metric is computed."""

from .classifier import DomainClassifier, load_classifier, save_classifier, train_classifier
from .evaluation import (
    METRICS,
    Settings,
    evaluate,
    evaluate_during_training,
    evaluate_generator,
    evaluate_translator,
    parse_metrics,
)
from .spaces import ENV_INCEPTION, FeatureSpace, feature_space
from .stats import histogram, histogram_distance, moments

__all__ = ["DomainClassifier", "ENV_INCEPTION", "FeatureSpace", "METRICS", "Settings", "evaluate",
           "evaluate_during_training", "evaluate_generator", "evaluate_translator", "feature_space", "histogram",
           "histogram_distance", "load_classifier", "moments", "parse_metrics", "save_classifier",
           "train_classifier"]
