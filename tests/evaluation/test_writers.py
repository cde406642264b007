"""Every prediction format is written, re-read and checked pixel by pixel against hand-made values."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from ccnet.errors import ConfigError
from ccnet.evaluation.writers import PredictionWriter, check_unique_outputs
from ccnet.utils.manifest import OutputConflictError, OutputManifest

PALETTE = [(10, 20, 30), (200, 100, 0), (0, 255, 0)]
PRED = np.array([[0, 1, 2], [2, 255, 0]], dtype=np.int64)
IMAGE = np.array([[[0, 0, 0], [100, 100, 100], [255, 255, 255]], [[50, 60, 70], [0, 0, 0], [1, 2, 3]]], dtype=np.uint8)


def read(path):
    with Image.open(path) as img:
        return img.mode, np.asarray(img)


def test_color_trainid_overlay_round_trip(tmp_path):
    writer = PredictionWriter(tmp_path, ["color", "trainid", "overlay"], PALETTE, alpha=0.25)
    paths = writer.write(PRED, "data/leftImg8bit/val/bonn/bonn_000001_000002_leftImg8bit.png", IMAGE)
    # several formats: one subfolder each, input folder name and stem mirrored
    assert paths["color"] == tmp_path / "color" / "bonn" / "bonn_000001_000002_leftImg8bit.png"
    mode, color = read(paths["color"])
    assert mode == "RGB"
    expected = np.array([[PALETTE[0], PALETTE[1], PALETTE[2]], [PALETTE[2], (0, 0, 0), PALETTE[0]]], dtype=np.uint8)
    assert np.array_equal(color, expected)  # ignore (255) is black
    mode, ids = read(paths["trainid"])
    assert mode == "L" and np.array_equal(ids, PRED.astype(np.uint8))
    _, blend = read(paths["overlay"])
    assert np.array_equal(blend, np.clip(0.75 * IMAGE + 0.25 * expected + 0.5, 0, 255).astype(np.uint8))


def test_cityscapes_label_ids_round_trip(tmp_path):
    # train id -> label id by the official table: road 0->7, sidewalk 1->8, building 2->11, sky 10->23,
    # bicycle 18->33; ignore 255 -> 0 "unlabeled".
    pred = np.array([[0, 1, 2], [10, 18, 255]])
    writer = PredictionWriter(tmp_path, "cityscapes", [(0, 0, 0)] * 19, num_classes=19)
    path = writer.write(pred, "leftImg8bit/test/berlin/berlin_000000_000019_leftImg8bit.png")["cityscapes"]
    assert path == tmp_path / "berlin" / "berlin_000000_000019_leftImg8bit.png"  # single format: no subfolder
    mode, ids = read(path)
    assert mode == "L" and ids.tolist() == [[7, 8, 11], [23, 33, 0]]


def test_format_errors(tmp_path):
    with pytest.raises(ConfigError, match="formats=cityscapes writes.*predicts 3 classes"):
        PredictionWriter(tmp_path, "cityscapes", PALETTE)
    with pytest.raises(ConfigError, match="formats='colour': expected one or more distinct formats"):
        PredictionWriter(tmp_path, "colour", PALETTE)
    with pytest.raises(ConfigError, match=r"formats=\['color', 'color'\]: expected"):
        PredictionWriter(tmp_path, ["color", "color"], PALETTE)
    with pytest.raises(ValueError, match="2 colours for 3 classes"):
        PredictionWriter(tmp_path, "color", PALETTE[:2], num_classes=3)
    with pytest.raises(ValueError, match="needs the input image"):
        PredictionWriter(tmp_path, "overlay", PALETTE).write(PRED, "a/b.png")


def test_colliding_output_names_are_rejected(tmp_path):
    writer = PredictionWriter(tmp_path, "color", PALETTE)
    check_unique_outputs(writer, ["a/x.png", "a/y.png", "b/x.png"])
    with pytest.raises(
        OutputConflictError, match=f"inputs a/x.jpg and a/x.png would both be written to {tmp_path / 'a' / 'x.png'}"
    ):
        check_unique_outputs(writer, ["a/x.jpg", "a/x.png"])


def test_every_written_file_is_recorded_in_the_manifest(tmp_path):
    manifest = OutputManifest(tmp_path, "eval")
    writer = PredictionWriter(tmp_path / "predictions", ["color", "overlay"], PALETTE, manifest=manifest)
    expected = [
        tmp_path / "predictions" / fmt / "a" / name for name in ("b.png", "c.png") for fmt in ("color", "overlay")
    ]
    assert writer.paths_for(["a/b.jpg", "a/c.png"]) == expected
    writer.write(PRED, "a/b.jpg", IMAGE)
    lines = (tmp_path / "manifest.txt").read_text().splitlines()
    assert lines[1:] == ["eval predictions/color/a/b.png", "eval predictions/overlay/a/b.png"]


def test_overlay_legend_names_the_predicted_classes(tmp_path):
    pred = np.zeros((30, 200), dtype=np.int64)
    pred[:, 100:] = 2  # classes 0 and 2 only
    image = np.full((30, 200, 3), 90, dtype=np.uint8)
    writer = PredictionWriter(
        tmp_path, ["overlay", "color"], PALETTE, alpha=0.25, legend=True, classes=["sky", "road", "car"]
    )
    paths = writer.write(pred, "a/b.png", image)
    _, out = read(paths["overlay"])
    colour = np.array(PALETTE, dtype=np.uint8)[pred]
    assert out.shape[1:] == (200, 3) and out.shape[0] > 30  # the legend band below the overlay
    assert np.array_equal(out[:30], np.clip(0.75 * image + 0.25 * colour + 0.5, 0, 255).astype(np.uint8))
    colours, counts = np.unique(out[30:].reshape(-1, 3), axis=0, return_counts=True)
    squares = {tuple(int(v) for v in c) for c, n in zip(colours, counts) if n >= 25 and len(set(c)) > 1}
    assert squares == {PALETTE[0], PALETTE[2]}  # the band's text and background are greys
    _, color = read(paths["color"])
    assert color.shape == (30, 200, 3)  # only overlays get a legend
    with pytest.raises(ValueError, match="legend=true names the classes, but 0 class names were given for 3"):
        PredictionWriter(tmp_path, "overlay", PALETTE, legend=True)
