"""Writers for generated on-disk datasets used by the data tests (tiny images under ``tmp_path``)."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional

import numpy as np
from PIL import Image

from ccnet.utils.visualize import IMAGENET_MEAN, IMAGENET_STD


def write_image(path: Path, array: np.ndarray) -> Path:
    """Write an RGB (H, W, 3) uint8 array; the format follows the suffix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def write_label(path: Path, array: np.ndarray, palette: Optional[list] = None) -> Path:
    """Write an (H, W) uint8 label as an 8-bit grey PNG, or palette-mode when ``palette`` is given."""
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(array.astype(np.uint8), mode="L")
    if palette is not None:
        img = img.convert("P")
        img.putpalette(palette)
        img.putdata(array.ravel().tolist())
    img.save(path)
    return path


def random_image(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def block_label(h: int, w: int, values=(0, 1, 2, 255)) -> np.ndarray:
    """Quadrants of the given values: a label where every value covers a large region."""
    label = np.empty((h, w), dtype=np.uint8)
    label[: h // 2, : w // 2], label[: h // 2, w // 2 :] = values[0], values[1]
    label[h // 2 :, : w // 2], label[h // 2 :, w // 2 :] = values[2], values[3]
    return label


def folder_cfg(root: Path, **overrides) -> Dict:
    """A folder-dataset config like configs/dataset/folder.yaml, small crop, no photometric."""
    cfg = dict(
        name="folder",
        root=str(root),
        img_dir="images",
        mask_dir="masks",
        split_dir="splits",
        num_classes=3,
        classes=None,
        palette=None,
        ignore_index=255,
        train_split="train",
        val_split="val",
        base_size=None,
        ratio_range=[0.5, 2.0],
        crop_size=[32, 32],
        cat_max_ratio=1.0,
        flip_prob=0.5,
        photometric=None,
        val_base_size=None,
        mean=list(IMAGENET_MEAN),
        std=list(IMAGENET_STD),
    )
    cfg.update(overrides)
    return cfg


def normalise(image: np.ndarray) -> np.ndarray:
    """Reference ``(x / 255 - mean) / std`` as (3, H, W) float."""
    x = image.astype(np.float64) / 255.0
    return ((x - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)).transpose(2, 0, 1)
