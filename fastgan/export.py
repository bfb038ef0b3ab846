"""``python -m fastgan.export CHECKPOINT|RUN_DIR --format onnx|exported-program``: the generator(s) of a
checkpoint as files that run without fastgan: ONNX (onnxruntime, TensorRT, ...) or a torch.export program
(``.pt2``, reloaded with ``torch.export.load``).

- Standard operators only. fastgan's fast layers are switched to their reference implementation
  (``impl="ref"``) while exporting rather than taught to the exporters: the reference is plain PyTorch
  (F.pad(mode="reflect") + conv, F.instance_norm + activation, F.leaky_relu), which both exporters already
  translate (ONNX ``Pad`` with mode=reflect, ``InstanceNormalization``), and a second translation of each
  custom op would be one more thing to keep equal to the reference. The weights define the model: a
  checkpoint trained on the fast path exports the same graph as one trained on the reference path.
- What is exported comes from the model's registry entry: noise-to-image models (``inference ==
  "generate"``) export G with inputs ``z`` [B, z_dim] (and ``labels`` int64 [B] when conditional);
  image-to-image models export one file per direction (``translators``), input ``image`` [B, C, H, W] in
  [-1, 1], output in [-1, 1].
- ``--dynamic-size`` (image-to-image only) exports height and width as symbols constrained to multiples of
  the model's down-sampling factor; ``--size`` must be such a multiple.
"""

from __future__ import annotations

import copy
import math
import shutil
import sys
import tempfile
import warnings
from pathlib import Path

import torch

from .errors import UserError
from .files import atomic_write
from .limits import bytes_per_pixel, check_image_size, runs_on_meta, smallest_side
from .models import get_model
from .nn import set_impl
from .outputs import check_output_file, is_exported_program, is_onnx_model
from .train.checkpoint import load_checkpoint
from .train.cli import OneLineParser, run
from .train.tasks import nets_from_checkpoint

PROG = "fastgan.export"
FORMATS = {"onnx": ".onnx", "exported-program": ".pt2"}
OWN_TYPES = {"onnx": is_onnx_model, "exported-program": is_exported_program}  # files it may replace
WHAT = {"onnx": "an ONNX model", "exported-program": "an exported program"}
DEFAULT_OPSET = 18  # InstanceNormalization, Pad(mode=reflect) and every op the generators use


class ExportSpec:
    """One network to export: its example inputs, their names and (optional) dynamic dimensions."""

    def __init__(self, name: str, net: torch.nn.Module, inputs: dict[str, torch.Tensor],
                 dynamic: dict[str, dict[int, torch.export.Dim]] | None):
        self.name, self.net, self.inputs, self.dynamic = name, net, inputs, dynamic


def export_specs(checkpoint, direction: str | None = None, size: int | None = None, dynamic_batch: bool = False,
                 dynamic_size: bool = False, half: bool = False, device="cpu") -> tuple[list[ExportSpec], dict]:
    """The networks of ``checkpoint`` to export, on their reference implementation, in eval mode."""
    device = torch.device(device)

    def names(model):
        return ["G"] if model.inference == "generate" else sorted(set(model.translators.values()))

    ckpt = load_checkpoint(checkpoint, map_location=device)
    model = get_model(ckpt["model"])
    nets = nets_from_checkpoint(ckpt, names(model), device)
    cfg, info = ckpt["config"], ckpt["info"]
    batch = torch.export.Dim("batch", min=1, max=4096) if dynamic_batch else None
    # A static export takes one image at a time; a dynamic batch is traced with two, since torch.export
    # specialises dimensions of size 1.
    n = 2 if dynamic_batch else 1
    dtype = torch.float16 if half else torch.float32
    specs = []
    if model.inference == "generate":
        if dynamic_size:
            raise UserError(f"--dynamic-size: {model.name} generates images of one size from noise; "
                            "only image-to-image models are fully convolutional")
        if size is not None:
            raise UserError(f"--size: {model.name} generates {cfg['image_size']}x{cfg['image_size']} images only")
        G = _prepare(nets["G"], dtype)
        inputs = {"z": torch.randn(n, cfg["z_dim"], device=device, dtype=dtype)}
        if model.conditional:
            inputs["labels"] = torch.arange(n, device=device) % info["num_classes"]
        dynamic = {name: ({0: batch} if batch is not None else {}) for name in inputs}
        specs.append(ExportSpec("G", G, inputs, dynamic if batch is not None else None))
        return specs, ckpt
    size = size or cfg["image_size"]
    multiple = model.input_multiple(cfg)
    if size < multiple or size % multiple:
        raise UserError(f"--size {size}: {model.name} takes sides that are multiples of {multiple} "
                        f"(it down-samples by {multiple}), e.g. {max(multiple, size // multiple * multiple)}")
    if dynamic_size and size == multiple:
        size = 2 * multiple  # torch.export specialises a side of one block (size 1 deep inside the network)
    for d, generator in _directions(model, cfg, direction).items():
        _check_side(nets[generator], info["channels"], size, multiple, model.name, device, n)
        net = _prepare(nets[generator], dtype)
        x = torch.rand(n, info["channels"], size, size, device=device, dtype=dtype) * 2 - 1
        dims = {}
        if batch is not None:
            dims[0] = batch
        if dynamic_size:
            # Symbols times the factor: the exported graph itself only admits sides the network takes.
            dims[2] = multiple * torch.export.Dim("height_blocks", min=1, max=1024)
            dims[3] = multiple * torch.export.Dim("width_blocks", min=1, max=1024)
        specs.append(ExportSpec(d, net, {"image": x}, {"image": dims} if dims else None))
    return specs, ckpt


