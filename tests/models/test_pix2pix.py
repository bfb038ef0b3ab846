"""pix2pix (fastgan/models/pix2pix.py): the networks against the published counts and the reference layout,
the training step against a hand-written reference step, learning, exact resume, the CLI, translate, and the
engine (CUDA graphs, AMP, fast paths; the CUDA tests are marked)."""

import copy
import json
import os
import struct
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from fastgan.data import datasets as datasets_module
from fastgan.errors import UserError
from fastgan.models import ArchitectureError, get_model, init_weights
from fastgan.models.cyclegan import PatchDiscriminator
from fastgan.models.pix2pix import DropoutAtTest, UnetGenerator
from fastgan.train.__main__ import main as train_main
from fastgan.train.checkpoint import latest_checkpoint, load_checkpoint
from fastgan.train.config import TrainConfig
from fastgan.train.graphs import GraphedTrainStep, _Snapshot, configure_engine, make_train_step
from fastgan.train.loop import resolve_config, train
from fastgan.train.steps import train_step
from fastgan.train.tasks import build_task
from fastgan.translate import main as translate_main

ENV = os.environ | {"OMP_NUM_THREADS": "1"}


# --- UnetGenerator ------------------------------------------------------------------------------------

def _count(build) -> int:
    with torch.device("meta"):  # counts without allocating 54 M parameters
        return sum(p.numel() for p in build().parameters())


@pytest.mark.parametrize("build, expected", [
    (lambda: UnetGenerator(), 54_413_955),  # the published unet_256 with BatchNorm, "54.414 M"
    (lambda: UnetGenerator(depth=7), 41_828_995),  # unet_128, "41.829 M"
    (lambda: UnetGenerator(norm="instance"), 54_409_603),  # InstanceNorm: no affine norms, biases on every conv
    (lambda: PatchDiscriminator(6, norm="batch"), 2_768_705),  # the conditional 70x70 PatchGAN, "2.769 M"
    (lambda: PatchDiscriminator(6), 2_767_809),  # its InstanceNorm form
])
def test_parameter_counts(build, expected):
    assert _count(build) == expected


class _PlainBlock(nn.Module):
    """One level of the reference's recursive U-Net (UnetSkipConnectionBlock) in plain torch.nn, with its
    in-place LeakyReLU and ReLU: outermost, innermost, or a level between them around ``sub``."""

    def __init__(self, outer, inner, norm, in_channels=None, sub=None, outermost=False, innermost=False,
                 dropout=False):
        super().__init__()
        bias = norm is nn.InstanceNorm2d
        down = nn.Conv2d(in_channels or outer, inner, 4, 2, 1, bias=bias)
        if outermost:
            layers = [down, sub, nn.ReLU(True), nn.ConvTranspose2d(2 * inner, outer, 4, 2, 1), nn.Tanh()]
        elif innermost:
            layers = [nn.LeakyReLU(0.2, True), down, nn.ReLU(True),
                      nn.ConvTranspose2d(inner, outer, 4, 2, 1, bias=bias), norm(outer)]
        else:
            layers = [nn.LeakyReLU(0.2, True), down, norm(inner), sub, nn.ReLU(True),
                      nn.ConvTranspose2d(2 * inner, outer, 4, 2, 1, bias=bias), norm(outer)]
            layers += [nn.Dropout(0.5)] if dropout else []
        self.model, self.outermost = nn.Sequential(*layers), outermost

    def forward(self, x):
        return self.model(x) if self.outermost else torch.cat([x, self.model(x)], 1)


def _plain_unet(depth, ngf, norm):
    block = _PlainBlock(ngf * 8, ngf * 8, norm, innermost=True)
    for _ in range(depth - 5):
        block = _PlainBlock(ngf * 8, ngf * 8, norm, sub=block, dropout=True)
    for outer in (4, 2, 1):
        block = _PlainBlock(ngf * outer, ngf * outer * 2, norm, sub=block)
    return _PlainBlock(3, ngf, norm, in_channels=3, sub=block, outermost=True)


def test_plain_reference_layout_has_the_published_count():
    assert _count(lambda: _plain_unet(8, 64, nn.BatchNorm2d)) == 54_413_955


