"""DALI loaders (fastgan/data/dali.py) on tiny generated folders and IDX sets, with DALI's CPU operators
(device_id=None); the GPU variant is marked cuda. Pixels are compared with PIL and with the torch loader."""

import os
import struct
import sys

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("nvidia.dali", reason="NVIDIA DALI is not installed (pip install 'fastgan[dali]')")

from fastgan.data import DataRequest, build_loader, choose_loader  # noqa: E402
from fastgan.data.dali import build_dali_loader  # noqa: E402
from fastgan.errors import UserError  # noqa: E402
from fastgan.models import get_model  # noqa: E402


def _request(model: str, **kw) -> DataRequest:
    """The request that `model`'s trainer makes."""
    return DataRequest(kind=get_model(model).data_kind, model=model, **kw)

IMAGE_SIZE, LOAD_SIZE = 16, 20
ONE_LEVEL = 1 / 127.5  # one uint8 step in [-1, 1]


def _save(path, array: np.ndarray, mode: str = "RGB") -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(array).convert(mode).save(path)


def _noise(rng, h: int, w: int) -> np.ndarray:
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def _solid(value: int, size: int = LOAD_SIZE) -> np.ndarray:
    """An image whose every pixel says which file it came from (crop and flip cannot change it)."""
    return np.full((size, size, 3), value, dtype=np.uint8)


def _ids(batch: torch.Tensor) -> list[int]:
    """The file index of each solid image of a batch (values 10 * index + 5)."""
    pixels = (batch.float()[:, 0, 0, 0] + 1) * 127.5
    return [int(round((p - 5) / 10)) for p in pixels.tolist()]


@pytest.fixture
def mixed_folder(tmp_path):
    """Unpaired folder with odd sizes, grey, RGBA, palette and JPEG images in domain A."""
    rng = np.random.default_rng(0)
    root = tmp_path / "mixed"
    modes = ["RGB", "L", "RGBA", "P", "RGB", "RGB"]
    sizes = [(20, 20), (23, 37), (40, 20), (20, 31), (17, 17), (64, 48)]
    for i, (mode, (h, w)) in enumerate(zip(modes, sizes)):
        _save(str(root / "trainA" / f"{i}.png"), _noise(rng, h, w), mode)
    Image.fromarray(_noise(rng, 30, 30)).save(root / "trainA" / "6.jpg", quality=95)
    for i in range(4):
        _save(str(root / "trainB" / f"{i}.png"), _noise(rng, 24, 24))
    return str(root)


@pytest.fixture
def solid_folder(tmp_path):
    """Domain A: 8 solid images (ids 0-7), domain B: 5 (ids 0-4)."""
    root = tmp_path / "solid"
    for domain, n in (("trainA", 8), ("trainB", 5)):
        for i in range(n):
            _save(str(root / domain / f"{i}.png"), _solid(10 * i + 5))
    return str(root)


@pytest.fixture
def idx_dir(tmp_path):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (24, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, 24, dtype=np.uint8)
    root = tmp_path / "idx"
    root.mkdir()
    header = struct.pack(">4B3I", 0, 0, 8, 3, 24, 28, 28)  # IDX: magic (uint8, 3 dims), then the sizes
    (root / "train-images-idx3-ubyte").write_bytes(header + images.tobytes())
    (root / "train-labels-idx1-ubyte").write_bytes(struct.pack(">4BI", 0, 0, 8, 1, 24) + labels.tobytes())
    return str(root)


