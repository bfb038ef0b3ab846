"""fastgan.generate and fastgan.translate end to end on checkpoints from tiny --dry-run trainings."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from fastgan.generate import generate
from fastgan.generate import main as generate_main
from fastgan.train.checkpoint import FORMAT_VERSION
from fastgan.train.config import TrainConfig
from fastgan.train.loop import train
from fastgan.translate import main as translate_main

TINY = dict(device="cpu", data="synthetic", dry_run=True, z_dim=8, hidden=16, ngf=4, ndf=4, batch_size=4)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    found = {}
    for model, extra in (("dcgan", {}), ("cgan", {}), ("cyclegan", dict(image_size=32, n_blocks=1, batch_size=1))):
        found[model] = train(TrainConfig(model=model, out=str(root / model), **(TINY | extra)))["checkpoint"]
    return found


def one_line_error(capsys, main, args, prog):
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"{prog}: error: ") and "Traceback" not in err
    return err


def test_generate_grid_and_files(capsys, tmp_path, checkpoints):
    grid = tmp_path / "grid.png"
    assert generate_main([checkpoints["dcgan"], "--n", "12", "--out", str(grid), "--columns", "4"]) == 0
    assert Image.open(grid).size == (4 * 30 + 2, 3 * 30 + 2)
    assert generate_main([checkpoints["dcgan"], "--n", "3", "--out", str(tmp_path / "each")]) == 0
    files = sorted(p.name for p in (tmp_path / "each").iterdir())
    assert files == ["000000.png", "000001.png", "000002.png"]
    assert Image.open(tmp_path / "each" / "000000.png").size == (28, 28)


def test_generate_is_deterministic_in_the_seed_and_follows_labels(checkpoints):
    a = generate(checkpoints["cgan"], n=6, label=3, seed=1)
    assert np.array_equal(a, generate(checkpoints["cgan"], n=6, label=3, seed=1))
    assert not np.array_equal(a, generate(checkpoints["cgan"], n=6, label=3, seed=2))
    assert not np.array_equal(a, generate(checkpoints["cgan"], n=6, label=4, seed=1))
    assert a.shape == (6, 1, 28, 28) and a.min() >= -1 and a.max() <= 1


def test_generate_bad_input(capsys, tmp_path, checkpoints):
    prog = "fastgan.generate"
    assert "use python -m fastgan.translate" in one_line_error(capsys, generate_main, [checkpoints["cyclegan"]], prog)
    assert "is unconditional" in one_line_error(capsys, generate_main, [checkpoints["dcgan"], "--label", "1"], prog)
    assert "classes 0 to 9" in one_line_error(capsys, generate_main, [checkpoints["cgan"], "--label", "10"], prog)
    assert "--n 0" in one_line_error(capsys, generate_main, [checkpoints["dcgan"], "--n", "0"], prog)
    assert "no such file" in one_line_error(capsys, generate_main, [str(tmp_path / "none.pt")], prog)
    newer = torch.load(checkpoints["dcgan"], weights_only=True) | {"format_version": FORMAT_VERSION + 1}
    torch.save(newer, tmp_path / "newer.pt")
    assert "newer" in one_line_error(capsys, generate_main, [str(tmp_path / "newer.pt")], prog)
    out = tmp_path / "kept.png"
    out.write_bytes(b"existing")
    one_line_error(capsys, generate_main, [checkpoints["cyclegan"], "--out", str(out)], prog)
    assert out.read_bytes() == b"existing"


@pytest.fixture
def photos(tmp_path):
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)).save(folder / "odd.png")
    Image.fromarray(rng.integers(0, 256, (40, 40), dtype=np.uint8)).save(folder / "sub" / "grey.jpg")
    return folder


def test_translate_folder_keeps_names(tmp_path, photos, checkpoints):
    out = tmp_path / "out"
    assert translate_main([checkpoints["cyclegan"], "--direction", "BtoA", str(photos), "--out", str(out)]) == 0
    assert Image.open(out / "odd.png").size == (32, 32)
    assert Image.open(out / "sub" / "grey.jpg").format == "JPEG"


def test_translate_file_at_its_own_size(tmp_path, photos, checkpoints):
    out = tmp_path / "out"
    assert translate_main([checkpoints["cyclegan"], str(photos / "odd.png"), "--out", str(out),
                           "--size", "input"]) == 0
    assert Image.open(out / "odd.png").size == (53, 37)
    assert translate_main([checkpoints["cyclegan"], str(photos / "odd.png"), "--out", str(out), "--size", "48"]) == 0
    assert Image.open(out / "odd.png").size == (48, 48)


def test_translate_seed_fixes_pix2pix_test_time_dropout(tmp_path, photos):
    # 64 px, depth 6: one decoder level with dropout, which pix2pix keeps on at test time.
    ckpt = train(TrainConfig(model="pix2pix", out=str(tmp_path / "run"), image_size=64, unet_depth=6,
                             **(TINY | dict(batch_size=1))))["checkpoint"]

    def translated(name, *args):
        assert translate_main([ckpt, str(photos), "--out", str(tmp_path / name), "--device", "cpu", *args]) == 0
        return np.asarray(Image.open(tmp_path / name / "odd.png"))

    first = translated("a", "--seed", "1")
    assert np.array_equal(first, translated("b", "--seed", "1"))
    assert not np.array_equal(first, translated("c", "--seed", "2"))
    # Seeded for every image: the same file alone gets the same masks as in its folder.
    assert translate_main([ckpt, str(photos / "odd.png"), "--out", str(tmp_path / "d"), "--seed", "1"]) == 0
    assert np.array_equal(first, np.asarray(Image.open(tmp_path / "d" / "odd.png")))


def test_translate_bad_input(capsys, tmp_path, photos, checkpoints):
    prog, ckpt = "fastgan.translate", checkpoints["cyclegan"]
    assert "not cyclegan" in one_line_error(capsys, translate_main,
                                            [checkpoints["dcgan"], str(photos), "--out", str(tmp_path)], prog)
    assert "no such image" in one_line_error(capsys, translate_main,
                                             [ckpt, str(tmp_path / "none.png"), "--out", str(tmp_path)], prog)
    assert "is the input" in one_line_error(capsys, translate_main, [ckpt, str(photos), "--out", str(photos)], prog)
    assert "--size big" in one_line_error(capsys, translate_main,
                                          [ckpt, str(photos), "--out", str(tmp_path), "--size", "big"], prog)
    assert "--direction" in one_line_error(capsys, translate_main,
                                           [ckpt, str(photos), "--out", str(tmp_path), "--direction", "AB"], prog)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "x.png").write_bytes(b"not a png")
    assert "x.png" in one_line_error(capsys, translate_main,
                                     [ckpt, str(tmp_path / "broken"), "--out", str(tmp_path / "o"), "--strict"], prog)


def test_generate_and_translate_as_processes(tmp_path, photos, checkpoints):
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    code = ("import sys; from fastgan.generate import main as g; from fastgan.translate import main as t; "
            "sys.exit(g(sys.argv[1:4]) or t(sys.argv[4:]))")
    proc = subprocess.run([sys.executable, "-c", code, checkpoints["dcgan"], "--out", str(tmp_path / "g.png"),
                           checkpoints["cyclegan"], str(photos), "--out", str(tmp_path / "t")],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "g.png").is_file() and (tmp_path / "t" / "odd.png").is_file()
    proc = subprocess.run([sys.executable, "-m", "fastgan.translate", str(tmp_path / "missing.pt"), str(photos),
                           "--out", str(tmp_path / "t2")], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "no such file" in proc.stderr
    assert "Traceback" not in proc.stderr