@pytest.mark.parametrize("norm, plain_norm", [("batch", nn.BatchNorm2d), ("instance", nn.InstanceNorm2d)])
@pytest.mark.parametrize("depth, size", [(6, (64, 64)), (7, (128, 256))])  # one and two dropout levels
def test_generator_matches_the_reference_layout(norm, plain_norm, depth, size):
    g = init_weights(UnetGenerator(ngf=4, depth=depth, norm=norm).double(), std=0.3)
    plain = _plain_unet(depth, 4, plain_norm).double()
    ours, theirs = list(g.parameters()), list(plain.parameters())
    assert [p.shape for p in ours] == [p.shape for p in theirs]
    with torch.no_grad():
        for a, b in zip(ours, theirs):
            b.copy_(a)
    x = torch.randn(2, 3, *size, dtype=torch.float64)
    torch.manual_seed(5)
    expected = plain(x)  # train mode: dropout on, batch statistics
    torch.manual_seed(5)
    torch.testing.assert_close(g(x), expected)  # the same dropout masks, drawn in the same order


@pytest.mark.parametrize("depth, size", [
    (5, (32, 32)),  # the smallest U-Net, 1x1 bottleneck
    (5, (96, 64)),  # non-square, 3x2 bottleneck
    (6, (64, 64)),
])
def test_generator_shape(depth, size):
    y = UnetGenerator(3, 1, ngf=4, depth=depth)(torch.randn(2, 3, *size))
    assert y.shape == (2, 1, *size) and y.abs().max() <= 1


def test_generator_rejects_bad_arguments():
    with pytest.raises(ArchitectureError, match="depth=4") as err:
        UnetGenerator(depth=4)
    assert isinstance(err.value, UserError)
    with pytest.raises(ArchitectureError, match="norm='group'"):
        UnetGenerator(norm="group")
    with pytest.raises(ArchitectureError, match="norm='group'"):
        PatchDiscriminator(norm="group")


@pytest.mark.parametrize("depth, dropouts", [(5, 0), (6, 1), (8, 3)])
def test_dropout_levels_and_test_time_noise(depth, dropouts):
    with torch.device("meta"):
        assert sum(isinstance(m, DropoutAtTest) for m in UnetGenerator(depth=depth).modules()) == dropouts
    g = UnetGenerator(ngf=4, depth=depth).eval()
    x = torch.randn(1, 3, 2**depth, 2**depth)
    torch.manual_seed(1)
    a = g(x)
    torch.manual_seed(1)
    assert torch.equal(a, g(x))
    assert torch.equal(a, g(x)) == (dropouts == 0)  # eval mode keeps dropout on, as the paper's test protocol


def test_batchnorm_uses_batch_statistics_in_eval_mode():
    g = UnetGenerator(ngf=4, depth=5)
    assert not list(g.buffers())  # no running statistics to go stale
    x = torch.randn(1, 3, 32, 32)
    train_out = g(x)
    torch.testing.assert_close(g.eval()(x), train_out, rtol=0, atol=0)


@pytest.mark.parametrize("norm, expected", [
    ("instance", {"leaky_relu": 1, "instance_norm_act": 7, "tanh": 1}),  # 2 down + 5 up norms at depth 5
    ("batch", {"leaky_relu": 1, "batch_norm_act": 7, "tanh": 1}),  # the first conv; 3 down + 4 up norms
])
def test_generator_uses_every_fused_layer(check_fused_layers, norm, expected):
    g = UnetGenerator(ngf=4, depth=5, norm=norm, dropout=0)  # no dropout: the check runs forward twice
    check_fused_layers(g, torch.randn(2, 3, 32, 32), expected=expected)