def _cyclegan(data, **kw):
    kw = {"batch_size": 2, "image_size": IMAGE_SIZE, "load_size": LOAD_SIZE, "workers": 0, **kw}
    return _request("cyclegan", data=data, **kw)


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_unpaired_batches_shape_dtype_layout_range(mixed_folder, memory_format, dtype):
    loader = build_dali_loader(_cyclegan(mixed_folder), torch.device("cpu"), "train", memory_format, dtype)
    assert len(loader) == 3  # 7 images in A (the larger domain), batch 2, drop_last
    assert loader.info == {
        "name": mixed_folder, "channels": 3, "image_size": IMAGE_SIZE, "num_classes": 0, "num_images": 7,
        "kind": "unpaired", "impl": "dali", "world_size": 1, "global_batch": 2,
        "counts": {"trainA": 7, "trainB": 4}, "skipped": {}, "classes": [],
    }  # fmt: skip
    batches = list(loader.epoch(0))
    assert len(batches) == 3
    for batch in batches:
        assert set(batch) == {"A", "B"}
        for x in batch.values():
            assert x.shape == (2, 3, IMAGE_SIZE, IMAGE_SIZE) and x.dtype == dtype
            assert x.is_contiguous(memory_format=memory_format)
            assert x.min() >= -1 and x.max() <= 1 and x.float().std() > 0.2  # noise images: spread values
    fixed = loader.fixed(3)
    assert fixed["A"].shape == fixed["B"].shape == (3, 3, IMAGE_SIZE, IMAGE_SIZE)


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_matches_torch_loader(mixed_folder, memory_format, dtype):
    """Same epoch plan (order, crops, flips) as the torch DataLoader path: equal up to resampling rounding."""
    cfg = _cyclegan(mixed_folder)
    dali = build_dali_loader(cfg, torch.device("cpu"), "train", memory_format, dtype)
    ref = build_loader(cfg, torch.device("cpu"), "train", memory_format, dtype)
    assert ref.info["impl"] == "torch"
    for epoch in (0, 1):
        for ours, theirs in zip(dali.epoch(epoch), ref.epoch(epoch), strict=True):
            for key in ("A", "B"):
                diff = (ours[key].float() - theirs[key].float()).abs()
                # DALI's and PIL's bicubic resampling differ by a few levels on pixel noise where they
                # downscale (antialiasing filters), by rounding elsewhere; JPEG decodes agree (libjpeg-turbo)
                assert diff.max() <= 16 * ONE_LEVEL
                assert diff.mean() <= 0.5 * ONE_LEVEL
    fixed_ours, fixed_theirs = dali.fixed(5), ref.fixed(5)
    for key in ("A", "B"):
        assert (fixed_ours[key].float() - fixed_theirs[key].float()).abs().mean() <= 0.5 * ONE_LEVEL


@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA", "P"])
@pytest.mark.parametrize(("top", "left", "flip"), [(0, 0, False), (4, 1, True), (2, 4, False), (3, 3, True)])
def test_same_pixels_as_pil_with_fixed_crop_and_flip(tmp_path, monkeypatch, mode, top, left, flip):
    """An image already at load_size (so the resize is exact): DALI's decode, RGB conversion, crop, flip and
    normalisation give exactly PIL's pixels. The plan is pinned to one crop and flip."""
    import fastgan.data.dali as dali_module
    from fastgan.data.loaders import DomainPlan

    rng = np.random.default_rng(2)
    array = np.concatenate([_noise(rng, LOAD_SIZE, LOAD_SIZE), rng.integers(0, 256, (LOAD_SIZE, LOAD_SIZE, 1),
                                                                               dtype=np.uint8)], axis=2)
    root = tmp_path / "one"
    for domain in ("trainA", "trainB"):
        (root / domain).mkdir(parents=True)
        img = Image.fromarray(array if mode == "RGBA" else array[..., :3]).convert(mode)
        img.save(root / domain / "x.png")
    expected = np.asarray(Image.open(root / "trainA" / "x.png").convert("RGB"), dtype=np.float32)
    expected = expected[top : top + IMAGE_SIZE, left : left + IMAGE_SIZE]
    if flip:
        expected = expected[:, ::-1]
    expected = torch.from_numpy((expected.transpose(2, 0, 1) - 127.5) / 127.5)

    def pinned_plan(spec, seed, epoch):
        one = lambda: DomainPlan(  # noqa: E731
            torch.zeros(1, dtype=torch.int64), torch.tensor([flip]), torch.tensor([[top, left]])
        )
        return {"A": one(), "B": one()}

    monkeypatch.setattr(dali_module, "epoch_plan", pinned_plan)
    loader = build_dali_loader(_cyclegan(str(root), batch_size=1), torch.device("cpu"))
    (batch,) = loader.epoch(0)
    for key in ("A", "B"):
        torch.testing.assert_close(batch[key][0], expected, rtol=0, atol=1e-6)
    if mode == "L":
        grey = batch["A"][0]
        assert torch.equal(grey[0], grey[1]) and torch.equal(grey[0], grey[2])


