"""fastgan.export: every model's generator as ONNX (checked by onnx, run by onnxruntime) and as a
torch.export program, equal to the PyTorch reference path; generate --backend onnxruntime; bad input."""

import numpy as np
import pytest
import torch

from fastgan.errors import UserError
from fastgan.export import export_one, export_specs
from fastgan.export import main as export_main
from fastgan.generate import generate
from fastgan.nn import set_impl
from fastgan.train.checkpoint import load_checkpoint
from fastgan.train.config import TrainConfig
from fastgan.train.loop import train
from fastgan.train.tasks import nets_from_checkpoint

onnx = pytest.importorskip("onnx", reason="the onnx extra is not installed: pip install 'fastgan[onnx]'")
ort = pytest.importorskip("onnxruntime", reason="the onnx extra is not installed: pip install 'fastgan[onnx]'")
pytest.importorskip("onnxscript", reason="the onnx extra is not installed: pip install 'fastgan[onnx]'")

TINY = dict(device="cpu", data="synthetic", dry_run=True, z_dim=8, hidden=16, ngf=4, ndf=4, batch_size=4)
CASES = {"gan": {}, "dcgan": {}, "cgan": {}, "cyclegan": dict(image_size=32, n_blocks=1, batch_size=1),
         # 32 px: a depth-5 U-Net, whose innermost blocks (the ones with test-time dropout) are absent.
         "pix2pix": dict(image_size=32, batch_size=1, direction="BtoA")}
TOLERANCE = 1e-4  # max |onnxruntime - PyTorch| in fp32 on outputs in [-1, 1]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    return {model: train(TrainConfig(model=model, out=str(root / model), **(TINY | extra)))["checkpoint"]
            for model, extra in CASES.items()}


def reference(checkpoint, name):
    net = nets_from_checkpoint(load_checkpoint(checkpoint), [name], torch.device("cpu"))[name]
    set_impl(net, "ref")
    return net


def run_onnx(path, *inputs):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {i.name: x.numpy() for i, x in zip(session.get_inputs(), inputs)}
    return torch.from_numpy(session.run(None, feeds)[0])


def check_onnx_graph(path):
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    domains = {node.domain for node in model.graph.node} | {f.domain for f in model.functions}
    assert not any("fastgan" in d for d in domains), domains
    return model


@pytest.mark.parametrize("model", ["gan", "dcgan", "cgan"])
def test_noise_to_image_onnx_equals_pytorch(checkpoints, tmp_path, model):
    (spec,), _ = export_specs(checkpoints[model], dynamic_batch=True)
    path = export_one(spec, tmp_path / "g.onnx", "onnx")
    check_onnx_graph(path)
    G = reference(checkpoints[model], "G")
    for batch in (1, 5):  # the batch is a symbol
        inputs = [torch.randn(batch, 8)] + ([torch.arange(batch) % 10] if model == "cgan" else [])
        with torch.no_grad():
            expected = G(*inputs)
        assert (run_onnx(path, *inputs) - expected).abs().max() <= TOLERANCE


def test_cyclegan_onnx_standard_ops_and_dynamic_size(checkpoints, tmp_path):
    specs, _ = export_specs(checkpoints["cyclegan"], dynamic_batch=True, dynamic_size=True)
    assert [s.name for s in specs] == ["AtoB", "BtoA"]  # one file per direction
    for spec, generator in zip(specs, ("G_A", "G_B")):
        path = export_one(spec, tmp_path / f"{spec.name}.onnx", "onnx")
        graph = check_onnx_graph(path).graph
        ops = {node.op_type for node in graph.node}
        assert "InstanceNormalization" in ops
        pads = [n for n in graph.node if n.op_type == "Pad"]
        assert pads and all(a.s == b"reflect" for n in pads for a in n.attribute if a.name == "mode")
        G = reference(checkpoints["cyclegan"], generator)
        for size in (32, 48, 64):  # the training size and two others
            x = torch.rand(2, 3, size, size) * 2 - 1
            with torch.no_grad():
                expected = G(x)
            assert (run_onnx(path, x) - expected).abs().max() <= TOLERANCE, size


