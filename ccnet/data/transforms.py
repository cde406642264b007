"""Training and validation pipelines (albumentations) of CCNet (arXiv 1811.11721, Sec. 4), with the steps and
defaults of mmsegmentation's Cityscapes/ADE20K pipelines.

Train: rescale to ``base_size * r``, aspect kept, ``r ~ U(ratio_range)`` -> random crop of ``crop_size``
(``cat_max_ratio`` rule) -> horizontal flip -> photometric distortion -> normalisation -> pad to
``crop_size`` (image 0, label ``ignore_index``) -> tensors. Val: optional keep-ratio resize to
``base_size`` -> normalisation -> tensors. Labels are only resized nearest. Randomness comes from the
Compose's own streams, seeded by :func:`ccnet.data.seed_worker`.
"""

from __future__ import annotations

import logging
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple, Union

import albumentations as A
import cv2
import numpy as np
from albumentations.pytorch import ToTensorV2

from ccnet.errors import ConfigError
from ccnet.utils.visualize import IMAGENET_MEAN, IMAGENET_STD

log = logging.getLogger(__name__)

SizeLike = Union[int, Sequence[int]]


def to_hw(size: SizeLike, key: str = "crop_size") -> Tuple[int, int]:
    """Normalise an ``int`` or ``[h, w]`` size to an ``(h, w)`` tuple of positive ints.

    Raises:
        ValueError: naming ``key`` when the value is not a positive int or a pair of them.
    """
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        h = w = int(size)
    else:
        try:
            h, w = (int(v) for v in size)  # type: ignore[union-attr]  # anything else raises below
        except (TypeError, ValueError):
            raise ConfigError(f"{key} must be an int or [height, width], got {size!r}") from None
    if h <= 0 or w <= 0:
        raise ConfigError(f"{key} must be positive, got {size!r}")
    return h, w


def keep_ratio_size(height: int, width: int, target_h: float, target_w: float) -> Tuple[int, int]:
    """``(height, width)`` scaled, aspect kept, to fit the target box (mmseg ``keep_ratio``): long side within
    the target's long side, short side within its short side.
    """
    long_t, short_t = max(target_h, target_w), min(target_h, target_w)
    scale = min(long_t / max(height, width), short_t / min(height, width))
    return max(1, int(height * scale + 0.5)), max(1, int(width * scale + 0.5))


class RandomRescale(A.DualTransform):
    """Rescale to ``base_size * r``, aspect kept, ``r`` uniform in ``ratio_range``; labels nearest.

    Args:
        base_size: (h, w) reference size (Cityscapes (1024, 2048), ADE20K (512, 2048)); None scales each
            image relative to its own size.
        ratio_range: (low, high) of the scale ratio.
        p: probability of applying.
    """

    def __init__(self, base_size: Optional[Tuple[int, int]], ratio_range: Tuple[float, float], p: float = 1.0) -> None:
        super().__init__(p=p)
        self.base_size = None if base_size is None else tuple(base_size)
        self.ratio_range = tuple(ratio_range)

    def get_params_dependent_on_data(self, params: Dict[str, Any], data: Dict[str, Any]) -> Dict[str, Any]:
        h, w = params["shape"][:2]
        ratio = self.py_random.uniform(*self.ratio_range)
        base_h, base_w = (h, w) if self.base_size is None else self.base_size
        return {"size": keep_ratio_size(h, w, base_h * ratio, base_w * ratio)}

    def apply(self, img: np.ndarray, size: Tuple[int, int] = (0, 0), **params: Any) -> np.ndarray:
        return cv2.resize(img, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)

    def apply_to_mask(self, mask: np.ndarray, size: Tuple[int, int] = (0, 0), **params: Any) -> np.ndarray:
        return cv2.resize(mask, (size[1], size[0]), interpolation=cv2.INTER_NEAREST)

    def get_transform_init_args_names(self) -> Tuple[str, ...]:
        return ("base_size", "ratio_range")


