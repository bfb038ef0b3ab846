"""What a model asks the data layer for: a small request, not the trainer's config, so that data/ sits
below train/ and models/ in the import graph and any caller (trainer, evaluation, benchmarks) can build
a loader."""

from __future__ import annotations

from dataclasses import dataclass

# The kinds of data a model consumes (fastgan.models.GanModel.data_kind).
KINDS = (
    "images",  # one domain of images; labels are served when the data has them (IDX, class subfolders)
    "labelled",  # one domain of images with class labels (refused when the data has none)
    "unpaired",  # two domains A and B, drawn independently (trainA/ trainB/ folders)
    "paired",  # two domains A and B of aligned pairs: item i of A and item i of B show the same scene
)


@dataclass(frozen=True)
class DataRequest:
    kind: str  # one of KINDS
    data: str = ""  # fashion-mnist, fashion-unpaired, fashion-edges, synthetic or a directory; "" = the kind's own
    image_size: int = 0  # of the batches; 0 = the data's own size (28 for IDX, 64 for folders, 256 for A/B data)
    load_size: int = 0  # A/B folders: resize to this square before the random crop; 0 = image_size * 286/256
    batch_size: int = 64
    seed: int = 0  # the epoch order is a pure function of (seed, epoch)
    domains: str = "7,9"  # fashion-unpaired: the Fashion-MNIST classes used as domains A,B
    loader: str = "auto"  # auto | device | torch | dali
    workers: int = 2  # torch DataLoader worker processes (folders)
    strict: bool = False  # stop at the first unreadable image instead of skipping it with a warning
    # A/B data (CycleGAN, pix2pix): junyanz/pytorch-CycleGAN-and-pix2pix's --preprocess modes (folders only;
    # fastgan.data.folders), random horizontal flips, and the channels of the batches (0 = the data's own: 1
    # for MNIST-family sets, 3 otherwise; 1 reads folders as grey, 3 replicates grey sets).
    preprocess: str = "resize_and_crop"
    flip: bool = True
    channels: int = 0
    model: str = ""  # who asks, named in error messages ("" = a generic description of the kind)
    # Data-parallel training (torchrun): a step's global batch is batch_size * world_size epoch positions, of
    # which rank r serves the r-th block of batch_size, so N ranks of batch B see what one process of batch N*B
    # would. Defaults: a single process.
    rank: int = 0
    world_size: int = 1

    @property
    def who(self) -> str:
        who = {"images": "this model", "labelled": "a conditional model", "unpaired": "unpaired translation",
               "paired": "paired translation"}
        return self.model or who.get(self.kind, "this model")

    @property
    def default_data(self) -> str:
        return self.data or {"unpaired": "fashion-unpaired", "paired": "fashion-edges"}.get(self.kind, "fashion-mnist")
