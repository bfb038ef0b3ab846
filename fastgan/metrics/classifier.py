"""A small CNN classifier of an MNIST-family dataset, trained by fastgan, whose activations are the feature
space of "FID-FMNIST" (the practice of TF-GAN's MNIST metrics, which use a classifier of the data's own
domain instead of an ImageNet network): Inception-v3 features of 28x28 grey clothes say little, and its
weights cannot be downloaded here.

The classifier also answers the class questions of a generator: the class histogram of its samples (mode
coverage) and, for a conditional generator, how often it recognises the requested class.

File format (``torch.save`` of a dict, read with ``weights_only=True``): {"format": "fastgan-classifier",
"version", "state_dict", "num_classes", "classes", "data", "space", "test_accuracy", "train_seconds",
"epochs"}.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import UserError
from ..files import atomic_write

FORMAT = "fastgan-classifier"
VERSION = 1
INPUT_SIZE = 28  # the MNIST family's side; other sizes are resized to it
FEATURE_DIM = 128  # the penultimate layer: the FID/KID/precision-recall features


class DomainClassifier(nn.Module):
    """Images [N, 1, 28, 28] in [-1, 1] -> (features [N, 128], logits [N, num_classes]).

    Stride-2 convolutions instead of pooling: measured on the 2-core CPU it reaches 90% test accuracy on
    Fashion-MNIST in two epochs, about half the time of a conv+max-pool net of the same widths."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.num_classes = num_classes
        self.body = nn.Sequential(
            nn.Conv2d(1, 32, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
            # state: 32 x 14 x 14
            nn.Conv2d(32, 64, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
            # state: 64 x 7 x 7
            nn.Flatten(),
            nn.Linear(64 * 7 * 7, FEATURE_DIM, bias=False), nn.BatchNorm1d(FEATURE_DIM), nn.ReLU(),
            # state: 128
        )
        self.head = nn.Linear(FEATURE_DIM, num_classes)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        features = self.body(x)
        return features, self.head(features)


def prepare(images: Tensor) -> Tensor:
    """uint8 images [N, 1 or 3, H, W] (RGB as torch-fidelity and image folders give them) -> the classifier's
    input [N, 1, 28, 28] in [-1, 1]: the channel mean, resized like fastgan's loaders resize."""
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"classifier input: expected images [N, 1 or 3, H, W], got {tuple(images.shape)}")
    x = images.float().mean(1, keepdim=True)
    if x.shape[-2:] != (INPUT_SIZE, INPUT_SIZE):
        x = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False,
                          antialias=x.shape[-1] > INPUT_SIZE)
    return x / 127.5 - 1


@dataclass
class Classifier:
    """A loaded classifier file."""

    net: DomainClassifier  # in eval mode
    path: Path
    sha256: str  # of the file: names its feature space in caches
    num_classes: int
    classes: list[str]
    data: str  # what it was trained on (--data)
    space: str  # short name of the feature space in metric labels, e.g. FMNIST (FID-FMNIST)
    test_accuracy: float

    @torch.no_grad()
    def predict(self, images: Tensor) -> Tensor:
        """uint8 images [N, C, H, W] -> predicted class int64 [N] (on the images' device)."""
        return self.net(prepare(images))[1].argmax(1)


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def space_name(data: str) -> str:
    """FMNIST for Fashion-MNIST (FID-FMNIST), else the IDX directory's name in capitals."""
    if data == "fashion-mnist":
        return "FMNIST"
    name = os.path.basename(os.path.normpath(data)) or "IDX"
    return "".join(c for c in name.upper() if c.isalnum()) or "IDX"


