"""``python -m fastgan.generate CHECKPOINT --n 64 [--label K] --out grid.png [--seed S]``: images from the
checkpoint of a noise-to-image model (``Model.inference == "generate"``: gan, dcgan, cgan), as one grid
(--out FILE.png) or one file per image (--out DIR)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from .errors import UserError
from .image_files import GRID_COLUMNS, make_grid, save_image, to_unit
from .noise import generator_noise
from .onnx_backend import BACKENDS, OnnxGenerator, check_cpu, resolve_backend
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


def generate(checkpoint, n: int = 64, label: int | None = None, seed: int = 0, columns: int = GRID_COLUMNS,
             device: str = "cpu", backend: str = "auto") -> np.ndarray:
    """n images, float32 [n, C, H, W] in [-1, 1], from a gan/dcgan/cgan checkpoint file (or run directory), or
    from an exported .onnx generator (``backend`` onnxruntime; auto picks it by the file's suffix). The noise
    is fastgan.noise.generator_noise(seed), so both backends draw the same images."""
    if n < 1:
        raise UserError(f"--n {n}: must be at least 1")
    if columns < 1:
        raise UserError(f"--columns {columns}: must be at least 1")
    G, z_dim, classes, name = _load_generator(checkpoint, resolve_backend(checkpoint, backend), device)
    z = generator_noise(seed, n, z_dim)
    if not classes:
        if label is not None:
            raise UserError(f"--label {label}: this {name} is unconditional; only a model trained on classes takes one")
        return G(z)
    if label is not None and not 0 <= label < classes:
        raise UserError(f"--label {label}: this {name} has classes 0 to {classes - 1}")
    if label is None:
        labels = (np.arange(n) // columns) % classes  # one row per class
    else:
        labels = np.full(n, label)
    return G(z, labels.astype(np.int64))


def _main(argv) -> int:
    args = parse_args(argv)
    images = generate(args.checkpoint, args.n, args.label, args.seed, args.columns, args.device, args.backend)
    out = Path(args.out)
    if out.is_dir() or not out.suffix:
        out.mkdir(parents=True, exist_ok=True)
        for i, image in enumerate(to_unit(images)):
            save_image(image, out / f"{i:06d}.png")
        print(f"{PROG}: wrote {len(images)} images to {out}/")
    else:
        if not out.parent.is_dir():
            raise UserError(f"--out {out}: directory {out.parent} does not exist")
        save_image(make_grid(to_unit(images), args.columns), out)
        print(f"{PROG}: wrote a grid of {len(images)} images to {out}")
    return 0


def main(argv=None) -> int:
    return run(PROG, _main, argv)


if __name__ == "__main__":
    sys.exit(main())