def test_pix2pix_exports_its_trained_direction(checkpoints, tmp_path):
    specs, _ = export_specs(checkpoints["pix2pix"], dynamic_size=True)
    assert [s.name for s in specs] == ["BtoA"]  # one generator, for the direction it was trained in
    path = export_one(specs[0], tmp_path / "p.onnx", "onnx")
    check_onnx_graph(path)
    G = reference(checkpoints["pix2pix"], "G")
    for size in (32, 64):
        x = torch.rand(1, 3, size, size) * 2 - 1
        with torch.no_grad():
            expected = G(x)
        assert (run_onnx(path, x) - expected).abs().max() <= TOLERANCE, size
    with pytest.raises(UserError, match="--direction AtoB"):
        export_specs(checkpoints["pix2pix"], direction="AtoB")


def test_exported_program_reloads_with_the_same_outputs(checkpoints, tmp_path):
    specs, _ = export_specs(checkpoints["cyclegan"], direction="AtoB", dynamic_size=True)
    path = export_one(specs[0], tmp_path / "g.pt2", "exported-program")
    program = torch.export.load(str(path))
    G = reference(checkpoints["cyclegan"], "G_A")
    for size in (32, 40):
        x = torch.rand(1, 3, size, size) * 2 - 1  # a static export takes one image
        with torch.no_grad():
            torch.testing.assert_close(program.module()(x), G(x), rtol=0, atol=1e-5)


def test_fast_path_training_exports_the_same_model(tmp_path):
    # --amp (and the fused layers wherever they run) change how a model was trained, not what it is.
    ckpt = train(TrainConfig(model="cyclegan", out=str(tmp_path / "amp"), amp=True,
                             **(TINY | CASES["cyclegan"])))["checkpoint"]
    (spec,), _ = export_specs(ckpt, direction="BtoA")
    path = export_one(spec, tmp_path / "amp.onnx", "onnx")
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        expected = reference(ckpt, "G_B")(x)
    assert (run_onnx(path, x) - expected).abs().max() <= TOLERANCE


def test_cli_and_generate_with_onnxruntime(checkpoints, tmp_path, capsys):
    out = tmp_path / "cgan.onnx"
    assert export_main([checkpoints["cgan"], "--out", str(out), "--dynamic-batch"]) == 0
    assert "wrote G" in capsys.readouterr().out
    via_onnx = generate(str(out), n=6, label=3, seed=1)
    via_torch = generate(checkpoints["cgan"], n=6, label=3, seed=1)
    assert via_onnx.shape == via_torch.shape == (6, 1, 28, 28)
    assert np.abs(via_onnx - via_torch).max() <= TOLERANCE


@pytest.mark.parametrize("model, args, words", [
    ("dcgan", ["--dynamic-size"], "only image-to-image models"),
    ("cyclegan", ["--size", "30"], "multiples of 4"),
    ("cyclegan", ["--direction", "AtoC"], "--direction AtoC"),
    ("cyclegan", ["--opset", "11"], "--opset 11"),
    ("dcgan", ["--format", "tflite"], "--format: invalid choice"),
    ("dcgan", ["--out", "model.pt2"], "ends in .onnx"),
])
def test_bad_input_is_one_line(checkpoints, capsys, model, args, words):
    with pytest.raises(SystemExit) as exit_info:
        export_main([checkpoints[model], *args])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1 and words in err, err


