"""Colour maps, palettes, legends, overlays and de-normalisation shared by every tool that writes pictures."""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple, Union

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from ccnet.errors import ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

RGB = Tuple[int, int, int]

#: Colour :func:`colorize` paints ignored pixels with, and the legend's "ignore" swatch.
IGNORE_COLOR: RGB = (0, 0, 0)

#: Default class colours. Class 0 (background in most datasets) is dark grey rather than black so that it
#: stays apart from ignored pixels, which are drawn black. Then the first 31 colours of colorcet's
#: ``glasbey_bw_minc_20`` (https://github.com/holoviz/colorcet, assets/Glasbey/glasbey_bw_minc_20_n256.csv,
#: values x 255 rounded): Glasbey et al., "Colour displays for categorical images" (2007) pick each next
#: colour as far as possible in CIELAB from all previous ones, here avoiding black, white and greys
#: (chroma >= 20), so neighbouring classes never look alike.
DEFAULT_PALETTE: Tuple[RGB, ...] = (
    (64, 64, 64),
    (215, 0, 0),
    (140, 60, 255),
    (2, 136, 0),
    (0, 172, 199),
    (152, 255, 0),
    (255, 127, 209),
    (108, 0, 79),
    (255, 165, 48),
    (88, 59, 0),
    (0, 87, 89),
    (0, 0, 221),
    (0, 253, 207),
    (161, 117, 106),
    (188, 183, 255),
    (149, 181, 120),
    (192, 4, 185),
    (100, 84, 116),
    (121, 0, 0),
    (7, 116, 216),
    (254, 245, 144),
    (0, 75, 0),
    (143, 122, 0),
    (255, 114, 102),
    (238, 185, 185),
    (94, 126, 102),
    (155, 228, 255),
    (236, 0, 119),
    (166, 123, 185),
    (90, 0, 164),
    (4, 198, 0),
    (158, 75, 0),
)


def distinct_palette(num_colors: int) -> List[RGB]:
    """``num_colors`` distinct colours, never black: :data:`DEFAULT_PALETTE`, then as many more as needed.

    Further colours are chosen greedily, Glasbey-style, from a 16-level RGB grid: each the grid colour
    farthest (Euclidean RGB) from black and every colour already chosen, the first in grid order on ties.
    Deterministic, and every prefix is the palette of fewer classes.

    Args:
        num_colors: how many colours, at most 4096 (the grid size).
    """
    if not 0 <= num_colors <= 16**3:
        raise ValueError(f"distinct_palette: num_colors must be in [0, 4096], got {num_colors}")
    palette = list(DEFAULT_PALETTE[:num_colors])
    if num_colors <= len(palette):
        return palette
    levels = np.arange(0, 256, 17, dtype=np.float64)
    grid = np.stack(np.meshgrid(levels, levels, levels, indexing="ij"), axis=-1).reshape(-1, 3)  # (4096, 3)
    taken = np.asarray([IGNORE_COLOR, *palette], dtype=np.float64)  # (T, 3)
    nearest = np.sqrt(((grid[:, None, :] - taken[None, :, :]) ** 2).sum(-1)).min(axis=1)  # (4096,)
    while len(palette) < num_colors:
        pick = grid[int(nearest.argmax())]
        palette.append((int(pick[0]), int(pick[1]), int(pick[2])))
        nearest = np.minimum(nearest, np.sqrt(((grid - pick) ** 2).sum(-1)))
    return palette


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


