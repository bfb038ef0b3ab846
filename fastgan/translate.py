"""``python -m fastgan.translate CHECKPOINT INPUT --out DIR [--direction AtoB|BtoA]``: translate an image, a
folder of images or a dataset's test split with an image-to-image checkpoint (``Model.inference ==
"translate"``: cyclegan, pix2pix). The model says which of its generators translates a direction
(``Model.translator``): cyclegan has one per direction, a pix2pix checkpoint only the one of its training's
--direction, which is also its default.

What is translated:
    an image file, or a folder of images (its subfolders too); outputs keep the input's names and subfolders.
    a dataset folder (one that holds trainA/, testB/, test/ ...; the layouts fastgan.train reads): its
        test split for the direction, said on stdout: test/ of aligned A|B pairs, or test<A|B>/ of the
        direction's source domain (with test<B|A>/ as the targets of same-named pairs for a paired model).
        Such a folder without that split is refused, naming what it holds: its other splits and domains are
        never translated by recursion.
    aligned A|B pairs (pix2pix's layout: A the left half, B the right half) are split, and the direction's
        source half is translated, the other half is the target. --aligned says whether the inputs are pairs;
        by default they are for a test/ folder of a dataset, and for a paired model (pix2pix) every image
        exactly twice as wide as high.

What is written into --out: the output of each image under the input's name, ``compare/<name>`` with the
(resized) input, the output and, for pairs, the target side by side (the reference's real_A | fake_B |
real_B), and ``index.html`` showing those rows with the names. A file that does not decode is skipped with
one warning (``fastgan.translate: warning: ...``) and counted at the end; --strict refuses the run instead,
having read every input before writing anything (one error line, nothing in --out)."""

from __future__ import annotations

import argparse
import html
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import numpy as np
from PIL import Image

from . import limits
from .errors import UserError
from .files import atomic_write
from .image_files import IMAGE_EXTENSIONS, read_image, save_image, scan_images, to_unit
from .onnx_backend import BACKENDS, OnnxGenerator, check_cpu, resolve_backend
from .outputs import check_output_dir, check_outputs_in_dir
from .train.cli import OneLineParser, run

PROG = "fastgan.translate"
DIRECTIONS = ("AtoB", "BtoA")
INDEX_MARK = "<title>fastgan.translate "  # how translate recognises the index.html it wrote
COMPARE = "compare"  # --out's folder of side-by-side images ("_compare" etc. if the input has a compare/)
# Folder names of the datasets fastgan.train reads (unpaired trainA/ testB/ ..., paired train/ test/ val/).
SPLITS = ("train", "test", "val")
DATASET_FOLDERS = tuple(split + domain for split in SPLITS for domain in ("", "A", "B"))


def parse_args(argv):
    parser = OneLineParser(PROG, description="Translate images with an image-to-image checkpoint (cyclegan, "
                                             "pix2pix).")
    parser.add_argument("checkpoint", help="checkpoint-*.pt written by fastgan.train cyclegan or pix2pix, a run "
                        "directory, or a .onnx file written by fastgan.export")
    parser.add_argument("input", help="an image file, a folder of images, or a dataset folder (its test split "
                                      "for the direction: test/ of A|B pairs, or testA/ / testB/)")
    parser.add_argument("--direction", choices=DIRECTIONS, default=None,
                        help="AtoB translates domain A images into domain B (cyclegan: G_A), BtoA the reverse "
                             "(default: AtoB; pix2pix: the direction it was trained in, the only one it has)")
    parser.add_argument("--out", required=True, help="output directory (created); file names are kept, "
                        "compare/ holds input | output (| target) side by side, index.html shows them")
    parser.add_argument("--size", default="checkpoint",
                        help="checkpoint (resize to the training resolution), input (keep each "
                             "image's size), or N pixels (square)")
    parser.add_argument("--aligned", action=argparse.BooleanOptionalAction, default=None,
                        help="the inputs are A|B pairs side by side (A left): translate the direction's source "
                             "half, the other half is the target (default: a dataset's test/ folder, and for "
                             "pix2pix every image twice as wide as high)")
    parser.add_argument("--strict", action="store_true",
                        help="refuse the run if any image is unreadable (or too large) instead of skipping it with "
                             "a warning; every input is read before anything is written")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace existing files in --out that are not images (a run's own files and the "
                             "inputs are never replaced)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of test-time dropout (pix2pix, torch backend), set again for every image")
    parser.add_argument("--backend", choices=BACKENDS, default="auto",
                        help="torch (a checkpoint) or onnxruntime (a .onnx file from fastgan.export); "
                             "auto: by the file's suffix")
    return parser.parse_args(argv)


