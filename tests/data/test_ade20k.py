"""ADE20K: layout, reduce-zero-label mapping, class names and palette, on generated files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from ccnet.data import DatasetError, build_dataset
from ccnet.data.ade20k import CLASSES, PALETTE
from tests.data.datagen import random_image, write_image, write_label


def _make_root(root: Path, split: str = "validation", values=(0, 1, 150, 37)) -> Path:
    rng = np.random.default_rng(0)
    base = root / "ADEChallengeData2016"
    write_image(base / "images" / split / "ADE_val_00000001.jpg", random_image(rng, 12, 20))
    label = np.zeros((12, 20), dtype=np.uint8)
    label[:, 5:10], label[:, 10:15], label[:, 15:] = values[1], values[2], values[3]
    write_label(base / "annotations" / split / "ADE_val_00000001.png", label)
    return base


def _cfg(configs_dir: Path, root: Path):
    cfg = OmegaConf.load(configs_dir / "dataset" / "ade20k.yaml")
    cfg.root = str(root)
    return cfg


def test_classes_and_palette() -> None:
    assert len(CLASSES) == 150 and len(set(CLASSES)) == 150
    assert (CLASSES[0], CLASSES[2], CLASSES[12], CLASSES[149]) == ("wall", "sky", "person", "flag")
    assert len(PALETTE) == 150
    assert PALETTE[0] == (120, 120, 120) and PALETTE[149] == (92, 0, 255)
    assert all(len(c) == 3 and all(0 <= v <= 255 for v in c) for c in PALETTE)


@pytest.mark.parametrize("root_is_inner", [False, True])
def test_zero_is_ignored_and_labels_shift_by_one(configs_dir: Path, tmp_path: Path, root_is_inner: bool) -> None:
    inner = _make_root(tmp_path)
    ds = build_dataset(_cfg(configs_dir, inner if root_is_inner else tmp_path), "val")
    assert len(ds) == 1 and ds.num_classes == 150 and ds.ignore_index == 255 and ds.has_labels
    image, label = ds[0]
    assert image.shape == (3, 12, 20)
    expected = np.full((12, 20), 255)
    expected[:, 5:10], expected[:, 10:15], expected[:, 15:] = 0, 149, 36
    np.testing.assert_array_equal(label.numpy(), expected)


def test_value_above_150_is_rejected(configs_dir: Path, tmp_path: Path) -> None:
    _make_root(tmp_path, values=(0, 1, 151, 200))
    ds = build_dataset(_cfg(configs_dir, tmp_path), "val")
    with pytest.raises(DatasetError, match=r"ADE_val_00000001\.png.*\[151, 200\]"):
        ds[0]


def test_train_split_is_training_folder(configs_dir: Path, tmp_path: Path) -> None:
    _make_root(tmp_path, split="training")
    ds = build_dataset(_cfg(configs_dir, tmp_path), "train", crop_size=8)
    image, label = ds[0]
    assert image.shape == (3, 8, 8) and label.shape == (8, 8)
    with pytest.raises(FileNotFoundError, match="validation"):
        build_dataset(_cfg(configs_dir, tmp_path), "val")