def test_translate_with_onnxruntime_equals_torch(checkpoints, tmp_path, capsys):
    from PIL import Image

    from fastgan.translate import main as translate_main

    photos = tmp_path / "photos"
    photos.mkdir()
    rng = torch.Generator().manual_seed(0)
    for name, size in (("a.png", (40, 36)), ("b.png", (32, 32))):
        pixels = torch.randint(0, 256, (size[1], size[0], 3), generator=rng, dtype=torch.uint8).numpy()
        Image.fromarray(pixels).save(photos / name)
    onnx_file = tmp_path / "g.onnx"
    assert export_main([checkpoints["cyclegan"], "--direction", "BtoA", "--dynamic-size", "--out", str(onnx_file)]) == 0
    for size in ("checkpoint", "input"):  # 32x32, and each image's own size (padded to a multiple of 4)
        outs = {}
        for backend, source in (("onnxruntime", onnx_file), ("torch", checkpoints["cyclegan"])):
            outs[backend] = tmp_path / f"{backend}-{size}"
            assert translate_main([str(source), str(photos), "--direction", "BtoA", "--size", size,
                                   "--out", str(outs[backend]), "--device", "cpu"]) == 0
        for name in ("a.png", "b.png"):
            a = torch.tensor(np.asarray(Image.open(outs["onnxruntime"] / name)), dtype=torch.int16)
            b = torch.tensor(np.asarray(Image.open(outs["torch"] / name)), dtype=torch.int16)
            assert a.shape == b.shape and (a - b).abs().max() <= 1  # 8-bit rounding of outputs 1e-4 apart
    capsys.readouterr()
    with pytest.raises(SystemExit):
        translate_main([str(onnx_file), str(photos), "--direction", "AtoB", "--out", str(tmp_path / "x")])
    assert "translates BtoA only" in capsys.readouterr().err