def test_discriminator_batchnorm_matches_plain_layout():
    d = init_weights(PatchDiscriminator(6, ndf=4, norm="batch").double(), std=0.3)
    plain = nn.Sequential(
        nn.Conv2d(6, 4, 4, 2, 1), nn.LeakyReLU(0.2),
        nn.Conv2d(4, 8, 4, 2, 1, bias=False), nn.BatchNorm2d(8), nn.LeakyReLU(0.2),
        nn.Conv2d(8, 16, 4, 2, 1, bias=False), nn.BatchNorm2d(16), nn.LeakyReLU(0.2),
        nn.Conv2d(16, 32, 4, 1, 1, bias=False), nn.BatchNorm2d(32), nn.LeakyReLU(0.2),
        nn.Conv2d(32, 1, 4, 1, 1)).double()
    with torch.no_grad():
        for a, b in zip(d.parameters(), plain.parameters(), strict=True):
            b.copy_(a)
    x = torch.randn(2, 6, 48, 40, dtype=torch.float64)
    torch.testing.assert_close(d(x), plain(x))


def test_channels_last_under_bf16_autocast():
    g = UnetGenerator(ngf=4, depth=5).to(memory_format=torch.channels_last)
    d = PatchDiscriminator(6, ndf=4, norm="batch").to(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 32, 32).to(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fake = g(x)
        logits = d(torch.cat([x, fake], 1))
    assert fake.dtype == torch.bfloat16 and fake.is_contiguous(memory_format=torch.channels_last)
    assert logits.shape == (2, 1, 2, 2)
    logits.float().mean().backward()
    assert g.down[0].weight.grad.abs().sum() > 0


# --- the model definition: recipe, phases, sampler ----------------------------------------------------

def test_recipe_and_resolved_defaults():
    cfg = resolve_config(TrainConfig(model="pix2pix", device="cpu"))
    assert (cfg.data, cfg.batch_size, cfg.epochs, cfg.epochs_decay, cfg.lr, cfg.beta1, cfg.beta2) == \
        ("fashion-edges", 1, 100, 100, 2e-4, 0.5, 0.999)
    assert (cfg.image_size, cfg.load_size, cfg.unet_depth, cfg.norm, cfg.gan_loss, cfg.lambda_l1, cfg.direction,
            cfg.ngf, cfg.ndf) == (256, 286, 8, "batch", "vanilla", 100.0, "AtoB", 64, 64)
    for size, depth in ((128, 7), (64, 6), (32, 5), (96, 5), (512, 8)):
        assert resolve_config(TrainConfig(model="pix2pix", device="cpu", image_size=size)).unet_depth == depth
    saved = cfg.to_dict()
    assert "pool_size" not in saved and "lambda_cycle" not in saved and saved["unet_depth"] == 8


def tiny_cfg(out="", **overrides) -> TrainConfig:
    base = dict(model="pix2pix", device="cpu", data="synthetic", out=str(out), image_size=64, ngf=4, ndf=4,
                batch_size=2, sample_every=0, save_every=0, log_every=1, seed=3)
    return TrainConfig(**(base | overrides))


INFO = {"name": "synthetic", "channels": 3, "image_size": 64, "num_classes": 0, "num_images": 64,
        "kind": "synthetic", "impl": "device"}


def make_task(device="cpu", **overrides):
    """A tiny pix2pix task (depth 6: one dropout level) with --impl/--channels-last applied as the loop does."""
    cfg = resolve_config(tiny_cfg(device=str(device), **overrides))
    torch.manual_seed(cfg.seed)
    return configure_engine(build_task(cfg, INFO | {"image_size": cfg.image_size}, torch.device(device)), cfg), cfg


def make_batches(cfg, n, device="cpu"):
    gen = torch.Generator().manual_seed(123)
    shape = (cfg.batch_size, 3, cfg.image_size, cfg.image_size)
    fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format
    return [{k: (torch.rand(shape, generator=gen) * 2 - 1).to(device).contiguous(memory_format=fmt) for k in "AB"}
            for _ in range(n)]


@pytest.mark.parametrize("direction", ["AtoB", "BtoA"])
def test_step_is_the_reference_step(direction):
    """Two train_steps equal the reference's optimize_parameters written out by hand: one G forward, D on
    (source, fake detached) and (source, target) halved, then G against the updated D with lambda_L1 * L1."""
    task, cfg = make_task(direction=direction)
    G, D = copy.deepcopy(task.nets["G"]), copy.deepcopy(task.nets["D"])
    opt_g = torch.optim.Adam(G.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(D.parameters(), lr=2e-4, betas=(0.5, 0.999))
    bce = nn.BCEWithLogitsLoss()
    batches = make_batches(cfg, 2)
    source, target = ("A", "B") if direction == "AtoB" else ("B", "A")
    for seed, batch in enumerate(batches):
        torch.manual_seed(seed)  # the dropout masks
        train_step(task, batch, {})
        torch.manual_seed(seed)
        real_a, real_b = batch[source], batch[target]
        fake = G(real_a)
        opt_d.zero_grad()
        pred_fake = D(torch.cat([real_a, fake.detach()], 1))
        pred_real = D(torch.cat([real_a, real_b], 1))
        (0.5 * (bce(pred_fake, torch.zeros_like(pred_fake)) + bce(pred_real, torch.ones_like(pred_real)))).backward()
        opt_d.step()
        D.requires_grad_(False)
        opt_g.zero_grad()
        pred = D(torch.cat([real_a, fake], 1))
        (bce(pred, torch.ones_like(pred)) + 100 * F.l1_loss(fake, real_b)).backward()
        opt_g.step()
        D.requires_grad_(True)
    for name, reference in (("G", G), ("D", D)):
        for (key, ours), theirs in zip(task.nets[name].state_dict().items(), reference.state_dict().values()):
            torch.testing.assert_close(ours, theirs, msg=f"{name}.{key}")
    assert all(p.requires_grad for net in task.nets.values() for p in net.parameters())


def test_one_generator_forward_per_iteration():
    task, cfg = make_task()
    calls = []
    task.nets["G"].register_forward_hook(lambda m, i, o: calls.append(o.requires_grad))
    accum = {}
    train_step(task, make_batches(cfg, 1)[0], accum)
    assert calls == [True]
    assert sorted(accum) == ["D/fake", "D/real", "D/total", "G/gan", "G/l1", "G/total"]
    torch.testing.assert_close(accum["G/total"], accum["G/gan"] + accum["G/l1"])


def test_sampler_is_deterministic_and_leaves_the_rng_alone():
    task, _ = make_task(image_size=32)
    fixed = {k: torch.rand(4, 3, 32, 32) * 2 - 1 for k in "AB"}
    sizes = []
    task.nets["G"].register_forward_hook(lambda m, i, o: sizes.append(i[0].shape[0]))
    state = torch.get_rng_state()
    grid = task.sample(fixed)
    assert torch.equal(torch.get_rng_state(), state)
    assert np.array_equal(task.sample(fixed), grid)
    assert sizes == [1] * 8  # one image at a time, as translate
    assert grid.shape == (3, 4 * 34 + 2, 3 * 34 + 2)  # 4 rows of input | output | target, 2-pixel padding


# --- training ----------------------------------------------------------------------------------------

@pytest.mark.slow
def test_learns_the_synthetic_pairs(tmp_path):
    """L1 (times lambda) to the target: discs on black -> squares on white, 32x32, 40 steps."""
    train(tiny_cfg(tmp_path, image_size=32, batch_size=4, iters=40, lr=1e-3, ngf=8, ndf=8))
    l1 = [json.loads(line)["G/l1"] for line in (tmp_path / "losses.jsonl").read_text().splitlines()]
    assert len(l1) == 40
    assert sum(l1[-5:]) / 5 < 0.3 * l1[0], l1


def _pattern(i: int) -> np.ndarray:
    y, x = np.mgrid[0:24, 0:24]
    return np.stack([x * 10, y * 10, np.full((24, 24), 40 * i + 20)], -1).astype(np.uint8)


@pytest.fixture(scope="module")
def aligned_dir(tmp_path_factory):
    """train/ of 6 side-by-side 24x48 pairs (B = 255 - A) and test/ of 2."""
    root = tmp_path_factory.mktemp("aligned")
    for split, n in (("train", 6), ("test", 2)):
        (root / split).mkdir()
        for i in range(n):
            a = _pattern(i)
            Image.fromarray(np.concatenate([a, 255 - a], 1)).save(root / split / f"{i}.png")
    return root


def _tensors(tree, prefix=""):
    if isinstance(tree, torch.Tensor):
        return {prefix: tree}
    items = tree.items() if isinstance(tree, dict) else enumerate(tree) if isinstance(tree, (list, tuple)) else []
    if not items and isinstance(tree, (int, float)):
        return {prefix: torch.tensor(float(tree))}
    out = {}
    for k, v in items:
        out.update(_tensors(v, f"{prefix}/{k}"))
    return out


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def test_interrupted_run_resumes_exactly(tmp_path, aligned_dir, device):
    # 3 batches per epoch from a folder (random crops and flips shared by A and B), dropout in G, a sample
    # grid at the interruption (step 2) that the uninterrupted run does not draw, and a decaying LR.
    schedule = dict(data=str(aligned_dir), image_size=32, load_size=36, workers=0, epochs=1, epochs_decay=3,
                    save_every=3, sample_every=4, device=device, deterministic=True, unet_depth=5)
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    train(tiny_cfg(whole, iters=5, **schedule))
    assert train(tiny_cfg(parts, iters=2, **schedule))["step"] == 2
    assert train(tiny_cfg(parts, iters=5, resume="auto", **schedule))["step"] == 5
    log_whole, log_parts = ((out / "losses.jsonl").read_text().splitlines() for out in (whole, parts))
    assert log_whole == log_parts and len(log_whole) == 5
    a, b = (load_checkpoint(latest_checkpoint(out), "pix2pix") for out in (whole, parts))
    for group in ("nets", "optimizers", "schedulers"):
        flat_a, flat_b = _tensors(a[group]), _tensors(b[group])
        assert flat_a.keys() == flat_b.keys() and flat_a
        for name in flat_a:
            assert torch.equal(flat_a[name], flat_b[name]), (group, name)
    assert all(torch.equal(a["rng"][k], b["rng"][k]) for k in a["rng"])


# --- command line ------------------------------------------------------------------------------------

TINY_FLAGS = ["--device", "cpu", "--image-size", "32", "--ngf", "4", "--ndf", "4", "--workers", "0"]


def test_cli_dry_run_on_an_aligned_folder_as_a_process(tmp_path, aligned_dir):
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "fastgan.train", "pix2pix", "--data", str(aligned_dir), "--dry-run",
                           "--out", str(out), *TINY_FLAGS], capture_output=True, text=True, env=ENV, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert (out / "checkpoint-00000001.pt").is_file() and (out / "samples" / "step-00000001.png").is_file()
    saved = json.loads((out / "config.json").read_text())
    assert (saved["model"], saved["unet_depth"], saved["load_size"], saved["batch_size"]) == ("pix2pix", 5, 35, 1)
    width, height = Image.open(out / "samples" / "step-00000001.png").size
    assert width == 3 * 34 + 2 and height > 4 * 34 + 2  # 4 rows of input | output | target under their header


def _write_idx(root, n: int) -> str:
    """A Fashion-MNIST-shaped IDX train set of n random 28x28 images."""
    root.mkdir()
    images = np.random.default_rng(0).integers(0, 256, (n, 28, 28), dtype=np.uint8)
    (root / "train-images-idx3-ubyte").write_bytes(struct.pack(">4B3I", 0, 0, 8, 3, n, 28, 28) + images.tobytes())
    (root / "train-labels-idx1-ubyte").write_bytes(struct.pack(">4BI", 0, 0, 8, 1, n) + bytes(n))
    return str(root)


def test_cli_dry_run_on_the_built_in_demo(capsys, tmp_path, monkeypatch):
    # fashion-edges from a small IDX set in $FASTGAN_DATA (the Debian set takes seconds to edge-map).
    monkeypatch.setattr(datasets_module, "DEFAULT_FASHION_DIR", str(tmp_path / "absent"))
    monkeypatch.setenv("FASTGAN_DATA", _write_idx(tmp_path / "idx", 8))
    out = tmp_path / "run"
    assert train_main(["pix2pix", "--dry-run", "--out", str(out), "--direction", "BtoA", *TINY_FLAGS]) == 0
    printed = capsys.readouterr().out
    config = json.loads((out / "config.json").read_text())
    assert config["data"] == "fashion-edges" and config["direction"] == "BtoA" and "step 1 (epoch 0)" in printed


def test_help_shows_the_recipe(capsys):
    with pytest.raises(SystemExit):
        train_main(["pix2pix", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for expected in ("--lambda-l1 LAMBDA_L1", "(default: 100.0)", "--direction {AtoB,BtoA}", "(default: AtoB)",
                     "--norm {instance,batch}", "(default: batch)", "8 (unet_256)", "(default: fashion-edges)"):
        assert expected in text, expected
    assert "--pool-size" not in text and "--lambda-cycle" not in text and "--z-dim" not in text


def _one_line(capsys, main, args, prog):
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"{prog}: error: ") and "Traceback" not in err
    return err


@pytest.mark.parametrize("args, message", [
    # Model.choices: refused by the flag's own choices.
    (["--direction", "CtoD"], "argument --direction: invalid choice: 'CtoD' (choose from 'AtoB', 'BtoA')"),
    (["--norm", "group"], "argument --norm: invalid choice: 'group' (choose from 'instance', 'batch')"),
    (["--image-size", "100"], "--image-size 100: a U-Net of depth 5 needs a multiple of 32"),
    (["--image-size", "64", "--unet-depth", "7"], "a U-Net of depth 7 needs a multiple of 128"),
    (["--unet-depth", "4"], "--unet-depth 4: must be at least 5"),
    (["--g-steps", "2"], "--g-steps 2"),
    (["--lambda-l1", "-1"], "--lambda-l1 -1.0: must not be negative"),
    (["--data", "fashion-unpaired"], "takes aligned A/B pairs"),
    (["--data", "fashion-mnist"], "fashion-edges"),
])
def test_bad_flags(capsys, tmp_path, args, message):
    err = _one_line(capsys, train_main, ["pix2pix", "--out", str(tmp_path / "run"), *args], "fastgan.train")
    assert message in err
    assert not (tmp_path / "run").exists()


def test_unpaired_folder_is_refused_naming_a_file(capsys, tmp_path):
    for domain, names in (("trainA", ["x", "y"]), ("trainB", ["x", "z"])):
        (tmp_path / "data" / domain).mkdir(parents=True)
        for name in names:
            Image.fromarray(_pattern(0)).save(tmp_path / "data" / domain / f"{name}.png")
    err = _one_line(capsys, train_main, ["pix2pix", "--data", str(tmp_path / "data"), "--dry-run", "--out",
                                         str(tmp_path / "run"), *TINY_FLAGS], "fastgan.train")
    assert str(tmp_path / "data" / "trainA" / "y.png") in err and "no image of the same name" in err


# --- translate ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def btoa_checkpoint(tmp_path_factory, aligned_dir):
    out = tmp_path_factory.mktemp("runs") / "pix2pix"
    cfg = tiny_cfg(out, data=str(aligned_dir), image_size=32, workers=0, dry_run=True, direction="BtoA")
    return train(cfg)["checkpoint"]


def test_translate_serves_the_trained_direction(capsys, tmp_path, btoa_checkpoint):
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)).save(photos / "odd.png")
    Image.fromarray(rng.integers(0, 256, (40, 40), dtype=np.uint8)).save(photos / "grey.png")
    assert translate_main([btoa_checkpoint, str(photos), "--out", str(tmp_path / "a"), "--device", "cpu"]) == 0
    assert "translated 2 image(s) BtoA" in capsys.readouterr().out
    assert Image.open(tmp_path / "a" / "odd.png").size == (32, 32)
    # Its own size: padded to a multiple of 2^5 for the U-Net, cropped back.
    assert translate_main([btoa_checkpoint, str(photos / "odd.png"), "--out", str(tmp_path / "b"), "--size",
                           "input", "--direction", "BtoA"]) == 0
    assert Image.open(tmp_path / "b" / "odd.png").size == (53, 37)
    err = _one_line(capsys, translate_main, [btoa_checkpoint, str(photos), "--out", str(tmp_path / "c"),
                                             "--direction", "AtoB"], "fastgan.translate")
    assert "trained --direction BtoA" in err
    err = _one_line(capsys, translate_main, [btoa_checkpoint, str(photos), "--out", str(tmp_path / "c"), "--size",
                                             "16"], "fastgan.translate")
    assert "at least 32" in err


