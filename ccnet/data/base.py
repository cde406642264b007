"""Dataset base class shared by Cityscapes, ADE20K and the folder dataset: reading, checking, transforming.

A dataset is a list of (image path, label path) pairs plus a raw-label lookup table: 256 ``int16`` entries
mapping each value stored in a label file to its training id (0..K-1 or the ignore index), -1 for values
that must never occur (docs/design.md, "Decisions"). Layout and pairing are checked when a dataset is
built; each file's content when its sample is read.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Protocol, Sequence, Tuple

import cv2
import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from ccnet.errors import UserError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


class SegmentationData(Protocol):
    """What every dataset :func:`ccnet.data.build_dataset` returns offers: ``(image, label)`` items and
    these attributes (``has_labels``, False for an unlabelled test split, is optional)."""

    @property
    def classes(self) -> List[str]: ...

    @property
    def palette(self) -> List[Tuple[int, int, int]]: ...

    @property
    def ignore_index(self) -> int: ...

    @property
    def num_classes(self) -> int: ...

    @property
    def mean(self) -> Tuple[float, ...]: ...

    @property
    def std(self) -> Tuple[float, ...]: ...

    @property
    def image_paths(self) -> List[Path]: ...

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, torch.Tensor]: ...


class DatasetError(UserError, ValueError):
    """A file of a dataset has unusable content (corrupt, wrong size, invalid label values)."""


def read_image(path: Path) -> np.ndarray:
    """Decode an image file to RGB with PIL (which raises on truncated files).

    Grey, palette and RGBA images are converted; 16-bit grey is scaled to 8 bits (0..65535 -> 0..255).

    Returns:
        (H, W, 3) uint8 array.

    Raises:
        DatasetError: the file is empty or cannot be decoded, or holds floating-point or 32-bit values
            outside 0..65535; the message names the file.
    """
    path = Path(path)
    if path.stat().st_size == 0:
        raise DatasetError(f"Image file {path} is empty (0 bytes); re-copy or remove it from the dataset.")
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode in WIDE_GREY_MODES:
                return _wide_grey_to_rgb(np.asarray(img), img.mode, path)
            rgb = img.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DatasetError(
            f"Cannot decode image {path}: {exc}. The file is corrupt or not an image; "
            "re-copy or remove it from the dataset."
        ) from exc
    return np.asarray(rgb)


# PIL modes of grey images wider than 8 bits; PIL's convert("RGB") clips them at 255 (white).
WIDE_GREY_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")


def _wide_grey_to_rgb(arr: np.ndarray, mode: str, path: Path) -> np.ndarray:
    """16-bit grey (0..65535) to 8-bit RGB, rounding ``v / 257``; other wide data is rejected."""
    if mode == "F":
        raise DatasetError(
            f"Image {path} holds floating-point pixels (mode F); convert it to an 8- or 16-bit "
            "image first, since its value range is not defined."
        )
    values = arr.astype(np.int64)
    if values.size and (values.min() < 0 or values.max() > 65535):
        raise DatasetError(
            f"Image {path} is a 32-bit integer image with values in [{values.min()}, {values.max()}]; "
            "expected 8- or 16-bit data (0..65535). Convert it to an 8-bit RGB image first."
        )
    grey = ((values + 128) // 257).astype(np.uint8)  # 0 -> 0, 65535 -> 255, round to nearest
    return np.repeat(grey[..., None], 3, axis=2)


def read_label(path: Path) -> np.ndarray:
    """Decode a label file to the integer values stored in it; palette-mode (``P``) PNGs give their indices.

    Returns:
        (H, W) integer array (uint8, or a wider type for 16/32-bit files).

    Raises:
        DatasetError: the file is empty, cannot be decoded, or is not single-channel (e.g. RGB colour masks).
    """
    path = Path(path)
    if path.stat().st_size == 0:
        raise DatasetError(f"Label file {path} is empty (0 bytes); re-create or remove it.")
    try:
        with Image.open(path) as img:
            img.load()
            mode = img.mode
            arr = np.asarray(img)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DatasetError(f"Cannot decode label {path}: {exc}. The file is corrupt or not an image.") from exc
    if arr.ndim != 2:
        raise DatasetError(
            f"Label {path} has mode {mode!r} with shape {arr.shape}; expected a single-channel image of "
            "class indices (mode L, P or I;16). Convert colour-coded masks to index masks first."
        )
    return arr


def make_label_lut(num_classes: int, ignore_index: int) -> np.ndarray:
    """Identity lookup table: values ``0..num_classes-1`` and ``ignore_index`` are valid, all else -1.

    Returns:
        (256,) int16 array for :class:`SegmentationDataset`'s ``label_lut``.
    """
    lut = np.full(256, -1, dtype=np.int16)
    lut[:num_classes] = np.arange(num_classes, dtype=np.int16)
    lut[ignore_index] = ignore_index
    return lut


def map_label(raw: np.ndarray, lut: np.ndarray, path: Path, num_classes: int, ignore_index: int) -> np.ndarray:
    """Map stored label values through ``lut`` after checking that every value is allowed.

    Args:
        raw: (H, W) values as stored in the file.
        lut: (256,) int16 table; -1 marks values that must not occur.
        path, num_classes, ignore_index: for the error message.

    Returns:
        (H, W) uint8 training ids (``0..num_classes-1`` or ``ignore_index``).

    Raises:
        DatasetError: listing the offending stored values and the file.
    """
    if raw.dtype == np.uint8:
        # OpenCV's histogram and LUT are ~20x faster than np.bincount / fancy indexing on a 2 MP label.
        raw = np.ascontiguousarray(raw)
        present = np.flatnonzero(cv2.calcHist([raw], [0], None, [256], [0, 256]).ravel())
    else:
        if raw.min() < 0:
            bad = np.unique(raw[raw < 0])
            raise DatasetError(
                f"Label {path} contains negative values {bad[:20].tolist()}; "
                f"expected values in [0, {num_classes}) or {ignore_index} (ignore)."
            )
        present = np.flatnonzero(np.bincount(raw.ravel().astype(np.int64, copy=False)))
    invalid = present[(present >= 256) | (lut[np.minimum(present, 255)] < 0)]
    if invalid.size:
        valid = np.flatnonzero(lut >= 0)
        raise DatasetError(
            f"Label {path} contains invalid values {invalid[:20].tolist()}"
            f"{' ...' if invalid.size > 20 else ''}; valid stored values are {_ranges(valid)} "
            f"(mapped to classes [0, {num_classes}) and ignore {ignore_index}). Check num_classes / "
            "ignore_index in the dataset config, or fix the mask."
        )
    # All values are now < 256 and valid, so the uint8 table is exact.
    return cv2.LUT(np.ascontiguousarray(raw.astype(np.uint8, copy=False)), lut.astype(np.uint8))


def _ranges(values: np.ndarray) -> str:
    """Compact text for a sorted integer list: ``[0-18, 255]``."""
    parts: List[str] = []
    start = prev = int(values[0])
    for v in [int(x) for x in values[1:]] + [None]:
        if v is not None and v == prev + 1:
            prev = v
            continue
        parts.append(f"{start}-{prev}" if prev > start else f"{start}")
        if v is not None:
            start = prev = v
    return "[" + ", ".join(parts) + "]"


class SegmentationDataset(Dataset):
    """Image/label pairs read from disk, checked, mapped to training ids and transformed; items ``(image, label)``.

    Args:
        image_paths: one image file per sample.
        label_paths: the matching label files, or None for an unlabelled split (labels all ``ignore_index``,
            :attr:`has_labels` False).
        classes: class names; index = training id.
        palette: one RGB colour per class.
        ignore_index: training id of unlabelled pixels (and of padding added by the transforms).
        label_lut: (256,) int16 table from stored label values to training ids (-1 = invalid value).
        transform: albumentations pipeline called as ``transform(image=..., mask=...)``.
        mean, std: normalisation (0..1 scale) the transform uses, for de-normalising.

    Shape:
        image: (3, H, W) float32, ``(x / 255 - mean) / std``. label: (H, W) int64.
    """

    def __init__(
        self,
        image_paths: Sequence[Path],
        label_paths: Optional[Sequence[Path]],
        classes: Sequence[str],
        palette: Sequence[Sequence[int]],
        ignore_index: int,
        label_lut: np.ndarray,
        transform: Callable[..., Dict[str, torch.Tensor]],
        mean: Sequence[float],
        std: Sequence[float],
    ) -> None:
        assert label_paths is None or len(label_paths) == len(image_paths)
        assert label_lut.shape == (256,)
        self.image_paths: List[Path] = [Path(p) for p in image_paths]
        self.label_paths: Optional[List[Path]] = None if label_paths is None else [Path(p) for p in label_paths]
        self.classes: List[str] = list(classes)
        self.palette: List[Tuple[int, int, int]] = [(int(rgb[0]), int(rgb[1]), int(rgb[2])) for rgb in palette]
        self.ignore_index = int(ignore_index)
        self.label_lut = label_lut
        self.transform = transform
        self.mean: Tuple[float, ...] = tuple(float(m) for m in mean)
        self.std: Tuple[float, ...] = tuple(float(s) for s in std)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def has_labels(self) -> bool:
        return self.label_paths is not None

    def __len__(self) -> int:
        return len(self.image_paths)

    def load(self, index: int) -> Tuple[np.ndarray, np.ndarray]:
        """Read, check and map one sample without transforming it.

        Returns:
            (H, W, 3) uint8 RGB image and (H, W) uint8 training-id label.
        """
        image_path = self.image_paths[index]
        image = read_image(image_path)
        if self.label_paths is None:
            return image, np.full(image.shape[:2], self.ignore_index, dtype=np.uint8)
        label_path = self.label_paths[index]
        raw = read_label(label_path)
        if raw.shape != image.shape[:2]:
            raise DatasetError(
                f"Size mismatch: image {image_path} is {image.shape[1]}x{image.shape[0]} (WxH) but label "
                f"{label_path} is {raw.shape[1]}x{raw.shape[0]} (WxH); a label must have its image's size."
            )
        return image, map_label(raw, self.label_lut, label_path, self.num_classes, self.ignore_index)

    def label(self, index: int) -> np.ndarray:
        """The (H, W) uint8 training-id label of sample ``index``, read without its image (all
        ``ignore_index`` for an unlabelled split)."""
        if self.label_paths is None:
            return np.full((1, 1), self.ignore_index, dtype=np.uint8)
        path = self.label_paths[index]
        return map_label(read_label(path), self.label_lut, path, self.num_classes, self.ignore_index)

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, torch.Tensor]:
        image, label = self.load(index)
        out = self.transform(image=image, mask=label)
        return out["image"], out["mask"].long()

    def reseed(self, seed: int) -> None:
        """Restart the augmentation random streams from ``seed`` (see :func:`ccnet.data.seed_worker`)."""
        set_transform_seed(self.transform, seed)


def check_labelled_split(
    dataset: SegmentationData, split: str, role: str = "validation", key: str = "dataset.val_split"
) -> None:
    """Fail before inference, not with a NaN score after it, when no pixel of a split is labelled.

    Reads labels until the first labelled pixel; datasets without a ``label`` method (generated ones) pass.

    Args:
        dataset: the split's dataset.
        split: its name, for the message.
        role: what the split is for (``validation`` in training, ``evaluation`` in tools/eval.py).
        key: the setting that chose the split, for the message.

    Raises:
        DatasetError: the split is unlabelled or every label is ``ignore_index`` (names the split).
    """
    label = getattr(dataset, "label", None)
    if label is None:
        return
    if getattr(dataset, "has_labels", True) and any(
        (label(i) != dataset.ignore_index).any() for i in range(len(dataset))
    ):
        return
    raise DatasetError(
        f"the {role} split {split!r} ({len(dataset)} images) has no labelled pixel: every label "
        f"is {dataset.ignore_index} (ignore) or missing, so nothing could be scored. Check {key}, "
        "the mask files and dataset.ignore_index"
    )


def set_transform_seed(transform: object, seed: int) -> None:
    """Give an albumentations Compose one NumPy and one Python random stream seeded from ``seed``.

    Not ``Compose(seed=...)``, which seeds every child with the same seed and so correlates their draws.
    """
    if hasattr(transform, "set_random_state"):
        transform.set_random_state(np.random.default_rng(seed), random.Random(seed))


RGB = Tuple[int, int, int]


@dataclass(frozen=True)
class DatasetSpec:
    """What :data:`ccnet.data.build.DATASETS` knows about one dataset.

    Args:
        build: ``(dataset config, split, crop_size) -> dataset`` (items ``(image, label)``, the attributes
            listed in :func:`ccnet.data.build.build_dataset`).
        metainfo: ``dataset config -> (class names, palette, ignore index)``, reading no file (inference
            without the dataset needs the palette).
    """

    build: Callable[..., SegmentationData]
    metainfo: Callable[[Mapping[str, Any]], Tuple[List[str], List[RGB], int]]