def test_export_leaves_one_self_contained_file_and_nothing_on_failure(checkpoints, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    out.mkdir()
    assert export_main([checkpoints["cyclegan"], "--out", str(out / "g.onnx")]) == 0
    assert export_main([checkpoints["dcgan"], "--format", "exported-program", "--out", str(out / "d.pt2")]) == 0
    # No FILE.onnx.data of the weights, no scratch folder: the .onnx files alone are what to deploy.
    assert sorted(p.name for p in out.iterdir()) == ["d.pt2", "g-AtoB.onnx", "g-BtoA.onnx"]

    def broken(*args, **kwargs):
        raise RuntimeError("exporter failed")

    monkeypatch.setattr(torch.onnx, "export", broken)
    with pytest.raises(RuntimeError, match="exporter failed"):
        export_main([checkpoints["dcgan"], "--out", str(out / "x.onnx")])
    assert sorted(p.name for p in out.iterdir()) == ["d.pt2", "g-AtoB.onnx", "g-BtoA.onnx"]


def test_generate_refuses_foreign_onnx_files(tmp_path, capsys):
    from fastgan.generate import main as generate_main

    bogus = tmp_path / "bogus.onnx"
    bogus.write_bytes(b"not a model")
    with pytest.raises(SystemExit) as exit_info:
        generate_main([str(bogus), "--out", str(tmp_path / "x.png")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "not a readable ONNX model" in err and err.count("\n") == 1


# `python -m MODULE ARGS...` where torch, triton and fastgan._C cannot be imported, as on a machine with only
# numpy, Pillow and onnxruntime; fails (exit 3) if torch got imported anyway.
WITHOUT_TORCH = """
import runpy, sys

class NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "triton") or name == "fastgan._C":
            raise ImportError(f"No module named {name!r}", name=name)

sys.meta_path.insert(0, NoTorch())
sys.argv = sys.argv[1:]
try:
    runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
finally:
    if "torch" in sys.modules:
        sys.exit(3)
"""


def run_without_torch(module, *args):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-c", WITHOUT_TORCH, module, *map(str, args)], capture_output=True,
                          text=True, timeout=120, env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})


def read_pixels(path):
    from PIL import Image

    return np.asarray(Image.open(path), dtype=np.int16)


@pytest.mark.parametrize("model, args", [
    ("dcgan", ["--n", "6", "--columns", "3"]),
    ("cgan", ["--n", "20"]),  # one row per class
    ("cgan", ["--n", "3", "--label", "7"]),
])
def test_generate_with_onnxruntime_without_torch(checkpoints, tmp_path, model, args):
    from fastgan.generate import main as generate_main

    onnx_file = tmp_path / "g.onnx"
    assert export_main([checkpoints[model], "--dynamic-batch", "--out", str(onnx_file)]) == 0
    proc = run_without_torch("fastgan.generate", onnx_file, *args, "--seed", 3, "--out", tmp_path / "ort.png")
    assert proc.returncode == 0 and "wrote a grid" in proc.stdout, proc.stderr
    assert generate_main([checkpoints[model], *args, "--seed", "3", "--out", str(tmp_path / "torch.png"),
                          "--device", "cpu"]) == 0
    a, b = read_pixels(tmp_path / "ort.png"), read_pixels(tmp_path / "torch.png")
    assert a.shape == b.shape and np.abs(a - b).max() <= 1  # 8-bit rounding of outputs 1e-4 apart


def test_translate_with_onnxruntime_without_torch(checkpoints, tmp_path):
    from PIL import Image

    from fastgan.translate import main as translate_main

    photos = tmp_path / "photos"
    (photos / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name, (w, h) in (("a.png", (40, 36)), ("sub/b.jpg", (32, 32)), ("c.png", (23, 17))):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(photos / name)
    onnx_file = tmp_path / "g.onnx"
    assert export_main([checkpoints["cyclegan"], "--direction", "AtoB", "--dynamic-size", "--out", str(onnx_file)]) == 0
    for size in ("checkpoint", "input", "48"):  # resized down and up, and at each image's own size (padded)
        ort_out, torch_out = tmp_path / f"ort-{size}", tmp_path / f"torch-{size}"
        proc = run_without_torch("fastgan.translate", onnx_file, photos, "--size", size, "--out", ort_out)
        assert proc.returncode == 0 and "translated 3 image(s) AtoB" in proc.stdout, proc.stderr
        assert translate_main([checkpoints["cyclegan"], str(photos), "--direction", "AtoB", "--size", size,
                               "--out", str(torch_out), "--device", "cpu"]) == 0
        for name in ("a.png", "sub/b.jpg", "c.png"):
            a, b = read_pixels(ort_out / name), read_pixels(torch_out / name)
            if name.endswith(".jpg"):  # JPEG encoding may round a pixel one level further either way
                assert a.shape == b.shape and np.abs(a - b).mean() <= 1
            else:
                assert a.shape == b.shape and np.abs(a - b).max() <= 1


def test_without_torch_misuse_is_one_line_and_the_blocker_blocks(checkpoints, tmp_path):
    onnx_file = tmp_path / "g.onnx"
    assert export_main([checkpoints["dcgan"], "--out", str(onnx_file)]) == 0
    for args, words in (
        ([checkpoints["dcgan"], "--backend", "onnxruntime"], "is not a .onnx file"),
        ([onnx_file, "--device", "cuda"], "runs on the CPU"),
        ([onnx_file, "--backend", "torch"], "is an ONNX model"),
        ([checkpoints["cyclegan"] + ".onnx"], "no such file"),
    ):
        proc = run_without_torch("fastgan.generate", *args, "--out", tmp_path / "x.png")
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and words in proc.stderr, (args, proc.stderr)
    # The torch backend does need torch: the blocker is in force, and the failure is one line, not a silent
    # fallback and not a traceback.
    for module, args in (("fastgan.generate", []), ("fastgan.translate", [tmp_path])):
        proc = run_without_torch(module, checkpoints["cyclegan" if args else "dcgan"], *args, "--out", tmp_path / "y")
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
        assert "needs PyTorch (pip install torch)" in proc.stderr
