"""Data-parallel sharding of every loader (device, torch, DALI on its CPU operators): W ranks of batch B serve
exactly the batches of one process of batch W*B, split by rows (fastgan/data/loaders.py, module docstring)."""

import dataclasses

import pytest
import torch

from fastgan.data import DataRequest, build_loader
from fastgan.data.datasets import DataSpec, TensorSource
from fastgan.data.loaders import DeviceLoader, TorchLoader
from fastgan.errors import UserError

CPU = torch.device("cpu")


@pytest.fixture
def wide_unpaired_dir(tmp_path, datagen):
    """Unpaired folder of 9 A and 4 B images (mixed sizes, modes and formats): two global batches of 4."""
    return datagen.make_unpaired_dir(tmp_path / "unpaired", n_a=9, n_b=4)


@pytest.fixture
def paired_dir(tmp_path, datagen):
    """trainA/ trainB/ folders of 9 same-named images."""
    for i in range(9):
        for domain in ("trainA", "trainB"):
            datagen.save_image(tmp_path / "paired" / domain / f"{i}.png", 12 + i, 11, seed=i + 10 * len(domain))
    return str(tmp_path / "paired")


# (name, request fields, loaders): every data kind, in memory and from folders; image sizes kept tiny.
CASES = [
    ("images-idx", dict(kind="images"), ("device", "torch", "dali")),  # labelled, 20 images
    ("labelled-synthetic", dict(kind="labelled", data="synthetic", image_size=8), ("device", "dali")),
    ("unpaired-synthetic", dict(kind="unpaired", data="synthetic", image_size=8), ("device", "dali")),
    ("unpaired-folder", dict(kind="unpaired", image_size=8, load_size=10), ("torch", "dali")),  # random crops
    ("paired-synthetic", dict(kind="paired", data="synthetic", image_size=8), ("device", "dali")),
    ("paired-folder", dict(kind="paired", image_size=8, load_size=10), ("torch", "dali")),  # shared crops
]
PARAMS = [pytest.param(name, fields, impl, id=f"{name}-{impl}") for name, fields, impls in CASES for impl in impls]


def _request(name, fields, impl, idx_dir, wide_unpaired_dir, paired_dir, **changes) -> DataRequest:
    folder = {"images-idx": idx_dir, "unpaired-folder": wide_unpaired_dir, "paired-folder": paired_dir}
    req = DataRequest(**fields, loader=impl, workers=0, seed=5)
    if name in folder:
        req = dataclasses.replace(req, data=folder[name])
    return dataclasses.replace(req, **changes)


def _build(req: DataRequest):
    if req.loader == "dali":
        pytest.importorskip("nvidia.dali", reason="NVIDIA DALI is not installed (pip install 'fastgan[dali]')")
    return build_loader(req, CPU)


def _assert_same(x: dict, y: dict) -> None:
    assert x.keys() == y.keys()
    for key in x:
        assert torch.equal(x[key], y[key]), key


@pytest.mark.parametrize("world_size,batch_size", [(2, 2), (3, 1)])  # two ranks; three ranks of one image
@pytest.mark.parametrize("name,fields,impl", PARAMS)
def test_ranks_split_the_global_batch(name, fields, impl, world_size, batch_size, idx_dir, wide_unpaired_dir,
                                      paired_dir):
    """Rank r's batch i is rows r*B..(r+1)*B of the one-process batch i of batch W*B (images, labels, flips,
    crops); len is the same on every rank; resume gives each rank the tail of its epoch; fixed() is not
    sharded."""
    req = _request(name, fields, impl, idx_dir, wide_unpaired_dir, paired_dir, batch_size=batch_size)
    single = _build(dataclasses.replace(req, batch_size=batch_size * world_size))
    ranks = [_build(dataclasses.replace(req, rank=r, world_size=world_size)) for r in range(world_size)]
    assert len(single) >= 2
    for loader in ranks:
        assert len(loader) == len(single)
        assert loader.info == {**single.info, "world_size": world_size}
        assert loader.info["global_batch"] == batch_size * world_size
    epoch = 1
    expected = list(single.epoch(epoch))
    served = [list(loader.epoch(epoch)) for loader in ranks]
    for i, whole in enumerate(expected):
        parts = [batches[i] for batches in served]
        assert all(v.shape[0] == batch_size for part in parts for v in part.values())
        _assert_same({k: torch.cat([part[k] for part in parts]) for k in whole}, whole)
    for loader, batches in zip(ranks, served):
        tail = list(loader.epoch(epoch, start=1))
        assert len(tail) == len(batches) - 1
        for ours, theirs in zip(tail, batches[1:]):
            _assert_same(ours, theirs)
        assert list(loader.epoch(epoch, start=len(loader))) == []
        _assert_same(loader.fixed(3), single.fixed(3))


def _indexed_spec(n_a: int, n_b: int | None = None) -> DataSpec:
    """Constant-plane images equal to their index, so a batch says which images it holds."""

    def domain(n):
        return TensorSource(torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 1, 4, 4).contiguous(),
                            torch.arange(n))

    sources = {"real": domain(n_a)} if n_b is None else {"A": domain(n_a), "B": domain(n_b)}
    return DataSpec("indexed", "synthetic", sources, 1, 4, n_a, True, 0)


def _ids(images: torch.Tensor) -> list[int]:
    return ((images[:, 0, 0, 0].double() + 1) * 127.5).round().long().tolist()


