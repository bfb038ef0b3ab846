"""fastgan's feeding of torch-fidelity: the same numbers as torch-fidelity on the same images written to
folders, FID of a set with itself ~ 0, reference statistics cached next to the data."""

import pytest
import torch
from PIL import Image

torch_fidelity = pytest.importorskip("torch_fidelity", reason="needs the fastgan[metrics] extra (torch-fidelity)")

from fastgan.data import DataRequest  # noqa: E402
from fastgan.image_files import save_image, to_unit  # noqa: E402
from fastgan.metrics import fidelity  # noqa: E402
from fastgan.metrics.evaluation import reference  # noqa: E402
from fastgan.metrics.sources import DomainImages, TensorImages, cache_dir, to_uint8  # noqa: E402
from fastgan.metrics.spaces import feature_space  # noqa: E402
from fastgan.models import init_weights  # noqa: E402
from fastgan.models.dcgan import Generator  # noqa: E402
from fastgan.noise import generator_noise  # noqa: E402

CPU = torch.device("cpu")


def synthetic_reference(n: int, split: str = "train", data: str = "synthetic"):
    return reference(DataRequest(kind="images", data=data, image_size=28, batch_size=1), split, "real", n)


def test_to_uint8_rounds_like_the_png_writer():
    x = torch.linspace(-1.2, 1.2, 2 * 28 * 28).view(2, 1, 28, 28)
    got = to_uint8(x)
    assert got.shape == (2, 3, 28, 28) and got.dtype == torch.uint8
    from fastgan.image_files import to_uint8 as png_pixels
    expected = torch.stack([torch.from_numpy(png_pixels(img)).permute(2, 0, 1) for img in to_unit(x.numpy())])
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_metrics_equal_torch_fidelity_on_the_same_images_in_folders(tmp_path, synthetic_classifier):
    space = feature_space(f"classifier:{synthetic_classifier}")
    ref = synthetic_reference(300)
    with torch.random.fork_rng():
        torch.manual_seed(2)
        G = init_weights(Generator(z_dim=8, ngf=4, channels=1, image_size=28)).eval()
    source = fidelity.GeneratorSource(G, 8, 300, seed=5)
    ours = fidelity.calculate(source, ref, space, ("fid", "kid", "is"), n_fake=300, device=CPU, batch_size=64)

    # The same images as PNG files: the generator's on the noise of `fastgan.generate --seed 5`, the
    # reference's as stored.
    fake_dir, real_dir = tmp_path / "fake", tmp_path / "real"
    fake_dir.mkdir(), real_dir.mkdir()
    with torch.no_grad():
        fake = G(torch.from_numpy(generator_noise(5, 300, 8)))
    for i, image in enumerate(to_unit(fake.numpy())):
        save_image(image, fake_dir / f"{i:04d}.png")
    for i in range(len(ref)):
        Image.fromarray(ref.images[i].permute(1, 2, 0).numpy()).save(real_dir / f"{i:04d}.png")
    theirs = torch_fidelity.calculate_metrics(
        input1=str(fake_dir), input2=str(real_dir), fid=True, kid=True, isc=True, kid_subset_size=300,
        feature_extractor=space.extractor, feature_extractor_weights_path=space.weights, cuda=False,
        verbose=False, cache=False, save_cpu_ram=True)

    assert ours["fid"] > 1  # a real comparison, not two zeros
    assert ours["fid"] == pytest.approx(theirs[torch_fidelity.KEY_METRIC_FID], rel=1e-4)
    assert ours["kid"] == pytest.approx(theirs[torch_fidelity.KEY_METRIC_KID_MEAN], rel=1e-4)
    assert ours["is"] == pytest.approx(theirs[torch_fidelity.KEY_METRIC_ISC_MEAN], rel=1e-4)


