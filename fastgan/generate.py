"""``python -m fastgan.generate CHECKPOINT --n 64 [--label K] --out grid.png [--seed S]``: images from the
checkpoint of a noise-to-image model (``Model.inference == "generate"``: gan, dcgan, cgan), as one grid
(--out FILE.png) or one file per image (--out DIR).

The images are made in blocks (CHUNK_IMAGES, CHUNK_BYTES): --out DIR streams them to disk, so a large --n
never holds them all; a grid must, and a --n whose grid cannot fit in memory is refused before anything is
computed (fastgan.limits), as is one whose files cannot fit on the disk. --out is checked first
(fastgan.outputs): never the input, a training run's files, or an existing file of another type unless
--overwrite."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from .errors import UserError
from .image_files import GRID_COLUMNS, make_grid, save_image, to_unit
from .limits import check_disk, check_fits
from .noise import generator_noise_chunks
from .onnx_backend import BACKENDS, OnnxGenerator, check_cpu, resolve_backend
from .outputs import check_output_dir, check_output_file, check_outputs_in_dir, is_image
from .train.cli import OneLineParser, run

PROG = "fastgan.generate"


def parse_args(argv):
    parser = OneLineParser(PROG, description="Generate images from a noise-to-image checkpoint (gan, dcgan, cgan).")
    parser.add_argument("checkpoint", help="checkpoint-*.pt written by fastgan.train, a run directory, "
                        "or a .onnx file written by fastgan.export")
    parser.add_argument("--n", type=int, default=64, help="number of images")
    parser.add_argument("--label", type=int, default=None,
                        help="cgan: class of every image (default: one row per class)")
    parser.add_argument("--out", default="generated.png",
                        help="a .png/.jpg file for one grid, or a directory for one PNG per image")
    parser.add_argument("--seed", type=int, default=0, help="noise seed")
    parser.add_argument("--columns", type=int, default=GRID_COLUMNS, help="images per grid row")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace existing files at --out that are not images (a run's own files never)")
    parser.add_argument("--backend", choices=BACKENDS, default="auto",
                        help="torch (a checkpoint) or onnxruntime (a .onnx file from fastgan.export); "
                             "auto: by the file's suffix")
    return parser.parse_args(argv)


def _load_generator(checkpoint, backend: str, device: str):
    """(G: numpy inputs -> numpy images, z_dim, num_classes (0: unconditional), model name) from a checkpoint
    or an exported .onnx file. Only the torch backend imports torch."""
    if backend == "onnxruntime":
        check_cpu(device)
        G = OnnxGenerator(checkpoint).require("generate")
        conditional = "labels" in G.inputs
        return G, int(G.session.get_inputs()[0].shape[1]), int(G.meta["num_classes"]) if conditional else 0, G.model
    import torch

    from .train.checkpoint import load_for_inference
    from .train.loop import resolve_device

    device = resolve_device(device)
    ckpt, model, nets = load_for_inference(checkpoint, "generate", lambda model: ["G"], device)
    classes = ckpt["info"]["num_classes"] if model.conditional else 0

    def G(*inputs: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            images = nets["G"](*(torch.from_numpy(x).to(device) for x in inputs))
        return images.float().cpu().numpy()  # sync: the images go to files

    return G, ckpt["config"]["z_dim"], classes, model.name


CHUNK_BYTES = 16 << 20  # images per generator call: at most this many bytes of float32 output, and
CHUNK_IMAGES = 1024  # at most this many images (the activations grow with them too)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
PNG_OVERHEAD = 1024  # bytes per file beyond its pixels, an upper bound of PNG's headers and deflate's blocks


def _check_label(label: int | None, classes: int, name: str) -> None:
    if not classes:
        if label is not None:
            raise UserError(f"--label {label}: this {name} is unconditional; only a model trained on classes takes one")
    elif label is not None and not 0 <= label < classes:
        raise UserError(f"--label {label}: this {name} has classes 0 to {classes - 1}")


def generate_chunks(G, z_dim: int, classes: int, n: int, label: int | None = None, seed: int = 0,
                    columns: int = GRID_COLUMNS, chunk: int = CHUNK_IMAGES) -> Iterator[np.ndarray]:
    """The n images of generate(), float32 [m, C, H, W] blocks of at most ``chunk`` images, in order: the
    noise is drawn block by block from one stream, so the images do not depend on the block size."""
    start = 0
    for z in generator_noise_chunks(seed, n, z_dim, chunk):
        index = np.arange(start, start + len(z))
        start += len(z)
        if not classes:
            yield G(z)
            continue
        labels = (index // columns) % classes if label is None else np.full(len(z), label)  # one row per class
        yield G(z, labels.astype(np.int64))


def generate(checkpoint, n: int = 64, label: int | None = None, seed: int = 0, columns: int = GRID_COLUMNS,
             device: str = "cpu", backend: str = "auto") -> np.ndarray:
    """n images, float32 [n, C, H, W] in [-1, 1], from a gan/dcgan/cgan checkpoint file (or run directory), or
    from an exported .onnx generator (``backend`` onnxruntime; auto picks it by the file's suffix). The noise
    is fastgan.noise.generator_noise(seed), so both backends draw the same images."""
    _check_counts(n, columns)
    G, z_dim, classes, name = _load_generator(checkpoint, resolve_backend(checkpoint, backend), device)
    _check_label(label, classes, name)
    return np.concatenate(list(generate_chunks(G, z_dim, classes, n, label, seed, columns)))


def _check_counts(n: int, columns: int) -> None:
    if n < 1:
        raise UserError(f"--n {n}: must be at least 1")
    if columns < 1:
        raise UserError(f"--columns {columns}: must be at least 1")


def _image_index(name: str) -> float:
    """i for the file f"{i:06d}.png" that --out DIR gets, inf for any other name."""
    stem = name.removesuffix(".png")
    return int(stem) if name.endswith(".png") and len(stem) >= 6 and stem.isdigit() else float("inf")


def _grid_bytes(n: int, columns: int, shape: tuple[int, ...], padding: int = 2) -> int:
    """Host bytes of a grid of n images of ``shape`` (C, H, W): the float32 images, their [0, 1] RGB copy,
    the float32 grid and its uint8 copy (fastgan.image_files.make_grid, save_image)."""
    c, h, w = shape
    rows = -(-n // columns)
    grid = 3 * (rows * (h + padding) + padding) * (columns * (w + padding) + padding)
    return n * (c + 3) * h * w * 4 + grid * (4 + 1)


def _main(argv) -> int:
    args = parse_args(argv)
    _check_counts(args.n, args.columns)
    out = Path(args.out)
    to_folder = args.out != "" and (out.is_dir() or not out.suffix)
    if to_folder:
        check_output_dir(out, inputs=[args.checkpoint])
        check_outputs_in_dir(out, lambda name: _image_index(name) < args.n, own_type=is_image, what="an image",
                             inputs=[args.checkpoint], overwrite=args.overwrite)
    else:
        check_output_file(args.out, own_type=is_image, what="an image", inputs=[args.checkpoint],
                          overwrite=args.overwrite)
        if out.suffix.lower() not in IMAGE_SUFFIXES:
            raise UserError(f"--out {out}: a grid is written as {', '.join(IMAGE_SUFFIXES)}; a name without a "
                            "suffix is a directory of one PNG per image")
    G, z_dim, classes, name = _load_generator(args.checkpoint, resolve_backend(args.checkpoint, args.backend),
                                              args.device)
    _check_label(args.label, classes, name)
    # One image first (the first of the n, from the same stream): its shape sizes the blocks and the checks.
    shape = next(generate_chunks(G, z_dim, classes, 1, args.label, args.seed, args.columns)).shape[1:]
    chunk = max(1, min(CHUNK_IMAGES, CHUNK_BYTES // (4 * int(np.prod(shape)))))
    chunks = generate_chunks(G, z_dim, classes, args.n, args.label, args.seed, args.columns, chunk)
    size = "x".join(map(str, shape[1:]))
    if to_folder:
        check_disk(f"--n {args.n}", args.n * (3 * shape[1] * shape[2] + PNG_OVERHEAD), out,
                   what=f"one {size} PNG per image")
        out.mkdir(parents=True, exist_ok=True)
        written = 0
        for block in chunks:
            for image in to_unit(block):
                save_image(image, out / f"{written:06d}.png")
                written += 1
        print(f"{PROG}: wrote {written} images to {out}/")
        return 0
    flag = f"--columns {args.columns}" if args.columns > args.n else f"--n {args.n}"
    check_fits(flag, _grid_bytes(args.n, args.columns, shape),
               what=f"a grid of {args.n} {size} images is built in memory; --out DIR writes one file per image")
    images = np.empty((args.n, *shape), dtype=np.float32)
    start = 0
    for block in chunks:
        images[start:start + len(block)] = block
        start += len(block)
    save_image(make_grid(to_unit(images), args.columns), out)
    print(f"{PROG}: wrote a grid of {args.n} images to {out}")
    return 0


def main(argv=None) -> int:
    return run(PROG, _main, argv)


if __name__ == "__main__":
    sys.exit(main())
