"""Feature spaces: the standard-FID Inception path works offline from a file in the weights' format (random
weights here; the real file only where $FASTGAN_INCEPTION_WEIGHTS names one) and refuses without one,
never touching the network."""

import os

import pytest
import torch

torch_fidelity = pytest.importorskip("torch_fidelity", reason="needs the fastgan[metrics] extra (torch-fidelity)")

from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3  # noqa: E402
from torch_fidelity.utils import create_feature_extractor  # noqa: E402

from fastgan.errors import UserError  # noqa: E402
from fastgan.metrics import fidelity  # noqa: E402
from fastgan.metrics.spaces import ENV_INCEPTION, INCEPTION_FILES, feature_space  # noqa: E402

REAL_WEIGHTS = os.environ.get(ENV_INCEPTION)


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    """No weights anywhere by default, and any attempt to download fails the test."""
    monkeypatch.delenv(ENV_INCEPTION, raising=False)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))

    def no_network(*args, **kwargs):
        raise AssertionError("tried to download weights")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    monkeypatch.setattr("torch_fidelity.feature_extractor_inceptionv3.load_state_dict_from_url", no_network)


@pytest.fixture(scope="module")
def random_inception(tmp_path_factory):
    """A state_dict in the format of the Inception FID weights file, with seeded random values."""
    root = tmp_path_factory.mktemp("inception")
    empty = root / "empty.pt"
    torch.save({}, empty)

    class Skeleton(FeatureExtractorInceptionV3):
        def load_state_dict(self, state_dict, strict=True, assign=False):
            return None  # keep the random initialisation

    with torch.random.fork_rng():
        torch.manual_seed(0)
        skeleton = Skeleton("skeleton", ["2048"], feature_extractor_weights_path=str(empty))
    path = root / INCEPTION_FILES[1]
    torch.save(skeleton.state_dict(), path)
    return path


def test_without_weights_standard_fid_is_refused_in_one_line(tmp_path):
    with pytest.raises(UserError) as info:
        feature_space("inception")
    message = str(info.value)
    assert "\n" not in message and ENV_INCEPTION in message and "--inception-weights" in message
    assert str(tmp_path / "hub" / "checkpoints" / INCEPTION_FILES[0]) in message  # where to put it


def test_random_weights_load_through_torch_fidelity_and_give_features(random_inception):
    space = feature_space(f"inception:{random_inception}")
    assert space.kind == "inception" and space.dim == 2048 and space.suffix == ""
    fidelity.register(space)
    extractor = create_feature_extractor(space.extractor, ["2048", "logits_unbiased"], cuda=False,
                                         feature_extractor_weights_path=space.weights)
    images = torch.randint(0, 256, (2, 3, 28, 28), dtype=torch.uint8)
    with torch.no_grad():
        pool, logits = extractor(images)
    assert pool.shape == (2, 2048) and logits.shape == (2, 1008)
    assert torch.isfinite(pool).all() and torch.isfinite(logits).all()
    # the same file found through the environment and through the torch hub cache
    os.environ[ENV_INCEPTION] = str(random_inception)
    try:
        assert feature_space("inception") == space
    finally:
        del os.environ[ENV_INCEPTION]


