"""The bridge to torch-fidelity (the ``fastgan[metrics]`` extra), which computes every metric: fastgan
registers its classifier as a torch-fidelity feature extractor, wraps a generator as a torch-fidelity
sample source, and calls ``torch_fidelity.calculate_metrics``.

Imported only when a metric is computed, so fastgan works without the extra."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
import torch_fidelity
from torch import Tensor, nn
from torch_fidelity import FeatureExtractorBase, FeatureExtractorInceptionV3, GenerativeModelBase
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

from ..errors import UserError
from ..noise import generator_noise
from .classifier import load_classifier, prepare
from .evaluation import IS_SPLITS, KID_SUBSET_SIZE
from .sources import Reference, to_uint8
from .spaces import FeatureSpace

# fastgan's metric names -> torch-fidelity's result keys.
RESULT_KEYS = {
    "fid": {"fid": torch_fidelity.KEY_METRIC_FID},
    "kid": {"kid": torch_fidelity.KEY_METRIC_KID_MEAN, "kid_std": torch_fidelity.KEY_METRIC_KID_STD},
    "is": {"is": torch_fidelity.KEY_METRIC_ISC_MEAN, "is_std": torch_fidelity.KEY_METRIC_ISC_STD},
    "prc": {"precision": torch_fidelity.KEY_METRIC_PRECISION, "recall": torch_fidelity.KEY_METRIC_RECALL,
            "f_score": torch_fidelity.KEY_METRIC_F_SCORE},
}


class ClassifierExtractor(FeatureExtractorBase):
    """A fastgan classifier file as a torch-fidelity feature extractor: uint8 images [N, 1 or 3, H, W] ->
    "features" [N, 128] (FID, KID, precision/recall) and "logits" [N, classes] (Inception Score)."""

    def __init__(self, name, features_list, feature_extractor_weights_path=None, **kwargs):
        super().__init__(name, features_list)
        self.net = load_classifier(feature_extractor_weights_path).net

    @staticmethod
    def get_provided_features_list():
        return "features", "logits"

    @staticmethod
    def get_default_feature_layer_for_metric(metric):
        return {"isc": "logits", "fid": "features", "kid": "features", "prc": "features"}[metric]

    @staticmethod
    def can_be_compiled():
        return False

    @staticmethod
    def get_dummy_input_for_compile():
        return torch.zeros(1, 3, 28, 28, dtype=torch.uint8)

    def forward(self, x):
        features, logits = self.net(prepare(x))
        named = {"features": features, "logits": logits}
        return tuple(named[name].float() for name in self.features_list)


def register(space: FeatureSpace) -> None:
    """Registers the space's extractor with torch-fidelity under its hash-bearing name (once per process)."""
    if space.extractor not in FEATURE_EXTRACTORS_REGISTRY:
        cls = ClassifierExtractor if space.kind == "classifier" else FeatureExtractorInceptionV3
        torch_fidelity.register_feature_extractor(space.extractor, cls)


class GeneratorSource(GenerativeModelBase):
    """A fastgan generator as a torch-fidelity sample source of ``n`` uint8 RGB images.

    The noise is drawn here, all at once from a private generator seeded with ``seed``: the images are
    those of ``python -m fastgan.generate --seed`` (unconditional), whatever batch size torch-fidelity
    uses, and the global RNG is untouched. torch-fidelity's noise argument only gives the batch size. A
    conditional generator gets balanced labels (0, 1, ..., C-1, 0, ...) drawn here too: torch-fidelity's
    own conditional path uses an alias that numpy removed (np.int).

    ``observer(images_uint8, labels_or_None)`` sees every batch on the device (class histogram,
    conditioning accuracy) and ``progress`` (a tqdm bar) is advanced by its size.
    """

    def __init__(self, G: nn.Module, z_dim: int, n: int, num_classes: int = 0, seed: int = 0,
                 observer: Callable[[Tensor, Tensor | None], None] | None = None, progress=None):
        super().__init__()
        self.G = G
        self._z_dim = z_dim
        self.z = torch.from_numpy(generator_noise(seed, n, z_dim))
        self.labels = torch.arange(n) % num_classes if num_classes else None
        self.position = 0
        self.observer = observer
        self.progress = progress

    @property
    def z_size(self):
        return self._z_dim

    @property
    def z_type(self):
        return "normal"

    @property
    def num_classes(self):
        return 0  # labels are drawn here (see the class docstring)

    def forward(self, noise: Tensor) -> Tensor:
        device = next(self.G.parameters()).device
        rows = slice(self.position, self.position + noise.shape[0])
        self.position += noise.shape[0]
        z = self.z[rows].to(device, non_blocking=True)
        labels = None if self.labels is None else self.labels[rows].to(device, non_blocking=True)
        images = to_uint8(self.G(z) if labels is None else self.G(z, labels))
        if self.observer is not None:
            self.observer(images, labels)
        if self.progress is not None:
            self.progress.update(images.shape[0])
        return images


def calculate(fake, reference: Reference | None, space: FeatureSpace, metrics: tuple[str, ...], *,
              n_fake: int, device: torch.device, batch_size: int, seed: int = 0) -> dict[str, float]:
    """torch_fidelity.calculate_metrics of ``fake`` (a GeneratorSource or a Dataset of uint8 images) against
    ``reference`` (needed for fid, kid, prc) in ``space``; the reference's features and statistics are
    cached in reference.cache_root. Returns fastgan's keys (fid, kid, kid_std, is, is_std, precision,
    recall, f_score)."""
    register(space)
    binary = any(m in metrics for m in ("fid", "kid", "prc"))
    kwargs = dict(input1=fake, fid="fid" in metrics, kid="kid" in metrics, isc="is" in metrics,
                  prc="prc" in metrics, feature_extractor=space.extractor,
                  feature_extractor_weights_path=space.weights, batch_size=batch_size,
                  cuda=device.type == "cuda", verbose=False, rng_seed=seed, isc_splits=IS_SPLITS,
                  # No DataLoader worker processes (the sets are in memory or decode quickly), and
                  # precision/recall in blocks rather than one n x n distance matrix.
                  save_cpu_ram=True, cache=False)
    if isinstance(fake, GenerativeModelBase):
        kwargs["input1_model_num_samples"] = n_fake
    if binary:
        kwargs.update(input2=reference.images, cache=True, cache_root=str(reference.cache_root),
                      input2_cache_name=reference.cache_name,
                      kid_subset_size=min(KID_SUBSET_SIZE, n_fake, len(reference)))
    # torch-fidelity moves its extractor with .cuda(): make the evaluated device the current one.
    on_device = torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()
    try:
        with on_device:
            result = torch_fidelity.calculate_metrics(**kwargs)
    except RuntimeError as e:
        if "state_dict" in str(e):  # the weights file has the right key shapes but not the right keys
            raise UserError(f"feature weights {space.weights}: do not load into {space.extractor} "
                            f"({str(e).splitlines()[0]})") from None
        raise
    return {ours: float(result[theirs]) for m in metrics for ours, theirs in RESULT_KEYS[m].items()}
