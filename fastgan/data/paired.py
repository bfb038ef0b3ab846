"""Paired data (image-to-image translation with aligned pairs, e.g. pix2pix): two domains A and B whose item i
is one pair. The DataSpec is marked ``paired``, so one epoch plan (order, flips, crop offsets:
fastgan.data.loaders.epoch_plan) serves both domains and the random jitter is the same for A and B.

A paired folder (--data DIR) has one of two layouts, per split (train, and test for evaluation):

    DIR/train/                 aligned: every image is A and B side by side, A the left half and B the right
                               half of equal width (the layout of the pix2pix datasets: facades, maps,
                               cityscapes, edges2shoes); the width must be even
    DIR/trainA/ + DIR/trainB/  two folders of the same file names: trainA/x.png pairs with trainB/x.png (the
                               extension may differ, subfolders are matched by their relative path)

A folder holding both layouts is refused rather than guessed. Every A needs its B: an unmatched name (such
as the trainA/ trainB/ folders of an unpaired set) is an error naming the file.

Training transform of folders, pix2pix's "random jitter" (Isola et al. 2017, sec. 6.1): each half or file
resized to --load-size square (bicubic), then the same random --image-size crop and the same random
horizontal flip for A and B (--preprocess chooses another of the reference's transforms, fastgan.data.folders;
--no-flip drops the flip).

The built-in demo, fashion-edges (no download; Debian's Fashion-MNIST or $FASTGAN_DATA, as fashion-mnist): A
is the edge map of a Fashion-MNIST image, B the image itself (grey, served as RGB). It is a miniature of the
paper's edges2shoes and edges2handbags (Fashion-MNIST has sneakers, sandals, boots and bags; its clothes
add shapes): an edge map leaves shading and texture open, which is what the adversarial term of a paired
GAN is for, where a fixed colourisation of grey images is a deterministic per-pixel map that an L1 loss
alone can learn.
"""

from __future__ import annotations

import os
import warnings

import torch
import torch.nn.functional as F

from fastgan.data import folders
from fastgan.data.datasets import (
    PAIRED_SIZE,
    DataSpec,
    FolderScan,
    TensorSource,
    _check_channels,
    _check_preprocess,
    _crop_range,
    _image_size,
    _in_memory,
    _load_size,
    find_fashion_mnist,
)
from fastgan.data.idx import load_idx
from fastgan.data.request import DataRequest
from fastgan.errors import UserError

# Sobel gradient magnitude, on intensities in [0, 1], above which a pixel is an edge: Fashion-MNIST's
# outlines and inner seams are kept, the low-contrast fabric texture is not (looked at on a sample grid).
EDGE_THRESHOLD = 0.5
_EDGE_CHUNK = 8192  # images per convolution, bounding the float copies of a 60,000-image set


def edge_map(images: torch.Tensor) -> torch.Tensor:
    """Edge maps drawn as black lines on white: uint8 [N, 1, H, W] -> uint8 [N, 1, H, W], 0 where the Sobel
    gradient magnitude exceeds EDGE_THRESHOLD, 255 elsewhere (borders replicated, so a frame is no edge)."""
    sobel_x = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]).view(1, 1, 3, 3)
    kernels = torch.cat([sobel_x, sobel_x.transpose(2, 3)])  # d/dx, d/dy
    out = []
    for chunk in images.split(_EDGE_CHUNK):
        x = F.pad(chunk.float() / 255, (1, 1, 1, 1), mode="replicate")
        grad = F.conv2d(x, kernels)
        edges = grad.square().sum(1, keepdim=True) > EDGE_THRESHOLD**2
        out.append(torch.where(edges, 0, 255).to(torch.uint8))
    return torch.cat(out) if out else images.clone()


def fashion_edges(req: DataRequest, split: str) -> DataSpec:
    """The built-in paired demo: A = edge_map(image), B = the Fashion-MNIST image, in memory."""
    _in_memory(req, "fashion-edges")
    images, _ = load_idx(find_fashion_mnist(), split)
    sources = {"A": TensorSource(edge_map(images), None), "B": TensorSource(images, None)}
    return DataSpec("fashion-edges", "paired", sources, req.channels or 3, _image_size(req, PAIRED_SIZE), 0,
                    req.flip, 0, paired=True)