def _check_side(net: torch.nn.Module, channels: int, size: int, multiple: int, name: str, device, n: int) -> None:
    """--size within the generator's range: not below the smallest side it takes (found on the meta device),
    and its example's pass within the memory of ``device`` (fastgan.limits)."""
    per_pixel = n * bytes_per_pixel(net, channels, multiple)
    if not runs_on_meta(net, channels)(size):
        smallest = smallest_side(runs_on_meta(net, channels), multiple)
        if smallest is not None and size < smallest:
            raise UserError(f"--size {size}: the {name} generator takes sides of at least {smallest}")
        per_pixel = math.inf  # beyond what a tensor's size can describe
    check_image_size(f"--size {size}", size, size, per_pixel, str(device), channels, verb="export")


def _directions(model, cfg: dict, direction: str | None) -> dict[str, str]:
    """direction -> generator network to export: the one asked for, or one file per generator the
    checkpoint has (cyclegan: AtoB and BtoA; pix2pix: the direction it was trained in)."""
    if direction is not None:
        chosen, generator = model.translator(cfg, direction)
        return {chosen: generator}
    found: dict[str, str] = {}
    for d in model.translators:
        try:
            chosen, generator = model.translator(cfg, d)
        except UserError:
            continue  # a direction this checkpoint has no generator for
        if generator not in found.values():
            found[chosen] = generator
    return found