class KeepRatioResize(A.DualTransform):
    """Deterministic keep-ratio resize to fit ``base_size`` (the validation counterpart of RandomRescale)."""

    def __init__(self, base_size: Tuple[int, int], p: float = 1.0) -> None:
        super().__init__(p=p)
        self.base_size = tuple(base_size)

    def get_params_dependent_on_data(self, params: Dict[str, Any], data: Dict[str, Any]) -> Dict[str, Any]:
        h, w = params["shape"][:2]
        return {"size": keep_ratio_size(h, w, *self.base_size)}

    def apply(self, img: np.ndarray, size: Tuple[int, int] = (0, 0), **params: Any) -> np.ndarray:
        return cv2.resize(img, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)

    def apply_to_mask(self, mask: np.ndarray, size: Tuple[int, int] = (0, 0), **params: Any) -> np.ndarray:
        return cv2.resize(mask, (size[1], size[0]), interpolation=cv2.INTER_NEAREST)

    def get_transform_init_args_names(self) -> Tuple[str, ...]:
        return ("base_size",)


class CatMaxRatioCrop(A.DualTransform):
    """Random crop of at most ``crop_size`` that avoids crops dominated by one class (mmseg rule).

    A crop is re-drawn (up to 10 tries, the last one kept) while its most frequent class covers
    ``cat_max_ratio`` or more of its labelled pixels or it holds a single class; ``cat_max_ratio >= 1``
    disables the rule. Images smaller than the crop are cropped to their own size (padding comes later).

    Args:
        crop_size: (h, w).
        cat_max_ratio: largest allowed share of one class among labelled pixels.
        ignore_index: label value excluded from the class counts.
    """

    max_tries = 10

    def __init__(
        self, crop_size: Tuple[int, int], cat_max_ratio: float = 1.0, ignore_index: int = 255, p: float = 1.0
    ) -> None:
        super().__init__(p=p)
        self.crop_size = tuple(crop_size)
        self.cat_max_ratio = float(cat_max_ratio)
        self.ignore_index = int(ignore_index)

    def get_params_dependent_on_data(self, params: Dict[str, Any], data: Dict[str, Any]) -> Dict[str, Any]:
        h, w = params["shape"][:2]
        ch, cw = min(self.crop_size[0], h), min(self.crop_size[1], w)
        mask = data.get("mask")
        for _ in range(self.max_tries):
            y0 = self.py_random.randint(0, h - ch)
            x0 = self.py_random.randint(0, w - cw)
            if self.cat_max_ratio >= 1.0 or mask is None:
                break
            counts = np.bincount(mask[y0 : y0 + ch, x0 : x0 + cw].ravel(), minlength=self.ignore_index + 1)
            counts[self.ignore_index] = 0
            counts = counts[counts > 0]
            if len(counts) > 1 and counts.max() / counts.sum() < self.cat_max_ratio:
                break
        return {"box": (y0, x0, ch, cw)}

    def apply(self, img: np.ndarray, box: Tuple[int, int, int, int] = (0, 0, 0, 0), **params: Any) -> np.ndarray:
        y0, x0, ch, cw = box
        return img[y0 : y0 + ch, x0 : x0 + cw]

    def apply_to_mask(
        self, mask: np.ndarray, box: Tuple[int, int, int, int] = (0, 0, 0, 0), **params: Any
    ) -> np.ndarray:
        y0, x0, ch, cw = box
        return mask[y0 : y0 + ch, x0 : x0 + cw]

    def get_transform_init_args_names(self) -> Tuple[str, ...]:
        return ("crop_size", "cat_max_ratio", "ignore_index")