def paired_folder(req: DataRequest, split: str) -> DataSpec:
    """The pairs of req.data for `split`, in either layout (module docstring), listed and checked."""
    _check_preprocess(req)
    _check_channels(req)
    image_size = _image_size(req, PAIRED_SIZE)
    load_size = _load_size(req, image_size)
    aligned = os.path.join(req.data, split)
    a_dir, b_dir = aligned + "A", aligned + "B"
    two_folders = os.path.isdir(a_dir) or os.path.isdir(b_dir)
    if os.path.isdir(aligned) and two_folders:
        raise UserError(f"--data {req.data}: holds both {split}/ (side-by-side A|B images) and {split}A/ {split}B/ "
                        f"(two folders of pairs); keep one layout for {req.who}")
    scan = FolderScan(req, load_size if req.preprocess == "resize_and_crop" else 0)
    if os.path.isdir(aligned):
        paths = _aligned_files(scan, aligned)
        scan.check_geometry(paths, load_size, image_size, half="left")
        channels = scan.channels()
        sources = {"A": scan.source(paths, None, image_size, load_size, channels, "left"),
                   "B": scan.source(paths, None, image_size, load_size, channels, "right")}
    elif two_folders:
        a_paths, b_paths = _matched_files(req, scan, a_dir, b_dir)
        for paths in (a_paths, b_paths):
            scan.check_geometry(paths, load_size, image_size)
        channels = scan.channels()
        sources = {"A": scan.source(a_paths, None, image_size, load_size, channels),
                   "B": scan.source(b_paths, None, image_size, load_size, channels)}
    else:
        raise UserError(f"--data {req.data}: {req.who} needs pairs, either a {split}/ folder of side-by-side A|B "
                        f"images or {split}A/ and {split}B/ folders of same-named images")
    return scan.spec(req.data, "paired", sources, channels, image_size, 0, req.flip,
                     _crop_range(req, load_size, image_size), paired=True)


def _aligned_files(scan: FolderScan, root: str) -> list[str]:
    paths = scan.files(root)
    for path in paths:
        width, height = scan.facts[path].width, scan.facts[path].height
        if width % 2:
            raise UserError(f"{path}: {width}x{height} is not two halves of equal width; an aligned pair is A "
                            "and B side by side (A left, B right)")
    return paths


def _by_name(scan: FolderScan, root: str) -> dict[str, str]:
    """Relative path without extension -> file, for the images below root."""
    found: dict[str, str] = {}
    listing = folders.scan_images(root)
    scan.skipped[folders.NOT_AN_IMAGE] += len(listing.others)
    if not listing.paths:
        raise UserError(f"{root}: no images ({', '.join(folders.IMAGE_EXTENSIONS)}) found below it")
    for path in listing.paths:
        name = os.path.splitext(os.path.relpath(path, root))[0]
        if name in found:
            raise UserError(f"{found[name]} and {path}: two images named {name!r}; pairs are matched by name, "
                            "so keep one of them")
        found[name] = path
    return found


def _matched_files(req: DataRequest, scan: FolderScan, a_dir: str, b_dir: str) -> tuple[list[str], list[str]]:
    """The A and B files of every pair, in name order; an unmatched name is a UserError naming its file, and a
    pair with an unreadable file is skipped (with a warning for its partner) or, with --strict, rejected."""
    for root in (a_dir, b_dir):
        if not os.path.isdir(root):
            raise UserError(f"{root}: no such directory; two folders of pairs need {os.path.basename(a_dir)}/ and "
                            f"{os.path.basename(b_dir)}/ with the same file names")
    a, b = _by_name(scan, a_dir), _by_name(scan, b_dir)
    only_a, only_b = sorted(a.keys() - b.keys()), sorted(b.keys() - a.keys())
    if only_a or only_b:
        path, other = (a[only_a[0]], b_dir) if only_a else (b[only_b[0]], a_dir)
        unmatched, total = len(only_a) + len(only_b), len(a.keys() | b.keys())
        raise UserError(f"{path}: no image of the same name in {other}/ ({unmatched} of {total} names unmatched); "
                        "paired data needs each A image's B partner under the same name (unpaired A/B folders are "
                        "for unpaired translation)")
    names = sorted(a)
    readable = scan.check([a[n] for n in names] + [b[n] for n in names])
    kept = []
    for name in names:
        pair = (a[name], b[name])
        if all(p in readable for p in pair):
            kept.append(name)
        elif any(p in readable for p in pair):
            good, bad = pair if pair[0] in readable else pair[::-1]
            scan.skipped[folders.UNREADABLE] += 1  # the partner of an unreadable image is passed over too
            warnings.warn(f"skipping {good}: its partner {bad} is not readable", stacklevel=3)
    if not kept:
        raise UserError(f"{a_dir}: no readable pairs with {b_dir}")
    a_paths, b_paths = [a[n] for n in kept], [b[n] for n in kept]
    scan.count(a_dir, {p: scan.facts[p] for p in a_paths})
    scan.count(b_dir, {p: scan.facts[p] for p in b_paths})
    return a_paths, b_paths