def _target_size(size: str, model: Translator) -> int | None:
    """--size in pixels (None: each image's own), between the generator's smallest side and what the device
    can hold (fastgan.limits)."""
    if size == "checkpoint":
        return model.trained
    if size == "input":
        return None
    if not size.isdigit() or int(size) < model.smallest:
        raise UserError(f"--size {size}: use checkpoint, input, or a size in pixels of at least {model.smallest} "
                        "(the smallest side this generator takes)")
    side = _padded(int(size), model)
    limits.check_image_size(f"--size {size}", side, side, model.bytes_per_pixel, model.device, model.channels)
    return int(size)


def _padded_side(side: int, multiple: int, smallest: int) -> int:
    """The side the generator gets for an image side: padded to its smallest side and to its multiple."""
    side = max(side, smallest)
    return side + -side % multiple


def _padded(side: int, model: Translator) -> int:
    return _padded_side(side, model.multiple, model.smallest)


def resize_unit(image: np.ndarray, size: int | None) -> np.ndarray:
    """uint8 [H, W] or [H, W, C] -> float32 [H, W, C] in [-1, 1], resized to ``size`` x ``size`` (None: kept).
    Pillow's float-mode bilinear resize antialiases like F.interpolate(..., antialias=True) (torch's is a port
    of it; equal to 4e-7 here) and needs no torch."""
    x = image.astype(np.float32) / 127.5 - 1
    if x.ndim == 2:
        x = x[:, :, None]
    if size is not None:
        x = np.stack([np.asarray(Image.fromarray(x[:, :, c]).resize((size, size), Image.BILINEAR))
                      for c in range(x.shape[2])], axis=-1)
    return x


def translate_image(G: Callable[[np.ndarray], np.ndarray], image: np.ndarray, size: int | None,
                    multiple: int = 4, smallest: int = 0) -> np.ndarray:
    """uint8 [H, W, C] (or [H, W]) -> float32 [C, h, w] in [-1, 1] at ``size`` x ``size`` (None: the image's
    own size). ``G`` maps float32 [1, C, H, W] to [1, C, H, W] (either backend); ``multiple``: the generator's
    down-sampling factor, ``smallest``: the smallest side it takes (sides are padded up to both, then the
    output is cropped back)."""
    x = resize_unit(image, size)
    h, w = x.shape[:2]
    # Pad to the generator's smallest side and to a multiple of its stride, translate, crop back.
    pad_h, pad_w = _padded_side(h, multiple, smallest) - h, _padded_side(w, multiple, smallest) - w
    if pad_h or pad_w:
        reflect = h > pad_h and w > pad_w  # reflection needs more rows and columns than it adds
        x = np.pad(x, ((0, pad_h), (0, pad_w), (0, 0)), mode="reflect" if reflect else "edge")
    y = G(np.ascontiguousarray(x.transpose(2, 0, 1)[None]))
    return np.clip(y[0, :, :h, :w], -1, 1)


@dataclass
class Translator:
    G: Callable[[np.ndarray], np.ndarray]
    direction: str
    trained: int  # the training image size (--size checkpoint)
    multiple: int  # input sides are padded to a multiple of this
    smallest: int  # and to at least this (fastgan.limits.smallest_side)
    channels: int  # 3 (RGB) or 1 (grey)
    paired: bool | None  # trained on aligned pairs (pix2pix); None: not known (an older .onnx file)
    bytes_per_pixel: float  # the generator's inference peak per input pixel (fastgan.limits.bytes_per_pixel)
    device: str  # where it runs: what limits.check_fits compares with


