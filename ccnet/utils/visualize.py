"""Colour maps, overlays and de-normalisation shared by every tool that writes pictures."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

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
