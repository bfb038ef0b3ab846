"""Evaluating fastgan models: which images are compared with which, in which feature space, and what is
reported. torch-fidelity computes every number (fastgan.metrics.fidelity); this module chooses the sets.

- Noise-to-image models (``Model.inference == "generate"``): ``n`` samples against ``n`` images of the
  training data (the split the generator learned; ``test`` on request). In a classifier space also the
  class histogram of the samples (mode coverage, ``class_tv``: total variation to the real classes) and,
  for a conditional generator, how often the classifier recognises the requested class.
- Image-to-image models (``"translate"``): for every direction, the translated test images of the source
  domain against the real test images of the target domain (fake B vs real test B, fake A vs real A).

``evaluate_during_training`` is what the training loop calls every ``--eval-every`` iterations.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from tqdm import tqdm

from ..data import DataRequest
from ..data.datasets import data_origin, find_fashion_mnist, resolve_data
from ..errors import UserError
from ..limits import check_fits
from ..models import get_model
from .sources import DomainImages, Reference, TensorImages, cache_dir, cache_name, subset_indices, to_uint8
from .spaces import FeatureSpace, feature_space

METRICS = ("fid", "kid", "is", "prc")  # --metrics names: FID, KID, Inception Score, precision/recall
BINARY = ("fid", "kid", "prc")  # the ones that compare with real images
PRC_NEIGHBORHOOD = 3  # torch-fidelity's default k of the k-NN balls
IS_SPLITS = 10  # torch-fidelity's default number of splits of the Inception Score
INCEPTION_LOGITS = 1008  # the FID Inception-v3's classes (the Inception Score's input)
KID_SUBSET_SIZE = 1000  # torch-fidelity's default, lowered to the set sizes when they are smaller
GENERATOR = "G"  # the generator network of noise-to-image models (as python -m fastgan.generate)
METRICS_LOG = "metrics.jsonl"  # in the run directory: one record per evaluation during training


@dataclass
class Settings:
    metrics: tuple[str, ...] = ("fid", "kid", "is")  # subset of METRICS
    n: int = 10000  # generated images (translate: at most the test images of the source domain)
    batch_size: int = 200  # images per generator / feature extractor call
    split: str = ""  # reference split: "" = train for generate models, test for translate models
    seed: int = 0  # noise seed of the samples (the images of python -m fastgan.generate --seed)
    progress: bool = True  # tqdm bars on stderr (off when stderr is not a terminal)


def parse_metrics(text: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(m.strip().lower() for m in text.split(",") if m.strip()))
    unknown = [m for m in names if m not in METRICS]
    if unknown or not names:
        raise UserError(f"--metrics {text}: choose from {', '.join(METRICS)} (comma-separated)")
    return names


def _fidelity():
    try:
        from . import fidelity
    except ImportError as e:
        raise UserError(f"metrics need torch-fidelity ({e}): pip install 'fastgan[metrics]'") from None
    return fidelity


def _bar(total: int, desc: str, enabled: bool):
    return tqdm(total=total, desc=desc, unit="img", leave=False, dynamic_ncols=True, file=sys.stderr,
                disable=None if enabled else True)


# --- the real side -----------------------------------------------------------------------------------------

def reference_request(model, config: Mapping) -> DataRequest:
    """The data a checkpoint's model was trained on (its saved config), read without augmentation: the
    evaluated size directly (load_size = image_size: resize, no random crop, as CycleGAN's test.py)."""
    size = config["image_size"]
    given = {name: config[name] for name in ("data", "domains", "seed", "workers", "strict", "channels")
             if config.get(name) is not None}  # channels: a --channels 1 run is compared with grey real images
    return DataRequest(kind=model.data_kind, image_size=size, load_size=size, batch_size=1, loader="torch",
                       model=model.name, **given)


def _data_dir(request: DataRequest) -> str | None:
    """The directory the data lives in, where its reference statistics are cached."""
    if request.data and os.path.isdir(request.data):
        return request.data
    if data_origin(request).startswith("fashion"):  # the built-in sets made from Fashion-MNIST
        return find_fashion_mnist()
    return None


_REFERENCES: dict[tuple, Reference] = {}  # resolving folders decodes every image once: keep them per process


def reference(request: DataRequest, split: str, domain: str, n: int) -> Reference:
    """The first ``n`` images (of a fixed permutation) of one domain of ``split``."""
    key = (request, split, domain, n)
    if key not in _REFERENCES:
        spec = resolve_data(request, split)
        if domain not in spec.sources:
            raise UserError(f"--data {spec.name}: has no domain {domain} in its {split} split")
        images = DomainImages(spec, domain, subset_indices(len(spec.sources[domain]), n))
        root, note = cache_dir(_data_dir(request))
        where = f" {domain}" if domain != "real" else ""
        name = f"{spec.name}{where} {split} ({len(images)} images)"
        _REFERENCES[key] = Reference(images, name, root, cache_name(spec, domain, split, spec.image_size,
                                                                     len(images)), note)
    return _REFERENCES[key]


def check_sizes(space: FeatureSpace, metrics: tuple[str, ...], n_fake: int, ref: Reference | None,
                flag: str = "--n") -> None:
    """Refuses set sizes a metric is not defined for, naming the input (``flag``: the option that set
    n_fake) and why. ``ref`` None checks n_fake alone (the trainer's --eval-n, before the data is read)."""
    if "fid" in metrics:
        need = space.dim + 1
        if n_fake < need:
            other = ", or --metrics kid" if flag == "--n" else ""  # the trainer always computes FID
            raise UserError(f"{flag} {n_fake}: FID in the {space.dim}-dimensional {space.kind} feature space needs "
                            f"at least {need} images per set (with fewer the {space.dim}x{space.dim} feature "
                            f"covariance is singular); use {flag} {need} or more (10000 for published numbers)"
                            f"{other}")
        if ref is not None and len(ref) < need:
            raise UserError(f"{ref.name}: too few images for FID in the {space.dim}-dimensional {space.kind} "
                            f"feature space (needs at least {need}: the feature covariance is singular with "
                            "fewer); use more data or --metrics kid")
    if "is" in metrics:
        if n_fake < IS_SPLITS:
            raise UserError(f"{flag} {n_fake}: the Inception Score averages {IS_SPLITS} splits of the samples; "
                            f"use {flag} {IS_SPLITS} or more")
    low = PRC_NEIGHBORHOOD + 1 if "prc" in metrics else 2 if "kid" in metrics else 0
    if low:
        if n_fake < low:
            raise UserError(f"{flag} {n_fake}: KID and precision/recall need at least {low} images per set")
        if ref is not None and len(ref) < low:
            raise UserError(f"{ref.name}: too few images for KID or precision/recall (needs at least {low})")
    # The largest size: every image's features (float32, and the float64 copy the statistics use), the Inception
    # Score's logits, and a generator's noise, held on the host at once.
    per_image = space.dim * 12 + (INCEPTION_LOGITS * 12 if "is" in metrics else 0) + 1024
    check_fits(f"{flag} {n_fake}", n_fake * per_image, "cpu",
               what=f"the {space.dim}-d features of {n_fake} generated images")


# --- noise-to-image models --------------------------------------------------------------------------------

class ClassCounter:
    """Counts the classifier's verdicts on generated batches on the device (no host sync until report)."""

    def __init__(self, space: FeatureSpace, device: torch.device, use_labels: bool):
        self.classifier = space.classifier
        self.use_labels = use_labels  # the requested classes are the classifier's (conditioning accuracy)
        self.classifier.net.to(device)
        self.counts = torch.zeros(self.classifier.num_classes, dtype=torch.int64, device=device)
        self.correct = torch.zeros((), dtype=torch.int64, device=device)
        self.conditioned = 0

    def __call__(self, images: Tensor, labels: Tensor | None) -> None:
        predicted = self.classifier.predict(images)
        self.counts.index_add_(0, predicted, torch.ones_like(predicted))
        if labels is not None and self.use_labels:
            self.correct += (predicted == labels).sum()
            self.conditioned += labels.shape[0]

    def report(self, real_labels: Tensor | None) -> dict:
        # sync: one read of the counts after all samples
        counts = self.counts.cpu()
        histogram = (counts / counts.sum().clamp_min(1)).tolist()
        out = {"class_histogram": [round(p, 5) for p in histogram]}
        if real_labels is not None and int(real_labels.max()) < len(histogram):
            real = torch.bincount(real_labels, minlength=len(histogram)).double()
            real /= real.sum()
            out["class_tv"] = 0.5 * sum(abs(p - q) for p, q in zip(histogram, real.tolist()))
        if self.conditioned:
            out["conditioning_accuracy"] = self.correct.item() / self.conditioned
        return out


def evaluate_generator(G: nn.Module, model, config: Mapping, space: FeatureSpace, settings: Settings,
                       device: torch.device) -> tuple[dict, list[str]]:
    """(results, notes) of a noise-to-image generator; G is put in eval mode for the samples and then
    back in the mode it had."""
    fidelity = _fidelity()
    n = settings.n
    ref = reference(reference_request(model, config), settings.split or "train", "real", n)
    check_sizes(space, settings.metrics, n, ref)
    num_classes = ref.images.spec.num_classes if model.conditional else 0
    notes = [ref.note] if ref.note else []
    counter = None
    if space.classifier is not None:
        labelled = model.conditional and space.classifier.num_classes == num_classes
        if model.conditional and not labelled:
            notes.append(f"the classifier knows {space.classifier.num_classes} classes, the generator "
                         f"{num_classes}: no conditioning accuracy")
        counter = ClassCounter(space, device, labelled)
    bar = _bar(n, "samples", settings.progress)
    source = fidelity.GeneratorSource(G, config["z_dim"], n, num_classes, settings.seed, counter, bar)
    training = G.training
    G.eval()
    ref.images.show_progress = settings.progress
    try:
        values = fidelity.calculate(source, ref, space, settings.metrics, n_fake=n, device=device,
                                    batch_size=settings.batch_size, seed=settings.seed)
    finally:
        G.train(training)
        bar.close()
        ref.images.close_progress()
    result = {**values, "n": n, "reference": ref.name}
    if counter is not None:
        result |= counter.report(ref.images.labels)
    return result, notes


# --- image-to-image models --------------------------------------------------------------------------------

def translate_set(G: nn.Module, images: DomainImages, batch_size: int, device: torch.device, bar) -> Tensor:
    """G applied to every image of ``images`` in batches on ``device`` -> uint8 [N, 3, S, S] on the host."""
    out = []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            x = images.batch(start, min(start + batch_size, len(images))).to(device)
            x = x[:, :images.spec.channels].float() / 127.5 - 1  # back to the loader's [-1, 1] and channels
            out.append(to_uint8(G(x)).cpu())
            bar.update(x.shape[0])
    return torch.cat(out)


def evaluate_translator(nets: Mapping[str, nn.Module], model, config: Mapping, space: FeatureSpace,
                        settings: Settings) -> tuple[dict, list[str]]:
    """({direction: results}, notes): translated test images of the source domain vs real test images of
    the target domain, for each direction the checkpoint translates."""
    fidelity = _fidelity()
    request = reference_request(model, config)
    split = settings.split or "test"
    results, notes = {}, []
    for direction in model.translators:
        try:
            direction, net = model.translator(config, direction)
        except UserError:
            continue  # a direction this checkpoint was not trained for (pix2pix)
        if net not in nets:
            continue
        source_domain, target_domain = direction.split("to")
        G = nets[net]
        device = next(G.parameters()).device
        source = reference(request, split, source_domain, settings.n)
        target = reference(request, split, target_domain, settings.n) if set(settings.metrics) & set(BINARY) else None
        if len(source) < settings.n:  # the test split, not --n, limits the set: a refusal names the data
            check_sizes(space, settings.metrics, settings.n, source)
        check_sizes(space, settings.metrics, len(source), target)
        bar = _bar(len(source), f"translating {direction}", settings.progress)
        training = G.training
        G.eval()
        try:
            fakes = translate_set(G, source.images, settings.batch_size, device, bar)
        finally:
            G.train(training)
            bar.close()
        if target is not None:
            target.images.show_progress = settings.progress
        try:
            values = fidelity.calculate(TensorImages(fakes), target, space, settings.metrics, n_fake=len(fakes),
                                        device=device, batch_size=settings.batch_size, seed=settings.seed)
        finally:
            if target is not None:
                target.images.close_progress()
        results[direction] = {**values, "n": len(fakes), "source": source.name,
                              "reference": target.name if target else None}
        notes += [r.note for r in (source, target) if r is not None and r.note and r.note not in notes]
    if not results:
        raise UserError(f"this {model.name} checkpoint has no generator for any direction "
                        f"({', '.join(model.translators)})")
    return results, notes


def evaluate(model, nets: Mapping[str, nn.Module], config: Mapping, space: FeatureSpace, settings: Settings,
             device: torch.device) -> tuple[dict, list[str]]:
    """({"samples": results} or {direction: results}, notes) for any registered model's networks."""
    if model.inference == "generate":
        if GENERATOR not in nets:
            raise UserError(f"this {model.name} checkpoint has no generator ({GENERATOR})")
        result, notes = evaluate_generator(nets[GENERATOR], model, config, space, settings, device)
        return {"samples": result}, notes
    return evaluate_translator(nets, model, config, space, settings)


# --- during training ---------------------------------------------------------------------------------------

_SPACES: dict[tuple[str, str | None], FeatureSpace] = {}  # (spec, weights file) -> space
_NOTED: set[str] = set()


def training_metrics(results: Mapping[str, Mapping]) -> dict[str, float]:
    """Flat numbers for metrics.jsonl: {"fid": ...} for one sample set; {"fid/AtoB": ..., "fid": mean} for
    several directions."""
    numbers = {group: {k: v for k, v in r.items() if isinstance(v, float)} for group, r in results.items()}
    if len(numbers) == 1:
        return next(iter(numbers.values()))
    flat = {f"{k}/{group}": v for group, values in numbers.items() for k, v in values.items()}
    for key in {k for values in numbers.values() for k in values}:
        flat[key] = sum(values[key] for values in numbers.values()) / len(numbers)
    return flat


TRAINING_METRICS = ("fid", "kid")  # what --eval-every computes


def evaluate_during_training(task, cfg, step: int, out: str | os.PathLike, *, feature: str | None = None,
                             n: int | None = None, metrics: tuple[str, ...] = TRAINING_METRICS) -> dict:
    """Evaluates the task's networks on its device between training steps and appends
    ``{"step", "fid", "kid", ...}`` to ``out/metrics.jsonl`` (translators: "fid/AtoB", ... and their mean).

    ``feature`` and ``n`` default to cfg.eval_feature ("" = inception, weights from cfg.inception_weights,
    $FASTGAN_INCEPTION_WEIGHTS or the torch hub cache) and cfg.eval_n (5000 when cfg has none); the
    data, seed and model come from cfg. The networks return to the mode they had and the global RNG (CPU
    and the task's CUDA device) is restored, so training continues exactly as without the evaluation.
    Records of this step or later (left by a run that is now resumed from an earlier checkpoint) are
    dropped first.

    Returns the record plus "best": True when its FID is the lowest so far (the loop keeps best.pt).
    """
    spec = (feature if feature is not None else getattr(cfg, "eval_feature", "")) or "inception"
    config = dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else dict(cfg)
    weights = config.get("inception_weights") or None  # --inception-weights, else the environment or the hub cache
    if (spec, weights) not in _SPACES:
        _SPACES[spec, weights] = feature_space(spec, weights)
    space = _SPACES[spec, weights]
    model = get_model(config["model"])
    settings = Settings(metrics=metrics, n=n if n is not None else config.get("eval_n", 5000),
                        seed=config.get("seed", 0))
    device = torch.device(task.device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        results, notes = evaluate(model, task.nets, config, space, settings, device)
    for note in notes:
        if note not in _NOTED:
            _NOTED.add(note)
            print(f"fastgan.metrics: {note}", file=sys.stderr)
    record = {"step": step, **training_metrics(results)}
    log = Path(out) / METRICS_LOG
    previous = [r for r in read_records(log) if r.get("step", math.inf) < step]
    best_so_far = min((r["fid"] for r in previous if isinstance(r.get("fid"), float)), default=math.inf)
    _write_lines(log, [*previous, record])
    return {**record, "best": record.get("fid", math.inf) < best_so_far}


def read_records(path: Path) -> list[dict]:
    """The records of a JSONL log (metrics.jsonl, losses.jsonl); [] when it does not exist."""
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut by a crash
    return records


def _write_lines(path: Path, records: list[dict]) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        tmp.write_text("".join(json.dumps(r) + "\n" for r in records))
        os.replace(tmp, path)  # a reader (report.html) never sees half a file
    finally:
        tmp.unlink(missing_ok=True)
