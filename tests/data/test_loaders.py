import dataclasses

import pytest
import torch
import torch.nn.functional as F

from fastgan.data import build_loader
from fastgan.data.datasets import DataSpec, TensorSource, resolve_data
from fastgan.data.folders import load_resized_crop
from fastgan.data.loaders import FIXED_EPOCH, DeviceLoader, TorchLoader, epoch_plan, finish_batch, load_or_next
from fastgan.models import get_model


def _cfg(cfg, model=None, **changes):
    """The request with ``changes``; ``model`` asks as that registered model does (its data kind)."""
    if model is not None:
        changes.update(kind=get_model(model).data_kind, model=model)
    return dataclasses.replace(cfg, **changes)


def _spec(n_a=6, n_b=None, channels=1, image_size=8, flip=True, labels=True, source_size=8):
    """In-memory spec of constant-plane images equal to their index (batches reveal the order)."""

    def domain(n):
        images = (
            torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, channels, source_size, source_size)
        )
        return TensorSource(images.contiguous(), torch.arange(n) % 10 if labels else None)

    sources = {"real": domain(n_a)} if n_b is None else {"A": domain(n_a), "B": domain(n_b)}
    return DataSpec("test", "synthetic", sources, channels, image_size, 10 if labels else 0, flip, 0)


def _ids(images):
    """The image index each constant-plane image of a batch came from."""
    return ((images[:, 0, 0, 0].double() + 1) * 127.5).round().long().tolist()


def _same_batches(xs, ys):
    assert len(xs) == len(ys)
    for x, y in zip(xs, ys):
        assert x.keys() == y.keys()
        for k in x:
            assert torch.equal(x[k], y[k]), k


@pytest.mark.parametrize("n_a,n_b", [(7, 7), (5, 3), (3, 5)])  # equal domains; A larger; B larger
def test_epoch_plan_orders(n_a, n_b):
    plans = epoch_plan(_spec(n_a, n_b), seed=1, epoch=0)
    length = max(n_a, n_b)
    for plan, n in ((plans["A"], n_a), (plans["B"], n_b)):
        assert plan.order.shape == (length,) and plan.flip.shape == (length,) and plan.crop is None
        assert sorted(plan.order[:n].tolist()) == list(
            range(n)
        )  # a permutation, cycled if the domain is smaller
        assert set(plan.order.tolist()) == set(range(n))


def test_epoch_plan_is_a_function_of_seed_and_epoch():
    spec = _spec(50, 50)
    same = epoch_plan(spec, 3, 2), epoch_plan(spec, 3, 2)
    assert all(torch.equal(same[0][k].order, same[1][k].order) for k in "AB")
    assert all(torch.equal(same[0][k].flip, same[1][k].flip) for k in "AB")
    for other in (epoch_plan(spec, 3, 3), epoch_plan(spec, 4, 2)):
        assert not torch.equal(other["A"].order, same[0]["A"].order)
    # A and B are drawn independently: neither their orders nor their flips coincide.
    assert not torch.equal(same[0]["A"].order, same[0]["B"].order)
    assert not torch.equal(same[0]["A"].flip, same[0]["B"].flip)


def test_epoch_plan_crops_within_range():
    spec = dataclasses.replace(_spec(40), crop_range=5)
    crop = epoch_plan(spec, 0, 0)["real"].crop
    assert crop.shape == (40, 2) and crop.min() == 0 and crop.max() == 5


@pytest.mark.parametrize(
    "source_size,image_size", [(8, 8), (28, 64), (28, 13), (7, 5)]
)  # same; up; down; odd
@pytest.mark.parametrize("channels", [1, 3])
def test_finish_batch_against_float64_reference(source_size, image_size, channels):
    spec = _spec(4, channels=3, image_size=image_size)
    images = torch.randint(0, 256, (4, channels, source_size, source_size), dtype=torch.uint8)
    flip = torch.tensor([True, False, True, False])
    out = finish_batch(images, flip, spec, torch.contiguous_format, torch.float32)
    ref = images.double()
    if source_size != image_size:
        ref = F.interpolate(ref, size=(image_size,) * 2, mode="bilinear", antialias=source_size > image_size)
    ref = ref / 127.5 - 1
    ref = torch.where(flip.view(-1, 1, 1, 1), ref.flip(-1), ref).expand(-1, 3, -1, -1)
    assert out.shape == (4, 3, image_size, image_size) and out.dtype == torch.float32
    torch.testing.assert_close(out, ref.float(), rtol=0, atol=1e-5)
    assert out.min() >= -1 and out.max() <= 1


