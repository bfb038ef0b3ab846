"""fastgan.translate on what users give it: aligned A|B pairs (pix2pix's datasets), a dataset folder, folders
with unreadable files, sizes at the generator's lower bound; its index.html and side-by-side images."""

import numpy as np
import pytest
from PIL import Image

from fastgan.train.config import TrainConfig
from fastgan.train.loop import train
from fastgan.translate import main as translate_main

TINY = dict(device="cpu", dry_run=True, ngf=4, ndf=4, batch_size=1, sample_every=0)
SIZE = 32


def _noise(seed: int, h: int, w: int, channels: int = 3) -> np.ndarray:
    shape = (h, w, channels) if channels > 1 else (h, w)
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


@pytest.fixture(scope="module")
def pix2pix_BtoA(tmp_path_factory):
    """A pix2pix checkpoint trained --direction BtoA (the right half of a pair is its input) on a facades-style
    dataset: train/ and test/ of 64x32 A|B images."""
    root = tmp_path_factory.mktemp("p2p")
    for split, count in (("train", 2), ("test", 3)):
        (root / "facades" / split).mkdir(parents=True)
        for i in range(count):
            Image.fromarray(_noise(10 * i + len(split), SIZE, 2 * SIZE)).save(root / "facades" / split / f"{i}.png")
    ckpt = train(TrainConfig(model="pix2pix", out=str(root / "run"), data=str(root / "facades"), image_size=SIZE,
                             load_size=SIZE, unet_depth=5, direction="BtoA", **TINY))["checkpoint"]
    return ckpt, root / "facades"


