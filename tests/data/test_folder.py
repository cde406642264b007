"""Folder dataset: split lists, split folders, flat fallback, extensions, palette PNGs, classes config."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ccnet.data import build_dataset
from ccnet.data.folder import generate_palette
from tests.data.datagen import block_label, folder_cfg, normalise, random_image, write_image, write_label


def test_split_lists_pair_images_and_masks(folder_root: Path) -> None:
    train = build_dataset(folder_cfg(folder_root), "train")
    val = build_dataset(folder_cfg(folder_root), "val")
    assert [p.stem for p in train.image_paths] == ["img_0", "img_1", "img_2", "img_3"]
    # val.txt names "img_4.png" but the file is img_4.jpg: list entries match by name, not extension.
    assert [p.name for p in val.image_paths] == ["img_4.jpg", "img_5.png"]
    image, label = val[1]
    assert image.shape == (3, 40, 48) and label.dtype == torch.int64
    np.testing.assert_array_equal(label.numpy(), block_label(40, 48))
    np.testing.assert_allclose(image.numpy(), normalise(np.asarray(Image.open(val.image_paths[1]))), atol=1e-5)
    crop_img, crop_label = train[0]
    assert crop_img.shape == (3, 32, 32) and crop_label.shape == (32, 32)


def test_split_folders_with_nested_dirs_and_extensions(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for split, names in {"train": ["a/x1", "b/x2"], "val": ["v1"]}.items():
        for i, name in enumerate(names):
            ext = [".bmp", ".tif", ".jpeg"][i % 3] if split == "train" else ".png"
            write_image(tmp_path / "images" / split / f"{name}{ext}", random_image(rng, 10, 12))
            write_label(tmp_path / "masks" / split / f"{name}.png", np.ones((10, 12), np.uint8))
    train = build_dataset(folder_cfg(tmp_path, num_classes=2), "train", crop_size=8)
    assert [p.relative_to(tmp_path).as_posix() for p in train.image_paths] == [
        "images/train/a/x1.bmp",
        "images/train/b/x2.tif",
    ]
    assert [p.relative_to(tmp_path).as_posix() for p in train.label_paths] == [
        "masks/train/a/x1.png",
        "masks/train/b/x2.png",
    ]
    val = build_dataset(folder_cfg(tmp_path, num_classes=2), "val")
    assert len(val) == 1 and (val[0][1] == 1).all()


def test_flat_layout_uses_all_files_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    rng = np.random.default_rng(0)
    for name in ("p", "q"):
        write_image(tmp_path / "images" / f"{name}.png", random_image(rng, 8, 8))
        write_label(tmp_path / "masks" / f"{name}.png", np.zeros((8, 8), np.uint8))
    (tmp_path / "images" / "._p.png").write_bytes(b"macOS metadata, not an image")
    with caplog.at_level(logging.WARNING, logger="ccnet.data.folder"):
        ds = build_dataset(folder_cfg(tmp_path), "val")
    assert [p.name for p in ds.image_paths] == ["p.png", "q.png"]
    assert "training and validation images are the same" in caplog.text


def test_palette_png_masks_are_read_as_indices(tmp_path: Path) -> None:
    # Annotation tools save palette PNGs; their colours must not be mistaken for class ids.
    rng = np.random.default_rng(0)
    label = block_label(8, 10, values=(0, 1, 2, 255))
    palette = [0, 0, 0, 200, 10, 10, 10, 200, 10] + [0] * (256 * 3 - 9)
    write_image(tmp_path / "images" / "a.png", random_image(rng, 8, 10))
    write_label(tmp_path / "masks" / "a.png", label, palette=palette)
    assert Image.open(tmp_path / "masks" / "a.png").mode == "P"
    ds = build_dataset(folder_cfg(tmp_path), "val")
    np.testing.assert_array_equal(ds[0][1].numpy(), label)


def test_classes_palette_and_ignore_from_config(folder_root: Path) -> None:
    cfg = folder_cfg(folder_root, classes=["bg", "road", "car"], palette=[[0, 0, 0], [128, 64, 128], [0, 0, 142]])
    ds = build_dataset(cfg, "val")
    assert ds.classes == ["bg", "road", "car"] and ds.num_classes == 3
    assert ds.palette == [(0, 0, 0), (128, 64, 128), (0, 0, 142)]
    auto = build_dataset(folder_cfg(folder_root), "val")
    assert auto.classes == ["class_0", "class_1", "class_2"] and auto.palette == generate_palette(3)
    # Masks whose unlabelled value is 200: ignore_index follows the config and survives padding.
    rng = np.random.default_rng(0)
    root = folder_root.parent / "ignore200"
    write_image(root / "images" / "a.png", random_image(rng, 6, 6))
    write_label(root / "masks" / "a.png", block_label(6, 6, values=(0, 1, 200, 200)))
    ds = build_dataset(folder_cfg(root, num_classes=2, ignore_index=200, ratio_range=[1, 1]), "train", crop_size=10)
    _, label = ds[0]
    assert ds.ignore_index == 200 and set(label.unique().tolist()) == {0, 1, 200}
    assert (label[6:, :] == 200).all() and (label[:, 6:] == 200).all()


def test_generated_palette_is_distinct_and_never_black() -> None:
    palette = generate_palette(255)
    assert len(set(palette)) == 255 and (0, 0, 0) not in palette
    assert palette[:3] == [(64, 64, 64), (215, 0, 0), (140, 60, 255)]  # dark grey, then glasbey


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(classes=["a", "b"]), "2 names but dataset.num_classes is 3"),
        (dict(palette=[[0, 0, 0]]), "3 \\[r, g, b\\] colours"),
        (dict(ignore_index=1), "ignore_index must be in \\[num_classes, 255\\]"),
        (dict(num_classes=300), "num_classes must be in \\[1, 255\\]"),
        (dict(root=None), "dataset.root is not set"),
        (dict(name="pascal"), "Unknown dataset.name 'pascal'; valid names: ade20k, cityscapes, folder, synthetic"),
    ],
)
def test_config_errors(folder_root: Path, overrides: dict, message: str) -> None:
    cfg = folder_cfg(folder_root)
    cfg.update(overrides)
    with pytest.raises(ValueError, match=message):
        build_dataset(cfg, "val")
