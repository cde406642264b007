"""Evaluation plots: the numbers against hand-made matrices, the PNGs on disk, matplotlib loaded lazily."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from ccnet.utils.plots import confusion_plot_data, plot_confusion_matrix, plot_per_class_iou, row_normalized

# rows = ground truth, columns = prediction; class 2 never occurs in the ground truth
CONFUSION = np.array([[8, 2, 0], [1, 1, 2], [0, 0, 0]])
NAMES = ["road", "car", "sky"]


def test_rows_are_normalised_by_hand() -> None:
    fractions = row_normalized(CONFUSION)
    np.testing.assert_allclose(fractions[:2], [[0.8, 0.2, 0.0], [0.25, 0.25, 0.5]])
    assert np.isnan(fractions[2]).all()  # nothing to divide: "no ground truth", not "never right"
    values, rows, cols = confusion_plot_data(CONFUSION, NAMES)
    np.testing.assert_allclose(values[:2], fractions[:2])
    np.testing.assert_allclose(np.nansum(values, axis=1), [1.0, 1.0, 0.0])
    assert rows == cols == NAMES


def test_many_classes_keep_the_most_confused_and_an_other_column() -> None:
    confusion = np.diag([50, 40, 30, 20, 10])
    confusion[1, 3] = 9  # car (1) <-> bus (3): 9 + 4 errors each
    confusion[3, 1] = 4
    confusion[0, 4] = 2  # 2 errors for road (0) and bike (4)
    confusion[2, 0] = 1  # 1 error for sky (2) and road (0): road 3 errors in all
    names = ["road", "car", "sky", "bus", "bike"]
    values, rows, cols = confusion_plot_data(confusion, names, max_classes=3)
    assert rows == ["road", "car", "bus"] and cols == ["road", "car", "bus", "other"]
    expected = np.array(
        [
            [50, 0, 0, 2],  # road: 2 pixels predicted as bike, not shown -> other
            [0, 40, 9, 0],
            [0, 4, 20, 0],
        ],
        dtype=float,
    )
    np.testing.assert_allclose(values, expected / expected.sum(axis=1, keepdims=True))
    np.testing.assert_allclose(values.sum(axis=1), 1.0)


def test_confusion_shape_is_checked() -> None:
    with pytest.raises(ValueError, match=r"shape \(3, 3\) for 2 classes"):
        confusion_plot_data(CONFUSION, NAMES[:2])


def read_png(path) -> np.ndarray:
    with Image.open(path) as image:
        assert image.format == "PNG"
        return np.asarray(image.convert("RGB"))


def test_plots_are_written_as_readable_pngs(tmp_path) -> None:
    names = [f"class {i}" for i in range(19)]
    rng = np.random.default_rng(0)
    confusion = rng.integers(0, 30, (19, 19)) + np.diag(rng.integers(200, 900, 19))
    iou = [float(v) for v in rng.uniform(0.2, 0.9, 19)]
    iou[5] = math.nan

    bars = plot_per_class_iou(iou, names, float(np.nanmean(iou)), path=tmp_path / "iou.png")
    np.testing.assert_array_equal(read_png(tmp_path / "iou.png"), bars)  # TensorBoard gets the same picture
    assert bars.shape[1] == 700 and 300 <= bars.shape[0] <= 1000  # ~22 px per class
    assert bars.std() > 10  # not a blank canvas

    heat = plot_confusion_matrix(confusion, names, path=tmp_path / "sub" / "confusion.png")
    np.testing.assert_array_equal(read_png(tmp_path / "sub" / "confusion.png"), heat)
    assert 600 <= heat.shape[0] <= 1200 and 600 <= heat.shape[1] <= 1300
    for path in (tmp_path / "iou.png", tmp_path / "sub" / "confusion.png"):
        assert 5_000 < path.stat().st_size < 500_000

    # 150 classes: the top 30 plus "other" keep the figure about as large as for 19 classes' labels
    many = rng.integers(0, 5, (150, 150)) + np.diag(rng.integers(100, 900, 150))
    big = plot_confusion_matrix(many, [f"c{i}" for i in range(150)])
    assert big.shape[0] < 1500 and big.shape[1] < 1600


def test_importing_ccnet_does_not_load_matplotlib() -> None:
    code = (
        "import sys, ccnet, ccnet.utils.plots, ccnet.apps.eval, ccnet.engine.trainer; "
        "assert 'matplotlib' not in sys.modules, 'matplotlib imported at import time'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
