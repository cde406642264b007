"""Attention maps of the recurrent criss-cross head for one pixel (CCNet, arXiv 1811.11721, Fig. 1 / Sec. 3.2).

Loop r gives every feature position u weights ``A_r[u, p]`` over its row and column
(:func:`ccnet.models.cca.criss_cross_attention_weights`). The effective loop-2 map of u is the composition
``Σ_p A_2[u, p] · A_1[p, q]``, which covers the whole image (p = (row of u, column of q) or (row of q,
column of u)); loop r composes loops 1..r alike. For ``tools/visualize_attention.py`` and the trainer's
TensorBoard panels.
"""

from __future__ import annotations

from typing import Any, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

from ccnet.errors import ConfigError
from ccnet.utils.visualize import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    add_colorbar,
    add_headings,
    denormalize,
    heat_overlay,
    mark_pixel,
)


def _spread(weights: Tensor, attn_h: Tensor, attn_w: Tensor) -> Tensor:
    """``Σ_p weights[p] · A[p, q]``: push a distribution over positions p through one loop's attention.

    Shape:
        weights: (H, W). attn_h: (H, W, H), attn_w: (H, W, W) of one image. Returns (H, W).
    """
    # Column branch: p = (h, w) sends attn_h[h, w, i] to (i, w); row branch: attn_w[h, w, j] to (h, j).
    return torch.einsum("hw,hwi->iw", weights, attn_h) + torch.einsum("hw,hwj->hj", weights, attn_w)


@torch.no_grad()
def rcca_attention_maps(model: Any, image: Tensor, pixel: Tuple[int, int]) -> List[Tensor]:
    """Effective attention of ``pixel`` after each criss-cross loop of ``model``'s RCCA head.

    Args:
        model: a CCNet whose head is an RCCA head with ``recurrence >= 1``.
        image: one normalised image.
        pixel: (row, column) in image pixels; mapped to its feature position.

    Returns:
        One map per loop, each summing to 1: loop 1 non-zero only on the pixel's cross, loop r >= 2
        composing loops 1..r.

    Shape:
        image: (3, H, W). Each map: (h, w), the feature resolution.
    """
    head: Any = getattr(model, "head", None)
    if not getattr(head, "shows_attention", False):
        context = type(head).__name__ if head is not None else "none"
        raise ConfigError(
            f"model has no criss-cross attention to show (head {context}, recurrence "
            f"{getattr(head, 'recurrence', None)}): use a checkpoint trained with model.context=rcca "
            f"and model.recurrence >= 1"
        )
    was_training = model.training
    model.eval()
    try:
        feats = model.backbone(image.unsqueeze(0))["layer4"]
        x = head.conva(feats)
        _, _, h, w = x.shape
        row = min(int(pixel[0]) * h // image.shape[-2], h - 1)
        col = min(int(pixel[1]) * w // image.shape[-1], w - 1)
        loops = []
        maps = []
        for _ in range(head.recurrence):
            attn_h, attn_w = head.cca.attention_weights(x)
            loops.append((attn_h[0], attn_w[0]))
            x = head.cca(x)
            # Effective map of this loop: e_u · A_r · A_(r-1) ··· A_1 (u gathers through p what p gathered).
            reach = torch.zeros(h, w, dtype=attn_h.dtype, device=attn_h.device)
            reach[row, col] = 1.0
            for attn in reversed(loops):
                reach = _spread(reach, *attn)
            maps.append(reach)
    finally:
        model.train(was_training)
    return maps


def attention_panel(
    model: torch.nn.Module,
    image: Tensor,
    pixel: Optional[Tuple[int, int]] = None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> np.ndarray:
    """Side-by-side ``input | loop 1 | loop 2 | ...`` attention overlays for one pixel, for TensorBoard.

    Args:
        pixel: (row, column); the image centre when None.
        mean, std: the normalisation to undo for display.

    Shape:
        image: (3, H, W) normalised. Returns (H + bands, W * (1 + recurrence), 3) uint8 RGB: column
        headings above, the colour scale and a caption below.
    """
    height, width = image.shape[-2:]
    pixel = pixel if pixel is not None else (height // 2, width // 2)
    rgb = denormalize(image, mean, std)
    maps = rcca_attention_maps(model, image, pixel)
    panel = np.concatenate([mark_pixel(rgb, pixel)] + [heat_overlay(rgb, m, pixel) for m in maps], axis=1)
    titles = ["input (pixel circled)"] + [f"after loop {r}" for r in range(1, len(maps) + 1)]
    return add_colorbar(
        add_headings(panel, titles),
        "0",
        "max",
        f"attention of the circled pixel over the image (row {pixel[0]}, column {pixel[1]})",
    )