def test_translator_and_input_multiple_follow_the_checkpoint():
    model = get_model("pix2pix")
    assert model.translator({"direction": "AtoB", "unet_depth": 8}, None) == ("AtoB", "G")
    assert model.input_multiple({"direction": "AtoB", "unet_depth": 6}) == 64
    cyclegan = get_model("cyclegan")
    assert cyclegan.translator({}, None) == ("AtoB", "G_A") and cyclegan.translator({}, "BtoA") == ("BtoA", "G_B")


# --- engine ------------------------------------------------------------------------------------------

def run_steps(task, step, batches, seed=7):
    """Per-iteration losses, the final weights of ``step(batch, accum)`` over the batches, and the names of
    the parameters whose last gradient is zero up to rounding (see assert_same_run)."""
    torch.manual_seed(seed)
    if task.device.type == "cuda":
        torch.cuda.manual_seed(seed)
    history = []
    for batch in batches:
        accum = {}
        step(batch, accum)
        history.append({k: v.item() for k, v in accum.items()})
    weights = {f"{n}.{k}": v.detach().clone() for n, net in task.nets.items() for k, v in net.state_dict().items()}
    grads = {f"{n}.{k}": p.grad for n, net in task.nets.items() for k, p in net.named_parameters()
             if p.grad is not None}
    scale = max(g.abs().max().item() for g in grads.values())
    zero = {k for k, g in grads.items() if g.abs().max().item() <= 1e-6 * scale}
    return history, weights, zero