def denormalize(
    image: torch.Tensor, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> np.ndarray:
    """Undo ``(x/255 - mean)/std`` normalisation.

    Shape:
        image: (3, H, W) float tensor. Returns (H, W, 3) uint8.
    """
    m = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    x = (image.detach().float().cpu() * s + m) * 255.0
    return x.clamp(0, 255).round().to(torch.uint8).permute(1, 2, 0).numpy()


def heat_overlay(
    image: np.ndarray, heat: Tensor, pixel: Optional[Tuple[int, int]] = None, alpha: float = 0.6
) -> np.ndarray:
    """Blend a heat map, upsampled nearest to the image size and scaled to its maximum, over an RGB image.

    Args:
        pixel: (row, column) to mark with a white cross-hair circle, or None.
        alpha: weight of the heat colours.

    Shape:
        image: (H, W, 3) uint8. heat: (h, w) non-negative. Returns (H, W, 3) uint8.
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


def legend_entries(
    palette: Sequence[Sequence[int]],
    classes: Sequence[str],
    maps: Optional[Sequence[np.ndarray]] = None,
    ignore_index: int = 255,
    max_entries: int = 40,
) -> Tuple[List[Tuple[str, RGB]], Optional[str]]:
    """What a legend lists: (name, colour) per class shown, and a note on the classes left out.

    Args:
        maps: label and/or prediction maps of the picture; only their classes are listed (and "ignore" when
            ``ignore_index`` occurs). None lists every class.
        max_entries: at most this many classes; when more occur, those with the most pixels are kept (in
            class order).

    Returns:
        The entries in class order (then "ignore"), and None or a note such as ``"+147 of 150 classes absent"``.

    Shape:
        maps: each (H, W) integer, any sizes.
    """
    if len(palette) < len(classes):
        raise ConfigError(
            f"legend: the palette has {len(palette)} colours for {len(classes)} classes; give one colour per class"
        )
    k = len(classes)
    counts = np.zeros(k, dtype=np.int64)
    has_ignore = False
    if maps is None:
        counts[:] = 1
    else:
        for m in maps:
            values = np.asarray(m).reshape(-1).astype(np.int64)
            in_range = values[(values >= 0) & (values < k)]
            counts += np.bincount(in_range, minlength=k)[:k]
            has_ignore = has_ignore or bool((values == ignore_index).any())
    present = np.flatnonzero(counts)
    shown = np.sort(present[np.argsort(-counts[present], kind="stable")[:max_entries]])
    entries = [(str(classes[c]), (int(palette[c][0]), int(palette[c][1]), int(palette[c][2]))) for c in shown]
    if has_ignore:
        entries.append(("ignore", IGNORE_COLOR))
    if maps is None:
        return entries, f"+{k - len(shown)} more classes" if len(shown) < k else None
    absent, small = k - len(present), len(present) - len(shown)
    notes = [f"+{small} smaller classes not listed"] if small else []
    if absent:
        notes.append(f"+{absent} of {k} classes absent")
    return entries, "; ".join(notes) or None


def _font(size: int) -> Union[ImageFont.ImageFont, ImageFont.FreeTypeFont]:
    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1 with FreeType: a scalable font
    except (TypeError, ImportError, OSError):
        return ImageFont.load_default()  # older Pillow / no FreeType: the fixed 11 px bitmap font


def _fit(
    draw: ImageDraw.ImageDraw, text: str, font: Union[ImageFont.ImageFont, ImageFont.FreeTypeFont], width: float
) -> str:
    """``text``, cut and ended with an ellipsis where it is wider than ``width`` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while len(text) > 1 and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"


def add_legend(
    image: np.ndarray,
    palette: Sequence[Sequence[int]],
    classes: Sequence[str],
    maps: Optional[Sequence[np.ndarray]] = None,
    ignore_index: int = 255,
    max_entries: int = 40,
    dark: bool = False,
    font_size: Optional[int] = None,
) -> np.ndarray:
    """The picture with a legend band below it: a colour square (grey outline) and the class name per class,
    wrapping onto as many rows as the width needs; :func:`legend_entries` decides which classes.

    Args:
        maps: label/prediction maps of the picture: list only the classes in them; None: all classes.
        ignore_index: label value of unlabelled pixels (listed as "ignore" when it occurs).
        max_entries: most classes listed; the others are counted in a note.
        dark: dark band with white text (TensorBoard's dark mode) instead of white with black text.
        font_size: text height in pixels; default scales with the width (11 px up to ~700 px, at most 32).

    Shape:
        image: (H, W, 3) uint8. Returns (H + band height, W, 3) uint8.
    """
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"add_legend expects an (H, W, 3) RGB image, got shape {image.shape}")
    entries, note = legend_entries(palette, classes, maps, ignore_index, max_entries)
    width = image.shape[1]
    size = int(font_size) if font_size else int(np.clip(width // 60, 11, 32))
    font = _font(size)
    square, pad = size, max(3, size // 3)
    background, ink = ((40, 40, 40), (255, 255, 255)) if dark else ((255, 255, 255), (0, 0, 0))
    items: List[Tuple[Optional[RGB], str]] = [(colour, name) for name, colour in entries]
    if note:
        items.append((None, note))

    scratch = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    placed = []  # (x, row, colour, text): lay out first, since the band's height depends on the rows
    x, row = pad, 0
    for colour, text in items:
        swatch = square + pad if colour is not None else 0
        text = _fit(scratch, text, font, width - 2 * pad - swatch)
        item_width = swatch + scratch.textlength(text, font=font)
        if x > pad and x + item_width > width - pad:
            x, row = pad, row + 1
        placed.append((x, row, colour, text))
        x += int(np.ceil(item_width)) + 2 * pad
    row_height = square + pad
    band = Image.new("RGB", (width, pad + (row + 1) * row_height if items else 0), background)
    draw = ImageDraw.Draw(band)
    left, top, _, bottom = font.getbbox("Ag")
    for x, row, colour, text in placed:
        y = pad + row * row_height
        if colour is not None:
            draw.rectangle([x, y, x + square - 1, y + square - 1], fill=colour, outline=(128, 128, 128))
            x += square + pad
        # centre the text's ink box on the square, whatever the font's ascent
        draw.text((x - left, y + (square - (bottom - top)) // 2 - top), text, fill=ink, font=font)
    return np.concatenate([np.asarray(image, dtype=np.uint8), np.asarray(band)], axis=0)


def add_headings(image: np.ndarray, titles: Sequence[str], dark: bool = False) -> np.ndarray:
    """The picture with a band above it naming its columns: ``titles[i]`` centred over the i-th of
    ``len(titles)`` equal-width columns (panels concatenated side by side), cut to fit.

    Shape:
        image: (H, W, 3) uint8, W divisible into len(titles) columns. Returns (H + band height, W, 3) uint8.
    """
    width = image.shape[1]
    column = width / len(titles)
    size = int(np.clip(column // 16, 11, 28))
    font, pad = _font(size), max(3, size // 3)
    background, ink = ((40, 40, 40), (255, 255, 255)) if dark else ((255, 255, 255), (0, 0, 0))
    band = Image.new("RGB", (width, size + 2 * pad), background)
    draw = ImageDraw.Draw(band)
    left, top, _, _ = font.getbbox("Ag")
    for i, title in enumerate(titles):
        text = _fit(draw, title, font, column - 2 * pad)
        x = i * column + (column - draw.textlength(text, font=font)) / 2
        draw.text((x - left, pad - top), text, fill=ink, font=font)
    return np.concatenate([np.asarray(band), np.asarray(image, dtype=np.uint8)], axis=0)


def add_colorbar(image: np.ndarray, low: str = "0", high: str = "max", caption: str = "") -> np.ndarray:
    """The picture with a band below it: the JET colour scale of :func:`heat_overlay` from ``low`` to
    ``high`` (labels at its ends) and a caption saying what the colours measure.

    Shape:
        image: (H, W, 3) uint8. Returns (H + band height, W, 3) uint8.
    """
    width = image.shape[1]
    size = int(np.clip(width // 40, 11, 24))
    font, pad = _font(size), max(3, size // 3)
    draw_probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_width = int(max(draw_probe.textlength(t, font=font) for t in (low, high))) + pad
    bar_width = max(16, width - 2 * (label_width + pad))
    ramp = np.linspace(0, 255, bar_width).round().astype(np.uint8)[None].repeat(size, axis=0)
    bar = cv2.cvtColor(cv2.applyColorMap(ramp, cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)
    rows = 2 if caption else 1
    band = Image.new("RGB", (width, rows * (size + pad) + pad), (255, 255, 255))
    band.paste(Image.fromarray(bar), (label_width + pad, pad))
    draw = ImageDraw.Draw(band)
    left, top, _, _ = font.getbbox("Ag")
    draw.text((pad - left, pad - top), low, fill=(0, 0, 0), font=font)
    draw.text((label_width + 2 * pad + bar_width - left, pad - top), high, fill=(0, 0, 0), font=font)
    if caption:
        text = _fit(draw, caption, font, width - 2 * pad)
        draw.text(
            ((width - draw.textlength(text, font=font)) / 2 - left, size + 2 * pad - top),
            text,
            fill=(0, 0, 0),
            font=font,
        )
    return np.concatenate([np.asarray(image, dtype=np.uint8), np.asarray(band)], axis=0)
