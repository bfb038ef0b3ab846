"""NVIDIA DALI input pipelines behind the loader protocol of fastgan.data (`len`, `epoch`, `info`, `fixed`).

Image folders are read by one `fn.readers.file` per domain and decoded on the GPU (`device="mixed"`; with
a CPU device the same pipeline runs on CPU operators with `device_id=None`): grey and RGBA become RGB,
then resize (to --load-size, bicubic, for CycleGAN; shorter side to --image-size, bilinear, centre crop
for DCGAN folders), crop, horizontal flip and normalisation to [-1, 1] happen in one
`fn.crop_mirror_normalize` that writes the requested layout (CHW, or HWC for channels_last) and dtype
(fp32/fp16; DALI has no bf16, so bf16 batches are converted while being copied out). In-memory sets
(IDX, fashion-unpaired, synthetic) enter through `fn.external_source` one gathered uint8 batch at a time
and are resized, flipped and normalised in the pipeline.

Determinism and resume: a batch is a pure function of (seed, epoch). Every epoch uses the epoch plan of
the other loaders (fastgan.data.loaders.epoch_plan: per domain its own permutation, repeated to the larger
domain's length, plus the flips and crop offsets of every position), so DALI serves the batches the torch
loader serves, up to decoder and resampling differences. `epoch(epoch, start)` builds a fresh pipeline
whose file lists are that plan's order from position start * batch_size on and whose crops and flips are
fed per batch from the same plan; nothing before `start` is decoded. DALI's own `random_shuffle` is not
used: it shuffles within a buffer rather than drawing a permutation, and it cannot start mid-epoch.

Sharding (data-parallel training, DataRequest.rank/world_size): as the other loaders, rank r of W serves
the positions [i*B*W + r*B, i*B*W + (r+1)*B) of step i, so W ranks of batch B see what one process of batch
W*B sees, and every rank has the same number of batches. Each rank's pipeline reads only its own positions:
its file list and fed crops/flips are its part of the plan. DALI's reader sharding (`shard_id/num_shards`)
is not used: it splits the file list into contiguous blocks (moved every epoch unless stick_to_shard), so a
rank's batch i would not be its rows of the global batch i, and the in-memory sets do not go through a
reader at all.

Unreadable files are found before training by the PIL check of fastgan.data.folders (DALI stops a
pipeline at a corrupt image instead of skipping it): skipped with a warning naming the file, or a
UserError under --strict; an empty domain folder is a UserError.

What DALI does not serve (not_for_dali): files it is not checked to decode as Pillow and
fastgan.image_files.convert_image do (16-bit and float grey, CMYK, formats other than JPEG, PNG, BMP, TIFF,
WebP and PPM; fastgan.data.folders.dali_reason), grey folders (--channels 1) and the --preprocess modes other
than resize_and_crop. `--loader auto` then reads the folders with the torch loader and warns once, saying
why; an explicit `--loader dali` is a UserError naming the file or flag."""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator

import numpy as np
import torch
from nvidia.dali import fn, pipeline_def, types

from fastgan.data.datasets import DataSpec, FolderSource, resolve_data
from fastgan.data.loaders import TorchLoader, _Loader, epoch_plan
from fastgan.data.request import DataRequest
from fastgan.errors import UserError

# Output dtypes DALI writes itself; others are written as fp32 and converted during the copy out.
_DALI_DTYPES = {torch.float32: types.FLOAT, torch.float16: types.FLOAT16}
_MAX_THREADS = 8  # DALI CPU threads (JPEG parsing, Huffman decoding on the mixed decoder, CPU operators)