def assert_same_run(a, b, loss_rtol, loss_atol, weight_atol, lr=2e-4):
    """The same losses at every iteration and the same weights within weight_atol, except where Adam's
    normalised step turns rounding noise in a (near-)zero gradient into up to +-lr per iteration: whole
    tensors with a zero gradient (a conv bias before an InstanceNorm), and single elements elsewhere, at most
    1 in 1000; those within 2 lr per iteration."""
    (hist_a, w_a, zero), (hist_b, w_b, _) = a, b
    assert len(hist_a) == len(hist_b) and hist_a[0].keys() == hist_b[0].keys()
    for i, (x, y) in enumerate(zip(hist_a, hist_b)):
        for k in x:
            assert y[k] == pytest.approx(x[k], rel=loss_rtol, abs=loss_atol), f"iteration {i}: {k}"
    assert w_a.keys() == w_b.keys()
    assert not any(w_a[k].dim() > 1 for k in zero), "a weight matrix without gradient: nothing trained"
    outliers = total = 0
    for k in w_a:
        diff = (w_b[k].float() - w_a[k].float()).abs()
        assert diff.max() <= 2 * lr * len(hist_a) + weight_atol, k
        if k not in zero:
            outliers, total = outliers + int((diff > weight_atol).sum()), total + diff.numel()
    assert outliers <= total / 1000, f"{outliers} of {total} weights differ by more than {weight_atol}"


