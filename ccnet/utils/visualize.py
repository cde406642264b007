"""Colour maps, overlays and de-normalisation shared by every tool that writes pictures."""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def colorize(label: np.ndarray, palette: Sequence[Sequence[int]], ignore_index: int = 255) -> np.ndarray:
    """Map a class-index image to RGB with ``palette``; ignored and out-of-palette pixels are black.

    Shape:
        label: (H, W) integer array. Returns (H, W, 3) uint8.
    """
    lut = np.zeros((256, 3), dtype=np.uint8)
    pal = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)[:256]
    lut[: len(pal)] = pal
    if 0 <= ignore_index < 256:
        lut[ignore_index] = 0
    label = np.asarray(label)
    idx = np.where((label >= 0) & (label < 256), label, 0 if ignore_index >= 256 else ignore_index)
    return lut[idx.astype(np.int64)]


def overlay(image: np.ndarray, color_mask: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend an RGB uint8 image with an RGB uint8 mask of the same size: ``(1-alpha)*image + alpha*mask``."""
    if image.shape != color_mask.shape:
        raise ValueError(f"overlay needs equal shapes, got image {image.shape} and mask {color_mask.shape}")
    out = (1.0 - alpha) * image.astype(np.float32) + alpha * color_mask.astype(np.float32)
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def denormalize(image: torch.Tensor, mean: Sequence[float] = IMAGENET_MEAN,
                std: Sequence[float] = IMAGENET_STD) -> np.ndarray:
    """Undo ``(x/255 - mean)/std`` normalisation.

    Shape:
        image: (3, H, W) float tensor. Returns (H, W, 3) uint8.
    """
    m = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    x = (image.detach().float().cpu() * s + m) * 255.0
    return x.clamp(0, 255).round().to(torch.uint8).permute(1, 2, 0).numpy()


def heat_overlay(image: np.ndarray, heat: Tensor, pixel: Optional[Tuple[int, int]] = None,
                 alpha: float = 0.6) -> np.ndarray:
    """Blend a heat map (upsampled to the image size, scaled to its maximum) over an RGB image.

    Args:
        image: RGB uint8 image.
        heat: non-negative map at any resolution (nearest upsampling keeps feature cells visible).
        pixel: (row, column) to mark with a white cross-hair circle, or None.
        alpha: weight of the heat colours.

    Returns:
        The blended RGB uint8 image.

    Shape:
        image: (H, W, 3). heat: (h, w). Returns (H, W, 3).
    """
    height, width = image.shape[:2]
    heat = F.interpolate(heat[None, None].float().cpu(), size=(height, width), mode="nearest")[0, 0]
    scaled = (heat / heat.max().clamp_min(1e-12) * 255).round().to(torch.uint8).numpy()
    colours = cv2.cvtColor(cv2.applyColorMap(scaled, cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)
    out = overlay(image, colours, alpha)
    return mark_pixel(out, pixel) if pixel is not None else out


def mark_pixel(image: np.ndarray, pixel: Tuple[int, int]) -> np.ndarray:
    """A copy of the RGB uint8 ``image`` with a white circle around ``pixel`` (row, column)."""
    out = np.ascontiguousarray(image).copy()
    radius = max(3, min(image.shape[:2]) // 40)
    cv2.circle(out, (int(pixel[1]), int(pixel[0])), radius, (255, 255, 255), 1)
    return out