def _prepare(net: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    net = copy.deepcopy(net).to(dtype).eval()
    set_impl(net, "ref")  # standard operators only (see the module docstring)
    for p in net.parameters():
        p.requires_grad_(False)
    return net


def export_one(spec: ExportSpec, path: Path, fmt: str, opset: int = DEFAULT_OPSET,
               metadata: dict | None = None) -> Path:
    """Writes one network to ``path`` (.onnx or .pt2) atomically, as one self-contained file; returns the path.
    ``metadata`` (ONNX only) goes into the model's metadata_props, for fastgan.generate/translate --backend
    onnxruntime."""
    args = tuple(spec.inputs.values())
    names = list(spec.inputs)
    dynamic = tuple(spec.dynamic[n] for n in names) if spec.dynamic else None
    # The exporters write beside their target (torch.onnx a FILE.onnx.data of the weights): into a scratch
    # folder, so that a failed export leaves nothing at `path` and a finished one leaves nothing else.
    with torch.no_grad(), warnings.catch_warnings(), tempfile.TemporaryDirectory(
            dir=path.parent, prefix=f".{path.name}.") as scratch:
        warnings.simplefilter("ignore")  # the exporters' progress chatter; errors still raise
        staged = Path(scratch) / path.name
        if fmt == "exported-program":
            program = torch.export.export(spec.net, args, dynamic_shapes=dynamic)
            torch.export.save(program, str(staged))
        else:
            try:
                import onnx
                import onnxscript  # noqa: F401  (torch.onnx's exporter needs it; say so before it fails)
            except ImportError:
                raise UserError("--format onnx needs the onnx extra: pip install 'fastgan[onnx]'") from None
            torch.onnx.export(spec.net, args, str(staged), input_names=names, output_names=["images"],
                              dynamic_shapes=dynamic, opset_version=opset, dynamo=True,
                              verbose=False, optimize=True)
            model = onnx.load(str(staged))  # the weights inline: one file to deploy (generators are far below 2 GB)
            if metadata:
                onnx.helper.set_model_props(model, {k: str(v) for k, v in metadata.items()})
            onnx.save(model, str(staged))
        atomic_write(path, lambda tmp: shutil.copyfile(staged, tmp))
    return path


def onnx_metadata(ckpt: dict, spec: ExportSpec) -> dict:
    """What inference needs besides the graph: the model, the training size, classes, the direction."""
    model = get_model(ckpt["model"])
    info = {"fastgan_model": model.name, "image_size": ckpt["config"]["image_size"],
            "num_classes": ckpt["info"].get("num_classes", 0), "size_multiple": model.input_multiple(ckpt["config"]),
            "inference": model.inference, "data_kind": model.data_kind}
    if model.inference == "translate":  # min_size: what fastgan.translate pads small inputs up to
        channels = ckpt["info"].get("channels", 3)
        smallest = smallest_side(runs_on_meta(spec.net, channels), info["size_multiple"])
        info.update(direction=spec.name, min_size=smallest or info["size_multiple"])
    return info


def _out_paths(out: str | None, checkpoint: str, specs: list[ExportSpec], fmt: str) -> list[Path]:
    suffix = FORMATS[fmt]
    base = Path(out) if out is not None else Path(checkpoint).with_suffix("") if Path(checkpoint).is_file() \
        else Path(checkpoint) / "generator"
    if base.suffix and base.suffix != suffix:
        raise UserError(f"--out {out}: a {fmt} file ends in {suffix}")
    stem = base.with_suffix("")
    if len(specs) == 1:
        return [stem.with_suffix(suffix)]
    return [stem.with_name(f"{stem.name}-{spec.name}").with_suffix(suffix) for spec in specs]


def _main(argv) -> int:
    parser = OneLineParser(PROG, description="Export the generator(s) of a fastgan checkpoint.")
    parser.add_argument("checkpoint", help="checkpoint-*.pt or a run directory")
    parser.add_argument("--format", choices=tuple(FORMATS), default="onnx",
                        help="onnx: a .onnx file for onnxruntime, TensorRT and other ONNX runtimes; exported-program: "
                             "a torch.export .pt2 file for PyTorch (torch.export.load) and AOTInductor "
                             "(default: onnx)")
    parser.add_argument("--out", default=None, help="output file (several directions: -AtoB/-BtoA are appended)")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help="ONNX opset")
    parser.add_argument("--dynamic-batch", action="store_true", help="batch size as a symbol")
    parser.add_argument("--dynamic-size", action="store_true",
                        help="image-to-image models: height and width as symbols (multiples of the "
                             "down-sampling factor)")
    parser.add_argument("--size", type=int, default=None,
                        help="image-to-image models: the example's side (default: the training size)")
    parser.add_argument("--direction", default=None, help="image-to-image models: AtoB or BtoA (default: all)")
    parser.add_argument("--half", action="store_true", help="fp16 weights and inputs")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace existing --out files of another type (a run's own files never)")
    args = parser.parse_args(argv)
    if args.out == "":
        check_output_file(args.out, own_type=OWN_TYPES[args.format], what=WHAT[args.format])  # refuses it
    if args.opset < DEFAULT_OPSET:
        raise UserError(f"--opset {args.opset}: fastgan's generators need opset {DEFAULT_OPSET} or newer")
    specs, ckpt = export_specs(args.checkpoint, args.direction, args.size, args.dynamic_batch, args.dynamic_size,
                            args.half)
    paths = _out_paths(args.out, args.checkpoint, specs, args.format)
    for path in paths:  # all of them before the first is written
        check_output_file(path, own_type=OWN_TYPES[args.format], what=WHAT[args.format], inputs=[args.checkpoint],
                          overwrite=args.overwrite)
    for spec, path in zip(specs, paths):
        export_one(spec, path, args.format, args.opset, onnx_metadata(ckpt, spec))
        print(f"{PROG}: wrote {spec.name} to {path}")
    return 0


def main(argv=None) -> int:
    return run(PROG, _main, argv)


if __name__ == "__main__":
    sys.exit(main())