def test_snapshot_undoes_warm_up():
    """What the CUDA-graph engine puts back after its warm-up (weights, Adam state, the RNG that dropout
    draws from) is complete: warm-up + restore + N steps == N steps, exactly."""
    task, cfg = make_task()
    twin, _ = make_task()
    batches = make_batches(cfg, 3)
    snapshot = _Snapshot(task)
    torch.manual_seed(99)
    for batch in batches:
        train_step(task, batch, {})
    snapshot.restore()
    assert_same_run(run_steps(twin, lambda b, a: train_step(twin, b, a), batches),
                    run_steps(task, lambda b, a: train_step(task, b, a), batches), 0, 0, 0)


@pytest.mark.parametrize("norm", ["batch", "instance"])
def test_fast_configuration_equals_reference_few_steps(norm):
    """impl=auto + channels_last against impl=ref + contiguous (on the CPU: the engine's plumbing). At 32x32
    (depth 5, no dropout): dropout draws its mask in memory order, so the layouts would get different masks."""
    fast_task, cfg = make_task(norm=norm, impl="auto", channels_last=True, image_size=32)
    ref_task, ref_cfg = make_task(norm=norm, impl="ref", channels_last=False, image_size=32)
    fast = run_steps(fast_task, lambda b, a: train_step(fast_task, b, a), make_batches(cfg, 3))
    ref = run_steps(ref_task, lambda b, a: train_step(ref_task, b, a), make_batches(ref_cfg, 3))
    assert_same_run(ref, fast, loss_rtol=1e-4, loss_atol=1e-6, weight_atol=1e-5)