def load_classifier(path: str | os.PathLike, device: torch.device | str = "cpu") -> Classifier:
    """Reads a classifier written by ``python -m fastgan.evaluate train-classifier``; bad files raise
    UserError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"classifier {path}: no such file; train one with "
                        "python -m fastgan.evaluate train-classifier --data fashion-mnist --out classifier.pt")
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # foreign or truncated files fail inside torch.load in many ways
        raise UserError(f"classifier {path}: not a readable classifier file ({type(e).__name__}); "
                        "write one with python -m fastgan.evaluate train-classifier") from None
    if not isinstance(saved, dict) or saved.get("format") != FORMAT:
        raise UserError(f"classifier {path}: not a fastgan classifier file; "
                        "write one with python -m fastgan.evaluate train-classifier")
    if saved.get("version", 0) > VERSION:
        raise UserError(f"classifier {path}: format version {saved['version']} is newer than this fastgan "
                        f"reads ({VERSION}); upgrade fastgan")
    with torch.random.fork_rng(devices=[]):  # the initialisation is overwritten: keep the global RNG as it was
        net = DomainClassifier(saved["num_classes"])
    try:
        net.load_state_dict(saved["state_dict"])
    except (RuntimeError, KeyError) as e:
        raise UserError(f"classifier {path}: its weights do not fit the classifier network ({e})") from None
    return Classifier(net.to(device).eval(), path, file_sha256(path), saved["num_classes"], list(saved["classes"]),
                      saved["data"], saved["space"], float(saved["test_accuracy"]))


@torch.no_grad()
def accuracy(net: DomainClassifier, images: Tensor, labels: Tensor, batch_size: int = 1000) -> float:
    """Fraction of uint8 ``images`` [N, C, H, W] classified as ``labels`` [N] (net in eval mode)."""
    correct = torch.zeros((), dtype=torch.int64, device=labels.device)
    for i in range(0, images.shape[0], batch_size):
        logits = net(prepare(images[i:i + batch_size]))[1]
        correct += (logits.argmax(1) == labels[i:i + batch_size]).sum()
    return correct.item() / max(1, images.shape[0])  # sync: one read after the whole set


def train_classifier(train_images: Tensor, train_labels: Tensor, num_classes: int, *, epochs: int = 2,
                     batch_size: int = 128, lr: float = 3e-3, seed: int = 0, progress=None) -> DomainClassifier:
    """Trains a DomainClassifier on uint8 images [N, C, H, W] with int64 labels [N] (on one device).

    Adam with a one-cycle learning rate (Smith & Topin 2017), which gets a small net to its accuracy in few
    epochs. The epoch order comes from a private generator: the global RNG is not consumed, except by the
    weight initialisation, which is seeded from ``seed`` inside fork_rng.

    Args:
        progress: optional callable(step, total_steps, loss_tensor) called after every step.
    """
    if epochs < 1:
        raise UserError(f"--epochs {epochs}: must be at least 1")
    n = train_images.shape[0]
    if not 1 <= batch_size <= n:
        raise UserError(f"--batch-size {batch_size}: use 1 to {n} (the training images)")
    device = train_images.device
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = DomainClassifier(num_classes).to(device)
    steps_per_epoch = n // batch_size
    total = epochs * steps_per_epoch
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, lr, total_steps=total)
    order_gen = torch.Generator().manual_seed(seed)
    net.train()
    step = 0
    for _ in range(epochs):
        order = torch.randperm(n, generator=order_gen).to(device)
        for i in range(steps_per_epoch):
            index = order[i * batch_size:(i + 1) * batch_size]
            logits = net(prepare(train_images.index_select(0, index)))[1]
            loss = F.cross_entropy(logits, train_labels.index_select(0, index))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            step += 1
            if progress is not None:
                progress(step, total, loss)
    return net.eval()


def save_classifier(net: DomainClassifier, path: str | os.PathLike, *, classes: list[str], data: str,
                    test_accuracy: float, train_seconds: float, epochs: int) -> None:
    path = Path(path)
    payload = {"format": FORMAT, "version": VERSION, "state_dict": {k: v.cpu() for k, v in net.state_dict().items()},
               "num_classes": net.num_classes, "classes": list(classes), "data": data, "space": space_name(data),
               "test_accuracy": float(test_accuracy), "train_seconds": float(train_seconds), "epochs": epochs}
    atomic_write(path, lambda tmp: torch.save(payload, tmp))  # never a truncated classifier behind