def photometric_distortion(cfg: Optional[Mapping[str, Any]]) -> list:
    """mmseg's PhotoMetricDistortion from albumentations parts, each applied with probability ``p``.

    Brightness ``x + U(-brightness_delta, brightness_delta)``, contrast ``x * U(contrast_range)``, saturation
    factor ``U(saturation_range)``, hue shift ``U(-hue_delta, hue_delta)`` in OpenCV units (0..180).

    Args:
        cfg: ``p, brightness_delta, contrast_range, saturation_range, hue_delta``; None or ``p: 0`` disables.

    Returns:
        List of albumentations transforms (empty when disabled).
    """
    if not cfg or float(cfg.get("p", 0.0)) <= 0.0:
        return []
    p = float(cfg["p"])
    bd = float(cfg.get("brightness_delta", 32)) / 255.0
    c_lo, c_hi = (float(v) for v in cfg.get("contrast_range", (0.5, 1.5)))
    s_lo, s_hi = (float(v) for v in cfg.get("saturation_range", (0.5, 1.5)))
    hue = float(cfg.get("hue_delta", 18)) / 180.0  # ColorJitter's hue is a fraction of the full circle
    return [
        A.RandomBrightnessContrast(brightness_limit=(-bd, bd), contrast_limit=(0.0, 0.0), p=p),
        A.RandomBrightnessContrast(brightness_limit=(0.0, 0.0), contrast_limit=(c_lo - 1.0, c_hi - 1.0), p=p),
        A.ColorJitter(brightness=(1.0, 1.0), contrast=(1.0, 1.0), saturation=(s_lo, s_hi), hue=(0.0, 0.0), p=p),
        A.ColorJitter(brightness=(1.0, 1.0), contrast=(1.0, 1.0), saturation=(1.0, 1.0), hue=(-hue, hue), p=p),
    ]


def build_train_transform(
    crop_size: SizeLike,
    base_size: Optional[SizeLike],
    ratio_range: Sequence[float] = (0.5, 2.0),
    cat_max_ratio: float = 1.0,
    flip_prob: float = 0.5,
    photometric: Optional[Mapping[str, Any]] = None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    ignore_index: int = 255,
    seed: Optional[int] = None,
) -> A.Compose:
    """Training pipeline: rescale, crop, flip, photometric distortion, normalise, pad, to tensor.

    Args:
        crop_size: output size, int or (h, w).
        base_size: (h, w) the scale ratio refers to; None: each image's own size.
        ratio_range: (low, high) scale ratio; ``[1, 1]`` rescales exactly to ``base_size``.
        cat_max_ratio: see :class:`CatMaxRatioCrop`; 1.0 disables.
        flip_prob: horizontal flip probability.
        photometric: see :func:`photometric_distortion`; None disables.
        mean, std: normalisation (0..1 scale).
        ignore_index: label padding value.
        seed: seed of the pipeline's random streams (None: fresh entropy).

    Returns:
        Compose called as ``t(image=HxWx3 uint8, mask=HxW uint8)`` giving ``"image"`` (3, ch, cw) float32 and
        ``"mask"`` (ch, cw) uint8 tensors.
    """
    crop_h, crop_w = to_hw(crop_size, "crop_size")
    base = None if base_size is None else to_hw(base_size, "base_size")
    lo, hi = (float(r) for r in ratio_range)
    if not 0 < lo <= hi:
        raise ConfigError(f"ratio_range must satisfy 0 < low <= high, got {list(ratio_range)}")
    transforms = [
        RandomRescale(base, (lo, hi)),
        CatMaxRatioCrop((crop_h, crop_w), cat_max_ratio, ignore_index),
        A.HorizontalFlip(p=float(flip_prob)),
        *photometric_distortion(photometric),
        A.Normalize(mean=tuple(mean), std=tuple(std), max_pixel_value=255.0),
        # Padded after normalisation, as mmseg does: the image border is then the mean colour.
        A.PadIfNeeded(
            min_height=crop_h,
            min_width=crop_w,
            position="top_left",
            border_mode=cv2.BORDER_CONSTANT,
            fill=0,
            fill_mask=ignore_index,
        ),
        ToTensorV2(),
    ]
    return A.Compose(transforms, mask_interpolation=cv2.INTER_NEAREST, seed=seed)


def build_val_transform(
    base_size: Optional[SizeLike] = None, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> A.Compose:
    """Validation pipeline: optional keep-ratio resize to fit ``base_size`` (labels nearest), normalise, to tensor.

    Returns:
        Compose with the call convention of :func:`build_train_transform`.
    """
    transforms = [] if base_size is None else [KeepRatioResize(to_hw(base_size, "val_base_size"))]
    transforms += [A.Normalize(mean=tuple(mean), std=tuple(std), max_pixel_value=255.0), ToTensorV2()]
    return A.Compose(transforms, mask_interpolation=cv2.INTER_NEAREST)