@pytest.fixture
def deterministic_cudnn():
    saved = torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = False, True
    yield
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = saved


AMP = {"fp32": dict(amp=False), "bf16": dict(amp=True, amp_dtype="bf16"), "fp16": dict(amp=True, amp_dtype="fp16")}
TOLERANCE = {"fp32": dict(loss_rtol=1e-4, loss_atol=1e-6, weight_atol=1e-5),
             "bf16": dict(loss_rtol=2e-2, loss_atol=1e-4, weight_atol=2e-3),
             "fp16": dict(loss_rtol=2e-2, loss_atol=1e-4, weight_atol=2e-3)}


@pytest.mark.cuda
@pytest.mark.parametrize("norm", ["batch", "instance"])
@pytest.mark.parametrize("precision", list(AMP))
def test_cuda_graphs_equal_eager(precision, norm, deterministic_cudnn):
    """The D graph records G's forward, the G graph back-propagates through it; dropout draws the same
    Philox numbers replayed as eager."""
    eager_task, cfg = make_task("cuda", norm=norm, **AMP[precision])
    graph_task, _ = make_task("cuda", norm=norm, **AMP[precision])
    batches = make_batches(cfg, 6, "cuda")
    reference = run_steps(eager_task, lambda b, a: train_step(eager_task, b, a), batches)
    step = make_train_step(graph_task, batches[0], cuda_graphs=True)
    assert isinstance(step, GraphedTrainStep)
    assert_same_run(reference, run_steps(graph_task, step, batches), **TOLERANCE[precision])