def _load_translator(args) -> Translator:
    """The generator and what translate needs to know of it, from a checkpoint or an exported .onnx file.
    Only the torch backend imports torch."""
    if resolve_backend(args.checkpoint, args.backend) == "onnxruntime":
        check_cpu(args.device)
        G = OnnxGenerator(args.checkpoint).require("translate")
        direction = G.meta["direction"]
        if args.direction not in (None, direction):
            raise UserError(f"--direction {args.direction}: {args.checkpoint} translates {direction} only "
                            f"(fastgan.export writes one file per direction)")
        channels = G.session.get_inputs()[0].shape[1]
        kind = G.meta.get("data_kind")
        multiple = int(G.meta["size_multiple"])
        return Translator(G, direction, int(G.meta["image_size"]), multiple, int(G.meta.get("min_size", multiple)),
                          channels if isinstance(channels, int) else 3, None if kind is None else kind == "paired",
                          limits.FALLBACK_BYTES_PER_PIXEL, "cpu")
    import torch

    from .train.checkpoint import load_for_inference
    from .train.loop import resolve_device

    device = resolve_device(args.device)
    ckpt, model, nets = load_for_inference(args.checkpoint, "translate",
                                           lambda model: sorted(set(model.translators.values())), device)
    direction, name = model.translator(ckpt["config"], args.direction)

    def G(x: np.ndarray) -> np.ndarray:
        # Every image sees the same dropout masks for its size, whatever else is in the folder.
        with torch.no_grad(), torch.random.fork_rng([device] if device.type == "cuda" else []):
            torch.manual_seed(args.seed)
            y = nets[name](torch.from_numpy(x).to(device))
        return y.float().cpu().numpy()  # sync: the image goes to a file

    config, channels = ckpt["config"], int(ckpt["info"].get("channels", 3))
    multiple = model.input_multiple(config)
    # The generator's bounds from its shapes (the meta device, nothing allocated): its smallest side, and its
    # peak bytes per input pixel.
    smallest = limits.smallest_side(limits.runs_on_meta(nets[name], channels), multiple)
    if smallest is None:
        raise UserError(f"checkpoint {args.checkpoint}: its generator takes no square input up to 4096 pixels")
    per_pixel = limits.bytes_per_pixel(nets[name], channels, multiple)
    return Translator(G, direction, config["image_size"], multiple, smallest, channels, model.data_kind == "paired",
                      per_pixel, str(device))


@dataclass
class Inputs:
    """The images to translate: files, their names under --out, the target files of two-folder pairs."""

    files: list[Path]
    names: list[Path]
    targets: dict[Path, Path]  # file -> its pair's target file (test<A|B>/ of a paired dataset)
    aligned: bool | None  # every file is an A|B pair (a dataset's test/), or None: decided per image
    skipped: int  # files passed over for their name (not images, hidden)


def _images(folder: Path, out: Path | None) -> tuple[list[Path], list[Path], int]:
    """The images below folder, but not those in ``out`` (a folder inside it: earlier outputs)."""
    listing = scan_images(str(folder))
    files = [Path(p) for p in listing.paths]
    if out is not None and out.resolve().is_relative_to(folder.resolve()):
        inside = out.resolve()
        files = [f for f in files if not f.resolve().is_relative_to(inside)]
    if not files:
        raise UserError(f"{folder}: no images ({', '.join(IMAGE_EXTENSIONS)}) found below it")
    return files, [p.relative_to(folder) for p in files], len(listing.others)


def find_inputs(source: Path, direction: str, paired: bool | None, out: Path | None = None) -> Inputs:
    """The images ``source`` names (module docstring), saying on stdout which split of a dataset is read;
    none from inside ``out``."""
    if source.is_file():
        return Inputs([source], [Path(source.name)], {}, None, 0)
    if not source.is_dir():
        raise UserError(f"{source}: no such image file or folder")
    held = sorted(name for name in DATASET_FOLDERS if (source / name).is_dir())
    if not held:
        files, names, skipped = _images(source, out)
        return Inputs(files, names, {}, None, skipped)
    a, b = ("A", "B") if direction == "AtoB" else ("B", "A")
    holds = ", ".join(f"{name}/" for name in held)
    if (source / "test").is_dir() and paired is not False:
        files, names, skipped = _images(source / "test", out)
        print(f"{PROG}: {source} is a dataset ({holds}): translating the A|B pairs of its test/ ({direction}: the "
              f"{'left' if a == 'A' else 'right'} half of each, the other half is the target)", flush=True)
        return Inputs(files, names, {}, True, skipped)
    if (source / f"test{a}").is_dir():
        files, names, skipped = _images(source / f"test{a}", out)
        targets = {}
        target_dir = source / f"test{b}"
        if paired and target_dir.is_dir():  # two folders of same-named pairs
            found = [Path(p) for p in scan_images(str(target_dir)).paths]
            by_name = {p.relative_to(target_dir).with_suffix(""): p for p in found}
            targets = {f: by_name[n.with_suffix("")] for f, n in zip(files, names) if n.with_suffix("") in by_name}
        with_targets = f", with the same-named test{b}/ images as targets" if targets else ""
        print(f"{PROG}: {source} is a dataset ({holds}): translating its test{a}/ ({direction}){with_targets}",
              flush=True)
        return Inputs(files, names, targets, False, skipped)
    wanted = f"test{a}/" + ("" if paired is False else " or test/")
    raise UserError(f"{source}: holds a dataset's folders ({holds}) but no {wanted} to translate {direction}; "
                    f"pass the folder of images itself (e.g. {source / held[0]})")