def test_finish_batch_exact_end_points():
    images = torch.tensor([0, 255], dtype=torch.uint8).view(2, 1, 1, 1).expand(2, 1, 4, 4)
    out = finish_batch(images, None, _spec(2, image_size=4), torch.contiguous_format, torch.float32)
    assert out[0].eq(-1).all() and out[1].eq(1).all()


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_finish_batch_layout_and_dtype(memory_format, dtype):
    images = torch.randint(0, 256, (3, 1, 6, 6), dtype=torch.uint8)
    out = finish_batch(images, None, _spec(3, channels=3, image_size=9), memory_format, dtype)
    assert out.dtype == dtype and out.is_contiguous(memory_format=memory_format) and out.shape == (3, 3, 9, 9)


def _loaders(spec, batch_size, seed=0, workers=0):
    args = (spec, batch_size, seed, torch.device("cpu"), torch.contiguous_format, torch.float32)
    return DeviceLoader(*args), TorchLoader(*args, workers=workers)


@pytest.mark.parametrize("impl", [0, 1])  # device, torch
def test_epoch_serves_every_image_once(impl):
    loader = _loaders(_spec(12, flip=False), batch_size=4)[impl]
    assert len(loader) == 3
    batches = list(loader.epoch(0))
    seen = [i for b in batches for i in _ids(b["real"])]
    assert sorted(seen) == list(range(12))
    assert [lab for b in batches for lab in b["label"].tolist()] == [i % 10 for i in seen]


@pytest.mark.parametrize("impl", [0, 1])
def test_drop_last(impl):
    loader = _loaders(_spec(11, flip=False), batch_size=4)[impl]
    assert len(loader) == 2 and len(list(loader.epoch(0))) == 2


@pytest.mark.parametrize("impl", [0, 1])
def test_resume_start_is_the_tail_of_the_epoch(impl):
    loader = _loaders(_spec(5, 3), batch_size=1)[impl]
    full = list(loader.epoch(4))
    assert len(full) == 5
    for start in (0, 1, 3, 5):
        _same_batches(list(loader.epoch(4, start=start)), full[start:])
    with pytest.raises(ValueError):
        next(loader.epoch(4, start=6))


@pytest.mark.parametrize("impl, workers", [(0, 0), (1, 0), (1, 2)])  # device; torch with 0 and 2 workers
def test_loaders_leave_the_global_rng_alone(impl, workers):
    # Training draws noise from the global RNG; a loader that draws from it too would break exact resume.
    loader = _loaders(_spec(8), batch_size=4, workers=workers)[impl]
    state = torch.get_rng_state()
    list(loader.epoch(0))
    assert torch.equal(torch.get_rng_state(), state)


def order(loader, epoch):
    return [i for b in loader.epoch(epoch) for i in _ids(b["real"])]


def test_orders_differ_across_epochs_and_seeds():
    spec = _spec(64, flip=False)
    device_loader, _ = _loaders(spec, 8, seed=0)
    assert order(device_loader, 0) == order(_loaders(spec, 8, seed=0)[0], 0)
    assert order(device_loader, 0) != order(device_loader, 1)
    assert order(device_loader, 0) != order(_loaders(spec, 8, seed=1)[0], 0)


def test_unpaired_epoch_is_the_larger_domain():
    device_loader, _ = _loaders(_spec(3, 7, labels=False), batch_size=2)
    assert len(device_loader) == 3  # 7 // 2
    batches = list(device_loader.epoch(0))
    assert all(b.keys() == {"A", "B"} for b in batches)
    b_ids = [i for b in batches for i in _ids(b["B"])]
    assert len(set(b_ids)) == 6  # B, the larger domain: 6 distinct images in 3 batches of 2


