"""Running an exported ``.onnx`` generator with onnxruntime (``--backend onnxruntime`` of fastgan.generate
and fastgan.translate): the same command as for a checkpoint, on a graph that needs no fastgan code.

The export (fastgan.export) writes what inference needs into the ONNX model's metadata_props: the model
name, how it is served (generate or translate), the training size, the number of classes and, for
image-to-image models, the direction and the down-sampling factor.

Nothing here imports torch: with numpy, Pillow and onnxruntime installed, the onnxruntime backend runs
where PyTorch is not.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import UserError

BACKENDS = ("auto", "torch", "onnxruntime")


def resolve_backend(path, backend: str) -> str:
    """torch for checkpoints and run directories, onnxruntime for .onnx files; an explicit choice must match."""
    onnx_file = str(path).endswith(".onnx")
    if backend == "auto":
        backend = "onnxruntime" if onnx_file else "torch"
    if backend == "torch" and onnx_file:
        raise UserError(f"--backend torch: {path} is an ONNX model; use --backend onnxruntime")
    if backend == "onnxruntime" and not onnx_file:
        raise UserError(f"--backend onnxruntime: {path} is not a .onnx file; export one with python -m fastgan.export")
    if backend == "torch":
        try:
            import torch  # noqa: F401  (the torch backend's first import; here so a missing torch is one line)
        except ImportError:
            raise UserError(f"{path}: a PyTorch checkpoint needs PyTorch (pip install torch); where PyTorch is not "
                            "installed, export an .onnx with python -m fastgan.export and run that") from None
    return backend


def check_cpu(device: str) -> None:
    """onnxruntime runs here on its CPU provider: refuse a GPU rather than ignore the flag."""
    if device not in ("auto", "cpu"):
        raise UserError(f"--device {device}: --backend onnxruntime runs on the CPU; use --device cpu (or auto)")


class OnnxGenerator:
    """Calls an ONNX generator like the torch network, on numpy arrays: float32 (int64 labels) in, float32 out."""

    def __init__(self, path: str | Path):
        try:
            import onnxruntime
        except ImportError:
            raise UserError("--backend onnxruntime needs onnxruntime: pip install 'fastgan[onnx]'") from None
        path = Path(path)
        if not path.is_file():
            raise UserError(f"{path}: no such file")
        try:
            self.session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception types for unreadable graphs
            raise UserError(f"{path}: not a readable ONNX model ({str(e).splitlines()[0]})") from None
        meta = self.session.get_modelmeta().custom_metadata_map
        if "fastgan_model" not in meta:
            raise UserError(f"{path}: not exported by python -m fastgan.export (no fastgan metadata)")
        self.path, self.meta = path, meta
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.dtype = np.float16 if "float16" in self.session.get_inputs()[0].type else np.float32

    @property
    def model(self) -> str:
        return self.meta["fastgan_model"]

    def require(self, inference: str) -> OnnxGenerator:
        if self.meta["inference"] != inference:
            raise UserError(f"{self.path}: holds a {self.model} generator; use python -m fastgan."
                            f"{self.meta['inference']}")
        return self

    def __call__(self, *args: np.ndarray) -> np.ndarray:
        feeds = {}
        for name, array in zip(self.inputs, args):
            feeds[name] = array if array.dtype == np.int64 else array.astype(self.dtype)
        try:
            out = self.session.run(None, feeds)[0]
        except Exception as e:  # onnxruntime's own error types; the usual cause is a shape the export fixed
            shapes = {i.name: i.shape for i in self.session.get_inputs()}
            raise UserError(f"{self.path}: cannot run on inputs of shape "
                            f"{ {k: list(v.shape) for k, v in feeds.items()} } (the model takes {shapes}; "
                            f"export with --dynamic-batch/--dynamic-size, or --size checkpoint): "
                            f"{str(e).splitlines()[0]}") from None
        return out.astype(np.float32)