def test_determinism_independent_shuffles_and_resume(solid_folder):
    cfg = _cyclegan(solid_folder, seed=3)
    loader = build_dali_loader(cfg, torch.device("cpu"))
    assert len(loader) == 4  # 8 images in A
    orders = {}
    for epoch in (0, 1):
        batches = list(loader.epoch(epoch))
        again = list(build_dali_loader(cfg, torch.device("cpu")).epoch(epoch))
        for b1, b2 in zip(batches, again, strict=True):
            assert torch.equal(b1["A"], b2["A"]) and torch.equal(b1["B"], b2["B"])  # same seed, same batches
        a = [i for batch in batches for i in _ids(batch["A"])]
        b = [i for batch in batches for i in _ids(batch["B"])]
        assert sorted(a) == list(range(8))  # the larger domain: each image once per epoch
        assert sorted(b[:5]) == list(range(5)) and len(set(b[5:])) == 3  # the smaller: a permutation, cycled
        orders[epoch] = (a, b)
        for start in (1, 3, 4):  # resume: exactly the tail of the epoch
            tail = list(loader.epoch(epoch, start))
            assert len(tail) == 4 - start
            for b1, b2 in zip(tail, batches[start:], strict=True):
                assert torch.equal(b1["A"], b2["A"]) and torch.equal(b1["B"], b2["B"])
    assert orders[0][0] != orders[1][0] and orders[0][1] != orders[1][1]  # reshuffled every epoch
    assert orders[0][0][:5] != orders[0][1][:5] or orders[1][0][:5] != orders[1][1][:5]  # A, B independent
    other_seed = build_dali_loader(_cyclegan(solid_folder, seed=4), torch.device("cpu"))
    assert [i for batch in other_seed.epoch(0) for i in _ids(batch["A"])] != orders[0][0]


def test_out_buffers_receive_the_batches(solid_folder):
    loader = build_dali_loader(_cyclegan(solid_folder), torch.device("cpu"), "train", torch.channels_last)
    shape = (2, 3, IMAGE_SIZE, IMAGE_SIZE)
    out = {k: torch.full(shape, float("nan")).contiguous(memory_format=torch.channels_last) for k in "AB"}
    reference = list(loader.epoch(0))
    for batch, expected in zip(loader.epoch(0, out=out), reference, strict=True):
        assert batch["A"] is out["A"] and batch["B"] is out["B"]
        assert torch.equal(out["A"], expected["A"]) and torch.equal(out["B"], expected["B"])


@pytest.mark.parametrize("image_size", [28, 32])  # native, and resized in the pipeline
def test_idx_matches_device_loader(idx_dir, image_size):
    cfg = _request("dcgan", data=idx_dir, batch_size=5, image_size=image_size, seed=1)
    dali = build_dali_loader(cfg, torch.device("cpu"))
    ref = build_loader(cfg, torch.device("cpu"))
    assert ref.info["impl"] == "device" and dali.info == {**ref.info, "impl": "dali"}
    assert len(dali) == 4
    for ours, theirs in zip(dali.epoch(2, 1), ref.epoch(2, 1), strict=True):
        assert ours["real"].shape == (5, 1, image_size, image_size) and ours["real"].dtype == torch.float32
        assert ours["label"].dtype == torch.int64 and torch.equal(ours["label"], theirs["label"])
        torch.testing.assert_close(ours["real"], theirs["real"], rtol=0, atol=1e-5)
    fixed = dali.fixed(7)
    torch.testing.assert_close(fixed["real"], ref.fixed(7)["real"], rtol=0, atol=1e-5)
    assert torch.equal(fixed["label"], ref.fixed(7)["label"])


