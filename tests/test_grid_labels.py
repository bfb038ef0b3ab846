"""Sample grids label their columns and rows (fastgan.grid_labels), as each model declares them."""

import numpy as np
import pytest
import torch

from fastgan.grid_labels import GridLabels, label_grid
from fastgan.image_files import make_grid
from fastgan.models import REGISTRY, get_model
from fastgan.train.config import TrainConfig
from fastgan.train.tasks import build_task, with_recipe


def test_labels_are_drawn_around_unchanged_tiles():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (12, 3, 24, 24)).astype(np.float32) / 255
    grid = make_grid(images, 6)
    labelled = label_grid(grid, GridLabels(columns=("real A", "fake B", "rec A", "real B", "fake A", "rec B"),
                                           rows=("one", "two")), (24, 24), 6)
    header, width = labelled.shape[1] - grid.shape[1], labelled.shape[2] - grid.shape[2]
    assert header >= 8 and width >= 8
    np.testing.assert_array_equal(np.round(labelled[:, header:, width:] * 255), np.round(grid * 255))
    assert labelled[:, :header].max() > 0.5 and labelled[:, header:, :width].max() > 0.5  # text was drawn
    # Each header label stays above its own column: the ink of column j lies within its tile's span.
    for j in range(6):
        left = width + 2 + j * 26
        ink = labelled[:, :header, left - 1:left + 25].max()
        assert ink > 0.5, j
    assert label_grid(grid, GridLabels(), (24, 24), 6) is grid
    with pytest.raises(ValueError, match="3 column labels for a grid of 6 columns"):
        label_grid(grid, GridLabels(columns=("a", "b", "c")), (24, 24), 6)


def test_a_run_of_equal_row_labels_is_written_once():
    grid = make_grid(np.zeros((4, 3, 28, 28), np.float32), 1)
    labelled = label_grid(grid, GridLabels(rows=("real", "real", "generated", "generated")), (28, 28), 1)
    left = labelled[:, :, : labelled.shape[2] - grid.shape[2]]
    inked = [left[:, 2 + i * 30:2 + i * 30 + 28].max() > 0.5 for i in range(4)]
    assert inked == [True, False, True, False]


@pytest.mark.parametrize("model", sorted(REGISTRY))
def test_every_models_grid_is_labelled(model, tmp_path):
    translates = get_model(model).data_kind in ("unpaired", "paired")
    cfg = with_recipe(TrainConfig(model=model, device="cpu", data="synthetic", batch_size=2, z_dim=8, hidden=16, ngf=4,
                                  ndf=4, n_blocks=1, image_size=32 if translates else None,
                                  unet_depth=5 if model == "pix2pix" else None))
    channels = 3 if translates else 1
    info = {"channels": channels, "num_classes": 10 if model == "cgan" else 0, "num_images": 16}
    task = build_task(cfg, info, torch.device("cpu"))
    keys = ("A", "B") if translates else ("real",)
    fixed = {k: torch.rand(task.fixed_size, channels, cfg.image_size, cfg.image_size) * 2 - 1 for k in keys}
    fixed["label"] = torch.arange(task.fixed_size) % 10
    plain, labelled = task.sample(fixed), task.sample(fixed, labelled=True)
    labels = task.grid_labels
    assert labels.columns or labels.rows
    assert get_model(model).grid_legend
    grown = (labelled.shape[1] - plain.shape[1], labelled.shape[2] - plain.shape[2])
    assert (grown[0] > 0) == bool(labels.columns) and (grown[1] > 0) == bool(labels.rows)
    if model == "cyclegan":
        assert labels.columns == ("real A", "fake B", "rec A", "real B", "fake A", "rec B")
    if model == "pix2pix":
        assert labels.columns == ("input A", "output B", "target B")
    if model == "cgan":
        assert labels.rows[7:10] == ("real", "class 0", "class 1")