@pytest.mark.cuda
@pytest.mark.parametrize("cuda_graphs", [False, True])
def test_no_host_sync_in_a_step(cuda_graphs):
    task, cfg = make_task("cuda", amp=True, amp_dtype="fp16")
    batches = make_batches(cfg, 4, "cuda")
    step = make_train_step(task, batches[0], cuda_graphs)
    accum = {}
    step(batches[0], accum)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for batch in batches[1:]:
            step(batch, accum)
            for scheduler in task.schedulers.values():
                scheduler.step()
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert all(torch.isfinite(v).item() for v in accum.values())


@pytest.mark.cuda
@pytest.mark.parametrize("norm, ops", [("instance", ("instance_norm_act", "leaky_relu")), ("batch", ("leaky_relu",))])
def test_fast_paths_match_reference_on_cuda(norm, ops):
    from fastgan.nn import set_impl
    from fastgan.ops import _dispatch

    fast = set_impl(UnetGenerator(ngf=16, depth=6, norm=norm).cuda(), "auto")
    ref = set_impl(copy.deepcopy(fast), "ref")
    x = torch.randn(2, 3, 64, 64, device="cuda")
    outputs = []
    for model in (fast, ref):
        torch.manual_seed(0)
        y = model(x)
        if model is fast:
            assert "ref" not in {op: _dispatch.last_impl(op) for op in ops}.values()
        y.square().mean().backward()
        outputs.append((y, [p.grad for p in model.parameters()]))
    (y_fast, g_fast), (y_ref, g_ref) = outputs
    torch.testing.assert_close(y_fast, y_ref, rtol=1e-3, atol=1e-3)
    for a, b in zip(g_fast, g_ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4)


@pytest.mark.cuda
def test_sampler_leaves_the_cuda_rng_alone():
    task, cfg = make_task("cuda")
    fixed = make_batches(cfg, 1, "cuda")[0]
    state = torch.cuda.get_rng_state()
    grid = task.sample(fixed)
    assert torch.equal(torch.cuda.get_rng_state(), state) and np.array_equal(task.sample(fixed), grid)