@pytest.mark.parametrize(
    ("data", "image_size"),
    [
        ("synthetic", 24),  # RGB in memory, no resize
        ("fashion-unpaired", 32),  # grey 28^2 -> RGB, upscaled
        ("fashion-unpaired", 20),  # downscaled: DALI's and torch's antialiasing filters differ slightly
    ],
)
def test_in_memory_unpaired_matches_device_loader(data, image_size):
    cfg = _request("cyclegan", data=data, batch_size=4, image_size=image_size, seed=2)
    try:
        ref = build_loader(cfg, torch.device("cpu"), "train", torch.channels_last, torch.float16)
    except UserError as e:  # Fashion-MNIST not installed
        pytest.skip(str(e))
    dali = build_dali_loader(cfg, torch.device("cpu"), "train", torch.channels_last, torch.float16)
    assert dali.info == {**ref.info, "impl": "dali"}
    last = len(ref) - 2  # the end of the epoch, where the smaller domain has been cycled
    for ours, theirs in zip(dali.epoch(1, last), ref.epoch(1, last), strict=True):
        for key in ("A", "B"):
            x = ours[key]
            assert x.shape == (4, 3, image_size, image_size) and x.dtype == torch.float16
            assert x.is_contiguous(memory_format=torch.channels_last)
            diff = (x.float() - theirs[key].float()).abs()
            if image_size >= 24:
                assert diff.max() <= 1e-3  # fp16 rounding only
            else:
                assert diff.max() <= 10 * ONE_LEVEL and diff.mean() <= ONE_LEVEL


def test_missing_dali_is_a_user_error_naming_the_install(monkeypatch, solid_folder):
    monkeypatch.setitem(sys.modules, "nvidia.dali", None)  # import nvidia.dali now raises ImportError
    monkeypatch.delitem(sys.modules, "fastgan.data.dali")
    with pytest.raises(UserError, match=r"pip install 'fastgan\[dali\]'"):
        build_loader(_cyclegan(solid_folder, loader="dali"), torch.device("cpu"))
    assert choose_loader(_cyclegan(solid_folder), torch.device("cuda")) == "torch"


def test_image_folder_with_classes(tmp_path):
    """DCGAN folders: class subfolders give labels; shorter side resized, centre crop."""
    rng = np.random.default_rng(3)
    for c in ("cats", "dogs"):
        for i in range(3):
            _save(str(tmp_path / "f" / c / f"{i}.png"), _noise(rng, 20, 20))
    cfg = _request("cgan", data=str(tmp_path / "f"), batch_size=3, image_size=IMAGE_SIZE, workers=0)
    dali = build_dali_loader(cfg, torch.device("cpu"))
    ref = build_loader(cfg, torch.device("cpu"), "train")
    assert dali.info["num_classes"] == 2 and dali.info["kind"] == "folder"
    for ours, theirs in zip(dali.epoch(0), ref.epoch(0), strict=True):
        assert ours["real"].shape == (3, 3, IMAGE_SIZE, IMAGE_SIZE)
        assert torch.equal(ours["label"], theirs["label"])
        assert (ours["real"] - theirs["real"]).abs().mean() <= ONE_LEVEL  # bilinear antialiasing differs


