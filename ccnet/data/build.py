"""``build_dataset`` (the one entry point used by training, evaluation and tools) and DataLoader seeding."""

from __future__ import annotations

import random
from typing import Any, Dict, List, Mapping, Optional, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset, get_worker_info

from ccnet.data import ade20k, cityscapes, folder, synthetic
from ccnet.data.base import DatasetSpec, SegmentationData
from ccnet.data.transforms import SizeLike
from ccnet.errors import ConfigError

# dataset.name -> its DatasetSpec (build, metainfo), defined at the bottom of each dataset's module.
DATASETS: Dict[str, DatasetSpec] = {
    "cityscapes": cityscapes.DATASET,
    "ade20k": ade20k.DATASET,
    "folder": folder.DATASET,
    "synthetic": synthetic.DATASET,
}


def _spec(dataset_cfg: Mapping[str, Any]) -> DatasetSpec:
    name = dataset_cfg.get("name")
    if name not in DATASETS:
        raise ConfigError(
            f"Unknown dataset.name {name!r}; valid names: {', '.join(sorted(DATASETS))} (configs/dataset/<name>.yaml)"
        )
    return DATASETS[name]


def build_dataset(dataset_cfg: Mapping[str, Any], split: str, crop_size: Optional[SizeLike] = None) -> SegmentationData:
    """Build the dataset named by ``dataset_cfg.name`` (a key of :data:`DATASETS`) for one split.

    Args:
        dataset_cfg: the ``dataset`` config node (``configs/dataset/<name>.yaml``).
        split: ``"train"`` (training augmentation), ``"val"``, ``"test"`` (resolved through ``train_split`` /
            ``val_split`` / ``test_split``) or a split name used as is.
        crop_size: training crop (int or [h, w]); None takes ``dataset_cfg.crop_size``. Ignored for
            non-training splits, which are returned at full resolution.

    Returns:
        A dataset yielding ``(image, label)`` with attributes ``classes, palette, ignore_index, num_classes,
        image_paths, has_labels, mean, std``.

    Shape:
        image: (3, H, W) float32 normalised. label: (H, W) int64.

    Raises:
        ConfigError: an unknown name or a wrong setting.
        DatasetError: missing or broken files.
    """
    return _spec(dataset_cfg).build(dataset_cfg, split, crop_size=crop_size)


def dataset_metainfo(dataset_cfg: Mapping[str, Any]) -> Tuple[List[str], List[Tuple[int, int, int]], int]:
    """Class names, palette and ignore index of a dataset config, without reading any file.

    Raises:
        ConfigError: unknown ``dataset.name``, or an inconsistent folder-dataset class list/palette.
    """
    return _spec(dataset_cfg).metainfo(dataset_cfg)


def seed_worker(worker_id: int) -> None:
    """``DataLoader(worker_init_fn=seed_worker)``: make augmentation a function of the loader's seed.

    Seeds Python's ``random`` and NumPy from ``torch.initial_seed()`` (the worker's seed, drawn from the
    loader's ``generator``) and restarts the albumentations streams of the worker's copy of the dataset:
    same ``generator`` seed, identical batches; different workers, different augmentations.
    """
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)
    info = get_worker_info()
    if info is not None:
        reseed_dataset(info.dataset, seed)


def reseed_dataset(dataset: Any, seed: int) -> None:
    """Call ``reseed(seed)`` on ``dataset`` and on datasets it wraps (``Subset``, ``ConcatDataset``)."""
    if hasattr(dataset, "reseed"):
        dataset.reseed(seed)
    inner = getattr(dataset, "dataset", None)
    if isinstance(inner, Dataset):
        reseed_dataset(inner, seed)
    for i, child in enumerate(getattr(dataset, "datasets", ()) or ()):
        # Distinct streams per member so that two members never repeat each other's augmentation.
        reseed_dataset(child, (seed + 7919 * (i + 1)) % 2**32)