def test_inception_score_runs_on_generated_images(random_inception):
    space = feature_space(f"inception:{random_inception}")

    class Flat(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.bias = torch.nn.Parameter(torch.zeros(()))

        def forward(self, z):
            return torch.tanh(z[:, :1, None, None].expand(-1, 1, 16, 16) + self.bias)

    source = fidelity.GeneratorSource(Flat(), 4, 10, seed=0)
    result = fidelity.calculate(source, None, space, ("is",), n_fake=10, device=torch.device("cpu"), batch_size=5)
    assert result["is"] >= 1 and result["is_std"] >= 0


@pytest.mark.parametrize("content, message", [
    (None, "no such file"),
    (b"\x00garbage", "not a readable torch file"),
    ({"Conv2d_1a_3x3.conv.weight": torch.zeros(32, 3, 3, 3), "fc.weight": torch.zeros(10, 2048)}, "fc.weight"),
    ([1, 2, 3], "not a state_dict"),
])
def test_bad_weights_files(tmp_path, content, message):
    path = tmp_path / "weights.pth"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        torch.save(content, path)
    with pytest.raises(UserError, match=message) as info:
        feature_space("inception", inception_weights=str(path))
    assert "\n" not in str(info.value)


def test_unknown_feature_specs():
    for spec in ("vgg", "classifier", "classifier:"):
        with pytest.raises(UserError, match="--feature"):
            feature_space(spec)


@pytest.mark.skipif(not REAL_WEIGHTS, reason=f"set ${ENV_INCEPTION} to the Inception FID weights to run this")
def test_the_real_inception_weights(monkeypatch):
    monkeypatch.setenv(ENV_INCEPTION, REAL_WEIGHTS)
    space = feature_space("inception")
    fidelity.register(space)
    extractor = create_feature_extractor(space.extractor, ["2048", "logits_unbiased"], cuda=False,
                                         feature_extractor_weights_path=space.weights)
    grey = torch.full((2, 3, 64, 64), 128, dtype=torch.uint8)
    with torch.no_grad():
        pool, logits = extractor(grey)
    assert pool.shape == (2, 2048) and (pool >= 0).all()  # pool3 follows a ReLU
    torch.testing.assert_close(pool[0], pool[1])


def test_the_refusal_says_where_the_file_is_published(tmp_path):
    from fastgan.metrics.spaces import INCEPTION_URLS

    with pytest.raises(UserError) as info:
        feature_space("inception")
    message = str(info.value)
    assert INCEPTION_URLS[0].endswith("/" + INCEPTION_FILES[0]) and INCEPTION_URLS[1].endswith("/" + INCEPTION_FILES[1])
    assert f"published by torch-fidelity at {INCEPTION_URLS[0]}" in message and INCEPTION_URLS[1] in message


def test_train_takes_inception_weights_from_the_flag_or_the_environment(tmp_path, monkeypatch, random_inception):
    from fastgan.train.__main__ import parse_config
    from fastgan.train.loop import resolve_config

    argv = ["dcgan", "--data", "synthetic", "--device", "cpu", "--eval-every", "10", "--out", str(tmp_path / "r")]
    cfg = resolve_config(parse_config([*argv, "--inception-weights", str(random_inception)]))
    assert cfg.inception_weights == str(random_inception)  # saved in config.json as resolved
    monkeypatch.setenv(ENV_INCEPTION, str(random_inception))
    assert resolve_config(parse_config(argv)).inception_weights == str(random_inception)
    # Not evaluating: nothing to find.
    assert resolve_config(parse_config(argv[:5] + ["--out", str(tmp_path / "r")])).inception_weights == ""


def test_train_without_inception_weights_fails_at_start_in_one_line(tmp_path, capsys, monkeypatch):
    from fastgan.metrics.spaces import INCEPTION_URLS
    from fastgan.train.__main__ import main

    out = tmp_path / "run"
    text = tmp_path / "x.txt"
    text.write_text("not torch")
    for extra, env, named in (
            ([], None, INCEPTION_URLS[0]),
            (["--inception-weights", str(tmp_path / "none.pth")], None,
             f"--inception-weights {tmp_path / 'none.pth'}: no such file"),
            (["--inception-weights", str(text)], None, f"Inception weights {text}: not a readable torch file"),
            ([], str(text), f"Inception weights {text}: not a readable torch file")):
        if env:
            monkeypatch.setenv(ENV_INCEPTION, env)
        with pytest.raises(SystemExit) as exit_info:
            main(["dcgan", "--data", "synthetic", "--device", "cpu", "--iters", "2", "--eval-every", "1",
                  "--out", str(out), *extra])
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and err.count("\n") == 1 and named in err, err
        assert not out.exists()  # refused before the run directory was made