def test_corrupt_file_is_skipped_or_rejected(solid_folder):
    bad = os.path.join(solid_folder, "trainA", "bad.png")
    with open(bad, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n not really a png")
    with pytest.warns(UserWarning, match="bad.png"):
        loader = build_dali_loader(_cyclegan(solid_folder), torch.device("cpu"))
    assert loader.info["num_images"] == 8 and len(list(loader.epoch(0))) == 4
    with pytest.raises(UserError, match="bad.png"):
        build_dali_loader(_cyclegan(solid_folder, strict=True), torch.device("cpu"))


def test_empty_domain_is_a_user_error(solid_folder):
    for name in os.listdir(os.path.join(solid_folder, "trainB")):
        os.remove(os.path.join(solid_folder, "trainB", name))
    with pytest.raises(UserError, match="trainB"):
        build_dali_loader(_cyclegan(solid_folder), torch.device("cpu"))


def test_auto_chooses_dali_for_folders_on_cuda(solid_folder, idx_dir):
    # choose_loader looks at the device type only, so a CUDA device object needs no GPU here
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert choose_loader(_cyclegan(solid_folder), cuda) == "dali"
    assert choose_loader(_cyclegan(solid_folder), cpu) == "torch"
    assert choose_loader(_request("dcgan", data=idx_dir), cuda) == "device"
    assert choose_loader(_request("cyclegan", data="synthetic"), cuda) == "device"


@pytest.mark.cuda
@pytest.mark.parametrize(("memory_format", "dtype"), [(torch.contiguous_format, torch.float32),
                                                       (torch.channels_last, torch.bfloat16),
                                                       (torch.channels_last, torch.float16)])  # fmt: skip
def test_gpu_pipeline_matches_cpu_pipeline(mixed_folder, idx_dir, memory_format, dtype):
    """GPU decode (nvJPEG / nvImageCodec) and GPU operators against DALI's CPU pipeline."""
    idx = _request("dcgan", data=idx_dir, batch_size=4, image_size=32)
    for cfg in (_cyclegan(mixed_folder), idx):
        gpu = build_dali_loader(cfg, torch.device("cuda"), "train", memory_format, dtype)
        cpu = build_dali_loader(cfg, torch.device("cpu"), "train", memory_format, dtype)
        for ours, theirs in zip(gpu.epoch(1), cpu.epoch(1), strict=True):
            for key, x in ours.items():
                assert x.device.type == "cuda" and x.dtype == theirs[key].dtype
                assert x.is_contiguous(memory_format=memory_format) or x.dim() == 1
                diff = (x.cpu().float() - theirs[key].float()).abs()
                assert diff.max() <= 4 * ONE_LEVEL + 1 / 128 and diff.mean() <= ONE_LEVEL


@pytest.fixture
def modes_folder(tmp_path):
    """Domain A in the modes and formats DALI is trusted with (checked here against the torch loader)."""
    rng = np.random.default_rng(1)
    root = tmp_path / "modes"
    palette = Image.fromarray(_noise(rng, 24, 24)).quantize(8)
    for name, img in (("la.png", Image.fromarray(_noise(rng, 24, 24)).convert("LA")),
                      ("p.png", palette), ("one.png", Image.fromarray(_noise(rng, 24, 24)).convert("1")),
                      ("rgb.bmp", Image.fromarray(_noise(rng, 24, 24))),
                      ("rgb.tif", Image.fromarray(_noise(rng, 24, 24))),
                      ("rgb.ppm", Image.fromarray(_noise(rng, 24, 24))),
                      ("rgb.webp", Image.fromarray(_noise(rng, 24, 24)))):
        os.makedirs(root / "trainA", exist_ok=True)
        img.save(root / "trainA" / name, **({"lossless": True} if name.endswith("webp") else {}))
    palette.save(root / "trainA" / "pt.png", transparency=3)
    for i in range(4):
        _save(str(root / "trainB" / f"{i}.png"), _noise(rng, 24, 24))
    return str(root)


def test_modes_read_as_the_torch_loader_reads_them(modes_folder):
    request = _cyclegan(modes_folder, batch_size=8, load_size=IMAGE_SIZE)
    dali = build_dali_loader(request, torch.device("cpu"))
    assert dali.impl == "dali"
    ref = build_loader(_cyclegan(modes_folder, batch_size=8, load_size=IMAGE_SIZE, loader="torch"), "cpu")
    ours, theirs = dali.fixed(8), ref.fixed(8)
    assert (ours["A"] - theirs["A"]).abs().mean() <= ONE_LEVEL  # bicubic resampling differs slightly


def test_files_dali_is_not_trusted_with_go_to_the_torch_loader(solid_folder):
    g16 = os.path.join(solid_folder, "trainA", "g16.tif")
    Image.fromarray(np.full((LOAD_SIZE, LOAD_SIZE), 257 * 15, np.uint16)).save(g16)  # mode I;16
    with pytest.raises(UserError, match=r"--loader dali: .*g16.tif is a 16-bit grey image.*--loader torch"):
        build_loader(_cyclegan(solid_folder, loader="dali"), torch.device("cpu"))
    with pytest.warns(UserWarning, match="g16.tif is a 16-bit grey image.*torch loader instead of DALI"):
        loader = build_dali_loader(_cyclegan(solid_folder), torch.device("cpu"))  # as --loader auto on a GPU
    assert loader.impl == "torch"
    os.remove(g16)
    for flags in (dict(preprocess="crop"), dict(channels=1)):
        request = _cyclegan(solid_folder, loader="dali", **flags)
        with pytest.raises(UserError, match="--loader dali: --(preprocess crop|channels 1)"):
            build_loader(request, torch.device("cpu"))
    with pytest.raises(UserError, match="--loader dali: --channels 1 of an RGB set"):
        build_loader(_request("cyclegan", data="synthetic", batch_size=2, image_size=IMAGE_SIZE, loader="dali",
                              channels=1), torch.device("cpu"))
