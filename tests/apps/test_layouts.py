"""Generated Cityscapes and ADE20K layouts: found and decoded by the real dataset configs."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from omegaconf import OmegaConf

from ccnet.apps.layouts import write_ade20k_layout, write_cityscapes_layout
from ccnet.data import build_dataset
from ccnet.data.cityscapes import label_ids_to_train_ids


def _cfg(configs_dir: Path, name: str, root: Path):
    cfg = OmegaConf.load(configs_dir / "dataset" / f"{name}.yaml")
    cfg.root = str(root)
    return cfg


def test_cityscapes_layout_is_read_by_the_cityscapes_config(configs_dir: Path, tmp_path: Path) -> None:
    write_cityscapes_layout(tmp_path, {"train": 2, "val": 1}, size=(64, 128), seed=3)
    raw = cv2.imread(str(next((tmp_path / "gtFine" / "val").rglob("*_gtFine_labelIds.png"))), cv2.IMREAD_UNCHANGED)
    assert raw.shape == (64, 128) and {7, 23} <= set(np.unique(raw).tolist())
    val = build_dataset(_cfg(configs_dir, "cityscapes", tmp_path), "val")
    assert len(val) == 1 and val.num_classes == 19
    image, label = val[0]
    assert image.shape == (3, 64, 128)
    np.testing.assert_array_equal(label.numpy(), label_ids_to_train_ids(raw))
    train = build_dataset(_cfg(configs_dir, "cityscapes", tmp_path), "train", crop_size=[32, 32])
    assert len(train) == 2 and train[1][0].shape == (3, 32, 32)


def test_cityscapes_layout_has_full_size_photo_like_pngs(tmp_path: Path) -> None:
    write_cityscapes_layout(tmp_path, {"val": 1})
    image_path = next((tmp_path / "leftImg8bit" / "val").rglob("*_leftImg8bit.png"))
    image = cv2.imread(str(image_path))
    assert image.shape == (1024, 2048, 3)
    assert 1.0 < image_path.stat().st_size / 2**20 < 4.0  # real Cityscapes PNGs: ~2.2 MB


def test_ade20k_layout_is_read_by_the_ade20k_config(configs_dir: Path, tmp_path: Path) -> None:
    write_ade20k_layout(tmp_path, {"training": 2, "validation": 1}, size=(60, 80), seed=1)
    ann = next((tmp_path / "ADEChallengeData2016" / "annotations" / "validation").glob("ADE_*.png"))
    raw = cv2.imread(str(ann), cv2.IMREAD_UNCHANGED)
    assert raw.shape == (60, 80) and raw.max() <= 150 and (raw[:3] == 0).all()
    val = build_dataset(_cfg(configs_dir, "ade20k", tmp_path), "val")
    assert len(val) == 1 and val.num_classes == 150
    image, label = val[0]
    assert image.shape == (3, 60, 80)
    expected = raw.astype(np.int64) - 1
    expected[raw == 0] = 255
    np.testing.assert_array_equal(label.numpy(), expected)
    assert len(build_dataset(_cfg(configs_dir, "ade20k", tmp_path), "train", crop_size=16)) == 2