def _aligned(args_aligned: bool | None, inputs: Inputs, image: np.ndarray, paired: bool | None) -> bool:
    if args_aligned is not None:
        return args_aligned
    if inputs.aligned is not None:
        return inputs.aligned
    return bool(paired) and image.shape[1] == 2 * image.shape[0]


def split_pair(image: np.ndarray, direction: str) -> tuple[np.ndarray, np.ndarray]:
    """(source, target) halves of an aligned A|B image for ``direction`` (AtoB: A, the left half, is the
    source). An odd width drops the middle column, as the training loader's halves do."""
    half = image.shape[1] // 2
    left, right = image[:, :half], image[:, half:2 * half]
    return (left, right) if direction == "AtoB" else (right, left)


def _side_by_side(images: list[np.ndarray], padding: int = 2) -> np.ndarray:
    """[C, h, w] images in [0, 1] -> one [3, h, n*w + (n-1)*padding] image, white between them."""
    images = [np.repeat(x, 3, axis=0) if x.shape[0] == 1 else x for x in images]
    h = images[0].shape[1]
    gap = np.ones((3, h, padding), np.float32)
    parts = []
    for i, x in enumerate(images):
        parts += [gap] * (i > 0) + [x]
    return np.concatenate(parts, axis=2)


def _compare_folder(names: list[Path]) -> str:
    """COMPARE, or a name no input subfolder has."""
    folder = COMPARE
    tops = {n.parts[0] for n in names if len(n.parts) > 1}
    while folder in tops:
        folder = "_" + folder
    return folder


def write_index(out: Path, rows: list[tuple[Path, Path]], columns: str, direction: str) -> None:
    """out/index.html: per image its name (a link to the output) and the side-by-side image."""
    def link(path: Path) -> str:
        return quote(os.fsencode(path.as_posix()))

    body = "\n".join(
        f'<tr><td><a href="{link(name)}">{html.escape(str(name))}</a></td>'
        f'<td><img src="{link(compare)}" alt="{html.escape(str(name))}"></td></tr>'
        for name, compare in rows)
    page = (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">{INDEX_MARK}{direction}</title>"
            "<style>body{font-family:sans-serif}td{padding:4px;vertical-align:top}img{image-rendering:pixelated;"
            "max-width:100%}</style></head>\n<body><h1>fastgan.translate " + direction + "</h1>\n"
            f"<table><tr><th>image</th><th>{html.escape(columns)}</th></tr>\n{body}\n</table></body></html>\n")
    atomic_write(out / "index.html", lambda tmp: tmp.write_text(page, encoding="utf-8", errors="surrogateescape"))


def _warn(message: str) -> None:
    print(f"{PROG}: warning: {message}", file=sys.stderr, flush=True)


def _own_output(path: Path) -> bool:
    """A file translate may replace in --out: an image (what it writes under the inputs' names and in
    compare/), or the index.html it wrote."""
    if path.name == "index.html":
        with open(path, "rb") as f:
            return INDEX_MARK.encode() in f.read(4096)
    try:
        with Image.open(path):
            return True
    except (OSError, ValueError, Image.DecompressionBombError):
        return False


class _Fatal(UserError):
    """An input that stops translate with or without --strict."""


class _TooLarge(UserError):
    """An image too large to translate at its own size (skipped, or refused under --strict)."""


def _skip(args, message: str, skipped: list[str]) -> None:
    if args.strict:
        raise UserError(f"{message}; remove it or drop --strict to skip it")
    _warn(f"skipping {message}")
    skipped.append(message)


