"""The feature spaces metrics are computed in, resolved from ``--feature`` before any image is touched.

- ``inception`` (standard FID/KID/IS): torch-fidelity's Inception-v3 port of the 2015-12-05 TensorFlow
  graph, from a weights file the user already has. fastgan never downloads it: without a file the request is
  refused with one line saying where to put it.
- ``classifier:PATH``: a fastgan.metrics.classifier file (FID-FMNIST for a Fashion-MNIST classifier).

Each space gets a torch-fidelity extractor name that includes a hash of its weights file, so cached
reference statistics of one set of weights are never read for another.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import UserError
from .classifier import FEATURE_DIM, Classifier, file_sha256, load_classifier

ENV_INCEPTION = "FASTGAN_INCEPTION_WEIGHTS"
# torch-fidelity's download name (what a machine that once ran torch-fidelity online has in the torch hub
# cache), then pytorch-fid's name of the same 2015-12-05 Inception weights.
INCEPTION_FILES = ("weights-inception-2015-12-05-6726825d.pth", "pt_inception-2015-12-05-6726825d.pth")
# Where each is published (torch-fidelity's feature_extractor_inceptionv3.py URL_INCEPTION_V3, pytorch-fid's
# inception.py FID_WEIGHTS_URL): the user fetches it once, fastgan never does.
INCEPTION_URLS = (
    "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth",
    "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth",
)
INCEPTION_DIM = 2048  # pool3 features
INCEPTION_LOGITS = 1008  # the 2015-12-05 graph's classes (1000 ImageNet + 8 unused)
# Two entries of the file that pin down the architecture it was converted for.
INCEPTION_SHAPES = {"Conv2d_1a_3x3.conv.weight": (32, 3, 3, 3), "fc.weight": (INCEPTION_LOGITS, INCEPTION_DIM)}


@dataclass(frozen=True)
class FeatureSpace:
    kind: str  # "inception" | "classifier"
    extractor: str  # its name in torch-fidelity's feature-extractor registry
    weights: str  # the file torch-fidelity's extractor loads (feature_extractor_weights_path)
    dim: int  # dimension of the FID/KID/precision-recall features
    suffix: str  # metric labels: "" for standard FID, "-FMNIST" for FID-FMNIST
    classifier: Classifier | None = field(default=None, compare=False)  # the loaded classifier (classifier space)

    def label(self, metric: str) -> str:
        return metric + self.suffix

    def describe(self) -> str:
        if self.classifier is not None:
            c = self.classifier
            return (f"classifier {c.path} ({c.data}, test accuracy {c.test_accuracy:.1%}, "
                    f"{self.dim}-d features)")
        return f"Inception-v3 {self.weights} ({self.dim}-d pool3 features)"


def inception_search_paths() -> list[Path]:
    """Where fastgan looks for the Inception weights when neither the flag nor the variable names a file."""
    checkpoints = Path(torch.hub.get_dir()) / "checkpoints"
    return [checkpoints / name for name in INCEPTION_FILES]


def find_inception_weights(path: str | os.PathLike | None = None) -> Path:
    """The Inception weights file: ``path`` (--inception-weights), else $FASTGAN_INCEPTION_WEIGHTS, else the
    torch hub cache. Refuses with one line saying where to put the file; nothing tries the network."""
    if path:
        given, origin = Path(path), "--inception-weights"
    elif os.environ.get(ENV_INCEPTION):
        given, origin = Path(os.environ[ENV_INCEPTION]), f"${ENV_INCEPTION}"
    else:
        for candidate in inception_search_paths():
            if candidate.is_file():
                return candidate
        raise UserError(
            f"standard FID needs the Inception-v3 weights {INCEPTION_FILES[0]}, published by torch-fidelity at "
            f"{INCEPTION_URLS[0]} (or pytorch-fid's {INCEPTION_FILES[1]}, {INCEPTION_URLS[1]}); fastgan "
            f"downloads nothing: fetch it once, then pass --inception-weights PATH, set ${ENV_INCEPTION}, or put "
            f"it at {inception_search_paths()[0]} (MNIST-family data: a classifier:PATH feature space instead)")
    if not given.is_file():
        raise UserError(f"{origin} {given}: no such file; expected the Inception-v3 weights {INCEPTION_FILES[0]}")
    return given


def check_inception_weights(path: Path) -> None:
    """Reads the file with weights_only=True (torch-fidelity itself unpickles it in full) and checks that it
    holds the Inception-v3 state_dict torch-fidelity's extractor loads."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated, foreign or not a torch file: torch.load fails in many ways
        raise UserError(f"Inception weights {path}: not a readable torch file ({type(e).__name__}); expected "
                        f"{INCEPTION_FILES[0]}") from None
    if not isinstance(state, dict):
        raise UserError(f"Inception weights {path}: not a state_dict; expected {INCEPTION_FILES[0]}")
    for key, shape in INCEPTION_SHAPES.items():
        value = state.get(key)
        if not isinstance(value, torch.Tensor) or tuple(value.shape) != shape:
            found = "missing" if value is None else tuple(getattr(value, "shape", ()))
            raise UserError(f"Inception weights {path}: {key} is {found}, expected {shape}; not the FID "
                            f"Inception-v3 weights ({INCEPTION_FILES[0]})")


def feature_space(spec: str, inception_weights: str | os.PathLike | None = None) -> FeatureSpace:
    """``--feature`` -> FeatureSpace: ``inception`` (weights from ``inception_weights``, the environment or
    the torch hub cache), ``inception:PATH`` or ``classifier:PATH``. Bad specs and files raise UserError."""
    kind, _, path = spec.partition(":")
    if kind == "inception":
        weights = find_inception_weights(path or inception_weights)
        check_inception_weights(weights)
        return FeatureSpace("inception", f"inception-v3-compat-{file_sha256(weights)[:12]}", str(weights),
                            INCEPTION_DIM, "")
    if kind == "classifier":
        if not path:
            raise UserError("--feature classifier:PATH: name the classifier file (python -m fastgan.evaluate "
                            "train-classifier writes one)")
        classifier = load_classifier(path)
        return FeatureSpace("classifier", f"fastgan-classifier-{classifier.sha256[:12]}", str(classifier.path),
                            FEATURE_DIM, f"-{classifier.space}", classifier)
    raise UserError(f"--feature {spec}: use inception, inception:PATH or classifier:PATH")