class DaliLoader(_Loader):
    """The loader protocol over DALI pipelines; one pipeline per epoch, batches on `device`."""

    impl = "dali"

    def __init__(
        self,
        spec: DataSpec,
        batch_size: int,
        seed: int,
        device: torch.device,
        memory_format: torch.memory_format,
        dtype: torch.dtype,
        rank: int = 0,
        world_size: int = 1,
    ):
        super().__init__(spec, batch_size, seed, device, memory_format, dtype, rank, world_size)
        if device.type == "cuda":
            self.device_id = device.index if device.index is not None else torch.cuda.current_device()
        else:
            self.device_id = None  # DALI's CPU-only mode: no CUDA context, CPU operators only
        self.threads = max(1, min(_MAX_THREADS, len(os.sched_getaffinity(0))))
        self.channels_last = memory_format == torch.channels_last
        # In-memory sets once in DALI's image layout, uint8 [N, h, w, C] on the host.
        self.images_hwc = {
            key: np.ascontiguousarray(source.images.numpy().transpose(0, 2, 3, 1))
            for key, source in spec.sources.items()
            if not isinstance(source, FolderSource)
        }

    # --- the pipeline ---

    def _build(self, feeds: dict[str, dict[str, np.ndarray]], batch_size: int, batches: int):
        """A pipeline serving `batches` batches; feeds[key] holds per-position host arrays of domain key:
        "files" (folders) or "images" (indices into images_hwc), "label", "crop_x", "crop_y", "mirror"."""
        spec = self.spec
        gpu = self.device_id is not None
        keys = list(spec.sources)
        names = [(key, name) for key in keys for name in feeds[key] if name != "files"]

        def source(info):
            # Prefetching asks for batches past the end; those are never copied out.
            i = min(info.iteration, batches - 1) * batch_size
            fed = []
            for key, name in names:
                if name == "images":  # gathered per batch: an epoch's copy of the set would cost its size
                    fed.append(self.images_hwc[key][feeds[key]["images"][i : i + batch_size]])
                else:
                    fed.append(feeds[key][name][i : i + batch_size])
            return tuple(fed)

        @pipeline_def(
            batch_size=batch_size,
            num_threads=self.threads,
            device_id=self.device_id,
            prefetch_queue_depth=2,
            seed=self.seed,  # unused by the graph (all randomness comes from the plan); fixed for safety
        )
        def pipeline():
            inputs = {}
            if names:
                fed = fn.external_source(source=source, num_outputs=len(names), batch=True, batch_info=True)
                inputs = dict(zip(names, fed))
            outputs = []
            for key in keys:
                outputs.append(self._domain(spec.sources[key], feeds[key], inputs, key, gpu))
                if (key, "label") in inputs:
                    label = inputs[key, "label"]
                    outputs.append(label.gpu() if gpu else label)
            return tuple(outputs)

        pipe = pipeline()
        pipe.build()
        return pipe

    def _domain(self, source, feed: dict, inputs: dict, key: str, gpu: bool):
        spec = self.spec
        size = spec.image_size
        if isinstance(source, FolderSource):
            encoded, _ = fn.readers.file(files=list(feed["files"]), random_shuffle=False, name=f"reader{key}")
            # output_type RGB converts grey (replicated) and RGBA (alpha dropped), as PIL's convert("RGB").
            images = fn.decoders.image(encoded, device="mixed" if gpu else "cpu", output_type=types.RGB)
            if source.half:  # aligned A|B files (pix2pix): this domain's half, before the square resize
                start = 0.5 if source.half == "right" else 0.0
                images = fn.slice(images, rel_start=[start], rel_shape=[0.5], axis_names="W")
            if source.load_size:  # CycleGAN: square resize, then the plan's crop
                images = fn.resize(
                    images, resize_x=source.load_size, resize_y=source.load_size,
                    interp_type=types.INTERP_CUBIC, antialias=True,
                )  # fmt: skip
            else:  # DCGAN folders: shorter side to image_size, centre crop
                images = fn.resize(
                    images, resize_shorter=size, interp_type=types.INTERP_LINEAR, antialias=True
                )
            channels = 3
        else:
            images = fn.reshape(inputs[key, "images"], layout="HWC")
            if gpu:
                images = images.gpu()
            channels = source.images.shape[1]
            if source.images.shape[-1] != size:
                # float output: the device loader resizes in fp32 too, with no rounding to uint8 between
                images = fn.resize(
                    images, resize_x=size, resize_y=size, interp_type=types.INTERP_LINEAR,
                    antialias=True, dtype=types.FLOAT,
                )  # fmt: skip
            if channels != spec.channels:
                images = fn.cat(*([images] * spec.channels), axis=2)
                channels = spec.channels
        args = {}
        if (key, "crop_x") in inputs:
            args.update(crop_pos_x=inputs[key, "crop_x"], crop_pos_y=inputs[key, "crop_y"])
        if (key, "mirror") in inputs:
            args["mirror"] = inputs[key, "mirror"]
        return fn.crop_mirror_normalize(
            images,
            crop=(size, size),
            mean=[127.5] * channels,
            std=[127.5] * channels,  # 0 -> -1, 255 -> 1
            dtype=_DALI_DTYPES.get(self.dtype, types.FLOAT),
            output_layout="HWC" if self.channels_last else "CHW",
            **args,
        )

    def _feeds(self, positions: dict[str, np.ndarray], flips: dict, crops: dict) -> dict:
        """Host arrays per position of each domain: what the reader or external source needs."""
        spec = self.spec
        feeds = {}
        for key, source in spec.sources.items():
            order = positions[key]
            feed = {}
            if isinstance(source, FolderSource):
                feed["files"] = np.array(source.paths, dtype=object)[order]
                if source.load_size:
                    crop_range = source.load_size - spec.image_size
                    crop = crops[key]
                    if crop is None:  # the centre, as FolderSource.load without an offset
                        crop = np.full((len(order), 2), crop_range // 2)
                    # crop_pos is normalised: DALI's offset is crop_pos * crop_range, exact for these ratios
                    pos = (crop / max(crop_range, 1)).astype(np.float32)
                    feed["crop_y"], feed["crop_x"] = np.ascontiguousarray(pos.T)  # DALI takes dense arrays
            else:
                feed["images"] = order  # indices into self.images_hwc[key]
            if source.labels is not None:
                feed["label"] = source.labels.numpy()[order]
            if flips[key] is not None:
                feed["mirror"] = flips[key].astype(np.int32)
            feeds[key] = feed
        return feeds

    # --- copying out ---

    def _empty(self, batch_size: int) -> torch.Tensor:
        c, s = self.spec.channels, self.spec.image_size
        if self.channels_last:
            return torch.empty(batch_size, s, s, c, dtype=self.dtype, device=self.device).permute(0, 3, 1, 2)
        return torch.empty(batch_size, c, s, s, dtype=self.dtype, device=self.device)

    def _empty_labels(self, batch_size: int) -> torch.Tensor:
        return torch.empty(batch_size, dtype=torch.int64, device=self.device)

    def _copy_out(self, dali_output, dest: torch.Tensor) -> torch.Tensor:
        """DALI's output into `dest` (NCHW shape, either memory format). On the GPU the copy is queued on
        the current stream with no host sync (DALI orders it after the producing work and keeps the
        buffer from being reused until it is done, NVIDIA/DALI#3953); on the CPU via a numpy view."""
        view = dest.permute(0, 2, 3, 1) if self.channels_last and dest.dim() == 4 else dest  # DALI's layout
        if self.device_id is None:
            view.copy_(torch.from_numpy(np.asarray(dali_output.as_tensor())))
            return dest
        from nvidia.dali.plugin.pytorch import feed_ndarray

        if not view.is_contiguous():  # feed_ndarray writes DALI's dense layout from data_ptr() on
            raise ValueError(f"out tensor of shape {list(dest.shape)} is not in the loader's memory format")
        stream = torch.cuda.current_stream(self.device)
        if dest.dim() == 4 and self.dtype not in _DALI_DTYPES:
            staging = torch.empty(view.shape, dtype=torch.float32, device=self.device)
            feed_ndarray(dali_output.as_tensor(), staging, cuda_stream=stream)
            view.copy_(staging)
        else:
            feed_ndarray(dali_output.as_tensor(), view, cuda_stream=stream)
        return dest

    def _run(self, pipe, batch_size: int, out: dict | None) -> dict[str, torch.Tensor]:
        outputs = iter(pipe.run())
        batch = {}
        for key in self.spec.sources:
            batch[key] = self._copy_out(next(outputs), out[key] if out else self._empty(batch_size))
            if self.spec.sources[key].labels is not None:
                labels = out["label"] if out else self._empty_labels(batch_size)
                batch["label"] = self._copy_out(next(outputs), labels)
        return batch

    # --- the protocol ---

    def epoch(self, epoch: int, start: int = 0, out: dict | None = None) -> Iterator[dict[str, torch.Tensor]]:
        """Batches `start`, ..., len - 1 of `epoch`. With `out` (a dict of tensors shaped like a batch, e.g.
        the static inputs of captured CUDA graphs) every batch is written into those tensors instead."""
        self._check_start(start)
        batches = len(self) - start
        if batches == 0:
            return
        b = self.batch_size
        window = self._positions(start).numpy()  # this rank's positions, batch after batch
        plans = epoch_plan(self.spec, self.seed, epoch)
        positions = {k: p.order.numpy()[window] for k, p in plans.items()}
        flips = {k: None if p.flip is None else p.flip.numpy()[window] for k, p in plans.items()}
        crops = {k: None if p.crop is None else p.crop.numpy()[window] for k, p in plans.items()}
        pipe = self._build(self._feeds(positions, flips, crops), b, batches)
        for _ in range(batches):
            yield self._run(pipe, b, out)

    def fixed(self, n: int) -> dict[str, torch.Tensor]:
        positions = {k: idx.numpy() for k, idx in self._fixed_plan(n).items()}
        none = dict.fromkeys(positions)
        pipe = self._build(self._feeds(positions, none, none), n, 1)
        return self._run(pipe, n, None)


def build_dali_loader(
    req: DataRequest,
    device: torch.device | str,
    split: str = "train",
    memory_format: torch.memory_format = torch.contiguous_format,
    dtype: torch.dtype = torch.float32,
) -> DaliLoader:
    """The DALI loader of req.data for `split`, serving rank req.rank's share of every step on `device`.

    Args:
        req: what to load (data, image_size, load_size, batch_size, seed, strict) and, for data-parallel
            training, which share: rank req.rank of req.world_size (fastgan.data.loaders, module docstring).
        device: where batches land; "cpu" runs DALI's CPU operators (device_id=None).
        split: "train" or "test" (trainA/trainB or testA/testB for unpaired folders).
        memory_format: torch.contiguous_format (DALI writes CHW) or torch.channels_last (HWC).
        dtype: torch.float32, float16 (written by DALI) or bfloat16 (converted on the copy out).
    """
    device = torch.device(device)
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"--device {device}: DALI serves cpu or cuda devices")
    if dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"dtype {dtype}: expected torch.float32, float16 or bfloat16")
    spec = resolve_data(req, split)
    reason = not_for_dali(spec)
    if reason:
        if req.loader == "dali":
            raise UserError(f"--loader dali: {reason}; use --loader torch (or auto)")
        warnings.warn(f"{reason}: reading the folders with the torch loader instead of DALI", stacklevel=2)
        return TorchLoader(spec, req.batch_size, req.seed, device, memory_format, dtype, req.workers, req.rank,
                           req.world_size, req.strict)
    return DaliLoader(spec, req.batch_size, req.seed, device, memory_format, dtype, req.rank, req.world_size)


def not_for_dali(spec: DataSpec) -> str:
    """Why DALI should not serve ``spec`` ("" when it may): folders it does not decode as Pillow does (16-bit,
    float, CMYK: fastgan.data.folders.dali_reason), grey folders (--channels 1) and the --preprocess modes
    other than resize_and_crop, which DaliLoader does not implement."""
    for source in spec.sources.values():
        if not isinstance(source, FolderSource):
            if source.images.shape[1] > spec.channels:  # the pipeline replicates grey, it does not make it
                return f"--channels {spec.channels} of an RGB set"
            continue
        if source.not_for_dali:
            path, why = next(iter(source.not_for_dali.items()))
            more = len(source.not_for_dali) - 1
            return f"{path} is {why}" + (f" (and {more} more file(s))" if more else "") + \
                ", which DALI's decoders are not checked against"
        if source.channels != 3:
            return "--channels 1 (grey folders)"
        if source.load_size and source.preprocess != "resize_and_crop":
            return f"--preprocess {source.preprocess}"
    return ""


__all__ = ["DaliLoader", "build_dali_loader", "not_for_dali"]
