"""Reading the ``configs/dataset/*.yaml`` keys shared by every dataset: splits, labels and the pipelines."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Tuple

import torch

from ccnet.data.transforms import SizeLike, build_train_transform, build_val_transform, to_hw
from ccnet.errors import ConfigError
from ccnet.utils.visualize import IMAGENET_MEAN, IMAGENET_STD

SPLIT_ROLES = ("train", "val", "test")


def resolve_split(dataset_cfg: Mapping[str, Any], split: str) -> Tuple[str, bool]:
    """The on-disk split name of a requested split, and whether it gets training augmentation.

    ``"train"``, ``"val"`` and ``"test"`` are roles resolved through ``train_split`` / ``val_split`` /
    ``test_split``; the role decides augmentation (``"val"`` is never augmented, even when it resolves to the
    training folder). Any other string is a split name, augmented only if it is ``train_split``.

    Returns:
        (split name on disk, is_train).
    """
    if not isinstance(split, str) or not split:
        raise ConfigError(f"split must be a non-empty string such as 'train' or 'val', got {split!r}")
    if split in SPLIT_ROLES:
        name = str(dataset_cfg.get(f"{split}_split") or split)
        return name, split == "train"
    return split, split == str(dataset_cfg.get("train_split", "train"))


def root_from_cfg(dataset_cfg: Mapping[str, Any], layout: str) -> Path:
    """``dataset.root`` as a Path (``~`` expanded).

    Raises:
        ValueError: it is unset (the message shows the expected layout and how to set it).
    """
    root = dataset_cfg.get("root")
    if root is None or str(root).strip() == "":
        raise ConfigError(f"dataset.root is not set; pass dataset.root=/path/to/data on the command line. {layout}")
    return Path(str(root)).expanduser()


def check_label_spec(num_classes: Any, ignore_index: Any, where: str) -> Tuple[int, int]:
    """Validate ``num_classes`` and ``ignore_index`` (label files hold 8-bit class indices).

    Raises:
        ValueError: naming ``where`` (the dataset) and the values received.
    """
    try:
        k, ignore = int(num_classes), int(ignore_index)
    except (TypeError, ValueError):
        raise ConfigError(
            f"{where}: num_classes and ignore_index must be integers, got {num_classes!r} and {ignore_index!r}"
        ) from None
    if not 1 <= k <= 255:
        raise ConfigError(f"{where}: num_classes must be in [1, 255] (8-bit label maps), got {k}")
    if not k <= ignore <= 255:
        raise ConfigError(
            f"{where}: ignore_index must be in [num_classes, 255] = [{k}, 255] so it cannot be a class, got {ignore}"
        )
    return k, ignore


def mean_std(dataset_cfg: Mapping[str, Any]) -> Tuple[Tuple[float, ...], Tuple[float, ...]]:
    """``(mean, std)`` of the config on the 0..1 scale, ImageNet's when unset."""
    mean = tuple(float(v) for v in (dataset_cfg.get("mean") or IMAGENET_MEAN))
    std = tuple(float(v) for v in (dataset_cfg.get("std") or IMAGENET_STD))
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
        raise ConfigError(f"dataset.mean and dataset.std need 3 values (RGB) with std > 0, got {mean} and {std}")
    return mean, std


def transform_from_cfg(dataset_cfg: Mapping[str, Any], is_train: bool, crop_size: Optional[SizeLike] = None):
    """Build the train or val albumentations pipeline from a dataset config.

    Keys used: ``crop_size, base_size, ratio_range, cat_max_ratio, flip_prob, photometric, mean, std,
    ignore_index`` (train) and ``val_base_size, mean, std`` (val). The training pipeline's streams start
    from ``torch.initial_seed()``; DataLoader workers are re-seeded by :func:`ccnet.data.seed_worker`.

    Args:
        is_train: training (augmenting) or validation pipeline.
        crop_size: overrides ``dataset_cfg.crop_size`` (int or [h, w]).
    """
    mean, std = mean_std(dataset_cfg)
    if not is_train:
        return build_val_transform(dataset_cfg.get("val_base_size"), mean, std)
    crop = train_input_size(dataset_cfg, crop_size)
    if crop is None:
        raise ConfigError("No crop size for the training pipeline: set dataset.crop_size or pass crop_size")
    return build_train_transform(
        crop_size=crop,
        base_size=dataset_cfg.get("base_size"),
        ratio_range=tuple(dataset_cfg.get("ratio_range", (0.5, 2.0))),
        cat_max_ratio=float(dataset_cfg.get("cat_max_ratio", 1.0)),
        flip_prob=float(dataset_cfg.get("flip_prob", 0.5)),
        photometric=dataset_cfg.get("photometric"),
        mean=mean,
        std=std,
        ignore_index=int(dataset_cfg.get("ignore_index", 255)),
        seed=torch.initial_seed() % 2**32,
    )


def train_input_size(dataset_cfg: Mapping[str, Any], crop_size: Optional[SizeLike] = None) -> Optional[Tuple[int, int]]:
    """(height, width) of the images a training step sees: the crop (``train.crop_size``, else
    ``dataset.crop_size``), or the synthetic set's ``image_size``; None when neither is set.
    """
    crop = crop_size if crop_size is not None else dataset_cfg.get("crop_size")
    if crop is None and dataset_cfg.get("name") == "synthetic":
        crop = dataset_cfg.get("image_size")
    return None if crop is None else to_hw(crop, "crop_size")


def crop_cost_warning(image_paths: Sequence[Path], crop: Optional[Tuple[int, int]], sample: int = 64) -> Optional[str]:
    """A warning when the crop's area exceeds twice the median image area (most of each step would go into
    padding), from the headers of up to ``sample`` evenly spaced images; else None.
    """
    if crop is None or not image_paths:
        return None
    from PIL import Image

    step = max(1, len(image_paths) // sample)
    areas, sizes = [], []
    for path in list(image_paths)[::step][:sample]:
        try:
            with Image.open(path) as img:
                width, height = img.size
        except OSError:  # unreadable files are reported when they are read for training
            continue
        areas.append(width * height)
        sizes.append((height, width))
    if not areas:
        return None
    median = sorted(areas)[len(areas) // 2]
    ratio = crop[0] * crop[1] / median
    if ratio <= 2.0:
        return None
    h, w = sizes[areas.index(median)]
    return (
        f"the training crop {crop[0]}x{crop[1]} is {ratio:.1f}x the median image area ({h}x{w}): every sample is "
        f"padded up to the crop, so a step costs about {ratio:.0f}x what the images need (images/s drop by as "
        f"much). Set train.crop_size (or dataset.crop_size) to at most the image size, e.g. "
        f"train.crop_size=[{h},{w}]"
    )
