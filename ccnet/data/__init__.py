"""Datasets (Cityscapes, ADE20K, user folders, synthetic), their albumentations pipelines and loader seeding.

``build_dataset(cfg.dataset, "train" | "val", crop_size)`` is the entry point; items are
``(image (3, H, W) float32 normalised, label (H, W) int64 with ignore_index)``.
"""

from ccnet.data.base import DatasetError, SegmentationDataset, check_labelled_split
from ccnet.data.build import DATASETS, build_dataset, dataset_metainfo, reseed_dataset, seed_worker
from ccnet.data.config import crop_cost_warning, train_input_size

__all__ = [
    "DATASETS",
    "DatasetError",
    "SegmentationDataset",
    "build_dataset",
    "check_labelled_split",
    "dataset_metainfo",
    "reseed_dataset",
    "seed_worker",
    "train_input_size",
    "crop_cost_warning",
]