def test_flips_follow_the_plan():
    spec = _spec(16, flip=True)
    images = torch.arange(64, dtype=torch.uint8).view(1, 1, 8, 8).expand(16, 1, 8, 8).contiguous()
    spec.sources["real"] = TensorSource(images, torch.zeros(16, dtype=torch.int64))
    device_loader, _ = _loaders(spec, 16)
    batch = next(device_loader.epoch(2))["real"]
    flip = epoch_plan(spec, 0, 2)["real"].flip
    assert 0 < flip.sum() < 16
    plain = images.float() / 127.5 - 1
    for k in range(16):
        expected = plain[0].flip(-1) if flip[k] else plain[0]
        torch.testing.assert_close(batch[k], expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("workers", [0, 2])
def test_torch_loader_equals_device_loader_on_in_memory_data(workers):
    spec = _spec(9, 6, channels=1, image_size=12, source_size=7, labels=False)
    device_loader, torch_loader = _loaders(spec, 3, seed=5, workers=workers)
    for epoch in (0, 1):
        _same_batches(list(torch_loader.epoch(epoch)), list(device_loader.epoch(epoch)))
    _same_batches([torch_loader.fixed(10)], [device_loader.fixed(10)])


@pytest.mark.parametrize("impl", [0, 1])
def test_fixed_is_deterministic_and_unflipped(impl):
    spec = _spec(6, flip=True)
    loader = _loaders(spec, 2)[impl]
    fixed = loader.fixed(8)  # more than the dataset: cycles
    _same_batches([fixed], [_loaders(spec, 2)[impl].fixed(8)])
    ids = _ids(fixed["real"])
    assert sorted(ids[:6]) == list(range(6)) and ids[6:] == ids[:2]
    assert fixed["label"].tolist() == [i % 10 for i in ids]


def test_folder_loader_workers_do_not_change_batches(cfg, unpaired_dir):
    c = _cfg(cfg, model="cyclegan", data=unpaired_dir, image_size=16, batch_size=2, loader="torch")
    serial = build_loader(c, "cpu")
    parallel = build_loader(_cfg(c, workers=2), "cpu")
    _same_batches(list(parallel.epoch(1)), list(serial.epoch(1)))
    _same_batches(list(serial.epoch(1, start=1)), list(serial.epoch(1))[1:])


def test_folder_crops_follow_the_plan(cfg, unpaired_dir):
    c = _cfg(cfg, model="cyclegan", data=unpaired_dir, image_size=8, load_size=12, batch_size=5)
    loader = build_loader(c, "cpu")
    batch = next(loader.epoch(0))
    plan = epoch_plan(resolve_data(c), c.seed, 0)["A"]
    source = loader.spec.sources["A"]
    for k in range(5):
        top, left = plan.crop[k].tolist()
        x = load_resized_crop(source.paths[plan.order[k]], 12, 8, top, left).double() / 127.5 - 1
        x = x.flip(-1) if plan.flip[k] else x
        torch.testing.assert_close(batch["A"][k].double(), x, rtol=0, atol=1e-6)


@pytest.mark.cuda
@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_device_loader_on_cuda_matches_cpu_and_does_not_sync(memory_format):
    spec = _spec(64, 40, channels=1, image_size=32, source_size=28, labels=False)
    args = (spec, 8, 0)
    cpu = DeviceLoader(*args, torch.device("cpu"), memory_format, torch.float32)
    gpu = DeviceLoader(*args, torch.device("cuda"), memory_format, torch.bfloat16)
    batches = gpu.epoch(0)
    next(batches)  # the plan moves to the device at the first batch
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        gpu_batches = list(batches)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    for ours, ref in zip(gpu_batches, list(cpu.epoch(0))[1:]):
        for k in ("A", "B"):
            assert ours[k].is_cuda and ours[k].is_contiguous(memory_format=memory_format)
            torch.testing.assert_close(ours[k].float().cpu(), ref[k], rtol=0, atol=1e-2)


@pytest.mark.cuda
def test_torch_loader_on_cuda_pins_and_matches_cpu(cfg, unpaired_dir):
    c = _cfg(cfg, model="cyclegan", data=unpaired_dir, image_size=16, batch_size=2, workers=2, loader="torch")
    _same_batches(
        [{k: v.cpu() for k, v in b.items()} for b in build_loader(c, "cuda").epoch(0)],
        list(build_loader(c, "cpu").epoch(0)),
    )


def test_folder_fixed_is_the_centre_crop(cfg, unpaired_dir):
    c = _cfg(cfg, model="cyclegan", data=unpaired_dir, image_size=8, load_size=12, batch_size=2)
    loader = build_loader(c, "cpu")
    fixed = loader.fixed(3)
    for key in ("A", "B"):
        order = epoch_plan(loader.spec, c.seed, FIXED_EPOCH)[key].order
        for k in range(3):
            path = loader.spec.sources[key].paths[order[k]]
            x = load_resized_crop(path, 12, 8, 2, 2).double() / 127.5 - 1  # (12 - 8) // 2: centred, unflipped
            torch.testing.assert_close(fixed[key][k].double(), x, rtol=0, atol=1e-6)


def _solid_folder(root, datagen, n=4, size=16):
    for domain in ("trainA", "trainB"):
        for i in range(n):
            datagen.save_image(root / domain / f"{i}.png", size, size, seed=i)
    return str(root)


def test_no_flip(cfg, tmp_path, datagen):
    """--no-flip: every batch is the images as loaded (here preprocess none on 16x16 files: untouched)."""
    c = _cfg(cfg, model="cyclegan", data=_solid_folder(tmp_path, datagen), image_size=16, batch_size=4,
             preprocess="none")
    for flip, expect_flipped in ((False, False), (True, True)):
        loader = build_loader(_cfg(c, flip=flip), "cpu")
        plan = epoch_plan(loader.spec, 0, 0)["A"]
        assert (plan.flip is not None) == expect_flipped
        batch = next(loader.epoch(0))["A"]
        source = loader.spec.sources["A"]
        for k in range(4):
            x = source.load(int(plan.order[k]), None).float() / 127.5 - 1
            flipped = bool(plan.flip[k]) if plan.flip is not None else False
            torch.testing.assert_close(batch[k], x.flip(-1) if flipped else x)


@pytest.mark.parametrize("strict", [False, True])
def test_image_replaced_mid_run_with_workers(cfg, tmp_path, datagen, strict):
    """A file that decoded at start and is deleted or replaced by text later: its positions take the next
    image of the folder with one warning (not once per epoch, not DataLoader's multi-line worker error);
    --strict raises UnreadableImage naming it."""
    from fastgan.data.datasets import UnreadableImage

    root = _solid_folder(tmp_path, datagen)
    c = _cfg(cfg, model="cyclegan", data=root, image_size=16, batch_size=2, workers=2, strict=strict)
    loader = build_loader(c, "cpu")
    (tmp_path / "trainA" / "1.png").write_text("not a png any more")
    (tmp_path / "trainB" / "2.png").unlink()
    if strict:
        with pytest.raises(UnreadableImage) as e:
            list(loader.epoch(0))
        assert "trainA/1.png" in str(e.value) or "trainB/2.png" in str(e.value)
        return
    with pytest.warns(UserWarning) as record:
        for epoch in range(2):
            assert len(list(loader.epoch(epoch))) == 2
    messages = sorted(str(w.message) for w in record)
    assert len(messages) == 2 and "trainA/1.png" in messages[0] and "trainB/2.png" in messages[1]
    image, skipped = load_or_next(loader.spec.sources["A"], 1, None)
    torch.testing.assert_close(image, loader.spec.sources["A"].load(2, None))
    assert skipped[0][0].endswith("trainA/1.png")


def test_every_image_of_a_folder_gone_mid_run(cfg, tmp_path, datagen):
    """One line in the main process, not the worker's multi-line "Caught UserError in DataLoader worker"."""
    from fastgan.errors import UserError

    root = _solid_folder(tmp_path, datagen)
    loader = build_loader(_cfg(cfg, model="cyclegan", data=root, image_size=16, batch_size=2, workers=2), "cpu")
    for path in (tmp_path / "trainB").iterdir():
        path.unlink()
    with pytest.warns(UserWarning), pytest.raises(UserError) as e:
        list(loader.epoch(0))
    assert "trainB" in str(e.value) and "no image of its folder" in str(e.value) and "\n" not in str(e.value)