def _make(impl: str, spec: DataSpec, batch_size: int, rank: int, world_size: int):
    common = (spec, batch_size, 7, CPU, torch.contiguous_format, torch.float32)
    if impl == "device":
        return DeviceLoader(*common, rank, world_size)
    if impl == "torch":
        return TorchLoader(*common, 0, rank, world_size)
    pytest.importorskip("nvidia.dali", reason="NVIDIA DALI is not installed (pip install 'fastgan[dali]')")
    from fastgan.data.dali import DaliLoader

    return DaliLoader(*common, rank, world_size)


@pytest.mark.parametrize("impl", ["device", "torch", "dali"])
@pytest.mark.parametrize(
    "n,batch_size,world_size",
    [(12, 2, 3), (14, 2, 3), (9, 1, 4)],  # epoch = two global batches exactly; two left over; 4 ranks of 1
)
def test_one_epoch_covers_each_position_once(impl, n, batch_size, world_size):
    """Across the ranks an epoch serves disjoint positions, each image at most once, every image when the
    global batch divides the data; the rows follow the epoch plan's order."""
    loaders = [_make(impl, _indexed_spec(n), batch_size, r, world_size) for r in range(world_size)]
    steps = n // (batch_size * world_size)
    assert [len(loader) for loader in loaders] == [steps] * world_size
    for epoch in (0, 3):
        seen = [_ids(batch["real"]) for loader in loaders for batch in loader.epoch(epoch)]
        ids = [i for ids in seen for i in ids]
        assert len(ids) == len(set(ids)) == steps * batch_size * world_size
        if n % (batch_size * world_size) == 0:
            assert sorted(ids) == list(range(n))
        # step-major: step i's global batch is ranks 0..W-1's batch i, in plan order
        plan = _make(impl, _indexed_spec(n), batch_size * world_size, 0, 1)
        whole = [i for batch in plan.epoch(epoch) for i in _ids(batch["real"])]
        by_step = [seen[r * steps + i] for i in range(steps) for r in range(world_size)]
        assert [i for ids in by_step for i in ids] == whole


@pytest.mark.parametrize("impl", ["device", "torch", "dali"])
def test_unpaired_domains_shard_alike(impl):
    """Two domains of different sizes: each rank serves the same positions of both domains' plans."""
    single = _make(impl, _indexed_spec(10, 4), 4, 0, 1)
    ranks = [_make(impl, _indexed_spec(10, 4), 2, r, 2) for r in range(2)]
    for whole, *parts in zip(single.epoch(2), *(loader.epoch(2) for loader in ranks), strict=True):
        for key in ("A", "B", "label"):
            assert torch.equal(torch.cat([part[key] for part in parts]), whole[key])


@pytest.mark.parametrize("impl", ["device", "torch", "dali"])
@pytest.mark.parametrize("rank,world_size", [(-1, 2), (2, 2), (0, 0)])
def test_bad_rank_or_world_size(idx_dir, impl, rank, world_size):
    if impl == "dali":
        pytest.importorskip("nvidia.dali", reason="NVIDIA DALI is not installed (pip install 'fastgan[dali]')")
    req = DataRequest(kind="images", data=idx_dir, batch_size=2, loader=impl, workers=0, rank=rank,
                      world_size=world_size)
    with pytest.raises(ValueError, match=rf"rank {rank}, world_size {world_size}: expected"):
        build_loader(req, CPU)
    with pytest.raises(ValueError, match="world_size"):
        _make(impl, _indexed_spec(8), 2, rank, world_size)


@pytest.mark.parametrize("impl", ["device", "torch", "dali"])
@pytest.mark.parametrize(
    "batch_size,world_size,advice",
    [
        (8, 3, "use --batch-size up to 6 or fewer processes"),  # 24 > 20 images, though 8 fits one process
        (1, 21, "use at most 20 processes"),  # more processes than images
        (30, 2, "use --batch-size up to 10 or fewer processes"),  # not even one process's batch fits
    ],
)
def test_global_batch_larger_than_the_data(idx_dir, impl, batch_size, world_size, advice):
    if impl == "dali":
        pytest.importorskip("nvidia.dali", reason="NVIDIA DALI is not installed (pip install 'fastgan[dali]')")
    req = DataRequest(kind="images", data=idx_dir, batch_size=batch_size, loader=impl, workers=0, rank=1,
                      world_size=world_size)
    with pytest.raises(UserError) as e:
        build_loader(req, CPU)
    message = str(e.value)
    assert "\n" not in message
    assert message == (f"--batch-size {batch_size} on {world_size} processes: a step takes a global batch of "
                       f"{batch_size * world_size} images but {idx_dir} has 20; {advice}")
    with pytest.raises(UserError, match=f"--batch-size {batch_size} on {world_size} processes"):
        _make(impl, _indexed_spec(20), batch_size, 0, world_size)


def test_one_global_batch_exactly_fits(idx_dir):
    """The boundary: 20 images, 4 processes of batch 5 take the whole set in one step."""
    loader = build_loader(DataRequest(kind="images", data=idx_dir, batch_size=5, rank=3, world_size=4), CPU)
    assert len(loader) == 1 and loader.info["global_batch"] == 20


def test_synthetic_data_follows_the_global_batch():
    """Synthetic sets hold at least two global batches, and W processes of batch B get the set of one process
    of batch W*B (so the equivalence above holds for synthetic data at any batch size)."""
    req = DataRequest(kind="images", data="synthetic", image_size=8, batch_size=1500, world_size=2)
    sharded = build_loader(req, CPU)
    single = build_loader(dataclasses.replace(req, batch_size=3000, world_size=1), CPU)
    assert sharded.info["num_images"] == single.info["num_images"] == 6000 and len(sharded) == len(single) == 2
    assert torch.equal(sharded.fixed(4)["real"], single.fixed(4)["real"])

