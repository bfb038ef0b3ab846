"""``python -m fastgan.translate CHECKPOINT --direction AtoB|BtoA INPUT --out DIR``: translate an image or
a folder of images with an image-to-image checkpoint (``Model.inference == "translate"``: cyclegan,
pix2pix); output files keep the input's names (and subfolders). The model says which of its generators
translates a direction (``Model.translator``): cyclegan has one per direction, a pix2pix checkpoint only the
one of its training's --direction, which is also its default."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from .errors import UserError
from .image_files import list_images, read_image, save_image, to_unit
from .onnx_backend import BACKENDS, OnnxGenerator, check_cpu, resolve_backend
from .train.cli import OneLineParser, run

PROG = "fastgan.translate"
DIRECTIONS = ("AtoB", "BtoA")


def parse_args(argv):
    parser = OneLineParser(PROG, description="Translate images with an image-to-image checkpoint (cyclegan, "
                                             "pix2pix).")
    parser.add_argument("checkpoint", help="checkpoint-*.pt written by fastgan.train cyclegan or pix2pix, a run "
                        "directory, or a .onnx file written by fastgan.export")
    parser.add_argument("input", help="an image file or a folder of images")
    parser.add_argument("--direction", choices=DIRECTIONS, default=None,
                        help="AtoB translates domain A images into domain B (cyclegan: G_A), BtoA the reverse "
                             "(default: AtoB; pix2pix: the direction it was trained in, the only one it has)")
    parser.add_argument("--out", required=True, help="output directory (created); file names are kept")
    parser.add_argument("--size", default="checkpoint",
                        help="checkpoint (resize to the training resolution), input (keep each "
                             "image's size), or N pixels (square)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of test-time dropout (pix2pix, torch backend), set again for every image")
    parser.add_argument("--backend", choices=BACKENDS, default="auto",
                        help="torch (a checkpoint) or onnxruntime (a .onnx file from fastgan.export); "
                             "auto: by the file's suffix")
    return parser.parse_args(argv)


def _target_size(size: str, trained: int, multiple: int) -> int | None:
    if size == "checkpoint":
        return trained
    if size == "input":
        return None
    if not size.isdigit() or int(size) < multiple:
        raise UserError(f"--size {size}: use checkpoint, input, or a size in pixels of at least {multiple}")
    return int(size)


def translate_image(G: Callable[[np.ndarray], np.ndarray], image: np.ndarray, size: int | None,
                    multiple: int = 4) -> np.ndarray:
    """uint8 [H, W, 3] -> float32 [3, h, w] in [-1, 1] at ``size`` x ``size`` (None: the image's own size).
    ``G`` maps float32 [1, 3, H, W] to [1, 3, H, W] (either backend); ``multiple``: the generator's
    down-sampling factor (sides are padded to a multiple of it)."""
    x = image.astype(np.float32) / 127.5 - 1
    if size is not None:
        # Pillow's float-mode bilinear resize antialiases like F.interpolate(..., antialias=True) (torch's is
        # a port of it; equal to 4e-7 here) and needs no torch.
        x = np.stack([np.asarray(Image.fromarray(x[:, :, c]).resize((size, size), Image.BILINEAR))
                      for c in range(x.shape[2])], axis=-1)
    h, w = x.shape[:2]
    # Reflect-pad to a multiple of the generator's stride, translate, crop back.
    pad_h, pad_w = -h % multiple, -w % multiple
    if pad_h or pad_w:
        x = np.pad(x, ((0, pad_h), (0, pad_w), (0, 0)), mode="reflect" if min(h, w) > multiple else "edge")
    y = G(np.ascontiguousarray(x.transpose(2, 0, 1)[None]))
    return np.clip(y[0, :, :h, :w], -1, 1)


def _load_translator(args) -> tuple[Callable[[np.ndarray], np.ndarray], str, int, int]:
    """(G, direction, training size, down-sampling factor) from a checkpoint or an exported .onnx file. Only
    the torch backend imports torch."""
    if resolve_backend(args.checkpoint, args.backend) == "onnxruntime":
        check_cpu(args.device)
        G = OnnxGenerator(args.checkpoint).require("translate")
        direction = G.meta["direction"]
        if args.direction not in (None, direction):
            raise UserError(f"--direction {args.direction}: {args.checkpoint} translates {direction} only "
                            f"(fastgan.export writes one file per direction)")
        return G, direction, int(G.meta["image_size"]), int(G.meta["size_multiple"])
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

    return G, direction, ckpt["config"]["image_size"], model.input_multiple(ckpt["config"])


def _main(argv) -> int:
    args = parse_args(argv)
    G, direction, trained, multiple = _load_translator(args)
    size = _target_size(args.size, trained, multiple)
    source = Path(args.input)
    if source.is_dir():
        files = [Path(p) for p in list_images(str(source))]
        names = [p.relative_to(source) for p in files]
    elif source.is_file():
        files, names = [source], [Path(source.name)]
    else:
        raise UserError(f"{source}: no such image file or folder")
    out = Path(args.out)
    for file, rel in zip(files, names):
        target = out / rel
        if target.resolve() == file.resolve():
            raise UserError(f"--out {out}: would overwrite the input {file}; choose another directory")
    for file, rel in zip(files, names):
        result = translate_image(G, read_image(str(file)), size, multiple)
        target = out / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        save_image(to_unit(result[None])[0], target)
    print(f"{PROG}: translated {len(files)} image(s) {direction} into {out}/")
    return 0


def main(argv=None) -> int:
    return run(PROG, _main, argv)


if __name__ == "__main__":
    sys.exit(main())