def _main(argv) -> int:
    args = parse_args(argv)
    out = check_output_dir(args.out, inputs=[args.checkpoint, args.input])  # before anything is computed
    model = _load_translator(args)
    size = _target_size(args.size, model)
    source = Path(args.input)
    inputs = find_inputs(source, model.direction, model.paired, out)
    for file, rel in zip(inputs.files, inputs.names):
        if (out / rel).resolve() == file.resolve():
            raise UserError(f"--out {out}: would overwrite the input {file}; choose another directory")
    compare_dir = _compare_folder(inputs.names)
    written = [*inputs.names, *(Path(compare_dir) / rel for rel in inputs.names), "index.html"]
    check_outputs_in_dir(out, written, own_type=_own_output,
                         what="an image or translate's index.html", inputs=[args.checkpoint, args.input],
                         overwrite=args.overwrite)
    have = limits.available_memory(model.device)[0]

    def read(file: Path) -> tuple[np.ndarray, np.ndarray | None]:
        """The generator's input and the target (or None) of one file; a UserError names what stops it: not
        readable (-> unreadable), too large for --size input (TooLarge), too narrow to be a pair (always)."""
        image = read_image(str(file), model.channels)
        target = read_image(str(inputs.targets[file]), model.channels) if file in inputs.targets else None
        if _aligned(args.aligned, inputs, image, model.paired):
            image, target = split_pair(image, model.direction)
            if not image.size:
                raise _Fatal(f"{file}: {image.shape[1]} pixel(s) wide, too narrow to be an A|B pair")
        if size is None:  # --size input: each image's own size, bounded like --size N
            h, w = (_padded(side, model) for side in image.shape[:2])
            need = limits.image_bytes(h, w, model.bytes_per_pixel, model.channels)
            if need > have:
                raise _TooLarge(f"{file}: {image.shape[1]}x{image.shape[0]} needs about {limits.format_bytes(need)} "
                                f"to translate at its own size, more than the {limits.format_bytes(have)} "
                                "available; use --size N")
        return image, target

    if args.strict:  # every input is read before anything is written: a refusal leaves --out untouched
        for file in inputs.files:
            try:
                read(file)
            except _Fatal:
                raise
            except UserError as e:
                _skip(args, str(e), [])
    rows, unreadable, too_large, pairs = [], [], [], 0
    for file, rel in zip(inputs.files, inputs.names):
        try:
            image, target = read(file)
        except _Fatal:
            raise
        except _TooLarge as e:
            _skip(args, str(e), too_large)
            continue
        except UserError as e:
            _skip(args, str(e), unreadable)
            continue
        result = translate_image(model.G, image, size, model.multiple, model.smallest)
        panels = [resize_unit(image, size).transpose(2, 0, 1), result]  # the input as the generator saw it
        if target is not None:
            pairs += 1
            if size is None and target.shape[:2] != image.shape[:2]:  # two-folder pairs of different sizes
                target = np.asarray(Image.fromarray(target).resize(image.shape[1::-1], Image.BICUBIC))
            panels.append(resize_unit(target, size).transpose(2, 0, 1))
        shown = [to_unit(panel[None])[0] for panel in panels]  # [3, h, w] in [0, 1]
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        save_image(shown[1], out / rel)
        (out / compare_dir / rel).parent.mkdir(parents=True, exist_ok=True)
        save_image(_side_by_side(shown), out / compare_dir / rel)
        rows.append((rel, Path(compare_dir) / rel))
    if not rows:
        raise UserError(f"{source}: none of its {len(inputs.files)} image(s) could be translated")
    columns = "input | output | target" if pairs else "input | output"
    write_index(out, rows, columns, model.direction)
    reasons = {"unreadable": len(unreadable), "too large": len(too_large), "non-image": inputs.skipped}
    skipped = ", ".join(f"{n} {reason}" for reason, n in reasons.items() if n)
    print(f"{PROG}: translated {len(rows)} image(s) {model.direction} into {out}/"
          + (f" ({pairs} A|B pair(s): {compare_dir}/ holds input | output | target)" if pairs else "")
          + (f"; {sum(reasons.values())} skipped ({skipped})" if skipped else "")
          + "; index.html shows them", flush=True)
    return 0


def main(argv=None) -> int:
    return run(PROG, _main, argv)


if __name__ == "__main__":
    sys.exit(main())