def _png(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def test_pix2pix_on_a_dataset_translates_the_split_half_of_its_test_pairs(tmp_path, capsys, pix2pix_BtoA):
    ckpt, facades = pix2pix_BtoA
    assert translate_main([ckpt, str(facades), "--out", str(tmp_path / "out")]) == 0
    said = capsys.readouterr().out
    assert "test/" in said and "BtoA" in said and "right half" in said and "3 A|B pair(s)" in said
    assert sorted(p.name for p in (tmp_path / "out").glob("*.png")) == ["0.png", "1.png", "2.png"]
    for i in range(3):
        pair = _png(facades / "test" / f"{i}.png")
        Image.fromarray(pair[:, SIZE:]).save(tmp_path / "half.png")  # BtoA: the right half is the input
        assert translate_main([ckpt, str(tmp_path / "half.png"), "--out", str(tmp_path / f"half{i}")]) == 0
        output = _png(tmp_path / "out" / f"{i}.png")
        assert output.shape == (SIZE, SIZE, 3)
        np.testing.assert_array_equal(output, _png(tmp_path / f"half{i}" / "half.png"))
        triptych = _png(tmp_path / "out" / "compare" / f"{i}.png")
        assert triptych.shape == (SIZE, 3 * SIZE + 4, 3)  # input | output | target, 2 pixels between
        np.testing.assert_array_equal(triptych[:, :SIZE], pair[:, SIZE:])  # at the training size: untouched
        np.testing.assert_array_equal(triptych[:, SIZE + 2:2 * SIZE + 2], output)
        np.testing.assert_array_equal(triptych[:, 2 * SIZE + 4:], pair[:, :SIZE])  # the target: the A half
    page = (tmp_path / "out" / "index.html").read_text()
    assert "input | output | target" in page and 'src="compare/1.png"' in page and 'href="2.png"' in page


def test_pix2pix_on_one_pair_file_and_without_splitting(tmp_path, pix2pix_BtoA):
    ckpt, facades = pix2pix_BtoA
    pair = facades / "test" / "0.png"
    assert translate_main([ckpt, str(pair), "--out", str(tmp_path / "auto")]) == 0  # twice as wide as high
    assert _png(tmp_path / "auto" / "compare" / "0.png").shape == (SIZE, 3 * SIZE + 4, 3)
    assert translate_main([ckpt, str(pair), "--out", str(tmp_path / "whole"), "--no-aligned"]) == 0
    assert _png(tmp_path / "whole" / "compare" / "0.png").shape == (SIZE, 2 * SIZE + 2, 3)  # input | output
    assert not np.array_equal(_png(tmp_path / "auto" / "0.png"), _png(tmp_path / "whole" / "0.png"))
    assert "input | output" in (tmp_path / "whole" / "index.html").read_text()


@pytest.fixture(scope="module")
def grey_cyclegan(tmp_path_factory):
    """A cyclegan trained with --channels 1 on a grey dataset folder that also holds testA/ testB/."""
    root = tmp_path_factory.mktemp("cyc")
    for folder, seed in (("trainA", 0), ("trainB", 1), ("testA", 2), ("testB", 3)):
        (root / "data" / folder).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(_noise(seed * 10 + i, 40, 36, 1)).save(root / "data" / folder / f"{folder}{i}.png")
    ckpt = train(TrainConfig(model="cyclegan", out=str(root / "run"), data=str(root / "data"), image_size=SIZE,
                             n_blocks=1, channels=1, **TINY))["checkpoint"]
    return ckpt, root / "data"


def test_cyclegan_on_a_dataset_translates_the_directions_test_folder(tmp_path, capsys, grey_cyclegan):
    ckpt, data = grey_cyclegan
    assert translate_main([ckpt, str(data), "--direction", "BtoA", "--out", str(tmp_path / "out")]) == 0
    said = capsys.readouterr().out
    assert "testB/ (BtoA)" in said and "2 image(s) BtoA" in said
    assert sorted(p.name for p in (tmp_path / "out").glob("*.png")) == ["testB0.png", "testB1.png"]
    assert _png(tmp_path / "out" / "compare" / "testB0.png").shape == (SIZE, 2 * SIZE + 2, 3)
    # A folder of dataset folders without the split for the direction: refused, nothing recursed into.
    for name in ("testA", "testB"):
        for path in (data / name).iterdir():
            path.rename(tmp_path / f"{name}-{path.name}")
        (data / name).rmdir()
    with pytest.raises(SystemExit) as e:
        translate_main([ckpt, str(data), "--out", str(tmp_path / "refused")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and len(err.strip().splitlines()) == 1
    assert "trainA/, trainB/" in err and "no testA/" in err and not (tmp_path / "refused").exists()


def test_unreadable_images_are_skipped_with_one_warning_each(tmp_path, capsys, grey_cyclegan):
    ckpt, _ = grey_cyclegan
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(_noise(i, 20, 24)).save(folder / f"{i}.png")
    (folder / "1.png").write_text("not a png")
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "notes.txt").write_text("x")
    assert translate_main([ckpt, str(folder), "--out", str(tmp_path / "out")]) == 0
    captured = capsys.readouterr()
    warnings = captured.err.strip().splitlines()
    assert len(warnings) == 2 and all(line.startswith("fastgan.translate: warning: skipping ") for line in warnings)
    assert "1.png" in warnings[0] and "empty.jpg" in warnings[1]
    assert "translated 2 image(s)" in captured.out and "3 skipped (2 unreadable, 1 non-image)" in captured.out
    assert sorted(p.name for p in (tmp_path / "out").glob("*.png")) == ["0.png", "2.png"]
    with pytest.raises(SystemExit) as e:
        translate_main([ckpt, str(folder), "--out", str(tmp_path / "strict"), "--strict"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and len(err.strip().splitlines()) == 1 and "1.png" in err and "--strict" in err


def test_strict_reads_every_input_before_writing_anything(tmp_path, capsys, grey_cyclegan):
    ckpt, _ = grey_cyclegan
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(2):
        Image.fromarray(_noise(i, 20, 24)).save(folder / f"{i}.png")
    (folder / "z.jpg").write_bytes(b"")  # sorted after the readable ones
    out = tmp_path / "strict"
    with pytest.raises(SystemExit) as e:
        translate_main([ckpt, str(folder), "--out", str(out), "--strict"])
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert e.value.code == 2 and len(lines) == 1 and "warning" not in lines[0] and "z.jpg" in lines[0]
    assert not out.exists() or not any(out.rglob("*")), "--strict wrote outputs before refusing"


def test_sizes_at_the_generators_lower_bound(tmp_path, capsys, grey_cyclegan):
    ckpt, _ = grey_cyclegan
    Image.fromarray(_noise(0, 1, 1)).save(tmp_path / "dot.png")
    Image.fromarray(_noise(1, 5, 3)).save(tmp_path / "tiny.png")
    for name, shape in (("dot.png", (1, 1)), ("tiny.png", (5, 3))):  # padded up to 8x8 for the generator
        assert translate_main([ckpt, str(tmp_path / name), "--out", str(tmp_path / "out"), "--size", "input"]) == 0
        assert _png(tmp_path / "out" / name).shape == (*shape, 3)
    assert translate_main([ckpt, str(tmp_path / "tiny.png"), "--out", str(tmp_path / "eight"), "--size", "8"]) == 0
    with pytest.raises(SystemExit) as e:
        translate_main([ckpt, str(tmp_path / "dot.png"), "--out", str(tmp_path / "o"), "--size", "4"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "--size 4" in err and "at least 8" in err and len(err.strip().splitlines()) == 1


def _refused(capsys, args, *words):
    with pytest.raises(SystemExit) as e:
        translate_main([str(a) for a in args])
    err = capsys.readouterr().err
    assert e.value.code == 2 and len(err.strip().splitlines()) == 1, err
    for word in words:
        assert word in err, err
    return err


def test_out_is_guarded_and_sizes_bounded(tmp_path, capsys, monkeypatch, grey_cyclegan):
    """--out through fastgan.outputs (another file type is not replaced without --overwrite, a rerun replaces
    its own outputs), --size through fastgan.limits (upper bound from the generator's inference peak)."""
    ckpt, _ = grey_cyclegan
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.fromarray(_noise(0, 20, 24)).save(folder / "a.png")
    out = tmp_path / "out"
    assert translate_main([ckpt, str(folder), "--out", str(out)]) == 0
    assert translate_main([ckpt, str(folder), "--out", str(out)]) == 0  # its own images and index.html
    (out / "a.png").write_text("notes, not an image")
    _refused(capsys, [ckpt, folder, "--out", out], "a.png", "exists and is not an image", "--overwrite")
    assert (out / "a.png").read_text() == "notes, not an image"
    assert translate_main([ckpt, str(folder), "--out", str(out), "--overwrite"]) == 0
    _refused(capsys, [ckpt, folder, "--out", folder / "a.png"], "exists and is not a directory")
    _refused(capsys, [ckpt, folder, "--out", ""], "--out ''")
    _refused(capsys, [ckpt, folder, "--out", tmp_path / "o", "--size", "100000"], "--size 100000", "more than the")
    monkeypatch.setenv("FASTGAN_MEMORY_LIMIT", "1M")  # a 20x24 image fits, a 400x400 one does not
    Image.fromarray(_noise(1, 400, 400)).save(folder / "big.png")
    assert translate_main([ckpt, str(folder), "--out", str(tmp_path / "own"), "--size", "input"]) == 0
    captured = capsys.readouterr()
    assert "skipping" in captured.err and "big.png: 400x400 needs about" in captured.err
    assert "1 skipped (1 too large)" in captured.out and not (tmp_path / "own" / "big.png").exists()
    assert not (tmp_path / "o").exists()


def test_out_inside_the_input_folder_is_not_read_back(tmp_path, capsys, grey_cyclegan):
    ckpt, _ = grey_cyclegan
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.fromarray(_noise(0, 20, 24)).save(folder / "a.png")
    for _ in range(2):  # the second run would otherwise translate out/a.png and out/compare/a.png too
        assert translate_main([ckpt, str(folder), "--out", str(folder / "out")]) == 0
        assert "translated 1 image(s)" in capsys.readouterr().out
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.png")) == [
        "a.png", "out/a.png", "out/compare/a.png"]