def test_fid_of_a_set_with_itself_is_zero_and_grows_with_a_shift(synthetic_classifier):
    space = feature_space(f"classifier:{synthetic_classifier}")
    ref = synthetic_reference(400)
    images = ref.images.batch(0, len(ref))
    same = fidelity.calculate(TensorImages(images), ref, space, ("fid", "kid"), n_fake=400, device=CPU,
                              batch_size=100)
    shifted_images = torch.roll(images, shifts=3, dims=-1)  # every blob 3 pixels to the right
    shifted = fidelity.calculate(TensorImages(shifted_images), ref, space, ("fid", "kid"), n_fake=400,
                                 device=CPU, batch_size=100)
    other_split = fidelity.calculate(TensorImages(synthetic_reference(400, "test").images.batch(0, 400)), ref,
                                     space, ("fid", "kid"), n_fake=400, device=CPU, batch_size=100)
    assert abs(same["fid"]) < 1e-6
    # Measured: shifted FID 4.7, KID 0.020; the test split (new samples of the same distribution) FID 0.53.
    # KID is left out for the set with itself: its unbiased estimator is negative for identical sets.
    assert shifted["fid"] > 2 and shifted["kid"] > 0.005
    assert other_split["fid"] < shifted["fid"] / 4 and abs(other_split["kid"]) < shifted["kid"] / 4


def test_reference_statistics_are_cached_next_to_the_data(idx_dir, random_classifier, monkeypatch):
    space = feature_space(f"classifier:{random_classifier}")
    ref = synthetic_reference(200, data=idx_dir)
    assert ref.cache_root == __import__("pathlib").Path(idx_dir) / ".fastgan-cache" and ref.note is None
    images = TensorImages(ref.images.batch(0, 200))
    first = fidelity.calculate(images, ref, space, ("fid", "kid"), n_fake=200, device=CPU, batch_size=64)
    cached = sorted(p.name for p in ref.cache_root.iterdir())
    # keyed by dataset, split, size, number of images, a fingerprint of the files, and the extractor
    assert cached and all(name.startswith("blobs-train-28px-n200-") and space.extractor in name for name in cached)

    def unread(self, index):
        raise AssertionError("a cached reference set was read again")

    monkeypatch.setattr(DomainImages, "__getitem__", unread)
    again = fidelity.calculate(images, ref, space, ("fid", "kid"), n_fake=200, device=CPU, batch_size=64)
    assert again == first


def test_a_system_data_directory_falls_back_to_the_user_cache(tmp_path):
    root, note = cache_dir("/usr/share/datasets/fashion-mnist")
    assert root == tmp_path / "xdg-cache" / "fastgan" / "reference" and root.is_dir()
    assert "/usr/share/datasets/fashion-mnist" in note and str(root) in note
    root, note = cache_dir(None)
    assert root == tmp_path / "xdg-cache" / "fastgan" / "reference" and "no directory" in note
    own = tmp_path / "data"
    own.mkdir()
    assert cache_dir(str(own)) == (own / ".fastgan-cache", None)


def test_the_generator_source_draws_generate_s_noise_and_balanced_labels():
    seen = []

    class Echo(torch.nn.Module):  # images whose first pixel is z[:, 0] and second the label
        def __init__(self):
            super().__init__()
            self.scale = torch.nn.Parameter(torch.ones(()))

        def forward(self, z, labels):
            x = torch.zeros(z.shape[0], 1, 4, 4)
            x[:, 0, 0, 0] = z[:, 0].clamp(-1, 1)
            x[:, 0, 0, 1] = labels / 10
            return x

    source = fidelity.GeneratorSource(Echo(), 3, 25, num_classes=4, seed=7,
                                      observer=lambda images, labels: seen.append(labels))
    batches = [source(torch.zeros(10, 3)), source(torch.zeros(10, 3)), source(torch.zeros(5, 3))]
    z = torch.from_numpy(generator_noise(7, 25, 3))  # the noise of `fastgan.generate --seed 7`
    first_pixel = torch.cat(batches)[:, 0, 0, 0]
    torch.testing.assert_close(first_pixel, to_uint8(z[:, :1].clamp(-1, 1).view(25, 1, 1, 1))[:, 0, 0, 0])
    torch.testing.assert_close(torch.cat(seen), torch.arange(25) % 4)
    assert source.num_classes == 0  # torch-fidelity's own conditional path is not used
