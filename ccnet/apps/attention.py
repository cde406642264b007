"""The input of an attention picture (``tools/visualize_attention.py``): an image file, or a
validation image of the dataset a checkpoint was trained on, and a default pixel to explain."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Optional, Tuple

import torch

from ccnet.data import build_dataset
from ccnet.data.base import DatasetError
from ccnet.errors import ConfigError
from ccnet.evaluation.predict import read_rgb, to_tensor
from ccnet.utils.visualize import IMAGENET_MEAN, IMAGENET_STD

Pixel = Tuple[int, int]


def attention_input(
    dataset_cfg: Mapping[str, Any], image: Optional[Path] = None, index: int = 0
) -> Tuple[torch.Tensor, Optional[Pixel]]:
    """The normalised image to explain and, when the data suggests one, the pixel to explain.

    Args:
        dataset_cfg: the checkpoint's ``dataset`` config (normalisation; validation images).
        image: an RGB image file; None takes validation item ``index`` of the dataset.
        index: validation item when ``image`` is None.

    Returns:
        ``(image, pixel)``: pixel is a two-hop shape's centre for a synthetic scene, else None.

    Raises:
        ConfigError: the image does not exist, the index is out of range, or the dataset has no
            validation images here (the message says to pass an image).
        UnreadableImageError: the image cannot be decoded.

    Shape:
        image: (3, H, W) float32.
    """
    mean = tuple(dataset_cfg.get("mean") or IMAGENET_MEAN)
    std = tuple(dataset_cfg.get("std") or IMAGENET_STD)
    if image is not None:
        if not Path(image).is_file():
            raise ConfigError(f"--image {image} does not exist")
        return to_tensor(read_rgb(Path(image)), mean, std, torch.device("cpu"))[0], None
    name = dataset_cfg.get("name")
    try:
        dataset = build_dataset(dataset_cfg, "val")
    except (FileNotFoundError, DatasetError, ValueError) as exc:
        raise ConfigError(
            f"no validation image of the checkpoint's dataset {name!r} to show ({exc}); pass --image PATH"
        ) from None
    if not 0 <= index < len(dataset):
        raise ConfigError(f"--index {index} out of range: the {name} validation set has {len(dataset)} images")
    item, _ = dataset[index]
    two_hop = getattr(dataset, "two_hop_pixel", None)
    return item, two_hop(index) if two_hop is not None else None
